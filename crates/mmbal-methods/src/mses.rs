//! MSES, modality-specific early stopping (Fujimori, Endo, Kawai, Mochizuki, "Modality-Specific
//! Learning Rate Control for Multimodal Classification", ACPR 2019). No code of the authors was
//! found and only the paper's abstract could be read: a multimodal classifier and one classifier
//! per modality learn together (multitask), each modality's own classifier shows when that
//! branch starts to overfit, and each branch stops early on its own. What the abstract leaves
//! open is chosen here and said in docs/methods/mses.md:
//!
//! * the model is the `blend` head (a concat classifier plus one classifier per modality) and
//!   the loss `CE(fused) + unimodal_weight * sum_m CE(own_m)`;
//! * a branch stops when its own classifier's val accuracy has not beaten its best for
//!   `patience` epochs; from the next epoch on its encoder runs in eval mode and it and its
//!   classifier take no step, while the fused classifier goes on training;
//! * with `restore`, the branch is first put back to its best epoch (encoder parameters,
//!   running statistics and classifier).
//!
//! The stop is decided after an epoch's validation and carried out at the start of the next
//! epoch, so an epoch's val and test accuracies are those of one model, and a resumed run
//! carries it out the same way.

use crate::{BalanceMethod, EpochCtx, Grads, Phase, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use mmbal_fusion::{encoder_path, ForwardOut, FusionKind, MultimodalModel, ParamGroup};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Epochs without a new best val accuracy of a modality's own classifier before its
    /// branch stops.
    patience: usize,
    /// Put a stopping branch back to its best epoch first.
    restore: bool,
    /// The weight of each modality's own cross-entropy beside the fused one.
    unimodal_weight: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            patience: 5,
            restore: true,
            unimodal_weight: 1.0,
        }
    }
}

/// One branch's early-stopping record.
#[derive(Debug, Clone, Default)]
struct Branch {
    /// Best val accuracy of its own classifier so far (-1 before the first validation).
    best: f64,
    /// The 0-based epoch of `best`.
    best_epoch: usize,
    /// The first 0-based epoch in which the branch is frozen, once decided.
    stop_from: Option<usize>,
    /// Whether the restore to the best epoch was carried out.
    restored: bool,
    /// The branch's variables at its best epoch (encoder and own classifier), by name.
    snapshot: Vec<(String, Tensor)>,
}

struct Mses {
    opts: Options,
    branches: Vec<Branch>,
    /// Encoders frozen in the current epoch.
    frozen: Vec<usize>,
}

/// The paths of a branch's variables: its encoder and its own classifier of the blend head.
fn branch_paths(model: &MultimodalModel, m: usize) -> Vec<String> {
    vec![encoder_path(&model.modalities[m]), format!("head.fc.{m}")]
}

/// MSES's training loss: `CE(fused, y) + unimodal_weight * sum_m CE(own_m, y)`.
pub fn mses_loss(
    fused: &Tensor,
    own: &[Tensor],
    labels: &Tensor,
    unimodal_weight: f64,
) -> Result<Tensor> {
    let mut loss = candle_nn::loss::cross_entropy(fused, labels)?;
    for o in own {
        loss = (loss + (candle_nn::loss::cross_entropy(o, labels)? * unimodal_weight)?)?;
    }
    Ok(loss)
}

impl Mses {
    fn branches_for(&mut self, m_count: usize) {
        if self.branches.len() != m_count {
            self.branches = vec![
                Branch {
                    best: -1.0,
                    ..Default::default()
                };
                m_count
            ];
        }
    }
}

impl BalanceMethod for Mses {
    fn name(&self) -> &'static str {
        "mses"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Blend),
            val_split: true,
            ..Default::default()
        }
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// Branches decided to stop freeze from this epoch on, restored first when asked.
    fn phase(&mut self, ctx: &EpochCtx) -> Result<Phase> {
        self.branches_for(ctx.model.num_modalities());
        let mut frozen = Vec::new();
        for (m, b) in self.branches.iter_mut().enumerate() {
            if b.stop_from.is_some_and(|e| e <= ctx.epoch) {
                if self.opts.restore && !b.restored {
                    ctx.model.restore(&b.snapshot)?;
                    b.restored = true;
                }
                frozen.push(m);
            }
        }
        self.frozen = frozen.clone();
        Ok(Phase {
            frozen_encoders: frozen,
            ..Phase::default()
        })
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        mses_loss(
            &out.fused_logits,
            &out.unimodal_logits,
            ctx.labels,
            self.opts.unimodal_weight,
        )
    }

    /// A stopped branch's own classifier takes no step either (its encoder the trainer holds).
    fn edit_gradients(
        &mut self,
        ctx: &StepCtx,
        _out: &ForwardOut,
        grads: &mut Grads,
    ) -> Result<()> {
        for &m in &self.frozen {
            for v in ctx.model.group(ParamGroup::HeadOf(m))? {
                grads.remove(&v);
            }
        }
        Ok(())
    }

    /// A new best keeps a snapshot; `patience` epochs without one stop the branch from the
    /// next epoch.
    fn after_validation(
        &mut self,
        ctx: &EpochCtx,
        _fused: f64,
        modality_acc: &[f64],
    ) -> Result<()> {
        self.branches_for(modality_acc.len());
        for (m, (b, &acc)) in self.branches.iter_mut().zip(modality_acc).enumerate() {
            if b.stop_from.is_some() {
                continue;
            }
            if acc > b.best {
                b.best = acc;
                b.best_epoch = ctx.epoch;
                if self.opts.restore {
                    b.snapshot = ctx.model.snapshot(&branch_paths(ctx.model, m))?;
                }
            } else if ctx.epoch - b.best_epoch >= self.opts.patience {
                b.stop_from = Some(ctx.epoch + 1);
            }
        }
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (m, b) in self.branches.iter().enumerate() {
            out.push((format!("mses_best_{m}"), b.best));
            // 1-based first frozen epoch; 0 while the branch trains.
            out.push((
                format!("mses_stopped_from_{m}"),
                b.stop_from.map_or(0.0, |e| (e + 1) as f64),
            ));
        }
        out
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (m, b) in self.branches.iter().enumerate() {
            let record = [
                b.best,
                b.best_epoch as f64,
                b.stop_from.map_or(-1.0, |e| e as f64),
                if b.restored { 1.0 } else { 0.0 },
            ];
            out.push((format!("branch.{m}"), Tensor::new(&record, &Device::Cpu)?));
            for (name, t) in &b.snapshot {
                out.push((format!("best.{m}.{name}"), t.clone()));
            }
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut branches = Vec::new();
        while let Some(t) = state.get(&format!("branch.{}", branches.len())) {
            let m = branches.len();
            let r = t.to_vec1::<f64>()?;
            if r.len() != 4 {
                bail!(
                    "mses: checkpoint state `branch.{m}` has {} values, not 4",
                    r.len()
                );
            }
            let prefix = format!("best.{m}.");
            let mut snapshot: Vec<(String, Tensor)> = state
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|n| (n.to_string(), t.clone())))
                .collect();
            snapshot.sort_by(|a, b| a.0.cmp(&b.0));
            branches.push(Branch {
                best: r[0],
                best_epoch: r[1] as usize,
                stop_from: (r[2] >= 0.0).then_some(r[2] as usize),
                restored: r[3] != 0.0,
                snapshot,
            });
        }
        if !branches.is_empty() {
            self.branches = branches;
        }
        Ok(())
    }
}

/// Builds `mses` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("mses", options)?;
    if opts.patience == 0 {
        bail!("mses: patience must be at least 1");
    }
    if !(opts.unimodal_weight.is_finite() && opts.unimodal_weight >= 0.0) {
        bail!(
            "mses: unimodal_weight = {} must be finite and not negative",
            opts.unimodal_weight
        );
    }
    Ok(Box::new(Mses {
        opts,
        branches: Vec::new(),
        frozen: Vec::new(),
    }))
}
