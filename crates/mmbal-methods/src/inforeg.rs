//! InfoReg (Huang, Wei, Yang, Hu, "Adaptive Unimodal Regulation for Balanced Multimodal
//! Information Acquisition", CVPR 2025; GeWu-Lab/InfoReg_CVPR2025 at 939b2ed, `main.py`
//! `train_epoch`): the loss is the fused cross-entropy plus each modality's cross-entropy through
//! its slice of the concat head; while the first modality's Fisher-information trace still rises
//! (the prime learning window, `k > 0.05`), the leading modality's encoder gradients get a
//! proximal term `beta exp(tanh(gap)) (w - w_0)` toward its weights at the epoch's start.
//! docs/methods/inforeg.md has the details.

use crate::{BalanceMethod, EpochCtx, Grads, Requirements, StepCtx};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use mmbal_fusion::{ForwardOut, FusionKind, ParamGroup};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Per modality, the proximal strength when it leads (the reference's 0.95 for audio and
    /// 0.1 for visual); one entry per modality.
    beta: Vec<f64>,
    /// The window is open while `k` exceeds this.
    window_threshold: f64,
    /// Epochs averaged in each of the two trace means that `k` compares.
    trace_window: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            beta: vec![0.95, 0.1],
            window_threshold: 0.05,
            trace_window: 10,
        }
    }
}

/// `k = (tr1 - tr2) / tr1`, tr1 the mean of the last `window` traces and tr2 of the `window`
/// before the last, the history padded with `window` zeros in front (the reference starts its
/// lists as ten zeros); 1 before any trace exists (the reference's epoch 0).
pub fn inforeg_window(traces: &[f64], window: usize) -> f64 {
    if traces.is_empty() {
        return 1.0;
    }
    let mut padded = vec![0.0; window];
    padded.extend_from_slice(traces);
    let n = padded.len();
    let tr1: f64 = padded[n - window..].iter().sum::<f64>() / window as f64;
    let tr2: f64 = padded[n - 1 - window..n - 1].iter().sum::<f64>() / window as f64;
    (tr1 - tr2) / tr1
}

struct InfoReg {
    opts: Options,
    /// Per modality, the Fisher trace of every finished epoch.
    traces: Vec<Vec<f64>>,
    /// The window value of the current epoch.
    k: f64,
    /// Per modality, the encoder's parameters at the epoch's start.
    start: Vec<Vec<Tensor>>,
    /// Per modality and conv kernel, the sum of squared gradients over the epoch's steps.
    fisher: Vec<Vec<Tensor>>,
    /// Per modality, the sum of the proximal strengths applied this epoch, and the steps.
    beta_sum: Vec<f64>,
    steps: usize,
    names: Vec<String>,
}

impl BalanceMethod for InfoReg {
    fn name(&self) -> &'static str {
        "inforeg"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Concat),
            ..Default::default()
        }
        .modalities(self.opts.beta.len())
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// The epoch's starting weights and window value.
    fn epoch_plan(&mut self, ctx: &EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        let m_count = ctx.model.num_modalities();
        if self.traces.len() != m_count {
            self.traces = vec![Vec::new(); m_count];
        }
        self.names = ctx.model.modalities.clone();
        self.k = inforeg_window(&self.traces[0], self.opts.trace_window);
        self.start = (0..m_count)
            .map(|m| {
                ctx.model
                    .group(ParamGroup::Encoder(m))?
                    .iter()
                    .map(|v| Ok(v.as_tensor().copy()?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        self.fisher = (0..m_count)
            .map(|m| {
                ctx.model
                    .group(ParamGroup::EncoderConvKernels(m))?
                    .iter()
                    .map(|v| Ok(v.as_tensor().zeros_like()?))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?;
        self.beta_sum = vec![0.0; m_count];
        self.steps = 0;
        Ok(None)
    }

    /// `CE(fused) + sum_m CE(unimodal_m)`.
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let mut loss = candle_nn::loss::cross_entropy(&out.fused_logits, ctx.labels)?;
        for u in &out.unimodal_logits {
            loss = (loss + candle_nn::loss::cross_entropy(u, ctx.labels)?)?;
        }
        Ok(loss)
    }

    /// The proximal term on the leading modality's encoder (inside the window), then the Fisher
    /// accumulation from the gradients as they will be stepped.
    fn edit_gradients(&mut self, ctx: &StepCtx, out: &ForwardOut, grads: &mut Grads) -> Result<()> {
        if self.start.len() != ctx.model.num_modalities() {
            bail!("inforeg: epoch_plan was not called before the step");
        }
        let scores = out
            .unimodal_logits
            .iter()
            .map(|l| crate::true_class_score(l, ctx.labels))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        self.steps += 1;
        let lead = (0..scores.len()).find(|&m| {
            scores
                .iter()
                .enumerate()
                .all(|(j, &s)| j == m || scores[m] > s)
        });
        if let (Some(m), true) = (lead, self.k > self.opts.window_threshold) {
            let second = scores
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != m)
                .map(|(_, &s)| s)
                .fold(f64::NEG_INFINITY, f64::max);
            let beta = self.opts.beta[m] * (scores[m] - second).tanh().exp();
            self.beta_sum[m] += beta;
            let vars = ctx.model.group(ParamGroup::Encoder(m))?;
            for (v, w0) in vars.iter().zip(&self.start[m]) {
                if let Some(g) = grads.get(v) {
                    let g = (g + ((v.as_tensor() - w0)? * beta)?)?;
                    grads.set(v, g);
                }
            }
        }
        for (m, acc) in self.fisher.iter_mut().enumerate() {
            let kernels = ctx.model.group(ParamGroup::EncoderConvKernels(m))?;
            for (v, a) in kernels.iter().zip(acc.iter_mut()) {
                if let Some(g) = grads.get(v) {
                    *a = (&*a + g.sqr()?)?;
                }
            }
        }
        Ok(())
    }

    /// Each modality's trace: the sum over its conv kernels of the mean accumulated squared
    /// gradient.
    fn on_epoch_end(&mut self, _ctx: &EpochCtx) -> Result<()> {
        for (m, acc) in self.fisher.iter().enumerate() {
            let mut trace = 0.0;
            for a in acc {
                trace += a.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
            self.traces[m].push(trace);
        }
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut out = vec![("inforeg_k".to_string(), self.k)];
        let n = self.steps.max(1) as f64;
        for (m, name) in self.names.iter().enumerate() {
            if let Some(t) = self.traces.get(m).and_then(|t| t.last()) {
                out.push((format!("inforeg_trace_{name}"), *t));
            }
            if let Some(b) = self.beta_sum.get(m) {
                out.push((format!("inforeg_beta_{name}"), b / n));
            }
        }
        out
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        self.traces
            .iter()
            .enumerate()
            .map(|(m, t)| {
                Ok((
                    format!("trace.{m}"),
                    Tensor::new(t.as_slice(), &Device::Cpu)?,
                ))
            })
            .collect()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut traces = Vec::new();
        while let Some(t) = state.get(&format!("trace.{}", traces.len())) {
            traces.push(t.to_vec1::<f64>().context("inforeg trace")?);
        }
        self.traces = traces;
        Ok(())
    }
}

/// Builds `inforeg` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("inforeg", options)?;
    if opts.beta.len() < 2 || opts.beta.iter().any(|b| !b.is_finite() || *b < 0.0) {
        bail!(
            "inforeg: beta = {:?} needs one non-negative strength per modality (at least two)",
            opts.beta
        );
    }
    if opts.trace_window == 0 {
        bail!("inforeg: trace_window must be at least 1");
    }
    Ok(Box::new(InfoReg {
        opts,
        traces: Vec::new(),
        k: 1.0,
        start: Vec::new(),
        fisher: Vec::new(),
        beta_sum: Vec::new(),
        steps: 0,
        names: Vec::new(),
    }))
}
