//! Learning-rate schedules, stepped once per epoch as PyTorch's `StepLR` and
//! `CosineAnnealingLR` are in the field's code.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule, chosen by `kind` (default constant); see [`Schedule::lr`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Schedule {
    /// The base learning rate every epoch.
    #[default]
    Constant,
    /// `lr = base * gamma^(epoch / step_size)` (integer division).
    Step {
        /// Epochs between decays (0 counts as 1).
        step_size: usize,
        /// Factor the learning rate is multiplied by every `step_size` epochs.
        gamma: f64,
    },
    /// `lr = eta_min + (base - eta_min) * (1 + cos(pi * epoch / t_max)) / 2`; `t_max` defaults
    /// to the number of epochs.
    Cosine {
        /// Epochs from `base` down to `eta_min` (default: the run's number of epochs).
        #[serde(default)]
        t_max: Option<usize>,
        /// The lowest learning rate, reached at epoch `t_max` (default 0).
        #[serde(default)]
        eta_min: f64,
    },
}

impl Schedule {
    /// The learning rate of 0-based `epoch`.
    pub fn lr(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / (*step_size).max(1)) as i32)
            }
            Schedule::Cosine { t_max, eta_min } => {
                let t = t_max.unwrap_or(epochs).max(1) as f64;
                eta_min
                    + (base - eta_min) * (1.0 + (std::f64::consts::PI * epoch as f64 / t).cos())
                        / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_and_cosine_by_hand() {
        let s = Schedule::Step {
            step_size: 2,
            gamma: 0.1,
        };
        let lrs: Vec<f64> = (0..5).map(|e| s.lr(1.0, e, 5)).collect();
        let want = [1.0, 1.0, 0.1, 0.1, 0.01];
        for (a, b) in lrs.iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        let c = Schedule::Cosine {
            t_max: Some(4),
            eta_min: 0.0,
        };
        assert!((c.lr(2.0, 0, 9) - 2.0).abs() < 1e-12);
        assert!((c.lr(2.0, 2, 9) - 1.0).abs() < 1e-12);
        assert!((c.lr(2.0, 1, 9) - (1.0 + 0.5f64.sqrt())).abs() < 1e-12);
        assert!(c.lr(2.0, 4, 9).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.3, 7, 9), 0.3);
    }
}
