//! The training config (TOML). Every field has a default; the defaults are the embedded run: joint
//! training on the synthetic dataset that mmbal generates itself (6 classes, 240 clips; audio a
//! 40-bin Kaldi fbank of 48 frames, visual 3 grey 32x32 frames; small CNN encoders, concat head,
//! Adam 3e-3, 10 epochs, batch 16). Unknown keys are rejected.

use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;
use anyhow::{bail, Context, Result};
use mmbal_data::recipe::{AudioRecipe, FramesRecipe, FrontEnd};
use mmbal_data::Recipe;
use mmbal_fusion::{BnInit, EncoderSpec, FusionKind, LinearInit, SmallCnnOptions};
use mmbal_transforms::audio::Fbank;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A training run's config: the TOML file's top-level keys and its `[data]`, `[model]`,
/// `[optimizer]`, `[schedule]` and `[method]` tables.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Run name: results go to `<out_dir>/<name>`.
    pub name: String,
    /// Folder that holds the run folders (default `runs`).
    pub out_dir: PathBuf,
    /// Seed of the run (default 0): model initialisation, epoch shuffles, augmentation, and the
    /// draws of the methods that take it (PMR's prototype batches, G-Blending's estimates, the
    /// valuation methods' subsets). OGM-GE's noise and Greedy's MMTM weights have their own
    /// `noise_seed` and `seed` options.
    pub seed: u64,
    /// Number of training epochs (default 10).
    pub epochs: usize,
    /// Rows per batch, in training and evaluation (default 16).
    pub batch_size: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Batches prepared ahead of the trainer.
    pub prefetch: usize,
    /// CPU threads for the model and the loader (the command line sets `RAYON_NUM_THREADS` and
    /// `CANDLE_NUM_THREADS` from this before anything runs); 0 leaves the libraries' defaults
    /// (candle: the physical cores it may use; rayon: every logical CPU).
    pub threads: usize,
    /// Evaluate the test split every epoch (selection always uses val).
    pub eval_test: bool,
    /// After every epoch, value each modality's Shapley contribution on the training split for
    /// any method (the `contributions` of the log; Fig. 2(d) curves): eval transforms, the
    /// size-if-correct benefit, feature masking, or input masking when a mixer joins the
    /// encoders.
    pub track_contributions: bool,
    /// Log OGM's discrepancy ratio for any method every epoch (the `score_ratio` of the log):
    /// each modality's summed true-class probability on the training batches over the mean of
    /// the others'. Costs a softmax per modality per step.
    pub monitor_score_ratio: bool,
    /// After every epoch, fit a linear probe per modality on the frozen features
    /// (`probe::linear_probe` with its defaults and the run's seed) and log its val and test
    /// accuracy (`linear_probe` in the record): how well each encoder has learned as training
    /// goes. Costs a feature pass over every split and 100 epochs of a linear classifier.
    pub track_linear_probe: bool,
    /// Write a TensorBoard event file into the run folder (`tensorboard --logdir runs`): every
    /// number of each epoch's record, at the epoch (1-based) as the step.
    pub tensorboard: bool,
    /// Also every this many training steps (0: never), the step's loss and the method's
    /// diagnostics at the global step.
    pub tensorboard_every_steps: usize,
    /// The arithmetic of training and evaluation (default `fp32`): `fp32` (on CUDA convolutions
    /// may use TF32 tensor cores, PyTorch's default), `fp32-strict` (no TF32), or `bf16` (mixed
    /// precision: f32 master weights, gradients and optimizer; the encoders compute in bf16;
    /// dynamic loss scaling that skips a step with non-finite gradients, with PyTorch
    /// `GradScaler`'s defaults: `mmbal_train::loss_scale`).
    #[serde(skip_serializing_if = "Precision::is_default")]
    pub precision: Precision,
    /// Which epoch's model the run reports as its result: `val` (the best val accuracy, first
    /// on ties; needs a val split) or `last` (the last epoch, for data without a val split).
    /// Test never selects.
    pub select: Selection,
    /// The dataset and the recipe of each modality.
    pub data: DataConfig,
    /// Fusion, head and the encoder of each modality.
    pub model: ModelConfig,
    /// The optimizer and its base learning rate (default Adam, lr 3e-3).
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule over epochs (default constant).
    pub schedule: Schedule,
    /// The balancing method and its options (default `joint`).
    pub method: MethodConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            name: "synthetic-joint".into(),
            out_dir: "runs".into(),
            seed: 0,
            epochs: 10,
            batch_size: 16,
            device: "cpu".into(),
            prefetch: 2,
            threads: 0,
            eval_test: true,
            track_contributions: false,
            monitor_score_ratio: false,
            track_linear_probe: false,
            tensorboard: true,
            tensorboard_every_steps: 0,
            precision: Precision::Fp32,
            select: Selection::Val,
            data: DataConfig::default(),
            model: ModelConfig::default(),
            // Adam: the small synthetic run converges in 10 epochs; the field's SGD recipe is
            // `OptimizerConfig::default()`.
            optimizer: OptimizerConfig::Adam {
                lr: 3e-3,
                weight_decay: 0.0,
                betas: [0.9, 0.999],
                eps: 1e-8,
            },
            schedule: Schedule::Constant,
            method: MethodConfig::default(),
        }
    }
}

/// The `[data]` table: the dataset, its input cache and the recipe of each modality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Folder with `dataset.toml` and its split file; absent = the generated synthetic dataset.
    pub card: Option<PathBuf>,
    /// Where the card's sources resolve. `${VAR}` is replaced from the environment.
    pub root: Option<String>,
    /// Build (once) and use a packed cache of decoded inputs at `<out_dir>/<name>/inputs.mmbc`,
    /// or at this path.
    pub cache: bool,
    /// Where the packed cache goes instead of `<out_dir>/<name>/inputs.mmbc`; used only when
    /// `cache` is true.
    pub cache_path: Option<PathBuf>,
    /// The synthetic dataset used when `card` is absent.
    pub synthetic: SyntheticConfig,
    /// One recipe per modality name.
    pub recipes: BTreeMap<String, Recipe>,
    /// Train on these modalities of the card only, in this order (one modality: unimodal
    /// training, the "Unimodal" rows of the field's tables); absent: every modality of the card.
    /// Recipes and encoders of the card's other modalities may stay in the config.
    pub modalities: Option<Vec<String>>,
    /// Training with missing modalities: per modality name, the share of the training rows
    /// that lose it, drawn anew each epoch from the run's seed and the epoch
    /// (`mmbal_data::drop_modalities`; a row never loses every modality). A lost modality is
    /// zeroed at the features, and at the inputs too when the model mixes modalities inside
    /// its encoders. Evaluation sees every modality unless asked (`mmbal eval --missing`).
    pub missing: BTreeMap<String, f64>,
}

impl Default for DataConfig {
    fn default() -> Self {
        let audio = Recipe::Audio(AudioRecipe {
            sample_rate: 8000,
            offset_seconds: 0.0,
            clip_seconds: None,
            remove_mean: false,
            bin_mean_norm: false,
            front_end: FrontEnd::Fbank(Fbank {
                num_mel_bins: 40,
                ..Fbank::default()
            }),
            frames: 48,
            norm_mean: -6.0,
            norm_std: 4.0,
            word_window: None,
            noise_snr_db: None,
        });
        let visual = Recipe::Frames(FramesRecipe {
            count: 3,
            height: 32,
            width: 32,
            crop: None,
            span: None,
            cache_height: Some(32),
            cache_width: Some(32),
            grey: true,
            flow: false,
            crop_scale: (0.08, 1.0),
            flip: false,
            augment: false,
            word_window: None,
        });
        DataConfig {
            card: None,
            root: None,
            cache: true,
            cache_path: None,
            synthetic: SyntheticConfig::default(),
            recipes: [("audio".to_string(), audio), ("visual".to_string(), visual)].into(),
            modalities: None,
            missing: BTreeMap::new(),
        }
    }
}

/// The `[data.synthetic]` table: the generated dataset used when no card is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Generated here when missing; when absent,
    /// `<out_dir>/synthetic-data-c{classes}-n{per_class}-s{seed}` (`-m3` added for three
    /// modalities).
    pub dir: Option<PathBuf>,
    /// Number of classes, at most 9 (default 6).
    pub classes: usize,
    /// Clips per class (default 40).
    pub per_class: usize,
    /// Seed of the generated data (default 7), apart from the run's seed.
    pub seed: u64,
    /// 2 (audio, visual) or 3 (adds `hum`, which needs its own recipe and encoder).
    pub modalities: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            dir: None,
            classes: 6,
            per_class: 40,
            seed: 7,
            modalities: 2,
        }
    }
}

/// The arithmetic a run trains and evaluates in (see [`TrainConfig::precision`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32; TF32 convolutions allowed on CUDA.
    #[default]
    Fp32,
    /// f32 with TF32 refused on CUDA (the CPU is always strict).
    Fp32Strict,
    /// bf16 mixed precision with dynamic loss scaling.
    Bf16,
}

impl Precision {
    /// Whether this is the default (left out of a written config, so configs written before the
    /// key existed stay the same text).
    pub fn is_default(&self) -> bool {
        *self == Precision::Fp32
    }
}

/// How the reported epoch is chosen (see [`TrainConfig::select`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Best val accuracy, the first such epoch on ties.
    #[default]
    Val,
    /// The last epoch.
    Last,
}

impl Selection {
    /// Whether `record` replaces `best` as the selected epoch.
    pub fn prefers(self, record: &crate::EpochRecord, best: Option<&crate::EpochRecord>) -> bool {
        match (self, best) {
            (_, None) | (Selection::Last, _) => true,
            (Selection::Val, Some(b)) => {
                let acc = |r: &crate::EpochRecord| r.val.as_ref().map(|v| v.acc);
                acc(record) > acc(b)
            }
        }
    }
}

/// The `[model]` table: fusion, head initialisation and one encoder per modality.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// How the modalities' features are fused before the classifier (default `concat`).
    pub fusion: FusionKind,
    /// How the head's linear layers are initialised (default `pytorch`).
    pub head_init: LinearInit,
    /// One encoder per modality name.
    pub encoders: BTreeMap<String, EncoderSpec>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        let small = |c| -> EncoderSpec {
            SmallCnnOptions {
                in_channels: c,
                width: 8,
                bn_init: BnInit::Ones,
            }
            .into()
        };
        ModelConfig {
            fusion: FusionKind::Concat,
            head_init: LinearInit::Pytorch,
            encoders: [
                ("audio".to_string(), small(1)),
                ("visual".to_string(), small(1)),
            ]
            .into(),
        }
    }
}

/// `name` picks a registered method; the other keys are its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodConfig {
    /// The registered method's name (default `joint`).
    #[serde(default = "joint")]
    pub name: String,
    /// The method's options: every other key of the `[method]` table.
    #[serde(flatten)]
    pub options: toml::Table,
}

fn joint() -> String {
    "joint".into()
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig {
            name: joint(),
            options: toml::Table::new(),
        }
    }
}

impl TrainConfig {
    /// Parses TOML; the error names the file and what was wrong.
    pub fn from_toml(text: &str, file: &Path) -> Result<TrainConfig> {
        toml::from_str(text).with_context(|| format!("{}: invalid config", file.display()))
    }

    /// Reads and parses the config file `file`.
    pub fn load(file: &Path) -> Result<TrainConfig> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("{}: cannot read config", file.display()))?;
        TrainConfig::from_toml(&text, file)
    }

    /// This config with `KEY=VALUE` overrides applied (dotted keys, `method.options.alpha=0.5`);
    /// an unknown key is an error naming it.
    pub fn with_overrides(&self, sets: &[String]) -> Result<TrainConfig> {
        let mut table = toml::Table::try_from(self)?;
        for set in sets {
            mmbal_data::overrides::apply(&mut table, set, "the config")?;
        }
        toml::from_str(&toml::to_string(&table)?)
            .with_context(|| format!("config after --set {}", sets.join(" ")))
    }

    /// Completes the `[method]` table: every option of the method with the value in use, as a
    /// run saves it (unknown options are an error here, as in a run).
    pub fn resolve_method_options(&mut self) -> Result<()> {
        let resolved =
            mmbal_methods::build_method(&self.method.name, &self.method.options)?.options();
        self.record_method_options(resolved);
        Ok(())
    }

    /// Takes the method's resolved options (`BalanceMethod::options`) as its `[method]` table.
    /// A method that does not list its options (`options()` left at its default, empty) keeps
    /// the table it was given, so that a resume builds it the same way.
    pub fn record_method_options(&mut self, resolved: toml::Table) {
        if !resolved.is_empty() || self.method.options.is_empty() {
            self.method.options = resolved;
        }
    }

    /// The config as TOML text (as a run saves it in `config.toml` and its checkpoints).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config always serialises")
    }

    /// The dataset card folder and data root. Without a card, the synthetic dataset's folder,
    /// generated first when missing.
    pub fn dataset_location(&self) -> Result<(PathBuf, PathBuf)> {
        if let Some(card) = &self.data.card {
            let root = self
                .data
                .root
                .as_deref()
                .context("[data] root is required when [data] card is set")?;
            return Ok((card.clone(), PathBuf::from(expand_env(root)?)));
        }
        let s = &self.data.synthetic;
        let dir = s.dir.clone().unwrap_or_else(|| {
            let m = if s.modalities == 2 {
                String::new()
            } else {
                format!("-m{}", s.modalities)
            };
            self.out_dir.join(format!(
                "synthetic-data-c{}-n{}-s{}{m}",
                s.classes, s.per_class, s.seed
            ))
        });
        if !dir.join("dataset.toml").exists() {
            mmbal_data::datasets::generate_synthetic(
                &dir,
                s.classes,
                s.per_class,
                s.seed,
                s.modalities,
            )
            .with_context(|| format!("{}: generating the synthetic dataset", dir.display()))?;
        }
        Ok((dir.clone(), dir))
    }

    /// `<out_dir>/<name>`.
    pub fn run_dir(&self) -> PathBuf {
        self.out_dir.join(&self.name)
    }

    /// The recipe and encoder of each of `modalities`, in that order; every modality needs
    /// both, and no other names are allowed.
    /// The recipes and encoders of the `used` modalities, in order; every recipe and encoder of
    /// the config must name one of the `card`'s modalities (a misspelt name is an error).
    pub fn per_modality(
        &self,
        card: &[String],
        used: &[String],
    ) -> Result<(Vec<Recipe>, Vec<EncoderSpec>)> {
        let modalities = card;
        for (what, keys) in [
            ("data.recipes", self.data.recipes.keys().collect::<Vec<_>>()),
            ("model.encoders", self.model.encoders.keys().collect()),
        ] {
            for k in keys {
                if !modalities.contains(k) {
                    bail!(
                        "[{what}.{k}]: the dataset has no modality `{k}` (it has {modalities:?})"
                    );
                }
            }
        }
        let mut recipes = Vec::new();
        let mut encoders = Vec::new();
        for m in used {
            let recipe =
                self.data.recipes.get(m).cloned().with_context(|| {
                    format!("no recipe for modality `{m}`: add [data.recipes.{m}]")
                })?;
            let encoder = self.model.encoders.get(m).cloned().with_context(|| {
                format!("no encoder for modality `{m}`: add [model.encoders.{m}]")
            })?;
            check_encoder(m, &recipe, &encoder)?;
            recipes.push(recipe);
            encoders.push(encoder);
        }
        Ok((recipes, encoders))
    }

    /// Values that would otherwise fail late (a division by zero after loading the data), loop
    /// forever or write outside `out_dir`: each is an error naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            bail!("batch_size = 0: a batch needs at least one sample");
        }
        if self.epochs == 0 {
            bail!("epochs = 0: nothing would be trained (and no checkpoint written); ask for at least 1");
        }
        check_run_name(&self.name)?;
        let lr = self.optimizer.lr();
        if !(lr.is_finite() && lr > 0.0) {
            bail!("[optimizer] lr = {lr}: the learning rate must be a positive number");
        }
        Ok(())
    }
}

/// A run name is one folder name inside `out_dir`: not empty, no path separator, not `.`/`..`.
pub fn check_run_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains(['/', '\\'])
        || Path::new(name).is_absolute()
    {
        bail!(
            "run name `{name}`: a run name is one folder name inside out_dir (not empty, no `/` or \
             `\\`, not `.` or `..`)"
        );
    }
    Ok(())
}

/// The encoder of modality `m` must take what its recipe makes and have a positive width.
fn check_encoder(m: &str, recipe: &Recipe, encoder: &EncoderSpec) -> Result<()> {
    let shape = recipe.input_shape();
    // (C, H, W) for audio and images, (T, C, H, W) for frames.
    let channels = if shape.len() == 4 { shape[1] } else { shape[0] };
    let in_channels = encoder
        .check()
        .with_context(|| format!("[model.encoders.{m}]"))?;
    if channels != in_channels {
        let kind = match recipe {
            Recipe::Audio(_) => "an audio spectrogram",
            Recipe::Frames(f) if f.flow => "optical flow (u, v)",
            Recipe::Frames(f) if f.grey => "grey frames",
            Recipe::Frames(_) => "RGB frames",
            Recipe::Image(_) => "a grey image",
        };
        bail!(
            "modality `{m}`: [data.recipes.{m}] makes {kind} with {channels} channel(s), but \
             [model.encoders.{m}] has in_channels = {in_channels}"
        );
    }
    Ok(())
}

/// Replaces `${VAR}` with the environment variable's value; an unset variable is an error.
pub fn expand_env(s: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            bail!("`{s}`: unclosed ${{");
        };
        let var = &rest[start + 2..start + end];
        let value = std::env::var(var)
            .with_context(|| format!("`{s}`: environment variable {var} is not set"))?;
        out.push_str(&value);
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
