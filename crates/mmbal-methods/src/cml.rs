//! CML, calibrating multimodal learning (Ma et al., "Calibrating Multimodal Learning", ICML
//! 2023): the prediction's confidence should not rise when a modality is removed. The authors'
//! code (QingyangZhang/CML at 9d2496e) is for multi-view models only; the audio-visual form here
//! is BalanceBenchmark's `CML_trainer.py` (GeWu-Lab/BalanceBenchmark at 4c1482f): each epoch a
//! random order of the modalities; per batch the modalities are removed one at a time in that
//! order (their features zeroed before the concat head), the cross-entropies of the full and the
//! reduced predictions averaged, plus `lam` times the confidence regulariser. The regulariser is
//! the authors' by default. docs/methods/cml.md has the details.

use crate::{BalanceMethod, EpochCtx, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use mmbal_fusion::{ForwardOut, FusionHead, FusionKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the confidence gain of a reduced prediction is penalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfidenceRule {
    /// The authors' (`CPM_Nets.rank_loss`): `sum_i relu((c_reduced - c_full) s_i)`, `s_i = 0`
    /// where the reduced prediction is right and the full one wrong, else 1.
    Authors,
    /// BalanceBenchmark's `conf_loss`: `max(0, sum_i (c_reduced - c_full))`, no mask.
    Balancebenchmark,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Weight of the confidence regulariser.
    lam: f64,
    /// The regulariser runs in epochs `start_epoch..=end_epoch` (0-based); plain cross-entropy
    /// of the fused logits outside.
    start_epoch: usize,
    end_epoch: usize,
    confidence_rule: ConfidenceRule,
    /// Seed of the epoch's removal order (mixed with the run's seed and the epoch).
    seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lam: 0.1,
            start_epoch: 0,
            end_epoch: 80,
            confidence_rule: ConfidenceRule::Authors,
            seed: 0,
        }
    }
}

/// Maximum softmax probability and its class per row.
fn confidence(logits: &Tensor) -> Result<(Tensor, Tensor)> {
    let p = candle_nn::ops::softmax(logits, D::Minus1)?;
    Ok((p.max(D::Minus1)?, p.argmax(D::Minus1)?))
}

/// The CML loss of one batch for a removal `order` (modalities are removed from its end, as
/// BalanceBenchmark pops them): `(CE(full) + sum_k CE(without the first k removed)) / M + lam *
/// sum_k rule(reduced_k, reduced_{k-1})`, every prediction the concat head on features with the
/// removed modalities zeroed.
pub fn cml_loss(
    head: &FusionHead,
    features: &[Tensor],
    labels: &Tensor,
    order: &[usize],
    lam: f64,
    rule: ConfidenceRule,
) -> Result<Tensor> {
    let m_count = features.len();
    if order.len() != m_count {
        bail!("cml: an order of {} modalities for {m_count}", order.len());
    }
    let mut current: Vec<Tensor> = features.to_vec();
    let mut out_s = head.forward(&current, None)?.fused;
    let mut loss = candle_nn::loss::cross_entropy(&out_s, labels)?;
    let mut reg: Option<Tensor> = None;
    let labels_u = labels.to_dtype(DType::U32)?;
    for &removed in order.iter().rev().take(m_count - 1) {
        current[removed] = current[removed].zeros_like()?;
        let out_p = head.forward(&current, None)?.fused;
        loss = (loss + candle_nn::loss::cross_entropy(&out_p, labels)?)?;
        let (conf_s, pred_s) = confidence(&out_s)?;
        let (conf_p, pred_p) = confidence(&out_p)?;
        let gain = (conf_p - conf_s)?;
        let term = match rule {
            ConfidenceRule::Authors => {
                let right_reduced = pred_p.eq(&labels_u)?;
                let wrong_full = pred_s.ne(&labels_u)?;
                let excused =
                    (right_reduced.to_dtype(DType::F32)? * wrong_full.to_dtype(DType::F32)?)?;
                let sign = (1.0 - excused)?.to_dtype(gain.dtype())?;
                (gain * sign)?.relu()?.sum_all()?
            }
            ConfidenceRule::Balancebenchmark => gain.sum_all()?.relu()?,
        };
        reg = Some(match reg {
            None => term,
            Some(r) => (r + term)?,
        });
        out_s = out_p;
    }
    let loss = (loss / m_count as f64)?;
    Ok(match reg {
        Some(r) => (loss + (r * lam)?)?,
        None => loss,
    })
}

struct Cml {
    opts: Options,
    order: Vec<usize>,
}

impl BalanceMethod for Cml {
    fn name(&self) -> &'static str {
        "cml"
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

    /// The epoch's removal order: a seeded shuffle (BalanceBenchmark's `random.shuffle` per
    /// epoch).
    fn epoch_plan(&mut self, ctx: &EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        let m_count = ctx.model.num_modalities();
        let stream = self.opts.seed
            ^ ctx.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (ctx.epoch as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let mut rng = ChaCha8Rng::seed_from_u64(stream);
        let mut order: Vec<usize> = (0..m_count).collect();
        for i in (1..m_count).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        self.order = order;
        Ok(None)
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        if ctx.epoch < self.opts.start_epoch || ctx.epoch > self.opts.end_epoch {
            return Ok(candle_nn::loss::cross_entropy(
                &out.fused_logits,
                ctx.labels,
            )?);
        }
        if self.order.len() != out.features.len() {
            bail!("cml: epoch_plan was not called before the step");
        }
        // Rows a resampling plan zeroed stay zeroed.
        let features = mmbal_fusion::mask_features(&out.features, ctx.keep)?;
        cml_loss(
            &ctx.model.head,
            &features,
            ctx.labels,
            &self.order,
            self.opts.lam,
            self.opts.confidence_rule,
        )
    }
}

/// Builds `cml` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("cml", options)?;
    if !(opts.lam.is_finite() && opts.lam >= 0.0) {
        bail!("cml: lam = {} must not be negative", opts.lam);
    }
    Ok(Box::new(Cml {
        opts,
        order: Vec::new(),
    }))
}
