//! DI-MML, detached and interactive multimodal learning (Fan, Xu, Wang, Liu, Guo, "Detached and
//! Interactive Multimodal Learning", ACM MM 2024), after the authors' code
//! (fanyunfeng-bit/DI-MML at 83b9b7a: `main_CFT.py` for the first stage, `main_CFT_stage2.py`
//! for the second, `loss/contrast_loss.py`, the settings of `run.sh`). Two modalities, the
//! `blend` head (each modality's own classifier, and the concat classifier fused in stage 2):
//!
//! * stage 1 (`stage1_epochs`): no fused forward; each modality trains on its own classifier's
//!   cross-entropy plus `align_weight` times that of a linear classifier shared by both
//!   modalities (owned by the method), and from epoch `contrast_start` on a contrastive term:
//!   at that epoch's start each feature dimension is scored by how often the nearest class
//!   centroid along it (train set, eval mode) is the sample's class, the dimensions above the
//!   mean score of one modality and not the other's are picked once, and each modality's
//!   features on the other's dimensions are pulled toward the other modality's (detached) by an
//!   InfoNCE over the batch at temperature `contrast_temperature`;
//! * stage 2 (the remaining epochs): the encoders are frozen in eval mode, a fresh optimizer
//!   trains the concat classifier alone on its cross-entropy, with the learning-rate schedule
//!   counted from the stage's start (the reference builds a new optimizer and scheduler).
//!
//! The prediction is the per-sample confidence-weighted sum of the classifiers' logits: weights
//! the softmax over classifiers of each one's top softmax probability, at `fusion_temperature`,
//! over both own classifiers and, in stage 2, the concat one (in stage 1 it is untrained, and the
//! reference predicts nothing fused there). docs/methods/di-mml.md has the details.

use crate::{BalanceMethod, EpochCtx, Phase, Prediction, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::Linear;
use mmbal_encoders::ModelVars;
use mmbal_fusion::{linear, ForwardOut, FusionKind, LinearInit, MultimodalModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Epochs of the detached stage (the reference's `main_CFT.py --epochs`).
    stage1_epochs: usize,
    /// Weight of the shared classifier's cross-entropies (the reference's `weight`).
    align_weight: f64,
    /// 0-based epoch from which the contrastive term runs; its dimensions are picked as it
    /// starts (the reference: 20).
    contrast_start: usize,
    /// Temperature of the contrastive term (`run.sh`: 50).
    contrast_temperature: f64,
    /// Temperature of the confidence weighting of the prediction (`main_CFT_stage2.py`'s
    /// `temperature`, `run.sh`: 1).
    fusion_temperature: f64,
    /// Seed of the shared classifier's initial weights.
    seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            stage1_epochs: 150,
            align_weight: 1.0,
            contrast_start: 20,
            contrast_temperature: 50.0,
            fusion_temperature: 1.0,
            seed: 0,
        }
    }
}

/// The dimensions of `features` `(N, D)` along which the nearest class centroid (the class
/// means of the rows) is the row's class more often than on average over all dimensions, in
/// increasing order (the reference's `get_indices`, one modality). Ties between centroids go to
/// the lower class; a class without rows has no centroid.
pub fn dimml_top_dimensions(
    features: &Tensor,
    labels: &[u32],
    classes: usize,
) -> Result<Vec<usize>> {
    let x = features.to_dtype(DType::F64)?.to_vec2::<f64>()?;
    if x.len() != labels.len() {
        bail!("di-mml: {} feature rows, {} labels", x.len(), labels.len());
    }
    let d = x.first().map_or(0, |r| r.len());
    let mut sum = vec![vec![0.0; d]; classes];
    let mut count = vec![0usize; classes];
    for (row, &y) in x.iter().zip(labels) {
        let y = y as usize;
        if y >= classes {
            bail!("di-mml: label {y} for {classes} classes");
        }
        count[y] += 1;
        for (s, v) in sum[y].iter_mut().zip(row) {
            *s += v;
        }
    }
    let centroids: Vec<(usize, Vec<f64>)> = (0..classes)
        .filter(|&c| count[c] > 0)
        .map(|c| (c, sum[c].iter().map(|s| s / count[c] as f64).collect()))
        .collect();
    let mut hits = vec![0usize; d];
    for (row, &y) in x.iter().zip(labels) {
        for (j, h) in hits.iter_mut().enumerate() {
            let mut best = (f64::INFINITY, usize::MAX);
            for (c, cent) in &centroids {
                let dist = (row[j] - cent[j]).abs();
                if dist < best.0 {
                    best = (dist, *c);
                }
            }
            if best.1 == y as usize {
                *h += 1;
            }
        }
    }
    let n = x.len().max(1) as f64;
    let score: Vec<f64> = hits.iter().map(|&h| h as f64 / n).collect();
    let mean = score.iter().sum::<f64>() / d.max(1) as f64;
    Ok((0..d).filter(|&j| score[j] > mean).collect())
}

/// The contrastive term: with `a_only` the dimensions picked for the first modality and not the
/// second and `b_only` the reverse, the batch mean of `-log softmax_j(b_i[A] . a_j[A] / t)_i`
/// plus that of `-log softmax_j(a_i[B] . b_j[B] / t)_i`, the targets (`a[A]`, `b[B]`) detached
/// (`SupConLoss`). An empty set contributes `log(batch)`, without gradient.
pub fn dimml_contrast(
    a: &Tensor,
    b: &Tensor,
    a_only: &[usize],
    b_only: &[usize],
    temperature: f64,
) -> Result<Tensor> {
    let n = a.dim(0)?;
    let targets = Tensor::arange(0u32, n as u32, a.device())?;
    let term = |pulled: &Tensor, target: &Tensor, dims: &[usize]| -> Result<Tensor> {
        if dims.is_empty() {
            return Ok(Tensor::new((n as f32).ln(), a.device())?);
        }
        let idx: Vec<u32> = dims.iter().map(|&j| j as u32).collect();
        let idx = Tensor::new(idx.as_slice(), a.device())?;
        let p = pulled.index_select(&idx, 1)?;
        let t = target.index_select(&idx, 1)?.detach();
        let logits = (p.matmul(&t.t()?)? / temperature)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    };
    Ok((term(b, a, a_only)? + term(a, b, b_only)?)?)
}

/// The confidence-weighted prediction: per sample, the weights are the softmax over classifiers
/// of each one's top softmax probability divided by `temperature`, and the prediction the
/// weighted sum of their logits.
pub fn dimml_fuse(logits: &[Tensor], temperature: f64) -> Result<Tensor> {
    if logits.is_empty() {
        bail!("di-mml: no classifier to fuse");
    }
    let top: Vec<Tensor> = logits
        .iter()
        .map(|l| candle_nn::ops::softmax(l, D::Minus1)?.max_keepdim(D::Minus1))
        .collect::<candle_core::Result<_>>()?;
    let w = candle_nn::ops::softmax(&(Tensor::cat(&top, 1)? / temperature)?, D::Minus1)?;
    let mut out = logits[0].broadcast_mul(&w.narrow(1, 0, 1)?)?;
    for (k, l) in logits.iter().enumerate().skip(1) {
        out = (out + l.broadcast_mul(&w.narrow(1, k, 1)?)?)?;
    }
    Ok(out)
}

struct DiMml {
    opts: Options,
    vars: ModelVars,
    shared: Option<Linear>,
    /// The dimensions picked at `contrast_start`: (first modality's only, second's only).
    dims: Option<(Vec<usize>, Vec<usize>)>,
    /// The current epoch is in stage 2 (set by `phase`, checkpointed).
    stage2: bool,
}

impl BalanceMethod for DiMml {
    fn name(&self) -> &'static str {
        "di-mml"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Blend),
            ..Default::default()
        }
        .modalities(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// The linear classifier both modalities share in stage 1.
    fn prepare_model(&mut self, model: &mut MultimodalModel) -> Result<()> {
        let (d0, d1) = (model.encoder(0).out_dim(), model.encoder(1).out_dim());
        if d0 != d1 {
            bail!("di-mml: the shared classifier needs features of one width, got {d0} and {d1}");
        }
        let vb = self.vars.seeded(self.opts.seed, model.device());
        self.shared = Some(linear(
            d0,
            model.head.classes(),
            LinearInit::Pytorch,
            vb.pp("shared"),
        )?);
        Ok(())
    }

    fn params(&self) -> Vec<(String, Var)> {
        self.vars.named()
    }

    /// Picks the contrastive dimensions as `contrast_start` begins; stage 2 holds the encoders,
    /// with a fresh optimizer and schedule at its first epoch.
    fn phase(&mut self, ctx: &EpochCtx) -> Result<Phase> {
        let o = &self.opts;
        if ctx.epoch == o.contrast_start && ctx.epoch < o.stage1_epochs {
            let c = ctx.forward_all(&ctx.train_rows())?;
            let classes = ctx.model.head.classes();
            let top0 = dimml_top_dimensions(&c.features[0], &c.labels, classes)?;
            let top1 = dimml_top_dimensions(&c.features[1], &c.labels, classes)?;
            let only0 = top0.iter().copied().filter(|j| !top1.contains(j)).collect();
            let only1 = top1.iter().copied().filter(|j| !top0.contains(j)).collect();
            self.dims = Some((only0, only1));
        }
        self.stage2 = ctx.epoch >= o.stage1_epochs;
        Ok(if self.stage2 {
            Phase {
                frozen_encoders: vec![0, 1],
                fresh_optimizer: ctx.epoch == o.stage1_epochs,
                schedule_from: o.stage1_epochs,
            }
        } else {
            Phase::default()
        })
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let ce = |l: &Tensor| candle_nn::loss::cross_entropy(l, ctx.labels);
        if self.stage2 {
            // Features without gradient: the encoders are frozen.
            let f: Vec<Tensor> = out.features.iter().map(|x| x.detach()).collect();
            return Ok(ce(&ctx.model.head.forward(&f, None)?.fused)?);
        }
        let Some(shared) = &self.shared else {
            bail!("di-mml: prepare_model was not called");
        };
        let mut loss = (ce(&out.unimodal_logits[0])? + ce(&out.unimodal_logits[1])?)?;
        for f in &out.features {
            loss = (loss + (ce(&shared.forward(f)?)? * self.opts.align_weight)?)?;
        }
        if let Some((a_only, b_only)) = &self.dims {
            if ctx.epoch >= self.opts.contrast_start {
                let c = dimml_contrast(
                    &out.features[0],
                    &out.features[1],
                    a_only,
                    b_only,
                    self.opts.contrast_temperature,
                )?;
                loss = (loss + c)?;
            }
        }
        Ok(loss)
    }

    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        let mut logits = out.unimodal_logits.clone();
        if self.stage2 {
            logits.push(out.fused_logits.clone());
        }
        Ok(Prediction {
            fused: dimml_fuse(&logits, self.opts.fusion_temperature)?,
            unimodal: out.unimodal_logits.clone(),
        })
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut out = vec![("dimml_stage".into(), if self.stage2 { 2.0 } else { 1.0 })];
        if let Some((a, b)) = &self.dims {
            out.push(("dimml_dims_0".into(), a.len() as f64));
            out.push(("dimml_dims_1".into(), b.len() as f64));
        }
        out
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "stage2".to_string(),
            Tensor::new(&[f64::from(u8::from(self.stage2))], &Device::Cpu)?,
        )];
        if let Some((a, b)) = &self.dims {
            // One more entry than dimensions, so that an empty set is still saved.
            for (k, d) in [("dims_0", a), ("dims_1", b)] {
                let mut v: Vec<f64> = vec![d.len() as f64];
                v.extend(d.iter().map(|&j| j as f64));
                out.push((k.into(), Tensor::new(v.as_slice(), &Device::Cpu)?));
            }
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = state.get("stage2") {
            self.stage2 = t.to_vec1::<f64>()?[0] != 0.0;
        }
        let read = |k: &str| -> Result<Option<Vec<usize>>> {
            let Some(t) = state.get(k) else {
                return Ok(None);
            };
            let v = t.to_vec1::<f64>()?;
            if v.is_empty() || v[0] as usize != v.len() - 1 {
                bail!("di-mml: checkpoint state `{k}` is malformed");
            }
            Ok(Some(v[1..].iter().map(|&j| j as usize).collect()))
        };
        if let (Some(a), Some(b)) = (read("dims_0")?, read("dims_1")?) {
            self.dims = Some((a, b));
        }
        Ok(())
    }
}

/// Builds `di-mml` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("di-mml", options)?;
    for (k, v) in [
        ("contrast_temperature", opts.contrast_temperature),
        ("fusion_temperature", opts.fusion_temperature),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("di-mml: {k} = {v} must be finite and positive");
        }
    }
    if !(opts.align_weight.is_finite() && opts.align_weight >= 0.0) {
        bail!(
            "di-mml: align_weight = {} must be finite and not negative",
            opts.align_weight
        );
    }
    Ok(Box::new(DiMml {
        opts,
        vars: ModelVars::new(),
        shared: None,
        dims: None,
        stage2: false,
    }))
}
