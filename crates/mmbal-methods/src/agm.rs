//! AGM, adaptive gradient modulation (Li et al., "Boosting Multi-modal Model Performance with
//! Adaptive Gradient Modulation", ICCV 2023; lihong2303/AGM_ICCV2023 at 5a65542,
//! `run/CREMAD_main.py` `train` and `model/CREMAD_net.py` `GradMod`): each modality's response
//! is its Shapley share of the fused logits, from passes with the other modality's input zeroed
//! (evaluation mode); the gradient through each share is scaled by a coefficient that moves the
//! modalities' score ratio toward its running mean; then a conditional gradient-norm clip.
//! docs/methods/agm.md has the details.

use crate::{BalanceMethod, Grads, Requirements, StepCtx};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use mmbal_fusion::{ForwardOut, MultimodalModel, ParamGroup};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// The modulation strength (`--alpha`).
    alpha: f64,
    /// New coefficients are set in epochs `start_epoch..=end_epoch` (0-based; the reference's
    /// 1-based 0..=20).
    start_epoch: usize,
    end_epoch: usize,
    /// After the window the gradient keeps being scaled by the last coefficients, as the
    /// reference's hooks stay registered; `false` scales by 1 there.
    keep_scale_after_window: bool,
    /// The clip runs when any weight gradient of the head leaves `[-clip_trigger, clip_trigger]`.
    clip_trigger: f64,
    /// Its maximum norm over every parameter.
    clip_norm: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            alpha: 1.0,
            start_epoch: 0,
            end_epoch: 19,
            keep_scale_after_window: true,
            clip_trigger: 1.0,
            clip_norm: 1.0,
        }
    }
}

/// Each of two modalities' Shapley response from the fused logits of the full pass (`total`)
/// and of the passes that keep only modality 0 (`only_0`) and only modality 1 (`only_1`):
/// `0.5 (total - only_1 + only_0)` and `0.5 (total - only_0 + only_1)`.
pub fn agm_responses(total: &Tensor, only_0: &Tensor, only_1: &Tensor) -> Result<[Tensor; 2]> {
    Ok([
        (((total - only_1)? + only_0)? * 0.5)?,
        (((total - only_0)? + only_1)? * 0.5)?,
    ])
}

/// The reference's score: the mean over rows of `-ln p[y]`, `p` below 1e-8 taken as 1e-8.
pub fn agm_score(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let p = candle_nn::ops::softmax(&logits.detach(), 1)?;
    let picked = p
        .gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?
        .squeeze(1)?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let n = picked.len().max(1) as f64;
    Ok(picked.iter().map(|&x| -(x.max(1e-8)).ln()).sum::<f64>() / n)
}

/// `(coeff_0, coeff_1) = exp(alpha min(r* - r, 10))` per modality, with `r_0 = exp(s_1 - s_0)`
/// and `r*_0 = exp(m_1 - m_0)` (`s` this step's scores, `m` their running means), alike for 1.
pub fn agm_coefficients(scores: [f64; 2], means: [f64; 2], alpha: f64) -> [f64; 2] {
    let coeff = |own: usize, other: usize| {
        let ratio = (scores[other] - scores[own]).exp();
        let target = (means[other] - means[own]).exp();
        (alpha * (target - ratio).min(10.0)).exp()
    };
    [coeff(0, 1), coeff(1, 0)]
}

struct Agm {
    opts: Options,
    /// The running means of the two scores over every step so far.
    means: [f64; 2],
    /// The scales the gradient of each response gets.
    scale: [f64; 2],
    clipped: usize,
    steps: usize,
}

impl Agm {
    /// The fused logits of an evaluation-mode pass that keeps only modality `m` (the other
    /// inputs zeroed), graph kept.
    fn only(ctx: &StepCtx, m: usize) -> Result<Tensor> {
        let b = ctx.labels.dim(0)?;
        let mut keep = vec![0f32; 2 * b];
        for r in 0..b {
            keep[2 * r + m] = 1.0;
        }
        let keep = Tensor::from_vec(keep, (b, 2), ctx.labels.device())?;
        let inputs = MultimodalModel::mask_inputs(ctx.inputs, &keep)?;
        Ok(ctx.model.forward(&inputs, None, false)?.fused_logits)
    }
}

impl BalanceMethod for Agm {
    fn name(&self) -> &'static str {
        "agm"
    }

    fn requirements(&self) -> Requirements {
        Requirements::default().modalities(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn epoch_plan(&mut self, _ctx: &crate::EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        (self.clipped, self.steps) = (0, 0);
        Ok(None)
    }

    /// `CE(m_0 + m_1)` whose value is the fused loss and whose gradient reaches each response
    /// scaled by its coefficient (the reference's backward hooks).
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        if ctx.inputs.len() != 2 {
            bail!("agm needs the step's two inputs");
        }
        let total = &out.fused_logits;
        let (only_0, only_1) = (Agm::only(ctx, 0)?, Agm::only(ctx, 1)?);
        let [r0, r1] = agm_responses(total, &only_0, &only_1)?;
        let scores = [agm_score(&r0, ctx.labels)?, agm_score(&r1, ctx.labels)?];
        let coeff = agm_coefficients(scores, self.means, self.opts.alpha);
        // The running means over every step so far (the reference's `iteration`).
        let it = (ctx.step + 1) as f64;
        for (m, s) in self.means.iter_mut().zip(scores) {
            *m = *m * (it - 1.0) / it + s / it;
        }
        let in_window = ctx.epoch >= self.opts.start_epoch && ctx.epoch <= self.opts.end_epoch;
        if in_window {
            self.scale = coeff;
        } else if !self.opts.keep_scale_after_window {
            self.scale = [1.0, 1.0];
        }
        self.steps += 1;
        let [s0, s1] = self.scale;
        // Value `total`, gradient `s0 d/d r0 + s1 d/d r1`.
        let surrogate = (((total * (0.5 * (s0 + s1)))? + (&only_0 * (0.5 * (s0 - s1)))?)?
            + (&only_1 * (0.5 * (s1 - s0)))?)?;
        let out_value = (total.detach() + (&surrogate - surrogate.detach())?)?;
        Ok(candle_nn::loss::cross_entropy(&out_value, ctx.labels)?)
    }

    /// The reference's clip: when a weight gradient of the head leaves [-1, 1], every gradient
    /// is scaled to a global norm of at most 1 (`clip_grad_norm_`).
    fn edit_gradients(
        &mut self,
        ctx: &StepCtx,
        _out: &ForwardOut,
        grads: &mut Grads,
    ) -> Result<()> {
        let mut trigger = false;
        for v in ctx.model.group(ParamGroup::Head)? {
            if v.rank() != 2 {
                continue;
            }
            if let Some(g) = grads.get(&v) {
                let max = g.max_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                let min = g.min_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                trigger |= max > self.opts.clip_trigger || min < -self.opts.clip_trigger;
            }
        }
        if trigger {
            grads.clip_norm(&ctx.model.params(), self.opts.clip_norm)?;
            self.clipped += 1;
        }
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        vec![
            ("agm_scale_0".into(), self.scale[0]),
            ("agm_scale_1".into(), self.scale[1]),
            ("agm_score_mean_0".into(), self.means[0]),
            ("agm_score_mean_1".into(), self.means[1]),
            (
                "agm_clipped".into(),
                self.clipped as f64 / self.steps.max(1) as f64,
            ),
        ]
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let v = [self.means[0], self.means[1], self.scale[0], self.scale[1]];
        Ok(vec![("means_scale".into(), Tensor::new(&v, &Device::Cpu)?)])
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = state.get("means_scale") {
            let v = t.to_vec1::<f64>().context("agm state")?;
            if v.len() != 4 {
                bail!("agm state holds {} values, expected 4", v.len());
            }
            self.means = [v[0], v[1]];
            self.scale = [v[2], v[3]];
        }
        Ok(())
    }
}

/// Builds `agm` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("agm", options)?;
    if !opts.alpha.is_finite() {
        bail!("agm: alpha = {} must be finite", opts.alpha);
    }
    Ok(Box::new(Agm {
        opts,
        means: [0.0, 0.0],
        scale: [1.0, 1.0],
        clipped: 0,
        steps: 0,
    }))
}
