//! The [`BalanceMethod`] trait: the few places where balancing methods differ from joint
//! training, each a hook with a joint-training default.

use crate::collect::{collect_outputs, Collected};
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use mmbal_data::{Dataset, Row};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel, ParamGroup};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// How many backward passes and optimizer steps one batch gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepPlan {
    /// One loss, one backward, one step.
    Joint,
    /// One forward; then per modality m (in order) a loss with `StepCtx::turn = Some(m)`, a
    /// backward and a step (MLA's alternating unimodal steps).
    PerModality,
}

/// Where a training step is: 0-based epoch, global step (batches since the start of training),
/// batch within the epoch and the epoch's number of batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepIndex {
    /// 0-based epoch.
    pub epoch: usize,
    /// Batches since the start of training.
    pub step: usize,
    /// Batch within the epoch.
    pub batch: usize,
    /// The epoch's number of batches.
    pub batches: usize,
}

/// What a method sees during a training step.
pub struct StepCtx<'a> {
    /// 0-based epoch and global step (batches since the start of training).
    pub epoch: usize,
    /// Batches since the start of training.
    pub step: usize,
    /// Batch within the epoch, and the epoch's number of batches.
    pub batch: usize,
    /// The epoch's number of batches.
    pub batches: usize,
    /// The model being trained.
    pub model: &'a MultimodalModel,
    /// `(B,)` u32 labels on the model's device.
    pub labels: &'a Tensor,
    /// `(B, M)` 1 = modality kept, 0 = zeroed, on the model's device.
    pub keep: &'a Tensor,
    /// The step's inputs, one per modality, on the model's device: for extra forwards with
    /// modalities masked (`MultimodalModel::mask_inputs`).
    pub inputs: &'a [Tensor],
    /// The batch's rows (sample index in the manifest, zeroed modalities), in batch order:
    /// per-sample state across epochs. Empty when the caller has no rows (a bare
    /// `train_step` on tensors).
    pub rows: &'a [Row],
    /// Under [`StepPlan::PerModality`], the modality this backward belongs to.
    pub turn: Option<usize>,
}

/// The gradients of one backward pass, editable before the optimizer step.
pub struct Grads {
    /// The backward pass's gradients, by parameter.
    pub store: GradStore,
}

impl Grads {
    /// No gradient at all: the optimizer then moves nothing (a skipped batch).
    pub fn none() -> Grads {
        Grads {
            store: GradStore::default(),
        }
    }

    /// The gradient of `v`, if it has one.
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.store.get(v)
    }
    /// Replaces the gradient of `v`.
    pub fn set(&mut self, v: &Var, g: Tensor) {
        self.store.insert(v, g);
    }
    /// Drops a gradient: the optimizer skips the parameter this step.
    pub fn remove(&mut self, v: &Var) {
        self.store.remove(v);
    }
    /// Multiplies the gradients of `vars` by `factor`.
    pub fn scale(&mut self, vars: &[Var], factor: f64) -> Result<()> {
        for v in vars {
            if let Some(g) = self.store.get(v) {
                let g = (g * factor)?;
                self.store.insert(v, g);
            }
        }
        Ok(())
    }
    /// The L2 norm of the gradients of `vars` together (those without a gradient count 0), in
    /// f64.
    pub fn global_norm(&self, vars: &[Var]) -> Result<f64> {
        let mut sq = 0.0;
        for v in vars {
            if let Some(g) = self.store.get(v) {
                sq += g
                    .to_dtype(candle_core::DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// PyTorch's `clip_grad_norm_(vars, max_norm)`: when the global norm exceeds `max_norm`,
    /// every gradient of `vars` is multiplied by `max_norm / (norm + 1e-6)`. Returns the norm
    /// before clipping.
    pub fn clip_norm(&mut self, vars: &[Var], max_norm: f64) -> Result<f64> {
        let norm = self.global_norm(vars)?;
        let factor = max_norm / (norm + 1e-6);
        if factor < 1.0 {
            self.scale(vars, factor)?;
        }
        Ok(norm)
    }

    /// Scales a parameter group of `model`.
    pub fn scale_group(
        &mut self,
        model: &MultimodalModel,
        group: ParamGroup,
        factor: f64,
    ) -> Result<()> {
        self.scale(&model.group(group)?, factor)
    }
}

/// What a method sees at epoch boundaries: the model and the data, with eval-mode passes over any
/// rows.
pub struct EpochCtx<'a> {
    /// 0-based epoch about to start (`epoch_plan`) or just finished (`on_epoch_end`).
    pub epoch: usize,
    /// Epochs the run trains in all.
    pub epochs: usize,
    /// The run's seed.
    pub seed: u64,
    /// The run's batch size (eval-mode passes use it too).
    pub batch_size: usize,
    /// The model being trained.
    pub model: &'a MultimodalModel,
    /// The run's dataset.
    pub dataset: &'a Arc<Dataset>,
    /// The run folder, where methods write per-epoch files; `None` outside a run.
    pub out_dir: Option<&'a Path>,
}

impl EpochCtx<'_> {
    /// Plain training rows (every training sample once, nothing zeroed).
    pub fn train_rows(&self) -> Vec<Row> {
        self.dataset.rows(mmbal_data::Split::Train)
    }
    /// Eval-mode forward over `rows` (deterministic transforms, no gradients), with each row's
    /// zeroed modalities masked at the features.
    pub fn forward_all(&self, rows: &[Row]) -> Result<Collected> {
        collect_outputs(self.model, self.dataset, rows, self.batch_size)
    }
    /// Eval-mode forward over `rows` served with their training transforms, drawn from
    /// `(seed, stream)`; pick a stream no training epoch uses.
    pub fn forward_all_augmented(&self, rows: &[Row], stream: u64) -> Result<Collected> {
        crate::collect::collect_outputs_with(
            self.model,
            self.dataset,
            rows,
            self.batch_size,
            Some((self.seed, stream)),
        )
    }
}

/// What an epoch trains, for methods that train in stages ([`BalanceMethod::phase`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Phase {
    /// Encoders held fixed this epoch: the trainer's forward runs them in eval mode (running
    /// statistics used and left alone, PyTorch's `encoder.eval()`) and their parameters take no
    /// step.
    pub frozen_encoders: Vec<usize>,
    /// The optimizer's state (momentum buffers, Adam's moments and step counts) starts afresh
    /// with this epoch, as a new `torch.optim` object at the start of a stage.
    pub fresh_optimizer: bool,
    /// The 0-based epoch the learning-rate schedule counts from: 0 for the run's schedule; a
    /// phase whose reference builds a new scheduler gives its first epoch (the schedule then
    /// runs as in a run of `epochs - schedule_from` epochs).
    pub schedule_from: usize,
}

/// What a method needs of the model and the data. The trainer checks it before anything is
/// trained (one error naming the method and the config key to change), and the xtasks read it to
/// configure each method's runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// The fusion head the method is defined for; `None`: any.
    pub fusion: Option<FusionKind>,
    /// Fewest modalities.
    pub min_modalities: usize,
    /// Most modalities; `None`: any number.
    pub max_modalities: Option<usize>,
    /// A validation split with rows (the method estimates something on it).
    pub val_split: bool,
}

impl Default for Requirements {
    fn default() -> Self {
        Requirements {
            fusion: None,
            min_modalities: 1,
            max_modalities: None,
            val_split: false,
        }
    }
}

impl Requirements {
    /// Exactly `n` modalities.
    pub fn modalities(mut self, n: usize) -> Self {
        (self.min_modalities, self.max_modalities) = (n, Some(n));
        self
    }

    /// At least `n` modalities.
    pub fn at_least(mut self, n: usize) -> Self {
        self.min_modalities = n;
        self
    }

    /// Whether a run of `method` with this head, these many modalities and these many val rows
    /// can run; the error says what to change.
    pub fn check(
        &self,
        method: &str,
        fusion: FusionKind,
        modalities: usize,
        val_rows: usize,
    ) -> Result<()> {
        if let Some(want) = self.fusion {
            if want != fusion {
                let name = |k: FusionKind| {
                    toml::Value::try_from(k).map_or(format!("{k:?}"), |v| v.to_string())
                };
                anyhow::bail!(
                    "method `{method}` is defined for the {} fusion head: set [model] fusion = {} \
                     (the config has {})",
                    name(want).trim_matches('"'),
                    name(want),
                    name(fusion)
                );
            }
        }
        let max = self.max_modalities.unwrap_or(usize::MAX);
        if modalities < self.min_modalities || modalities > max {
            let wanted = match self.max_modalities {
                Some(m) if m == self.min_modalities => format!("exactly {m}"),
                Some(m) => format!("{} to {m}", self.min_modalities),
                None => format!("at least {}", self.min_modalities),
            };
            anyhow::bail!(
                "method `{method}` needs {wanted} modalities; the dataset has {modalities}"
            );
        }
        if self.val_split && val_rows == 0 {
            anyhow::bail!(
                "method `{method}` estimates on the val split, which is empty: add a val split \
                 to the dataset (or turn off the method's option that needs it)"
            );
        }
        Ok(())
    }
}

/// The logits a method scores (see [`BalanceMethod::predict`]).
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `(B, C)`: the prediction.
    pub fused: Tensor,
    /// Per modality `(B, C)`: each modality's own logits.
    pub unimodal: Vec<Tensor>,
}

impl Prediction {
    /// The head's fused and per-modality logits, as they are.
    pub fn of(out: &ForwardOut) -> Prediction {
        Prediction {
            fused: out.fused_logits.clone(),
            unimodal: out.unimodal_logits.clone(),
        }
    }

    /// A new prediction with the head's per-modality logits (MLA, Greedy: the fused logits
    /// are the method's own combination of them).
    pub fn fused_from(out: &ForwardOut, fused: Tensor) -> Prediction {
        Prediction {
            fused,
            unimodal: out.unimodal_logits.clone(),
        }
    }
}

/// A balancing method. Every hook has the joint-training default, so joint training is this
/// trait with nothing overridden; a method overrides only the places where it differs.
pub trait BalanceMethod: Send {
    /// The registry name.
    fn name(&self) -> &'static str;

    /// What the method needs of the model and the data. Default: nothing.
    fn requirements(&self) -> Requirements {
        Requirements::default()
    }

    /// Every option with the value in use (defaults filled in), as the `[method]` table takes
    /// them: saved configs and `mmbal config` show these, and building the method from them
    /// gives the same method. Default: no options.
    fn options(&self) -> toml::Table {
        toml::Table::new()
    }

    /// Changes the model before training (MMTM blocks between stages, other heads).
    fn prepare_model(&mut self, _model: &mut MultimodalModel) -> Result<()> {
        Ok(())
    }

    /// Trainable parameters the method owns (an extra layer, a learned weight), stepped with
    /// the model's by the same optimizer and saved in checkpoints under `method_param.<name>`.
    /// First read after [`BalanceMethod::prepare_model`]; every call must return the same
    /// parameters in the same order. Default: none.
    fn params(&self) -> Vec<(String, Var)> {
        Vec::new()
    }

    /// The next epoch's rows (resampling); `None` = every training sample once, nothing zeroed.
    fn epoch_plan(&mut self, _ctx: &EpochCtx) -> Result<Option<Vec<Row>>> {
        Ok(None)
    }

    /// Learning-rate factors for parameter groups in the next epoch (called after
    /// [`BalanceMethod::epoch_plan`]), as PyTorch parameter groups with their own `lr`: every
    /// parameter of a listed group trains at its factor times the scheduled rate (factors of
    /// groups that share a parameter multiply), the rest at the scheduled rate. Per-modality
    /// rates (MSLR) list `ParamGroup::Encoder(m)`. A factor of 0 stops the updates but, as in
    /// PyTorch, Adam's moments still follow the gradients: to freeze a part, remove its
    /// gradients in [`BalanceMethod::edit_gradients`] instead. Default: none.
    fn lr_scales(&mut self, _ctx: &EpochCtx) -> Result<Vec<(ParamGroup, f64)>> {
        Ok(Vec::new())
    }

    /// What the next epoch trains (called after [`BalanceMethod::lr_scales`]): encoders held fixed,
    /// whether the optimizer starts afresh and where the learning-rate schedule counts from. A
    /// resumed run asks again for the epoch it goes on with, so the answer must follow from the
    /// epoch and the method's checkpointed state. Default: everything trains, the optimizer goes
    /// on.
    fn phase(&mut self, _ctx: &EpochCtx) -> Result<Phase> {
        Ok(Phase::default())
    }

    /// How many backward passes and steps a batch gets.
    fn step_plan(&self) -> StepPlan {
        StepPlan::Joint
    }

    /// The loss to minimise. Default: cross-entropy of the fused logits.
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        Ok(candle_nn::loss::cross_entropy(
            &out.fused_logits,
            ctx.labels,
        )?)
    }

    /// For methods that need the gradients of several losses separately and combine them
    /// (MMPareto): run the backward passes here and return the loss to report (its sum is
    /// logged and must be finite) with the combined gradients, which then go through
    /// `observe_gradients`, `edit_gradients`, the finite check and the optimizer step as usual.
    /// Default `None`: the trainer back-propagates [`BalanceMethod::loss`] once.
    fn step_gradients(
        &mut self,
        _ctx: &StepCtx,
        _out: &ForwardOut,
    ) -> Result<Option<(Tensor, Grads)>> {
        Ok(None)
    }

    /// Reads the gradients after backward, before any edit (learning speeds, gradient norms).
    fn observe_gradients(
        &mut self,
        _ctx: &StepCtx,
        _out: &ForwardOut,
        _grads: &Grads,
    ) -> Result<()> {
        Ok(())
    }

    /// Edits gradients between backward and the optimizer step (modulation, noise, projection);
    /// runs after [`BalanceMethod::observe_gradients`].
    fn edit_gradients(
        &mut self,
        _ctx: &StepCtx,
        _out: &ForwardOut,
        _grads: &mut Grads,
    ) -> Result<()> {
        Ok(())
    }

    /// Checkpoints of models the method reads and never trains (UMT's unimodal teachers), in
    /// the order `set_teachers` receives them. The trainer opens each with its own run's config,
    /// on the student's device, and keeps it out of every optimizer. Default: none.
    fn teachers(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }

    /// The models `teachers` named, once, after `prepare_model` and before any training;
    /// `student` is the model being trained.
    fn set_teachers(
        &mut self,
        _student: &MultimodalModel,
        _teachers: Vec<MultimodalModel>,
    ) -> Result<()> {
        Ok(())
    }

    /// Runs after the training pass of every epoch (valuation, prototypes, blend weights).
    fn on_epoch_end(&mut self, _ctx: &EpochCtx) -> Result<()> {
        Ok(())
    }

    /// After each epoch's validation, with the fused val accuracy and each modality's (in the
    /// model's order): per-modality learning rates or stopping (MSLR, MSES). Runs before the
    /// checkpoint, so what it changes is saved. Default: nothing.
    fn after_validation(
        &mut self,
        _ctx: &EpochCtx,
        _fused_acc: f64,
        _modality_acc: &[f64],
    ) -> Result<()> {
        Ok(())
    }

    /// What the method scores, one batch at a time: the fused prediction (accuracy, loss and
    /// macro-F1 of a split, and training accuracy) and each modality's logits (the per-modality
    /// accuracies in the log), from a forward pass in which `out.features` are the pooled
    /// features and the head's weights are `model.head`'s. The trainer calls it per evaluation
    /// batch of `batch_size` rows, as the references' loaders serve them, so a method whose
    /// prediction depends on the batch, such as MLA's official dynamic fusion, sees the same
    /// batches. Default: the head's fused and per-modality logits.
    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        Ok(Prediction::of(out))
    }

    /// Named numbers logged every epoch.
    fn diagnostics(&self) -> Vec<(String, f64)> {
        Vec::new()
    }

    /// State to keep in checkpoints (running estimates, prototypes), restored on resume.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }
    /// Restores what `state` saved, on resume.
    fn load_state(&mut self, _state: &HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_norm_and_clip_follow_pytorch() {
        let dev = candle_core::Device::Cpu;
        let (a, b) = (
            Var::new(&[1.0f32, 1.0], &dev).unwrap(),
            Var::new(&[1.0f32], &dev).unwrap(),
        );
        // Gradients (3, 0) and (4): norm 5.
        let loss = ((a.as_tensor() * &Tensor::new(&[3.0f32, 0.0], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            + (b.as_tensor() * 4.0).unwrap().sum_all().unwrap())
        .unwrap();
        let mut g = Grads {
            store: loss.backward().unwrap(),
        };
        let vars = [a.clone(), b.clone()];
        assert_eq!(g.global_norm(&vars).unwrap(), 5.0);
        // Under the limit: untouched.
        assert_eq!(g.clip_norm(&vars, 10.0).unwrap(), 5.0);
        assert_eq!(g.get(&b).unwrap().to_vec1::<f32>().unwrap(), vec![4.0]);
        // Over it: scaled by max / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
        g.clip_norm(&vars, 1.0).unwrap();
        let k = 1.0 / (5.0 + 1e-6);
        let got = g.get(&b).unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - 4.0 * k).abs() < 1e-6, "{got}");
    }

    #[test]
    fn requirements_name_what_to_change() {
        let greedy = Requirements {
            fusion: Some(FusionKind::Sum),
            val_split: true,
            ..Default::default()
        }
        .modalities(2);
        greedy.check("greedy", FusionKind::Sum, 2, 5).unwrap();
        let err = greedy
            .check("greedy", FusionKind::Concat, 2, 5)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("fusion = \"sum\" (the config has \"concat\")"),
            "{err}"
        );
        let err = greedy.check("greedy", FusionKind::Sum, 3, 5).unwrap_err();
        assert!(err.to_string().contains("exactly 2 modalities"), "{err}");
        let err = greedy.check("greedy", FusionKind::Sum, 2, 0).unwrap_err();
        assert!(err.to_string().contains("val split"), "{err}");
        let ogm = Requirements::default().at_least(2);
        ogm.check("ogm", FusionKind::Film, 5, 0).unwrap();
        let err = ogm.check("ogm", FusionKind::Concat, 1, 0).unwrap_err();
        assert!(err.to_string().contains("at least 2 modalities"), "{err}");
    }
}
