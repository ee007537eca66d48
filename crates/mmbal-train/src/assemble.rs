//! Building a [`Trainer`]: from a config (dataset, model, method, optimizer; the run folder
//! locked first), from parts built elsewhere, or from a checkpoint to resume or evaluate. A
//! method's requirements are checked here, before anything is trained or written, and a method's
//! teachers (other runs' models it reads) are opened here.

use crate::checkpoint::Checkpoint;
use crate::config::{Precision, Selection, TrainConfig};
use crate::loss_scale::LossScaler;
use crate::monitor::ScoreRatio;
use crate::run_folder::lock_run_dir;
use crate::Trainer;
use anyhow::{bail, Context, Result};
use candle_core::Device;
use mmbal_data::{Dataset, Manifest, Split};
use mmbal_fusion::MultimodalModel;
use mmbal_methods::{build_method, BalanceMethod};
use std::path::Path;
use std::sync::Arc;

/// `cpu` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(n) = name.strip_prefix("cuda:") {
        let n: usize = n
            .parse()
            .with_context(|| format!("device `{name}`: expected cuda:N"))?;
        return Device::new_cuda(n).with_context(|| {
            format!("device `{name}` (a CUDA build is needed: cargo build --features cuda)")
        });
    }
    bail!("device `{name}`: expected cpu or cuda:N")
}

impl Trainer {
    /// Builds the dataset (generating the synthetic one and the packed cache when needed), the
    /// model, the method and the optimizer from a config.
    pub fn from_config(config: TrainConfig) -> Result<Trainer> {
        Trainer::build(config, true, CacheSources::Checked)
    }

    /// [`Trainer::from_config`] for timing on a machine that holds a config's packed input
    /// cache but not its source files (`cargo xtask bench epoch`): the cache is opened without
    /// checking the sources (`Dataset::with_cache_sources_unchecked`), so the config needs
    /// `[data] cache = true`. Not for runs whose results count: a stale cache goes unnoticed.
    pub fn for_timing(config: TrainConfig) -> Result<Trainer> {
        if !config.data.cache {
            bail!("timing from the input cache needs `[data] cache = true` in the config");
        }
        Trainer::build(config, true, CacheSources::Unchecked)
    }

    fn build(config: TrainConfig, lock: bool, sources: CacheSources) -> Result<Trainer> {
        config.validate()?;
        let device = parse_device(&config.device)?;
        // Locked before anything is written there (the input cache is built below).
        let lock = if lock {
            Some(lock_run_dir(&config.run_dir())?)
        } else {
            None
        };
        let (card_dir, root) = config.dataset_location()?;
        let mut manifest = Manifest::load(&card_dir, &root)?;
        let card_modalities = manifest.modalities.clone();
        if let Some(keep) = &config.data.modalities {
            manifest
                .keep_modalities(keep)
                .context("[data] modalities")?;
        }
        let (recipes, encoders) = config.per_modality(&card_modalities, &manifest.modalities)?;
        // The method's requirements before the input cache (hours of decoding on a large
        // dataset) is built.
        let method = build_method(&config.method.name, &config.method.options)?;
        let val = manifest.indices(Split::Val).len();
        method.requirements().check(
            &config.method.name,
            config.model.fusion,
            manifest.modalities.len(),
            val,
        )?;
        check_selection(&config, &manifest.name, val)?;
        let classes = manifest.classes.len();
        let modalities = manifest.modalities.clone();
        let dataset = if config.data.cache {
            let path = config
                .data
                .cache_path
                .clone()
                .unwrap_or_else(|| config.run_dir().join("inputs.mmbc"));
            match sources {
                CacheSources::Checked => Dataset::with_cache(manifest, recipes, &path)?,
                CacheSources::Unchecked => {
                    Dataset::with_cache_sources_unchecked(manifest, recipes, &path)?
                }
            }
        } else {
            Dataset::new(manifest, recipes)?
        };
        let model = MultimodalModel::new(
            &modalities,
            &encoders,
            config.model.fusion,
            config.model.head_init,
            classes,
            config.seed,
            &device,
        )?;
        Trainer::assemble(config, Arc::new(dataset), model, method, lock)
    }

    /// A trainer over parts built elsewhere (custom encoders, a dataset from code); the method's
    /// requirements are checked against them before the run folder is locked.
    pub fn from_parts(
        config: TrainConfig,
        dataset: Arc<Dataset>,
        model: MultimodalModel,
        method: Box<dyn BalanceMethod>,
    ) -> Result<Trainer> {
        config.validate()?;
        let val = dataset.rows(Split::Val).len();
        method.requirements().check(
            &config.method.name,
            model.head.kind,
            model.num_modalities(),
            val,
        )?;
        check_selection(&config, &dataset.manifest.name, val)?;
        let lock = lock_run_dir(&config.run_dir())?;
        Trainer::assemble(config, dataset, model, method, Some(lock))
    }

    fn assemble(
        mut config: TrainConfig,
        dataset: Arc<Dataset>,
        mut model: MultimodalModel,
        mut method: Box<dyn BalanceMethod>,
        lock: Option<std::fs::File>,
    ) -> Result<Trainer> {
        // The run's config (saved, and in every checkpoint) shows every option in use.
        config.record_method_options(method.options());
        for (name, rate) in &config.data.missing {
            if !model.modalities.contains(name) {
                bail!(
                    "[data] missing names `{name}`, which the run does not have (its modalities: \
                     {:?})",
                    model.modalities
                );
            }
            if !(0.0..=1.0).contains(rate) {
                bail!("[data] missing: {name} = {rate}; a rate is between 0 and 1");
            }
        }
        if config.monitor_score_ratio && model.num_modalities() < 2 {
            bail!(
                "monitor_score_ratio compares each modality with the others, so it needs at \
                 least two modalities (this run has {:?}): set monitor_score_ratio = false",
                model.modalities
            );
        }
        method.prepare_model(&mut model)?;
        // Teachers: other runs' models, opened with their own configs on this run's device.
        let paths = method.teachers();
        if !paths.is_empty() {
            let mut teachers = Vec::with_capacity(paths.len());
            for p in &paths {
                let t = Trainer::open(p, Some(&config.device))
                    .with_context(|| format!("opening the teacher {}", p.display()))?;
                teachers.push(t.model);
            }
            method.set_teachers(&model, teachers)?;
        }
        // The model's parameters, then the method's own: the order of every per-parameter list
        // (learning-rate factors, optimizer state).
        let mut params = model.params();
        params.extend(method.params().into_iter().map(|(_, v)| v));
        let optimizer = config.optimizer.build(params);
        let run_dir = config.run_dir();
        let score_ratio = config
            .monitor_score_ratio
            .then(|| ScoreRatio::new(model.num_modalities()));
        // A process-wide cuDNN setting: the last trainer built sets it, for every model of the
        // process (a teacher or an evaluated checkpoint of another precision included).
        mmbal_ops::set_cuda_tf32(config.precision != Precision::Fp32Strict);
        let scaler = if config.precision == Precision::Bf16 {
            model.set_compute_dtype(candle_core::DType::BF16)?;
            Some(LossScaler::default())
        } else {
            None
        };
        Ok(Trainer {
            config,
            dataset,
            model,
            method,
            optimizer,
            scaler,
            epochs_done: 0,
            step: 0,
            run_dir,
            lock,
            overwrite: false,
            score_ratio,
            frozen_encoders: Vec::new(),
            events: None,
        })
    }

    /// Lets a fresh run replace the results of an earlier run of the same name (its log,
    /// checkpoints, summary and contributions are deleted when training starts). Without it, a
    /// fresh run in a folder that holds results is refused.
    pub fn set_overwrite(&mut self, overwrite: bool) {
        self.overwrite = overwrite;
    }

    /// Rebuilds a run from its checkpoint and continues it (to `epochs` in all when given),
    /// holding its run folder's lock.
    pub fn resume(path: &Path, epochs: Option<usize>, device: Option<&str>) -> Result<Trainer> {
        Trainer::restore(path, epochs, device, true)
    }

    /// A checkpoint's model, method and data, to evaluate or value: the run folder is not
    /// locked (a run may still be training there), and [`Trainer::run`] must not be called.
    pub fn open(path: &Path, device: Option<&str>) -> Result<Trainer> {
        Trainer::restore(path, None, device, false)
    }

    fn restore(
        path: &Path,
        epochs: Option<usize>,
        device: Option<&str>,
        lock: bool,
    ) -> Result<Trainer> {
        let ck = Checkpoint::load(path)?;
        let mut config = TrainConfig::from_toml(ck.meta("config")?, path)?;
        // The run goes on in the checkpoint's own folder, wherever it is run from.
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::fs::canonicalize(dir)
            .with_context(|| format!("{}: cannot find the run folder", dir.display()))?;
        if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
            config.out_dir = parent.to_path_buf();
            config.name = name.to_string_lossy().into_owned();
        }
        if let Some(e) = epochs {
            config.epochs = e;
        }
        if let Some(d) = device {
            config.device = d.to_string();
        }
        let mut t = Trainer::build(config, lock, CacheSources::Checked)?;
        t.load_checkpoint(&ck)
            .with_context(|| format!("{}: restoring the run", path.display()))?;
        Ok(t)
    }
}

/// Whether the packed input cache's source files are checked against the disk when it opens.
#[derive(Clone, Copy)]
enum CacheSources {
    Checked,
    Unchecked,
}

/// Selecting on val needs val samples: refused before anything is decoded or written.
fn check_selection(config: &TrainConfig, dataset: &str, val_samples: usize) -> Result<()> {
    if config.select == Selection::Val && val_samples == 0 {
        bail!(
            "the dataset `{dataset}` has no val split, so no epoch can be selected on val (and \
             test never selects): add a val split to its split file or layout, or set \
             `select = \"last\"` in the config to report the last epoch (the summary then says \
             so)"
        );
    }
    Ok(())
}
