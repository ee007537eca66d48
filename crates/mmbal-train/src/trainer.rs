//! The training loop. Per epoch: the method's row plan (or every training sample once), shuffled
//! with `(seed, epoch)`; per batch: forward, the method's loss, backward, the method's gradient
//! edits, the optimizer step (once, or once per modality); then the method's epoch-end hook,
//! evaluation on val (and test), one JSON line, and checkpoints. The reported model is the one
//! with the best val accuracy; the last epoch is reported too. Test never selects anything.

use crate::checkpoint::{self, Checkpoint};
use crate::config::{Selection, TrainConfig};
use crate::metrics::{accuracy, argmax, macro_f1};
use crate::optim::Optimizer;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use mmbal_data::{batches, shuffle_rows, Batch, Dataset, Manifest, Split};
use mmbal_fusion::{ForwardOut, MultimodalModel};
use mmbal_methods::{
    build_method, collect_outputs, BalanceMethod, EpochCtx, Grads, StepCtx, StepIndex, StepPlan,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// One training step: a train-mode forward with `keep` masking the features, then for each
/// backward pass of the method's [`StepPlan`]: the method's loss, backward, the method's gradient
/// edits and an optimizer step. Returns the summed loss and the forward output.
pub fn train_step(
    model: &MultimodalModel,
    method: &mut dyn BalanceMethod,
    optimizer: &mut dyn Optimizer,
    inputs: &[Tensor],
    labels: &Tensor,
    keep: &Tensor,
    at: StepIndex,
) -> Result<(f64, ForwardOut)> {
    let out = model.forward(inputs, Some(keep), true)?;
    let turns: Vec<Option<usize>> = match method.step_plan() {
        StepPlan::Joint => vec![None],
        StepPlan::PerModality => (0..model.num_modalities()).map(Some).collect(),
    };
    let mut total = 0.0;
    for turn in turns {
        let ctx = StepCtx {
            epoch: at.epoch,
            step: at.step,
            batch: at.batch,
            batches: at.batches,
            model,
            labels,
            keep,
            turn,
        };
        let loss = method.loss(&ctx, &out)?;
        let value = loss
            .sum_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()? as f64;
        let at_step = || {
            let turn = turn
                .map(|m| format!(" ({} turn)", model.modalities[m]))
                .unwrap_or_default();
            format!(
                "epoch {}, batch {} of {}{turn}",
                at.epoch + 1,
                at.batch + 1,
                at.batches
            )
        };
        if !value.is_finite() {
            bail!("{}: the loss is {value}; no step was taken", at_step());
        }
        total += value;
        let mut grads = Grads {
            store: loss.backward()?,
        };
        method.observe_gradients(&ctx, &out, &grads)?;
        method.edit_gradients(&ctx, &out, &mut grads)?;
        if let Some(name) = first_non_finite_gradient(model, &grads)? {
            bail!(
                "{}: the gradient of `{name}` is not finite (loss {value}); no step was taken",
                at_step()
            );
        }
        optimizer.step(&grads.store)?;
    }
    Ok((total, out))
}

/// The name of the first parameter whose gradient holds a NaN or an infinity.
fn first_non_finite_gradient(model: &MultimodalModel, grads: &Grads) -> Result<Option<String>> {
    for (name, v) in model.named_params() {
        if let Some(g) = grads.get(&v) {
            if !all_finite(g)? {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

/// Whether every element is finite (one reduction: the sum of `x * 0` is NaN exactly when some
/// element is NaN or infinite).
fn all_finite(t: &Tensor) -> Result<bool> {
    let probe = (t * 0.0)?
        .sum_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_scalar::<f32>()?;
    Ok(probe == 0.0)
}

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

/// Metrics of one split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitMetrics {
    pub samples: usize,
    pub loss: f64,
    pub acc: f64,
    pub macro_f1: f64,
    /// Accuracy of each modality's unimodal logits.
    pub modality_acc: BTreeMap<String, f64>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    pub lr: f64,
    pub train: SplitMetrics,
    pub val: Option<SplitMetrics>,
    pub test: Option<SplitMetrics>,
    pub method: BTreeMap<String, f64>,
    /// OGM's discrepancy ratio for every method: each modality's summed true-class probability
    /// (its unimodal logits, training batches) over the mean of the other modalities'.
    #[serde(default)]
    pub score_ratio: BTreeMap<String, f64>,
    /// Mean Shapley contribution per modality on the training split, when the config's
    /// `track_contributions` is on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contributions: BTreeMap<String, f64>,
    pub train_seconds: f64,
    pub train_samples_per_s: f64,
}

/// Reads a run's `metrics.jsonl`: one record per line, each error naming file and line.
pub fn read_log(path: &Path) -> Result<Vec<EpochRecord>> {
    std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not an epoch record", path.display(), i + 1))
        })
        .collect()
}

/// Progress callbacks (the CLI draws a progress bar with them).
pub trait Events {
    fn epoch_start(&mut self, _epoch: usize, _batches: usize) {}
    fn batch_end(&mut self, _loss: f64) {}
    fn epoch_end(&mut self, _record: &EpochRecord) {}
}

/// No progress output.
pub struct Quiet;
impl Events for Quiet {}

/// What a run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub method: String,
    pub dataset: String,
    /// How `best` was chosen (summaries written before this field: `val`).
    #[serde(default)]
    pub selection: Selection,
    /// The selected epoch: best val accuracy (first on ties), or the last with `select = "last"`.
    pub best: Option<EpochRecord>,
    pub last: Option<EpochRecord>,
}

pub struct Trainer {
    pub config: TrainConfig,
    pub dataset: Arc<Dataset>,
    pub model: MultimodalModel,
    pub method: Box<dyn BalanceMethod>,
    optimizer: Box<dyn Optimizer>,
    epochs_done: usize,
    step: usize,
    best: Option<EpochRecord>,
    last: Option<EpochRecord>,
    run_dir: PathBuf,
    /// Held for the trainer's life: one training per run folder (`None` for a checkpoint opened
    /// to evaluate, which writes no results).
    lock: Option<std::fs::File>,
    overwrite: bool,
}

/// Files a finished or interrupted run leaves in its folder (the input cache stays).
const RUN_OUTPUTS: [&str; 10] = [
    "metrics.jsonl",
    "summary.json",
    "last.safetensors",
    "best.safetensors",
    "contributions",
    "data-recipe.toml",
    "accuracy.svg",
    "method.svg",
    "contributions.svg",
    "contributions_hist.svg",
];

/// Takes the run folder's lock file, so two trainings never write the same folder.
fn lock_run_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create run folder", dir.display()))?;
    let path = dir.join("run.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open the run's lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another training is writing this run folder (it holds {}); pick another run \
             name",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
}

/// What one training step of [`Trainer::train_step`] reports.
pub struct StepReport {
    /// Summed loss of the step's backward passes.
    pub loss: f64,
    /// Train-mode predictions: fused, then per modality.
    pub fused: Vec<u32>,
    pub unimodal: Vec<Vec<u32>>,
    /// Summed true-class probability of each modality's logits (OGM's score).
    pub scores: Vec<f64>,
}

fn to_device(batch: &Batch, dev: &Device) -> Result<(Vec<Tensor>, Tensor, Tensor)> {
    let inputs = batch
        .inputs
        .iter()
        .map(|x| x.to_device(dev))
        .collect::<candle_core::Result<_>>()?;
    Ok((
        inputs,
        batch.labels.to_device(dev)?,
        batch.keep.to_device(dev)?,
    ))
}

impl Trainer {
    /// Builds the dataset (generating the synthetic one and the packed cache when needed), the
    /// model, the method and the optimizer from a config.
    pub fn from_config(config: TrainConfig) -> Result<Trainer> {
        Trainer::build(config, true)
    }

    fn build(config: TrainConfig, lock: bool) -> Result<Trainer> {
        config.validate()?;
        let device = parse_device(&config.device)?;
        // Locked before anything is written there (the input cache is built below).
        let lock = if lock {
            Some(lock_run_dir(&config.run_dir())?)
        } else {
            None
        };
        let (card_dir, root) = config.dataset_location()?;
        let manifest = Manifest::load(&card_dir, &root)?;
        let (recipes, encoders) = config.per_modality(&manifest.modalities)?;
        let classes = manifest.classes.len();
        let modalities = manifest.modalities.clone();
        let dataset = if config.data.cache {
            let path = config
                .data
                .cache_path
                .clone()
                .unwrap_or_else(|| config.run_dir().join("inputs.mmbc"));
            Dataset::with_cache(manifest, recipes, &path)?
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
        let method = build_method(&config.method.name, &config.method.options)?;
        Trainer::assemble(config, Arc::new(dataset), model, method, lock)
    }

    /// A trainer over parts built elsewhere (custom encoders, a dataset from code).
    pub fn from_parts(
        config: TrainConfig,
        dataset: Arc<Dataset>,
        model: MultimodalModel,
        method: Box<dyn BalanceMethod>,
    ) -> Result<Trainer> {
        config.validate()?;
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
        if config.select == Selection::Val && dataset.rows(Split::Val).is_empty() {
            bail!(
                "the dataset `{}` has no val split, so no epoch can be selected on val (and test \
                 never selects): add a val split to its split file or layout, or set \
                 `select = \"last\"` in the config to report the last epoch (the summary then \
                 says so)",
                dataset.manifest.name
            );
        }
        method.requirements().check(
            &config.method.name,
            model.head.kind,
            model.num_modalities(),
            dataset.rows(Split::Val).len(),
        )?;
        // The run's config (saved, and in every checkpoint) shows every option in use.
        config.method.options = method.options();
        method.prepare_model(&mut model)?;
        let optimizer = config.optimizer.build(model.params());
        let run_dir = config.run_dir();
        Ok(Trainer {
            config,
            dataset,
            model,
            method,
            optimizer,
            epochs_done: 0,
            step: 0,
            best: None,
            last: None,
            run_dir,
            lock,
            overwrite: false,
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
        let mut t = Trainer::build(config, lock)?;
        t.load_checkpoint(&ck)
            .with_context(|| format!("{}: restoring the run", path.display()))?;
        Ok(t)
    }

    fn load_checkpoint(&mut self, ck: &Checkpoint) -> Result<()> {
        let params = ck.section("model");
        for (name, var) in self.model.named_params() {
            let t = params
                .get(&name)
                .with_context(|| format!("no parameter `{name}`"))?;
            if t.dims() != var.dims() {
                bail!(
                    "parameter `{name}`: shape {:?}, model {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            if !all_finite(t)? {
                bail!("parameter `{name}` holds NaN or infinite values");
            }
            var.set(&t.to_device(var.device())?)?;
        }
        let bufs = ck.section("buffer");
        for (name, _) in self.model.buffers() {
            if !bufs.contains_key(&name) {
                bail!("no buffer `{name}`");
            }
        }
        // Every saved buffer, also those a fresh model does not have yet (MMTM running means).
        for (name, t) in &bufs {
            self.model
                .set_buffer(name, t.to_device(self.model.device())?)?;
        }
        self.optimizer.load_state(&ck.section("optim"))?;
        self.method.load_state(&ck.section("method"))?;
        self.epochs_done = ck.meta("epochs_done")?.parse()?;
        self.step = ck.meta("step")?.parse()?;
        let lr: f64 = ck.meta("lr")?.parse()?;
        self.optimizer.set_learning_rate(lr);
        Ok(())
    }

    /// Writes the model, optimizer and method state with the config and progress.
    /// Refuses (writes nothing) when a weight or buffer is not finite.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (n, v) in self.model.named_params() {
            if !all_finite(v.as_tensor())? {
                bail!(
                    "{}: not written, parameter `{n}` holds NaN or infinite values",
                    path.display()
                );
            }
            tensors.push((format!("model.{n}"), v.as_tensor().clone()));
        }
        for (n, t) in self.model.buffers() {
            if !all_finite(&t)? {
                bail!(
                    "{}: not written, buffer `{n}` holds NaN or infinite values",
                    path.display()
                );
            }
            tensors.push((format!("buffer.{n}"), t));
        }
        for (n, t) in self.optimizer.state() {
            tensors.push((format!("optim.{n}"), t));
        }
        for (n, t) in self.method.state()? {
            tensors.push((format!("method.{n}"), t));
        }
        let meta: HashMap<String, String> = [
            ("config", self.config.to_toml()),
            ("epochs_done", self.epochs_done.to_string()),
            ("step", self.step.to_string()),
            ("lr", self.optimizer.learning_rate().to_string()),
            ("method", self.method.name().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        checkpoint::save(path, tensors, meta)
    }

    pub fn epochs_done(&self) -> usize {
        self.epochs_done
    }

    /// One training step on `batch`, the `batch_index`-th of `batches` in `epoch` (see
    /// [`train_step`]).
    pub fn train_step(
        &mut self,
        batch: &Batch,
        epoch: usize,
        batch_index: usize,
        batches: usize,
    ) -> Result<StepReport> {
        let (inputs, labels, keep) = to_device(batch, self.model.device())?;
        let (loss, out) = train_step(
            &self.model,
            self.method.as_mut(),
            self.optimizer.as_mut(),
            &inputs,
            &labels,
            &keep,
            StepIndex {
                epoch,
                step: self.step,
                batch: batch_index,
                batches,
            },
        )?;
        self.step += 1;
        let fused = argmax(
            &self
                .method
                .predict(&out.fused_logits, &out.unimodal_logits)?,
        )?;
        let uni = out
            .unimodal_logits
            .iter()
            .map(argmax)
            .collect::<Result<_>>()?;
        let scores = out
            .unimodal_logits
            .iter()
            .map(|l| mmbal_methods::true_class_score(l, &labels))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        Ok(StepReport {
            loss,
            fused,
            unimodal: uni,
            scores,
        })
    }

    /// Eval-mode metrics of a split; `None` when the split is empty.
    pub fn evaluate(&self, split: Split) -> Result<Option<SplitMetrics>> {
        let rows = self.dataset.rows(split);
        if rows.is_empty() {
            return Ok(None);
        }
        let bs = self.config.batch_size.max(1);
        let c = collect_outputs(&self.model, &self.dataset, &rows, bs)?;
        // Predicted batch by batch: the same batches the loader served.
        let mut parts = Vec::with_capacity(rows.len().div_ceil(bs));
        for start in (0..rows.len()).step_by(bs) {
            let n = bs.min(rows.len() - start);
            let unimodal = c
                .unimodal
                .iter()
                .map(|u| u.narrow(0, start, n))
                .collect::<candle_core::Result<Vec<_>>>()?;
            parts.push(
                self.method
                    .predict(&c.fused.narrow(0, start, n)?, &unimodal)?,
            );
        }
        let logits = Tensor::cat(&parts, 0)?;
        let labels = Tensor::new(c.labels.as_slice(), &Device::Cpu)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?.to_scalar::<f32>()? as f64;
        let pred = argmax(&logits)?;
        let mut modality_acc = BTreeMap::new();
        for (m, u) in c.unimodal.iter().enumerate() {
            modality_acc.insert(
                self.model.modalities[m].clone(),
                accuracy(&argmax(u)?, &c.labels),
            );
        }
        Ok(Some(SplitMetrics {
            samples: c.labels.len(),
            loss,
            acc: accuracy(&pred, &c.labels),
            macro_f1: macro_f1(&pred, &c.labels),
            modality_acc,
        }))
    }

    /// The epoch context and the method, borrowed together.
    fn epoch_ctx(&mut self, epoch: usize) -> (EpochCtx<'_>, &mut dyn BalanceMethod) {
        let ctx = EpochCtx {
            epoch,
            epochs: self.config.epochs,
            seed: self.config.seed,
            batch_size: self.config.batch_size,
            model: &self.model,
            dataset: &self.dataset,
            out_dir: Some(&self.run_dir),
        };
        (ctx, self.method.as_mut())
    }

    /// Trains one epoch (0-based `epoch`) and evaluates; returns its record.
    pub fn run_epoch(&mut self, epoch: usize, events: &mut dyn Events) -> Result<EpochRecord> {
        let cfg = &self.config;
        let lr = cfg.schedule.lr(cfg.optimizer.lr(), epoch, cfg.epochs);
        self.optimizer.set_learning_rate(lr);
        let (seed, bs, prefetch) = (cfg.seed, cfg.batch_size, cfg.prefetch);
        let plan = {
            let (ctx, method) = self.epoch_ctx(epoch);
            method.epoch_plan(&ctx)?
        };
        let mut rows = plan.unwrap_or_else(|| self.dataset.rows(Split::Train));
        if rows.is_empty() {
            bail!("epoch {}: no training rows", epoch + 1);
        }
        shuffle_rows(&mut rows, seed, epoch as u64);
        events.epoch_start(epoch, rows.len().div_ceil(bs));
        let started = Instant::now();
        let (mut loss_sum, mut labels, mut fused) = (0.0, Vec::new(), Vec::new());
        let mut uni: Vec<Vec<u32>> = vec![Vec::new(); self.model.num_modalities()];
        let mut score_sum = vec![0.0; self.model.num_modalities()];
        let n_rows = rows.len();
        let n_batches = n_rows.div_ceil(bs);
        for (batch_index, batch) in batches(
            self.dataset.clone(),
            rows,
            bs,
            Some((seed, epoch as u64)),
            prefetch,
        )
        .enumerate()
        {
            let batch = batch?;
            let step = self.train_step(&batch, epoch, batch_index, n_batches)?;
            let loss = step.loss;
            let b = batch.rows.len();
            loss_sum += loss * b as f64;
            labels.extend(batch.labels.to_vec1::<u32>()?);
            fused.extend(step.fused);
            for (acc, p) in uni.iter_mut().zip(step.unimodal) {
                acc.extend(p);
            }
            for (acc, s) in score_sum.iter_mut().zip(&step.scores) {
                *acc += s;
            }
            events.batch_end(loss);
        }
        let train_seconds = started.elapsed().as_secs_f64();
        {
            let (ctx, method) = self.epoch_ctx(epoch);
            method.on_epoch_end(&ctx)?;
        }
        let train = SplitMetrics {
            samples: n_rows,
            loss: loss_sum / n_rows as f64,
            acc: accuracy(&fused, &labels),
            macro_f1: macro_f1(&fused, &labels),
            modality_acc: self
                .model
                .modalities
                .iter()
                .zip(&uni)
                .map(|(m, p)| (m.clone(), accuracy(p, &labels)))
                .collect(),
        };
        let contributions = if self.config.track_contributions {
            let route = if self.model.has_mixer() {
                mmbal_valuation::MaskRoute::Inputs
            } else {
                mmbal_valuation::MaskRoute::Features
            };
            // A diagnostic: its (masked) forwards must not move state that training goes on
            // with, such as MMTM running means fed by every forward.
            let v = self.model.keeping_buffers(|| {
                mmbal_valuation::valuate(
                    &self.model,
                    &self.dataset,
                    &self.dataset.rows(Split::Train),
                    self.config.batch_size,
                    route,
                    mmbal_valuation::Benefit::SizeIfCorrect,
                    None,
                )
            })?;
            self.model
                .modalities
                .iter()
                .cloned()
                .zip(v.means())
                .collect()
        } else {
            BTreeMap::new()
        };
        let val = self.evaluate(Split::Val)?;
        let test = if self.config.eval_test {
            self.evaluate(Split::Test)?
        } else {
            None
        };
        Ok(EpochRecord {
            epoch: epoch + 1,
            lr,
            train,
            val,
            test,
            method: self.method.diagnostics().into_iter().collect(),
            score_ratio: self
                .model
                .modalities
                .iter()
                .cloned()
                .zip(mmbal_methods::ratios_against_others(&score_sum))
                .collect(),
            contributions,
            train_seconds,
            train_samples_per_s: n_rows as f64 / train_seconds.max(1e-9),
        })
    }

    /// Trains the remaining epochs, writing `metrics.jsonl`, `last.safetensors`,
    /// `best.safetensors` (best val accuracy), `summary.json`, SVG plots, the resolved `config.toml`
    /// and, when the data root has one, the preprocessing `recipe.toml` as `data-recipe.toml`
    /// into the run folder.
    ///
    /// A fresh run refuses a folder that already holds results unless [`Trainer::set_overwrite`]
    /// allowed it. After every epoch the folder is consistent: `last.safetensors`, then
    /// `best.safetensors` when the epoch is selected (both written whole through a temporary
    /// file), then `summary.json` naming exactly those epochs.
    pub fn run(&mut self, events: &mut dyn Events) -> Result<RunSummary> {
        let dir = self.config.run_dir();
        if self.lock.is_none() {
            bail!(
                "{}: opened to evaluate, not to train (use Trainer::resume)",
                dir.display()
            );
        }
        let cannot_write = |p: &Path| format!("{}: cannot write", p.display());
        if self.epochs_done >= self.config.epochs {
            bail!(
                "{}: the run already has {} epochs; ask for more than that to go on",
                dir.display(),
                self.epochs_done
            );
        }
        if self.epochs_done == 0 {
            let earlier: Vec<&str> = RUN_OUTPUTS
                .iter()
                .copied()
                .filter(|f| dir.join(f).exists())
                .collect();
            if !earlier.is_empty() && !self.overwrite {
                bail!(
                    "{}: holds the results of an earlier run ({}); resume it with --resume \
                     {}, choose another run name, or replace it with --overwrite",
                    dir.display(),
                    earlier.join(", "),
                    dir.join("last.safetensors").display()
                );
            }
            for f in earlier {
                let p = dir.join(f);
                let removed = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                removed.with_context(|| format!("{}: cannot remove", p.display()))?;
            }
        }
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, self.config.to_toml())
            .with_context(|| cannot_write(&config_path))?;
        // How the data was made, when `mmbal preprocess` recorded it: the run names its recipe.
        if let Ok((_, root)) = self.config.dataset_location() {
            let made = root.join("recipe.toml");
            if made.is_file() {
                std::fs::copy(&made, dir.join("data-recipe.toml"))
                    .with_context(|| format!("{}: cannot copy into the run", made.display()))?;
            }
        }
        let log_path = dir.join("metrics.jsonl");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.epochs_done > 0)
            .truncate(self.epochs_done == 0)
            .open(&log_path)
            .with_context(|| format!("{}: cannot open log", log_path.display()))?;
        if self.epochs_done > 0 {
            self.restore_records(&log_path)?;
        }
        for epoch in self.epochs_done..self.config.epochs {
            let record = self
                .run_epoch(epoch, events)
                .with_context(|| match self.epochs_done {
                    0 => format!(
                        "{}: stopped; no epoch was finished, nothing was saved",
                        dir.display()
                    ),
                    n => format!(
                        "{}: stopped; the run can go on from its last good checkpoint (epoch {n}): \
                         --resume {}",
                        dir.display(),
                        dir.join("last.safetensors").display()
                    ),
                })?;
            writeln!(log, "{}", serde_json::to_string(&record)?)
                .and_then(|_| log.flush())
                .with_context(|| cannot_write(&log_path))?;
            self.epochs_done = epoch + 1;
            self.save_checkpoint(&dir.join("last.safetensors"))?;
            let selected = self.config.select.prefers(&record, self.best.as_ref());
            if selected {
                let (tmp, best) = (
                    dir.join("best.safetensors.tmp"),
                    dir.join("best.safetensors"),
                );
                std::fs::copy(dir.join("last.safetensors"), &tmp)
                    .and_then(|_| std::fs::rename(&tmp, &best))
                    .with_context(|| cannot_write(&best))?;
                self.best = Some(record.clone());
            }
            self.last = Some(record.clone());
            self.write_summary(&dir)?;
            events.epoch_end(&record);
        }
        let summary = self.write_summary(&dir)?;
        crate::plots::plot_run(&dir, &self.model.modalities)?;
        Ok(summary)
    }

    /// `summary.json`, written whole (temporary file, then rename) after the checkpoints it names.
    fn write_summary(&self, dir: &Path) -> Result<RunSummary> {
        let summary = RunSummary {
            method: self.method.name().to_string(),
            dataset: self.dataset.manifest.name.clone(),
            selection: self.config.select,
            best: self.best.clone(),
            last: self.last.clone(),
        };
        let (tmp, path) = (dir.join("summary.json.tmp"), dir.join("summary.json"));
        std::fs::write(&tmp, serde_json::to_string_pretty(&summary)?)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(summary)
    }

    /// On resume: the best and last records so far, from the log (lines after the checkpoint's
    /// epoch are dropped, so a run stopped between log and checkpoint repeats cleanly).
    fn restore_records(&mut self, log_path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(log_path)?;
        let mut kept = Vec::new();
        let n = text.lines().count();
        for (i, line) in text.lines().enumerate() {
            let record: EpochRecord = match serde_json::from_str(line) {
                Ok(r) => r,
                // A run killed while writing its last line: that epoch is trained again.
                Err(_) if i + 1 == n && !text.ends_with('\n') => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("{}:{}: not an epoch record", log_path.display(), i + 1)
                    })
                }
            };
            if record.epoch > self.epochs_done {
                continue;
            }
            kept.push(line.to_string());
            if self.config.select.prefers(&record, self.best.as_ref()) {
                self.best = Some(record.clone());
            }
            self.last = Some(record);
        }
        std::fs::write(
            log_path,
            kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )?;
        Ok(())
    }
}
