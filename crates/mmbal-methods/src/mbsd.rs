//! MBSD, modality-balanced self-distillation (Liu et al., 2023), as BalanceBenchmark implements
//! it (`balancemm/trainer/MBSD_trainer.py`, GeWu-Lab/BalanceBenchmark at 4c1482f; no code of the
//! authors was found): the fused and each modality's cross-entropy, plus, per pair of
//! modalities, a distance between their logits (probabilities with three or more modalities, as
//! its three-modality branch) and a pseudo-KL term between their true-class probabilities, each
//! weighted per sample by the gap of those probabilities where either modality is right.
//! docs/methods/mbsd.md has the details.

use crate::{BalanceMethod, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use mmbal_fusion::{ForwardOut, FusionKind};
use serde::{Deserialize, Serialize};

/// What the pair distance compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MbsdDistance {
    /// As BalanceBenchmark: the logits for two modalities, the probabilities for more.
    Reference,
    /// The logits, for any number.
    Logits,
    /// The probabilities, for any number.
    Probabilities,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// The distillation terms run in epochs `start_epoch..=end_epoch` (0-based).
    start_epoch: usize,
    end_epoch: usize,
    distance: MbsdDistance,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            start_epoch: 0,
            end_epoch: 80,
            distance: MbsdDistance::Reference,
        }
    }
}

/// The distillation terms of BalanceBenchmark's `training_step` for the modalities' logits:
/// per pair `(a, b)`, with `p = softmax`, `w_i = |p_a,i[y] - p_b,i[y]|` where either modality's
/// prediction is right (else 0), `RS_i = mean_c (x_a - x_b)^2` (`x` the logits or the
/// probabilities) and `KL_i = pw (ln pw - ps)` (`F.kl_div(ps, pw)`, `ps`/`pw` the larger/smaller
/// true-class probability); `sum_i w_i (RS_i + KL_i) / B` averaged over the pairs.
pub fn mbsd_terms(unimodal: &[Tensor], labels: &Tensor, on_logits: bool) -> Result<Tensor> {
    let m_count = unimodal.len();
    let labels = labels.to_dtype(DType::U32)?;
    let b = labels.dim(0)? as f64;
    let probs: Vec<Tensor> = unimodal
        .iter()
        .map(|u| candle_nn::ops::softmax(u, D::Minus1))
        .collect::<candle_core::Result<_>>()?;
    let true_p: Vec<Tensor> = probs
        .iter()
        .map(|p| p.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1))
        .collect::<candle_core::Result<_>>()?;
    let right: Vec<Tensor> = probs
        .iter()
        .map(|p| p.argmax(D::Minus1)?.eq(&labels)?.to_dtype(DType::F32))
        .collect::<candle_core::Result<_>>()?;
    let mut total: Option<Tensor> = None;
    let mut pairs = 0usize;
    for a in 0..m_count {
        for c in a + 1..m_count {
            let (pa, pc) = (&true_p[a], &true_p[c]);
            // Python's max(a, b) keeps a on a tie, min(a, b) too.
            let a_ge = pa.ge(pc)?.to_dtype(pa.dtype())?;
            let c_gt = (1.0 - &a_ge)?;
            let ps = ((pa * &a_ge)? + (pc * &c_gt)?)?;
            let pw = ((pc * &a_ge)? + (pa * &c_gt)?)?;
            let either = (&right[a] + &right[c])?
                .clamp(0f32, 1f32)?
                .to_dtype(pa.dtype())?;
            let w = ((&ps - &pw)? * either)?;
            let (xa, xc) = if on_logits {
                (&unimodal[a], &unimodal[c])
            } else {
                (&probs[a], &probs[c])
            };
            let classes = xa.dim(1)? as f64;
            let rs = ((xa - xc)?.sqr()?.sum(1)? / classes)?;
            let kl = (&pw * (pw.log()? - &ps)?)?;
            let term = ((&w * (rs + kl)?)?.sum_all()? / b)?;
            total = Some(match total {
                None => term,
                Some(t) => (t + term)?,
            });
            pairs += 1;
        }
    }
    match total {
        Some(t) => Ok((t / pairs as f64)?),
        None => bail!("mbsd needs at least two modalities"),
    }
}

struct Mbsd {
    opts: Options,
}

impl BalanceMethod for Mbsd {
    fn name(&self) -> &'static str {
        "mbsd"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Concat),
            ..Default::default()
        }
        .at_least(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// `CE(fused) + sum_m CE(unimodal_m)` plus the distillation terms in the window (the fused
    /// cross-entropy alone outside it).
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let mut loss = candle_nn::loss::cross_entropy(&out.fused_logits, ctx.labels)?;
        if ctx.epoch < self.opts.start_epoch || ctx.epoch > self.opts.end_epoch {
            return Ok(loss);
        }
        for u in &out.unimodal_logits {
            loss = (loss + candle_nn::loss::cross_entropy(u, ctx.labels)?)?;
        }
        let on_logits = match self.opts.distance {
            MbsdDistance::Reference => out.unimodal_logits.len() == 2,
            MbsdDistance::Logits => true,
            MbsdDistance::Probabilities => false,
        };
        Ok((loss + mbsd_terms(&out.unimodal_logits, ctx.labels, on_logits)?)?)
    }
}

/// Builds `mbsd` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("mbsd", options)?;
    Ok(Box::new(Mbsd { opts }))
}
