//! Per-modality ratios of a score against the other modalities (OGM's discrepancy ratio, PMR's
//! rho) and their per-epoch means for the log.

use candle_core::{DType, Result, Tensor};

/// The summed softmax probability of the true class, `sum_i softmax(logits_i)[labels_i]`, over a
/// `(B, C)` batch (OGM's and PMR's per-modality score; the gradient does not flow through it).
pub fn true_class_score(logits: &Tensor, labels: &Tensor) -> Result<f64> {
    let p = candle_nn::ops::softmax_last_dim(&logits.detach())?;
    p.gather(&labels.unsqueeze(1)?, 1)?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

/// `rho_m = s_m / mean of the other scores`; for two modalities `s_a / s_v` and its inverse.
pub fn ratios_against_others(scores: &[f64]) -> Vec<f64> {
    let m = scores.len();
    let total: f64 = scores.iter().sum();
    scores
        .iter()
        .map(|&s| s / ((total - s) / (m - 1).max(1) as f64))
        .collect()
}

/// Sums of per-step coefficients and ratios, reported as epoch means.
#[derive(Default)]
pub(crate) struct RatioLog {
    names: Vec<String>,
    coeff_sum: Vec<f64>,
    rho_sum: Vec<f64>,
    steps: usize,
}

impl RatioLog {
    /// Starts an epoch for these modalities.
    pub fn reset(&mut self, names: &[String]) {
        self.names = names.to_vec();
        self.coeff_sum = vec![0.0; names.len()];
        self.rho_sum = vec![0.0; names.len()];
        self.steps = 0;
    }

    pub fn add(&mut self, coeff: &[f64], rho: &[f64]) {
        if self.coeff_sum.len() != coeff.len() {
            self.coeff_sum = vec![0.0; coeff.len()];
            self.rho_sum = vec![0.0; coeff.len()];
        }
        for i in 0..coeff.len() {
            self.coeff_sum[i] += coeff[i];
            self.rho_sum[i] += rho[i];
        }
        self.steps += 1;
    }

    /// `<prefix>_coeff_<modality>` and `<prefix>_ratio_<modality>`, means over the epoch's steps.
    pub fn diagnostics(&self, prefix: &str) -> Vec<(String, f64)> {
        let n = self.steps.max(1) as f64;
        let mut out = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            if let (Some(c), Some(r)) = (self.coeff_sum.get(i), self.rho_sum.get(i)) {
                out.push((format!("{prefix}_coeff_{name}"), c / n));
                out.push((format!("{prefix}_ratio_{name}"), r / n));
            }
        }
        out
    }
}
