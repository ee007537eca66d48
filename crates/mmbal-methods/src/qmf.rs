//! QMF, quality-aware multimodal fusion (Zhang et al., "Provable Dynamic Fusion for Low-Quality
//! Multimodal Data", ICML 2023; QingyangZhang/QMF at fe6c4c6, `text-image-classification/`
//! `train_qmf.py` and `src/models/late_fusion.py`): each modality's own classifier gives logits
//! and an energy confidence `logsumexp(logits) / 10`; the prediction is the confidence-weighted
//! sum of the logits (confidences detached); the loss adds every cross-entropy and, per
//! modality, a ranking loss that asks the confidence of a sample to be lower than its neighbour's
//! when its cumulative training loss is higher. docs/methods/qmf.md has the details.

use crate::{BalanceMethod, EpochCtx, Prediction, Requirements, StepCtx};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, D};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// The confidence is `logsumexp(logits) / temperature` (the reference's `energy / 10`).
    temperature: f64,
    /// Weight of the ranking losses (1 in the reference).
    rank_weight: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            temperature: 10.0,
            rank_weight: 1.0,
        }
    }
}

/// Each modality's energy confidence `logsumexp(logits) / temperature`, `(B,)`.
pub fn qmf_confidences(unimodal: &[Tensor], temperature: f64) -> Result<Vec<Tensor>> {
    unimodal
        .iter()
        .map(|u| {
            let max = u.max_keepdim(D::Minus1)?;
            let lse = (u
                .broadcast_sub(&max)?
                .exp()?
                .sum_keepdim(D::Minus1)?
                .log()?
                + max)?;
            Ok((lse.squeeze(D::Minus1)? / temperature)?)
        })
        .collect()
}

/// The prediction: `sum_m out_m * conf_m`, the confidences detached.
pub fn qmf_fuse(unimodal: &[Tensor], confidences: &[Tensor]) -> Result<Tensor> {
    let mut fused: Option<Tensor> = None;
    for (u, c) in unimodal.iter().zip(confidences) {
        let term = u.broadcast_mul(&c.detach().unsqueeze(1)?)?;
        fused = Some(match fused {
            None => term,
            Some(f) => (f + term)?,
        });
    }
    fused.context("qmf needs at least one modality")
}

/// `rank_loss` of the reference for one modality: each row against the next (cyclically), the
/// target `sign(h_i - h_j)` and margin `|h_i - h_j|` of the cumulative losses `h` normalised by the
/// history's minimum and maximum; `mean(max(0, target (c_i - c_j - margin / target')))` with
/// `target' = target` where it is not 0, else 1.
pub fn qmf_rank_loss(confidence: &Tensor, cumulative: &[f64], lo: f64, hi: f64) -> Result<Tensor> {
    let b = cumulative.len();
    let norm = |x: f64| (x - lo) / (hi - lo);
    let mut target = Vec::with_capacity(b);
    let mut shift = Vec::with_capacity(b);
    for i in 0..b {
        let (t1, t2) = (norm(cumulative[i]), norm(cumulative[(i + 1) % b]));
        let t = if t1 > t2 {
            1.0
        } else if t1 < t2 {
            -1.0
        } else {
            0.0
        };
        let nonzero = if t == 0.0 { 1.0 } else { t };
        target.push(t as f32);
        shift.push(((t1 - t2).abs() as f32) / nonzero as f32);
    }
    let dev = confidence.device();
    let target = Tensor::new(target.as_slice(), dev)?;
    let shift = Tensor::new(shift.as_slice(), dev)?;
    // The next row's confidence, plus the margin over the target.
    let next = Tensor::cat(
        &[confidence.narrow(0, 1, b - 1)?, confidence.narrow(0, 0, 1)?],
        0,
    )?;
    let next = (next + shift)?;
    Ok(((confidence - next)? * target)?.relu()?.mean_all()?)
}

struct Qmf {
    opts: Options,
    /// The training samples' slots in the histories.
    slots: HashMap<usize, usize>,
    /// Per modality, each training sample's cumulative loss.
    history: Vec<Vec<f64>>,
    rank_sum: Vec<f64>,
    steps: usize,
    names: Vec<String>,
}

impl Qmf {
    fn slot(&self, sample: usize) -> Result<usize> {
        match self.slots.get(&sample) {
            Some(&s) => Ok(s),
            None => bail!("qmf: sample {sample} is not in the training split"),
        }
    }
}

impl BalanceMethod for Qmf {
    fn name(&self) -> &'static str {
        "qmf"
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

    /// The histories span the training split, every sample at 0 until it is seen (the
    /// reference's `History(len(train_set))`).
    fn epoch_plan(&mut self, ctx: &EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        let m_count = ctx.model.num_modalities();
        if self.slots.is_empty() {
            let mut samples: Vec<usize> = ctx.train_rows().iter().map(|r| r.sample).collect();
            samples.sort_unstable();
            samples.dedup();
            self.slots = samples.iter().enumerate().map(|(i, &s)| (s, i)).collect();
        }
        if self.history.len() != m_count {
            self.history = vec![vec![0.0; self.slots.len()]; m_count];
        }
        self.names = ctx.model.modalities.clone();
        self.rank_sum = vec![0.0; m_count];
        self.steps = 0;
        Ok(None)
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        if ctx.rows.is_empty() {
            bail!("qmf keeps a history per training sample and needs the batch's rows");
        }
        if self.history.len() != out.unimodal_logits.len() {
            bail!("qmf: epoch_plan was not called before the step");
        }
        let conf = qmf_confidences(&out.unimodal_logits, self.opts.temperature)?;
        let fused = qmf_fuse(&out.unimodal_logits, &conf)?;
        let mut loss = candle_nn::loss::cross_entropy(&fused, ctx.labels)?;
        let slots: Vec<usize> = ctx
            .rows
            .iter()
            .map(|r| self.slot(r.sample))
            .collect::<Result<_>>()?;
        self.steps += 1;
        for (m, u) in out.unimodal_logits.iter().enumerate() {
            loss = (loss + candle_nn::loss::cross_entropy(u, ctx.labels)?)?;
            // Per-sample losses into the history first (numpy's `h[idx] += v`: a repeated
            // sample gets its last value added once).
            let per_sample = per_sample_ce(u, ctx.labels)?;
            let old: Vec<f64> = slots.iter().map(|&s| self.history[m][s]).collect();
            for ((&s, o), v) in slots.iter().zip(&old).zip(&per_sample) {
                self.history[m][s] = o + v;
            }
            let h = &self.history[m];
            let lo = h.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let cumulative: Vec<f64> = slots.iter().map(|&s| h[s]).collect();
            let rank = qmf_rank_loss(&conf[m], &cumulative, lo, hi)?;
            self.rank_sum[m] += rank.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            loss = (loss + (rank * self.opts.rank_weight)?)?;
        }
        Ok(loss)
    }

    /// The confidence-weighted sum of the modalities' logits.
    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        let conf = qmf_confidences(&out.unimodal_logits, self.opts.temperature)?;
        Ok(Prediction::fused_from(
            out,
            qmf_fuse(&out.unimodal_logits, &conf)?,
        ))
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let n = self.steps.max(1) as f64;
        self.names
            .iter()
            .zip(&self.rank_sum)
            .map(|(m, r)| (format!("qmf_rank_loss_{m}"), r / n))
            .collect()
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut samples: Vec<(usize, usize)> = self.slots.iter().map(|(&s, &i)| (i, s)).collect();
        samples.sort_unstable();
        let ids: Vec<f64> = samples.iter().map(|&(_, s)| s as f64).collect();
        let mut out = vec![(
            "samples".to_string(),
            Tensor::new(ids.as_slice(), &Device::Cpu)?,
        )];
        for (m, h) in self.history.iter().enumerate() {
            out.push((
                format!("history.{m}"),
                Tensor::new(h.as_slice(), &Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let Some(ids) = state.get("samples") else {
            return Ok(());
        };
        let ids = ids.to_vec1::<f64>()?;
        self.slots = ids
            .iter()
            .enumerate()
            .map(|(i, &s)| (s as usize, i))
            .collect();
        let mut history = Vec::new();
        while let Some(h) = state.get(&format!("history.{}", history.len())) {
            history.push(h.to_vec1::<f64>()?);
        }
        self.history = history;
        Ok(())
    }
}

/// Cross-entropy per row, `(B,)` as f64 values (detached).
fn per_sample_ce(logits: &Tensor, labels: &Tensor) -> Result<Vec<f64>> {
    let logp = candle_nn::ops::log_softmax(&logits.detach(), D::Minus1)?;
    let picked = logp.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
    Ok(picked
        .neg()?
        .squeeze(1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?)
}

/// Builds `qmf` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("qmf", options)?;
    if !(opts.temperature.is_finite() && opts.temperature > 0.0) {
        bail!("qmf: temperature = {} must be positive", opts.temperature);
    }
    if !(opts.rank_weight.is_finite() && opts.rank_weight >= 0.0) {
        bail!(
            "qmf: rank_weight = {} must not be negative",
            opts.rank_weight
        );
    }
    Ok(Box::new(Qmf {
        opts,
        slots: HashMap::new(),
        history: Vec::new(),
        rank_sum: Vec::new(),
        steps: 0,
        names: Vec::new(),
    }))
}
