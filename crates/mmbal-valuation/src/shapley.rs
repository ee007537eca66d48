//! Exact Shapley values over modality subsets.
//!
//! A subset S of the M modalities is a bit mask (bit m set = modality m present). For one sample,
//! `v[S]` is the benefit of predicting with only the modalities in S, `v[0] = 0`. The contribution
//! of modality i is
//! `phi_i = sum over S without i of |S|! (M - |S| - 1)! / M! * (v[S + i] - v[S])`.
//! All 2^M subsets are evaluated, so the cost doubles with every modality (M = 2: 3 predictions
//! per sample, M = 3: 7, M = 10: 1023).

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// What a prediction with a subset S is worth for one sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Benefit {
    /// `|S|` if the top-1 prediction is the label, else 0 (Wei et al., the default).
    #[default]
    SizeIfCorrect,
    /// 1 if the top-1 prediction is the label, else 0.
    Correct,
    /// The softmax probability of the label.
    TrueClassProb,
}

impl Benefit {
    /// The benefit of one prediction: `logits` of one sample (C values), `label`, `size` = |S|.
    pub fn of(&self, logits: &[f32], label: usize, size: usize) -> f64 {
        let top = logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 {
                    (i, x)
                } else {
                    best
                }
            })
            .0;
        match self {
            Benefit::SizeIfCorrect => {
                if top == label {
                    size as f64
                } else {
                    0.0
                }
            }
            Benefit::Correct => (top == label) as u8 as f64,
            Benefit::TrueClassProb => {
                let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let z: f64 = logits.iter().map(|&x| (x as f64 - max).exp()).sum();
                (logits[label] as f64 - max).exp() / z
            }
        }
    }
}

fn factorial(n: usize) -> f64 {
    (1..=n).map(|k| k as f64).product()
}

/// Shapley values of `m` players from the benefits of all `2^m` subsets (`v[mask]`, `v[0]`
/// ignored and taken as 0).
pub fn shapley_values(v: &[f64], m: usize) -> Result<Vec<f64>> {
    if v.len() != 1 << m {
        bail!(
            "{m} modalities need 2^{m} = {} subset values, got {}",
            1 << m,
            v.len()
        );
    }
    let total = factorial(m);
    let weight: Vec<f64> = (0..m)
        .map(|s| factorial(s) * factorial(m - s - 1) / total)
        .collect();
    let value = |mask: usize| if mask == 0 { 0.0 } else { v[mask] };
    Ok((0..m)
        .map(|i| {
            let bit = 1 << i;
            (0..1usize << m)
                .filter(|s| s & bit == 0)
                .map(|s| weight[s.count_ones() as usize] * (value(s | bit) - value(s)))
                .sum()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_player_closed_form() {
        // phi_a = (v(a) + v(av) - v(v)) / 2
        let v = [0.0, 1.0, 0.0, 2.0]; // a right, v wrong, av right
        assert_eq!(shapley_values(&v, 2).unwrap(), vec![1.5, 0.5]);
        assert!(shapley_values(&v, 3).is_err());
    }

    #[test]
    fn benefits() {
        let logits = [0.1f32, 2.0, -1.0];
        assert_eq!(Benefit::SizeIfCorrect.of(&logits, 1, 2), 2.0);
        assert_eq!(Benefit::SizeIfCorrect.of(&logits, 0, 2), 0.0);
        assert_eq!(Benefit::Correct.of(&logits, 1, 2), 1.0);
        let z = 0.1f64.exp() + 2f64.exp() + (-1f64).exp();
        assert!((Benefit::TrueClassProb.of(&logits, 1, 1) - 2f64.exp() / z).abs() < 1e-6);
    }
}
