//! Dynamic loss scaling for bf16 mixed precision, PyTorch's `torch.amp.GradScaler` rule: the loss
//! is multiplied by the scale before backward and the gradients divided by it after; a step
//! whose gradients are not finite is skipped and the scale halved; after `growth_interval`
//! steps in a row with finite gradients the scale doubles. PyTorch's defaults: start 2^16,
//! factors 2 and 0.5, interval 2000.
//!
//! As PyTorch's scaler, the scale never grows past f32's range (the loss is f32). Unlike it,
//! which halves forever, a run stops when [`MAX_SKIPS_IN_A_ROW`] steps in a row were skipped:
//! the scale is then 2^-39 of where the skipping began, so the gradients are not overflowing but
//! broken, and going on would train nothing without a word. A non-finite loss (which no scale
//! causes: the loss is computed before scaling) stops the run, as in f32, where PyTorch's scaler
//! would skip the step.

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Skipped steps in a row after which the run stops.
pub const MAX_SKIPS_IN_A_ROW: usize = 40;

/// The scale and its counters. Kept in checkpoints, so a resumed run scales as the original.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    scale: f64,
    growth_interval: usize,
    /// Steps with finite gradients since the scale last changed.
    good_in_a_row: usize,
    skips_in_a_row: usize,
    /// Steps skipped since [`LossScaler::take_skipped`] was last called.
    skipped: usize,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler::new(65536.0, 2000)
    }
}

impl LossScaler {
    /// A scaler starting at `scale`, doubling after `growth_interval` good steps.
    pub fn new(scale: f64, growth_interval: usize) -> LossScaler {
        LossScaler {
            scale,
            growth_interval: growth_interval.max(1),
            good_in_a_row: 0,
            skips_in_a_row: 0,
            skipped: 0,
        }
    }

    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The loss to run backward on: `loss * scale`.
    pub fn scaled(&self, loss: &Tensor) -> Result<Tensor> {
        Ok((loss * self.scale)?)
    }

    /// Divides the gradients of `params` in `store` by the scale (the store's other entries,
    /// gradients of intermediate values, are left as they are: nothing reads them).
    pub fn unscale(&self, store: &mut GradStore, params: &[Var]) -> Result<()> {
        let inv = 1.0 / self.scale;
        for v in params {
            if let Some(g) = store.get(v) {
                let g = (g * inv)?;
                store.insert(v, g);
            }
        }
        Ok(())
    }

    /// A step whose gradient `what` was not finite: the step is skipped and the scale halved.
    /// An error once [`MAX_SKIPS_IN_A_ROW`] steps in a row were skipped.
    pub fn skip(&mut self, what: &str) -> Result<()> {
        self.skips_in_a_row += 1;
        self.skipped += 1;
        self.good_in_a_row = 0;
        if self.skips_in_a_row >= MAX_SKIPS_IN_A_ROW {
            bail!(
                "the gradient of {what} was not finite in {} steps in a row, with the loss scale \
                 halved each time down to {:e}: not an overflow the scale can fix; the run stops",
                self.skips_in_a_row,
                self.scale
            );
        }
        self.scale *= 0.5;
        Ok(())
    }

    /// A step taken with finite gradients.
    pub fn stepped(&mut self) {
        self.skips_in_a_row = 0;
        self.good_in_a_row += 1;
        if self.good_in_a_row >= self.growth_interval {
            // PyTorch keeps the scale when the doubled one is not finite in f32.
            if ((self.scale * 2.0) as f32).is_finite() {
                self.scale *= 2.0;
            }
            self.good_in_a_row = 0;
        }
    }

    /// Steps skipped since the last call (for the epoch's record).
    pub fn take_skipped(&mut self) -> usize {
        std::mem::take(&mut self.skipped)
    }

    /// The state for a checkpoint's metadata: scale, good steps in a row, skips in a row,
    /// growth interval.
    pub fn to_meta(&self) -> String {
        format!(
            "{} {} {} {}",
            self.scale, self.good_in_a_row, self.skips_in_a_row, self.growth_interval
        )
    }

    /// Restores [`LossScaler::to_meta`]'s state.
    pub fn load_meta(&mut self, meta: &str) -> Result<()> {
        let parts: Vec<&str> = meta.split_whitespace().collect();
        let [scale, good, skips, interval] = parts[..] else {
            bail!(
                "loss scale state `{meta}`: expected `scale good_in_a_row skips_in_a_row \
                 growth_interval`"
            );
        };
        let scale: f64 = scale.parse()?;
        if !(scale.is_finite() && scale > 0.0) {
            bail!("loss scale state `{meta}`: the scale must be positive and finite");
        }
        self.scale = scale;
        self.good_in_a_row = good.parse()?;
        self.skips_in_a_row = skips.parse()?;
        self.growth_interval = interval.parse::<usize>()?.max(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_skips_doubles_after_the_interval_and_stops_on_endless_skips() {
        let mut s = LossScaler::new(1024.0, 3);
        s.skip("w").unwrap();
        assert_eq!(s.scale(), 512.0);
        s.stepped();
        s.stepped();
        assert_eq!(s.scale(), 512.0);
        s.stepped();
        assert_eq!(s.scale(), 1024.0);
        // A skip resets the run of good steps.
        s.stepped();
        s.stepped();
        s.skip("w").unwrap();
        s.stepped();
        s.stepped();
        assert_eq!(s.scale(), 512.0);
        assert_eq!(s.take_skipped(), 2);
        assert_eq!(s.take_skipped(), 0);
        let mut restored = LossScaler::new(1.0, 2000);
        restored.load_meta(&s.to_meta()).unwrap();
        assert_eq!(restored, s);
        // The scale stays inside f32's range.
        let mut top = LossScaler::new(f32::MAX as f64 / 1.5, 1);
        top.stepped();
        assert_eq!(top.scale(), f32::MAX as f64 / 1.5);
        for _ in 0..MAX_SKIPS_IN_A_ROW - 1 {
            s.skip("w").unwrap();
        }
        let err = s.skip("w").unwrap_err().to_string();
        assert!(err.contains("40 steps in a row"), "{err}");
    }
}
