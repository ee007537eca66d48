//! Opt-in measurements the trainer takes for any method, beside the method's own diagnostics.

use anyhow::Result;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// OGM's discrepancy ratio for any method (`monitor_score_ratio`): each modality's summed
/// true-class probability over an epoch's training batches (its unimodal logits, train mode),
/// over the mean of the other modalities' sums.
pub(crate) struct ScoreRatio {
    sums: Vec<f64>,
}

impl ScoreRatio {
    pub fn new(modalities: usize) -> ScoreRatio {
        ScoreRatio {
            sums: vec![0.0; modalities],
        }
    }

    /// Starts an epoch.
    pub fn reset(&mut self) {
        self.sums.iter_mut().for_each(|s| *s = 0.0);
    }

    /// Adds one batch: its unimodal logits `(B, C)` per modality and labels `(B,)`.
    pub fn add(&mut self, unimodal_logits: &[Tensor], labels: &Tensor) -> Result<()> {
        for (sum, l) in self.sums.iter_mut().zip(unimodal_logits) {
            *sum += mmbal_methods::true_class_score(l, labels)?;
        }
        Ok(())
    }

    /// The epoch's ratio per modality name.
    pub fn ratios(&self, modalities: &[String]) -> BTreeMap<String, f64> {
        modalities
            .iter()
            .cloned()
            .zip(mmbal_methods::ratios_against_others(&self.sums))
            .collect()
    }
}
