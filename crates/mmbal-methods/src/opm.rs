//! OPM, on-the-fly prediction modulation (Wei, Hu, Du, Wen, "On-the-fly Modulation for Balanced
//! Multimodal Learning", TPAMI 2024; GeWu-Lab/BML_TPAMI2024 at 4b3aa4f, `code/models/
//! Classifier.py` and `code/main.py`). After a warm-up, each batch: every modality's score is the
//! summed true-class probability of its slice of the concat head; a modality that leads the
//! others gets a drop probability `q_m`; with probability `p_exe` the pooled features are dropped
//! per sample and modality with probability `q_m`, every kept feature divided by `1 - theta`
//! (`theta` the width-weighted mean of `q`), rows that kept no modality removed, and the head
//! run on the result. docs/methods/opm.md has the details.

use crate::{BalanceMethod, Grads, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// `q_base`: the drop probability of a leading modality before the lead is added.
    q_base: f64,
    /// `lam`: how much the lead raises it.
    lam: f64,
    /// `p_exe`: the probability that a batch drops at all.
    p_exe: f64,
    /// The first epoch (0-based) that drops; the reference's `warm_up = 1 if epoch <= 5`.
    start_epoch: usize,
    /// Seed of the drop stream (mixed with the run's seed and the global step).
    seed: u64,
    /// The gradient the reference's `custom_autograd.backward` sends back for `theta` (it
    /// returns `theta` itself, so the encoders also get the gradient of `theta^2 / 2` through the
    /// scores); `false` leaves it out, as the paper describes the method.
    theta_gradient: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            q_base: 0.5,
            lam: 0.5,
            p_exe: 0.7,
            start_epoch: 6,
            seed: 0,
            theta_gradient: true,
        }
    }
}

/// The drop probabilities of `calcu_q` from the modalities' scores: with `rho_m` the score of m
/// over the mean score of the others (two modalities: the reference's `p_1 / p_2` and its
/// inverse), `q_m = q_base (1 + lam tanh(rho_m - 1))` where `rho_m > 1`, else 0, clipped to
/// [0, 1].
pub fn opm_drop_probabilities(scores: &[f64], q_base: f64, lam: f64) -> Vec<f64> {
    crate::ratios_against_others(scores)
        .into_iter()
        .map(|rho| {
            let lead = (rho - 1.0).max(0.0).tanh();
            if lead > 0.0 {
                (q_base * (1.0 + lam * lead)).clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// `theta^2 / 2` with `theta = sum_m D_m q_m / sum_m D_m` computed differentiably from the
/// features through the scores (the concat head's weights and bias detached, as the reference's
/// `w.clone().detach()`): its gradient is what the reference's `custom_autograd.backward` sends
/// into the encoders by returning `theta` as the gradient of `theta`.
pub fn opm_theta_term(
    model: &MultimodalModel,
    features: &[Tensor],
    labels: &Tensor,
    q_base: f64,
    lam: f64,
) -> Result<Tensor> {
    let m_count = features.len();
    let Some(bias) = model.head.concat_bias()? else {
        bail!("opm: the concat head has no bias")
    };
    let share = (bias.detach() / m_count as f64)?;
    let mut scores = Vec::with_capacity(m_count);
    for (m, f) in features.iter().enumerate() {
        let w = model.head.concat_weight_of(m)?.detach();
        let logits = f.matmul(&w.t()?)?.broadcast_add(&share)?;
        let p = candle_nn::ops::softmax(&logits, 1)?;
        let picked = p.gather(&labels.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?;
        scores.push(picked.sum_all()?);
    }
    let values: Vec<f64> = scores
        .iter()
        .map(|s| Ok(s.to_dtype(DType::F64)?.to_scalar::<f64>()?))
        .collect::<Result<_>>()?;
    let q_plain = opm_drop_probabilities(&values, q_base, lam);
    let dims: Vec<usize> = features
        .iter()
        .map(|f| f.dim(1))
        .collect::<candle_core::Result<_>>()?;
    let d_sum: usize = dims.iter().sum();
    let mut theta: Option<Tensor> = None;
    for m in 0..m_count {
        // A modality that does not lead has q = 0, a constant; so has a clipped one.
        if q_plain[m] == 0.0 || q_plain[m] >= 1.0 {
            continue;
        }
        let others = {
            let mut sum: Option<Tensor> = None;
            for (j, s) in scores.iter().enumerate() {
                if j != m {
                    sum = Some(match sum {
                        None => s.clone(),
                        Some(acc) => (acc + s)?,
                    });
                }
            }
            match sum {
                Some(s) => (s / (m_count - 1) as f64)?,
                None => bail!("opm needs at least two modalities"),
            }
        };
        let rho = scores[m].div(&others)?;
        let q = ((((rho - 1.0)?.tanh()? * lam)? + 1.0)? * q_base)?;
        let term = (q * (dims[m] as f64 / d_sum as f64))?;
        theta = Some(match theta {
            None => term,
            Some(t) => (t + term)?,
        });
    }
    match theta {
        Some(t) => Ok((t.sqr()? * 0.5)?),
        None => Ok(Tensor::zeros((), DType::F32, labels.device())?),
    }
}

/// The features after a drop, and the rows that kept at least one modality.
pub struct OpmDrop {
    /// Per modality `(R, D_m)`: the kept rows' features, dropped ones zero, the rest divided by
    /// `1 - theta`.
    pub features: Vec<Tensor>,
    /// The kept rows, in batch order.
    pub rows: Vec<u32>,
}

/// `Modality_drop.execute_drop` for given draws: `keep[m][b]` says whether row b keeps modality
/// m; kept features are divided by `1 - theta`, `theta = sum_m D_m q_m / sum_m D_m`; rows that
/// keep no modality are removed.
pub fn opm_drop(features: &[Tensor], q: &[f64], keep: &[Vec<bool>]) -> Result<OpmDrop> {
    if features.len() != q.len() || features.len() != keep.len() {
        bail!(
            "opm: {} features, {} probabilities and {} masks",
            features.len(),
            q.len(),
            keep.len()
        );
    }
    let dims: Vec<usize> = features
        .iter()
        .map(|f| f.dim(1))
        .collect::<candle_core::Result<_>>()?;
    let d_sum: usize = dims.iter().sum();
    let theta = dims.iter().zip(q).map(|(&d, &q)| d as f64 * q).sum::<f64>() / d_sum as f64;
    let b = features[0].dim(0)?;
    let rows: Vec<u32> = (0..b)
        .filter(|&i| keep.iter().any(|k| k[i]))
        .map(|i| i as u32)
        .collect();
    let index = Tensor::new(rows.as_slice(), features[0].device())?;
    let mut out = Vec::with_capacity(features.len());
    for (f, k) in features.iter().zip(keep) {
        let mask: Vec<f32> = k.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, (b, 1), f.device())?.to_dtype(f.dtype())?;
        let dropped = (f.broadcast_mul(&mask)? / (1.0 - theta))?;
        out.push(if rows.len() == b {
            dropped
        } else {
            dropped.index_select(&index, 0)?
        });
    }
    Ok(OpmDrop {
        features: out,
        rows,
    })
}

struct Opm {
    opts: Options,
    run_seed: u64,
    /// Per epoch: the sums of each modality's q, steps after the warm-up, steps that dropped.
    q_sum: Vec<f64>,
    steps: usize,
    executed: usize,
    names: Vec<String>,
}

impl BalanceMethod for Opm {
    fn name(&self) -> &'static str {
        "opm"
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

    fn epoch_plan(&mut self, ctx: &crate::EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        self.run_seed = ctx.seed;
        self.names = ctx.model.modalities.clone();
        self.q_sum = vec![0.0; self.names.len()];
        (self.steps, self.executed) = (0, 0);
        Ok(None)
    }

    /// The fused cross-entropy of the head run on dropped features (or on the features as they
    /// are, in the warm-up and when the batch does not drop); a batch in which no row keeps a
    /// modality takes no step, as the reference's `continue`.
    fn step_gradients(
        &mut self,
        ctx: &StepCtx,
        out: &ForwardOut,
    ) -> Result<Option<(Tensor, Grads)>> {
        if ctx.epoch < self.opts.start_epoch {
            return Ok(None);
        }
        let scores = out
            .unimodal_logits
            .iter()
            .map(|l| crate::true_class_score(l, ctx.labels))
            .collect::<candle_core::Result<Vec<f64>>>()?;
        let q = opm_drop_probabilities(&scores, self.opts.q_base, self.opts.lam);
        if self.q_sum.len() == q.len() {
            for (s, v) in self.q_sum.iter_mut().zip(&q) {
                *s += v;
            }
        }
        self.steps += 1;
        let stream = self.opts.seed ^ self.run_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = ChaCha8Rng::seed_from_u64(
            stream ^ (ctx.step as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        );
        // The reference's `np.random.rand(1) >= 1 - p_exe`.
        if rng.random::<f64>() < 1.0 - self.opts.p_exe {
            return Ok(None);
        }
        self.executed += 1;
        let b = ctx.labels.dim(0)?;
        // Bernoulli(1 - q_m) per row and modality, modality by modality.
        let keep: Vec<Vec<bool>> = q
            .iter()
            .map(|&qm| (0..b).map(|_| rng.random::<f64>() < 1.0 - qm).collect())
            .collect();
        // Rows a resampling plan zeroed stay zeroed.
        let features = mmbal_fusion::mask_features(&out.features, ctx.keep)?;
        let drop = opm_drop(&features, &q, &keep)?;
        if drop.rows.is_empty() {
            let zero = Tensor::zeros((), DType::F32, ctx.labels.device())?;
            return Ok(Some((zero, Grads::none())));
        }
        let index = Tensor::new(drop.rows.as_slice(), ctx.labels.device())?;
        let labels = ctx.labels.index_select(&index, 0)?;
        let logits = ctx.model.head.forward(&drop.features, None)?.fused;
        let loss = candle_nn::loss::cross_entropy(&logits, &labels)?;
        // The reference's loss is the cross-entropy; the theta term only adds its gradient.
        let backward = if self.opts.theta_gradient {
            (&loss
                + opm_theta_term(
                    ctx.model,
                    &features,
                    ctx.labels,
                    self.opts.q_base,
                    self.opts.lam,
                )?)?
        } else {
            loss.clone()
        };
        let grads = Grads {
            store: backward.backward()?,
        };
        Ok(Some((loss, grads)))
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let n = self.steps.max(1) as f64;
        let mut out: Vec<(String, f64)> = self
            .names
            .iter()
            .zip(&self.q_sum)
            .map(|(m, s)| (format!("opm_q_{m}"), s / n))
            .collect();
        out.push(("opm_executed".into(), self.executed as f64 / n));
        out
    }
}

/// Builds `opm` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("opm", options)?;
    for (name, v) in [("q_base", opts.q_base), ("p_exe", opts.p_exe)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("opm: {name} = {v} must be a probability");
        }
    }
    if !(opts.lam.is_finite() && opts.lam >= 0.0) {
        bail!("opm: lam = {} must be finite and not negative", opts.lam);
    }
    Ok(Box::new(Opm {
        opts,
        run_seed: 0,
        q_sum: Vec::new(),
        steps: 0,
        executed: 0,
        names: Vec::new(),
    }))
}
