//! LFM (Yang et al., "Facilitating Multimodal Classification via Dynamically Learning Modality
//! Gap", NeurIPS 2024; njustkmg/NeurIPS24-LFM at ad44fa0, `Crema_epoch.py`): the classification
//! loss of the modalities' mean logits and an alignment loss between their predictions (a
//! Jensen-Shannon score), weighted per epoch by the reference's fitted schedule (the fixed-
//! schedule variant; the learnable one needs second-order gradients). docs/methods/lfm.md has
//! the details.

use crate::{BalanceMethod, Prediction, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{Tensor, D};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use serde::{Deserialize, Serialize};

/// `getAlpha_Learnable_Fitted`'s polynomial coefficients (constant term first).
const FITTED_CLS: [f64; 6] = [
    2.04623704e-01,
    3.35472727e-03,
    1.22989557e-04,
    -2.92947416e-06,
    2.23835486e-08,
    -5.39717505e-11,
];
const FITTED_ALIGN: [f64; 6] = [
    7.95376296e-01,
    -3.35472727e-03,
    -1.22989557e-04,
    2.92947416e-06,
    -2.23835486e-08,
    5.39717505e-11,
];

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Fixed `[alpha_cls, alpha_align]` for every epoch instead of the fitted schedule.
    alpha: Option<[f64; 2]>,
}

/// The reference's fitted weights `[alpha_cls, alpha_align]` at a (0-based) epoch: two
/// fifth-degree polynomials in the epoch.
pub fn lfm_alpha(epoch: usize) -> [f64; 2] {
    let e = epoch as f64;
    let poly = |c: &[f64; 6]| {
        c.iter()
            .enumerate()
            .map(|(i, c)| c * e.powi(i as i32))
            .sum()
    };
    [poly(&FITTED_CLS), poly(&FITTED_ALIGN)]
}

/// The reference's `Alignment` for any number of modalities: with `p_m = softmax(logits_m)` and
/// `p = mean_m p_m`, `mean_m KL(p || p_m)` averaged over the batch (`F.kl_div(p_m.log(), p,
/// 'batchmean')`); for two modalities exactly its `0.5 (KL(m || p) + KL(m || q))`.
pub fn lfm_alignment(unimodal: &[Tensor]) -> Result<Tensor> {
    let probs: Vec<Tensor> = unimodal
        .iter()
        .map(|u| candle_nn::ops::softmax(u, D::Minus1))
        .collect::<candle_core::Result<_>>()?;
    let m_count = probs.len() as f64;
    let mut mean = probs[0].clone();
    for p in &probs[1..] {
        mean = (mean + p)?;
    }
    let mean = (mean / m_count)?;
    let b = mean.dim(0)? as f64;
    let log_mean = mean.log()?;
    let mut total: Option<Tensor> = None;
    for p in &probs {
        let kl = ((&mean * (&log_mean - p.log()?)?)?.sum_all()? / b)?;
        total = Some(match total {
            None => kl,
            Some(t) => (t + kl)?,
        });
    }
    match total {
        Some(t) => Ok((t / m_count)?),
        None => bail!("lfm needs at least one modality"),
    }
}

/// The mean of the modalities' logits (the reference's `0.5 o_v + 0.5 o_a`).
fn mean_logits(unimodal: &[Tensor]) -> Result<Tensor> {
    let mut sum = unimodal[0].clone();
    for u in &unimodal[1..] {
        sum = (sum + u)?;
    }
    Ok((sum / unimodal.len() as f64)?)
}

struct Lfm {
    opts: Options,
    last: [f64; 2],
}

impl BalanceMethod for Lfm {
    fn name(&self) -> &'static str {
        "lfm"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Sum),
            ..Default::default()
        }
        .at_least(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// `2 (alpha_cls CE(mean logits) + alpha_align alignment)`.
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let alpha = self.opts.alpha.unwrap_or_else(|| lfm_alpha(ctx.epoch));
        self.last = alpha;
        let cls = candle_nn::loss::cross_entropy(&mean_logits(&out.unimodal_logits)?, ctx.labels)?;
        let align = lfm_alignment(&out.unimodal_logits)?;
        Ok((((cls * alpha[0])? + (align * alpha[1])?)? * 2.0)?)
    }

    /// The mean of the modalities' logits, as the reference's `val`.
    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        Ok(Prediction::fused_from(
            out,
            mean_logits(&out.unimodal_logits)?,
        ))
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        vec![
            ("lfm_alpha_cls".into(), self.last[0]),
            ("lfm_alpha_align".into(), self.last[1]),
        ]
    }
}

/// Builds `lfm` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("lfm", options)?;
    if let Some(a) = opts.alpha {
        if a.iter().any(|x| !x.is_finite() || *x < 0.0) {
            bail!("lfm: alpha = {a:?} must be two non-negative weights");
        }
    }
    Ok(Box::new(Lfm {
        opts,
        last: lfm_alpha(0),
    }))
}
