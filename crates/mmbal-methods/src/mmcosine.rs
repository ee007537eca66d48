//! MMCosine (Xu, Wei, Hu et al., ICASSP 2023; GeWu-Lab/MMCosine_ICASSP23 at 00ba0a9,
//! `main_CD.py`): each modality's logits are the cosine similarities between its pooled feature
//! and the concat head's class weights for that modality (both L2-normalised), times a scale
//! `s`; training minimises the cross-entropy of their sum (the head's bias takes no part), plus
//! `lam` times the supplementary material's NCE loss between two modalities' features.
//! docs/methods/mmcosine.md has the details.

use crate::{BalanceMethod, Prediction, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use serde::{Deserialize, Serialize};

/// What evaluation scores as the prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Evaluate {
    /// The head's linear output `W [f_1; ...; f_M] + b`, as the reference's `valid` does
    /// (its bias never trains).
    Linear,
    /// The cosine sum the method trains (the paper's description).
    Cosine,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// The scale `s` of the cosine logits (`--scaling`).
    scaling: f64,
    /// Weight of the NCE loss between the first two modalities' features (`--lam`; 0 = off).
    lam: f64,
    /// NCELoss's temperature.
    nce_temperature: f64,
    /// The prediction at evaluation (`linear`: the reference's `valid`; `cosine`: the paper).
    evaluate: Evaluate,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scaling: 10.0,
            lam: 0.0,
            nce_temperature: 0.1,
            evaluate: Evaluate::Linear,
        }
    }
}

/// PyTorch's `F.normalize(x, dim)`: `x / max(||x||_2, 1e-12)` along `dim`.
fn l2_normalize(x: &Tensor, dim: usize) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(dim)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Each modality's cosine logits `s * normalize(f_m) normalize(W_m)^T`, `(B, C)`, where `W_m` is
/// the concat head's weight columns for modality m (each class's row normalised).
pub fn cosine_logits(model: &MultimodalModel, features: &[Tensor], s: f64) -> Result<Vec<Tensor>> {
    features
        .iter()
        .enumerate()
        .map(|(m, f)| {
            let w = l2_normalize(&model.head.concat_weight_of(m)?, 1)?;
            Ok((l2_normalize(f, 1)?.matmul(&w.t()?)? * s)?)
        })
        .collect()
}

/// The reference's `NCELoss(temperature)(f1, f2, labels)`: features normalised, the softmax over
/// `cos / T` of each row against every column, `-log p` averaged over same-label pairs plus
/// `-log(1 - p)` averaged over different-label pairs, per row, then the mean over rows. A batch
/// in which some sample has no sample of another label gives a non-finite loss, as the
/// reference's does.
pub fn nce_loss(f1: &Tensor, f2: &Tensor, labels: &Tensor, temperature: f64) -> Result<Tensor> {
    const EPS: f64 = 1e-10;
    let (f1, f2) = (l2_normalize(f1, 1)?, l2_normalize(f2, 1)?);
    let l = labels.to_dtype(DType::F32)?;
    let b = l.dim(0)?;
    let diff = l.unsqueeze(1)?.broadcast_sub(&l.unsqueeze(0)?)?;
    // 1 where the labels differ (negatives), as `self_mask`.
    let negative = diff.ne(0f32)?.to_dtype(DType::F32)?;
    let positive = (1.0 - &negative)?;
    let d = f1.dim(1)?;
    let dist = f1
        .unsqueeze(1)?
        .broadcast_as((b, b, d))?
        .broadcast_sub(&f2.unsqueeze(0)?)?
        .sqr()?
        .sum(2)?;
    let cos = (1.0 - (dist * 0.5)?)?;
    let p = candle_nn::ops::softmax(&(cos / temperature)?, D::Minus1)?;
    let log_pos = ((p.clone() + EPS)?.log()?.neg()? * &positive)?;
    let log_neg = (((1.0 - p)? + EPS)?.log()?.neg()? * &negative)?;
    let per_row =
        (log_pos.sum(1)?.div(&positive.sum(1)?)? + log_neg.sum(1)?.div(&negative.sum(1)?)?)?;
    Ok(per_row.mean_all()?)
}

struct MmCosine {
    opts: Options,
}

impl BalanceMethod for MmCosine {
    fn name(&self) -> &'static str {
        "mmcosine"
    }

    fn requirements(&self) -> Requirements {
        let r = Requirements {
            fusion: Some(FusionKind::Concat),
            ..Default::default()
        };
        // NCE pairs the first two modalities' features.
        if self.opts.lam != 0.0 {
            r.modalities(2)
        } else {
            r
        }
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// `CE(sum_m s cos_m, y) + lam NCE(f_1, f_2, y)`; NCE is not computed when `lam` is 0 (the
    /// reference computes it and multiplies by 0, which turns a one-label batch's non-finite NCE
    /// into a non-finite loss).
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let logits = cosine_logits(ctx.model, &out.features, self.opts.scaling)?;
        let mut fused = logits[0].clone();
        for l in &logits[1..] {
            fused = (fused + l)?;
        }
        let mut loss = candle_nn::loss::cross_entropy(&fused, ctx.labels)?;
        if self.opts.lam != 0.0 {
            let nce = nce_loss(
                &out.features[0],
                &out.features[1],
                ctx.labels,
                self.opts.nce_temperature,
            )?;
            loss = (loss + (nce * self.opts.lam)?)?;
        }
        Ok(loss)
    }

    /// Each modality's cosine logits; the prediction is the head's linear output (the
    /// reference's `valid`) or the cosine sum (`evaluate = "cosine"`).
    fn predict(&self, model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        let unimodal = cosine_logits(model, &out.features, self.opts.scaling)?;
        let fused = match self.opts.evaluate {
            Evaluate::Linear => out.fused_logits.clone(),
            Evaluate::Cosine => {
                let mut sum = unimodal[0].clone();
                for l in &unimodal[1..] {
                    sum = (sum + l)?;
                }
                sum
            }
        };
        Ok(Prediction { fused, unimodal })
    }
}

/// Builds `mmcosine` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("mmcosine", options)?;
    if !(opts.scaling.is_finite() && opts.scaling > 0.0) {
        bail!("mmcosine: scaling = {} must be positive", opts.scaling);
    }
    if !(opts.nce_temperature.is_finite() && opts.nce_temperature > 0.0) {
        bail!(
            "mmcosine: nce_temperature = {} must be positive",
            opts.nce_temperature
        );
    }
    if !opts.lam.is_finite() {
        bail!("mmcosine: lam = {} must be finite", opts.lam);
    }
    Ok(Box::new(MmCosine { opts }))
}
