//! MMPareto (Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal
//! Assistance", ICML 2024; GeWu-Lab/MMPareto_ICML2024 at a339db3, `code/MMPareto.py`): the fused
//! cross-entropy and each modality's own-head cross-entropy are back-propagated separately; per
//! encoder, when the multimodal and unimodal gradients point apart (cosine not positive) their
//! weights come from the two-task min-norm (MGDA) solution, else they are equal; the combined
//! gradient of each tensor is rescaled to at least the norm of the plain sum, times `gamma`.
//! docs/methods/mmpareto.md has the details.

use crate::{BalanceMethod, Grads, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use mmbal_fusion::{ForwardOut, FusionKind, ParamGroup};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// The factor on every encoder gradient (`gamma = 1.5` in the reference).
    gamma: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { gamma: 1.5 }
    }
}

/// `MinNormSolver._min_norm_element_from2`: the weight `c` of the first vector in the
/// minimum-norm point `c x_1 + (1 - c) x_2`, from `<x1, x1>`, `<x1, x2>`, `<x2, x2>` (0.999 and
/// 0.001 at the ends, as the reference).
pub fn min_norm_weight(v1v1: f64, v1v2: f64, v2v2: f64) -> f64 {
    if v1v2 >= v1v1 {
        0.999
    } else if v1v2 >= v2v2 {
        0.001
    } else {
        -((v1v2 - v2v2) / (v1v1 + v2v2 - 2.0 * v1v2))
    }
}

/// `<a, b>` summed tensor by tensor (f32 sums, accumulated in f64).
fn dot(a: &[Tensor], b: &[Tensor]) -> Result<f64> {
    let mut s = 0.0;
    for (x, y) in a.iter().zip(b) {
        s += (x * y)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(s)
}

fn norm(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?
        .sqrt())
}

/// The gradient of `v` in `g`, or zeros like `v`.
fn grad_or_zero(g: &GradStore, v: &Var) -> Result<Tensor> {
    Ok(match g.get(v) {
        Some(t) => t.clone(),
        None => v.as_tensor().zeros_like()?,
    })
}

struct MmPareto {
    opts: Options,
    /// Per modality over the epoch's steps: the sum of the cosines and of the multimodal weights.
    cos_sum: Vec<f64>,
    k_sum: Vec<f64>,
    steps: usize,
    names: Vec<String>,
}

impl BalanceMethod for MmPareto {
    fn name(&self) -> &'static str {
        "mmpareto"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Blend),
            ..Default::default()
        }
        .at_least(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn epoch_plan(&mut self, ctx: &crate::EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        self.names = ctx.model.modalities.clone();
        self.cos_sum = vec![0.0; self.names.len()];
        self.k_sum = vec![0.0; self.names.len()];
        self.steps = 0;
        Ok(None)
    }

    fn step_gradients(
        &mut self,
        ctx: &StepCtx,
        out: &ForwardOut,
    ) -> Result<Option<(Tensor, Grads)>> {
        let ce = |l: &Tensor| candle_nn::loss::cross_entropy(l, ctx.labels);
        let loss_mm = ce(&out.fused_logits)?;
        let losses: Vec<Tensor> = out
            .unimodal_logits
            .iter()
            .map(ce)
            .collect::<candle_core::Result<_>>()?;
        // One backward per loss, as the reference's loop (each from zeroed gradients).
        let g_mm = loss_mm.backward()?;
        let g_uni: Vec<GradStore> = losses
            .iter()
            .map(|l| l.backward())
            .collect::<candle_core::Result<_>>()?;
        let mut total = loss_mm.clone();
        for l in &losses {
            total = (total + l)?;
        }
        // Every parameter first gets the gradient of the summed loss (the heads keep it).
        let mut grads = Grads::none();
        for v in ctx.model.params() {
            let mut sum: Option<Tensor> = g_mm.get(&v).cloned();
            for g in &g_uni {
                if let Some(t) = g.get(&v) {
                    sum = Some(match sum {
                        None => t.clone(),
                        Some(s) => (s + t)?,
                    });
                }
            }
            if let Some(s) = sum {
                grads.set(&v, s);
            }
        }
        let m_count = ctx.model.num_modalities();
        if self.cos_sum.len() != m_count {
            (self.cos_sum, self.k_sum) = (vec![0.0; m_count], vec![0.0; m_count]);
        }
        self.steps += 1;
        for (m, g_own) in g_uni.iter().enumerate() {
            let vars = ctx.model.group(ParamGroup::Encoder(m))?;
            let a: Vec<Tensor> = vars
                .iter()
                .map(|v| grad_or_zero(&g_mm, v))
                .collect::<Result<_>>()?;
            let b: Vec<Tensor> = vars
                .iter()
                .map(|v| grad_or_zero(g_own, v))
                .collect::<Result<_>>()?;
            let (aa, ab, bb) = (dot(&a, &a)?, dot(&a, &b)?, dot(&b, &b)?);
            let cos = ab / (aa.sqrt() * bb.sqrt()).max(1e-8);
            let k = if cos > 0.0 {
                0.5
            } else {
                min_norm_weight(aa, ab, bb)
            };
            self.cos_sum[m] += cos;
            self.k_sum[m] += k;
            for ((v, ga), gb) in vars.iter().zip(&a).zip(&b) {
                let plain = norm(&(ga + gb)?)?;
                let combined = ((ga * (2.0 * k))? + (gb * (2.0 * (1.0 - k)))?)?;
                let diff = plain / norm(&combined)?;
                let scale = if diff > 1.0 {
                    diff * self.opts.gamma
                } else {
                    self.opts.gamma
                };
                grads.set(v, (combined * scale)?);
            }
        }
        Ok(Some((total, grads)))
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let n = self.steps.max(1) as f64;
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            if let (Some(c), Some(k)) = (self.cos_sum.get(i), self.k_sum.get(i)) {
                out.push((format!("mmpareto_cos_{name}"), c / n));
                out.push((format!("mmpareto_k_{name}"), k / n));
            }
        }
        out
    }
}

/// Builds `mmpareto` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("mmpareto", options)?;
    if !(opts.gamma.is_finite() && opts.gamma > 0.0) {
        bail!("mmpareto: gamma = {} must be positive", opts.gamma);
    }
    Ok(Box::new(MmPareto {
        opts,
        cos_sum: Vec::new(),
        k_sum: Vec::new(),
        steps: 0,
        names: Vec::new(),
    }))
}
