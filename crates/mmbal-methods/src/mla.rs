//! MLA, multimodal learning with alternating unimodal adaptation (Zhang et al., CVPR 2024): one
//! classifier shared by all modalities, one backward and optimizer step per modality per batch,
//! the head's weight gradient projected away from directions earlier modalities used, and
//! entropy-weighted fusion at inference. docs/methods/mla.md has the details.

use crate::{BalanceMethod, Grads, Prediction, Requirements, StepCtx, StepPlan};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Inference {
    /// Fixed weights per modality (`fixed_weights`).
    Fixed,
    /// The official code's `--dynamic` fusion (`calculate_gating_weights`): one weight per
    /// modality for a whole evaluation batch, softmax over modalities of minus the entropy of
    /// the batch's softmax taken over the batch axis (`calculate_entropy`, `dim=0`).
    Dynamic,
    /// Per sample, softmax over modalities of minus the entropy of each modality's prediction
    /// (the paper's description).
    DynamicPerSample,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    inference: Inference,
    /// Weights of `inference = "fixed"`, one per modality (default 0.55 / 0.45 for two, equal
    /// otherwise).
    fixed_weights: Option<Vec<f64>>,
    /// Project the head gradient (the reference code never does, by a parameter-name mismatch).
    project: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            inference: Inference::Dynamic,
            fixed_weights: None,
            project: true,
        }
    }
}

pub struct Mla {
    opts: Options,
    /// The projector `(D, D)`, identity at the start, kept for the whole run.
    p: Option<Tensor>,
    head_updates: usize,
    modalities: usize,
}

/// One projector update with the batch-mean feature `r` `(1, D)`:
/// `k = P r^T`, `P <- P - k k^T / (alpha + r k)`, `P <- P / ||P||_F`.
pub fn update_projector(p: &Tensor, r: &Tensor, alpha: f64) -> candle_core::Result<Tensor> {
    let k = p.matmul(&r.t()?)?; // (D, 1)
    let denom = (r.matmul(&k)? + alpha)?; // (1, 1)
    let p = (p - k.matmul(&k.t()?)?.broadcast_div(&denom)?)?;
    let norm = p.sqr()?.sum_all()?.sqrt()?;
    p.broadcast_div(&norm)
}

/// The official batch-level fusion weights: for each modality `H_m = -sum p log p` with
/// `p = softmax(logits_m)` over the batch axis, summed over the whole `(B, C)` batch, then a
/// softmax over modalities of `-H_m`. `unimodal[m]` is `(B, C)`; returns `(B, M)`, the same
/// weights in every row.
pub fn batch_entropy_weights(unimodal: &[Tensor]) -> candle_core::Result<Tensor> {
    let neg_entropy: Vec<Tensor> = unimodal
        .iter()
        .map(|l| {
            let logp = candle_nn::ops::log_softmax(l, 0)?;
            (logp.exp()? * &logp)?.sum_all()?.reshape((1, 1))
        })
        .collect::<candle_core::Result<_>>()?;
    let w = candle_nn::ops::softmax(&Tensor::cat(&neg_entropy, 1)?, 1)?;
    let b = unimodal[0].dim(0)?;
    w.broadcast_as((b, unimodal.len()))?.contiguous()
}

/// Per-sample fusion weights: softmax over modalities of minus each modality's prediction
/// entropy. `unimodal[m]` is `(B, C)`; returns `(B, M)`.
pub fn entropy_weights(unimodal: &[Tensor]) -> candle_core::Result<Tensor> {
    let neg_entropy: Vec<Tensor> = unimodal
        .iter()
        .map(|l| {
            let logp = candle_nn::ops::log_softmax(l, 1)?;
            (logp.exp()? * &logp)?.sum_keepdim(1)
        })
        .collect::<candle_core::Result<_>>()?;
    candle_nn::ops::softmax(&Tensor::cat(&neg_entropy, 1)?, 1)
}

impl Mla {
    fn fixed_weights(&self) -> Vec<f64> {
        match &self.opts.fixed_weights {
            Some(w) => w.clone(),
            None if self.modalities == 2 => vec![0.55, 0.45],
            None => vec![1.0 / self.modalities.max(1) as f64; self.modalities],
        }
    }

    /// The fused prediction: the modalities' logits weighted as `inference` says.
    pub fn fuse(&self, unimodal: &[Tensor]) -> Result<Tensor> {
        let weights = match self.opts.inference {
            Inference::Dynamic => batch_entropy_weights(unimodal)?,
            Inference::DynamicPerSample => entropy_weights(unimodal)?,
            Inference::Fixed => {
                let w: Vec<f32> = self.fixed_weights().iter().map(|&x| x as f32).collect();
                let b = unimodal[0].dim(0)?;
                Tensor::new(w.as_slice(), unimodal[0].device())?
                    .reshape((1, w.len()))?
                    .broadcast_as((b, w.len()))?
                    .contiguous()?
            }
        };
        let mut out = unimodal[0].broadcast_mul(&weights.narrow(1, 0, 1)?)?;
        for (m, u) in unimodal.iter().enumerate().skip(1) {
            out = (out + u.broadcast_mul(&weights.narrow(1, m, 1)?)?)?;
        }
        Ok(out)
    }
}

impl BalanceMethod for Mla {
    fn name(&self) -> &'static str {
        "mla"
    }

    /// One head shared by all modalities.
    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Shared),
            ..Default::default()
        }
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn prepare_model(&mut self, model: &mut MultimodalModel) -> Result<()> {
        self.modalities = model.num_modalities();
        if let Some(w) = &self.opts.fixed_weights {
            if w.len() != self.modalities {
                bail!(
                    "mla: {} fixed_weights for {} modalities",
                    w.len(),
                    self.modalities
                );
            }
        }
        Ok(())
    }

    fn step_plan(&self) -> StepPlan {
        StepPlan::PerModality
    }

    /// Cross-entropy of the turn's modality through the shared head as it is now (the head
    /// already moved in this batch's earlier turns).
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let m = ctx.turn.context("mla runs one turn per modality")?;
        let logits = ctx
            .model
            .head
            .forward(&out.features, None)?
            .unimodal
            .swap_remove(m);
        Ok(candle_nn::loss::cross_entropy(&logits, ctx.labels)?)
    }

    fn edit_gradients(&mut self, ctx: &StepCtx, out: &ForwardOut, grads: &mut Grads) -> Result<()> {
        let m = ctx.turn.context("mla runs one turn per modality")?;
        let w = Var::from_tensor(ctx.model.head.shared_classifier()?.weight())?;
        let first = self.head_updates == 0;
        self.head_updates += 1;
        if !self.opts.project || first {
            return Ok(());
        }
        let d = w.dim(1)?;
        let p = match self.p.take() {
            Some(p) => p.to_device(w.device())?,
            None => Tensor::eye(d, DType::F32, w.device())?,
        };
        let r = out.features[m]
            .detach()
            .mean_keepdim(0)?
            .to_dtype(DType::F32)?;
        let alpha = 0.1f64.powf(1.0 + ctx.batch as f64 / ctx.batches.max(1) as f64);
        let p = update_projector(&p, &r, alpha)?;
        if let Some(g) = grads.get(&w).cloned() {
            grads.set(&w, g.matmul(&p.t()?)?);
        }
        self.p = Some(p);
        Ok(())
    }

    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        Ok(Prediction::fused_from(
            out,
            self.fuse(&out.unimodal_logits)?,
        ))
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut s = vec![(
            "head_updates".to_string(),
            Tensor::new(&[self.head_updates as f32], &candle_core::Device::Cpu)?,
        )];
        if let Some(p) = &self.p {
            s.push(("projector".into(), p.clone()));
        }
        Ok(s)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = state.get("head_updates") {
            self.head_updates = t.flatten_all()?.to_vec1::<f32>()?[0] as usize;
        }
        self.p = state.get("projector").cloned();
        Ok(())
    }
}

/// Options: `inference` (`dynamic` | `dynamic-per-sample` | `fixed`), `fixed_weights`,
/// `project` (true).
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    Ok(Box::new(Mla {
        opts: crate::parse_options("mla", options)?,
        p: None,
        head_updates: 0,
        modalities: 0,
    }))
}
