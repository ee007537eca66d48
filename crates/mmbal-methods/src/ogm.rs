//! OGM and OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation. Per batch, each
//! modality's score is the summed softmax probability of the true class under its unimodal
//! logits; the dominant modality's 4-D convolution kernel gradients are scaled by
//! `1 - tanh(alpha * rho)`; OGM-GE adds Gaussian noise (std = the unbiased std of each kernel's
//! unmodulated gradient + 1e-8) to every modulated tensor. docs/methods/ogm-ge.md has the details.

use crate::{BalanceMethod, Grads, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use mmbal_fusion::{ForwardOut, ParamGroup};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    alpha: f64,
    /// Modulation runs in epochs `start_epoch..=end_epoch` (0-based, inclusive).
    start_epoch: usize,
    end_epoch: usize,
    /// Add generalisation-enhancement noise (OGM-GE); false gives plain OGM.
    ge: bool,
    /// Seed of the noise stream (mixed with the step).
    noise_seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            alpha: 0.8,
            start_epoch: 0,
            end_epoch: 50,
            ge: true,
            noise_seed: 0,
        }
    }
}

/// Coefficients of `scores` (one per modality). `rho_m` = score of m over the mean score of the
/// others (for two modalities the reference's `s_v / s_a` and its inverse); every modality with
/// `rho_m > 1` gets `1 - tanh(alpha * rho_m)`, the rest 1. When none exceeds 1 (all equal),
/// modality 0 is treated as dominant, as the reference does for audio on a tie.
pub fn ogm_coefficients(scores: &[f64], alpha: f64) -> (Vec<f64>, Vec<f64>) {
    let m = scores.len();
    let rho = crate::ratios_against_others(scores);
    let mut coeff: Vec<f64> = rho
        .iter()
        .map(|&r| {
            if r > 1.0 {
                1.0 - (alpha * r).tanh()
            } else {
                1.0
            }
        })
        .collect();
    if rho.iter().all(|&r| r <= 1.0) && m > 0 {
        coeff[0] = 1.0 - (alpha * rho[0]).tanh();
    }
    (coeff, rho)
}

/// Unbiased standard deviation of all elements of `t`.
fn unbiased_std(t: &Tensor) -> Result<f64> {
    let n = t.elem_count();
    if n < 2 {
        return Ok(0.0);
    }
    let t = t.to_dtype(DType::F64)?.flatten_all()?;
    let mean = t.mean_all()?;
    let ss = t
        .broadcast_sub(&mean)?
        .sqr()?
        .sum_all()?
        .to_scalar::<f64>()?;
    Ok((ss / (n - 1) as f64).sqrt())
}

pub struct Ogm {
    opts: Options,
    /// Registered as `ogm`, which takes no `ge` option.
    plain: bool,
    log: crate::ratio::RatioLog,
}

impl BalanceMethod for Ogm {
    fn name(&self) -> &'static str {
        if self.opts.ge {
            "ogm-ge"
        } else {
            "ogm"
        }
    }

    fn requirements(&self) -> Requirements {
        Requirements::default().at_least(2)
    }

    fn options(&self) -> toml::Table {
        let mut t = crate::options_table(self.name(), &self.opts);
        if self.plain {
            t.remove("ge");
        }
        t
    }

    fn epoch_plan(&mut self, ctx: &crate::EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        self.log.reset(&ctx.model.modalities);
        Ok(None)
    }

    fn edit_gradients(&mut self, ctx: &StepCtx, out: &ForwardOut, grads: &mut Grads) -> Result<()> {
        let scores = out
            .unimodal_logits
            .iter()
            .map(|l| crate::true_class_score(l, ctx.labels))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        let (coeff, rho) = ogm_coefficients(&scores, self.opts.alpha);
        self.log.add(&coeff, &rho);
        if ctx.epoch < self.opts.start_epoch || ctx.epoch > self.opts.end_epoch {
            return Ok(());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.opts.noise_seed ^ (ctx.step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        for (i, &k) in coeff.iter().enumerate() {
            for var in ctx.model.group(ParamGroup::EncoderConvKernels(i))? {
                let Some(g) = grads.get(&var).cloned() else {
                    continue;
                };
                let mut new = (&g * k)?;
                if self.opts.ge {
                    let std = unbiased_std(&g)? + 1e-8;
                    let normal = Normal::new(0.0, std).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let noise: Vec<f32> = (0..g.elem_count())
                        .map(|_| normal.sample(&mut rng) as f32)
                        .collect();
                    let noise = Tensor::from_vec(noise, g.dims(), &candle_core::Device::Cpu)?
                        .to_device(g.device())?
                        .to_dtype(g.dtype())?;
                    new = (new + noise)?;
                }
                grads.set(&var, new);
            }
        }
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        self.log.diagnostics("ogm")
    }
}

/// Options: `alpha` (0.8), `start_epoch` (0), `end_epoch` (50), `ge` (true), `noise_seed` (0).
pub fn build_ge(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    build(options, true)
}

/// OGM without the noise; the same options, `ge` fixed to false.
pub fn build_plain(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    build(options, false)
}

fn build(options: &toml::Table, ge: bool) -> Result<Box<dyn BalanceMethod>> {
    let mut opts: Options = crate::parse_options(if ge { "ogm-ge" } else { "ogm" }, options)?;
    if !ge && options.contains_key("ge") {
        bail!("method `ogm` is OGM without noise; use `ogm-ge` for the noise");
    }
    opts.ge = opts.ge && ge;
    Ok(Box::new(Ogm {
        opts,
        plain: !ge,
        log: Default::default(),
    }))
}
