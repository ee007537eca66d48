//! BatchNorm2d as PyTorch computes it: training mode normalises with the biased batch variance
//! and updates the running statistics with momentum (default 0.1) and the unbiased variance;
//! evaluation mode uses the running statistics. The arithmetic is `mmbal_ops`' (fused on the CPU).
//!
//! Not candle-nn's `BatchNorm`, though its running statistics follow PyTorch too (checked on the
//! same fixture in tests/fixtures.rs): the CPU path here is one fused kernel with a hand-written
//! backward, where candle-nn's is a dozen element-wise ops under autograd. The variables are
//! candle-nn's all the same: `weight`, `bias`, `running_mean` and `running_var` come from the
//! layer's `VarBuilder` path, so the running statistics sit in the model's `VarMap` as in
//! candle-nn, named as PyTorch names them; the forward pass updates them in place and no optimizer
//! is given them.

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use mmbal_ops::{batch_norm_eval, batch_norm_train_running};

/// BatchNorm over the channels of `(N, C, H, W)` maps with PyTorch's semantics: batch statistics in
/// training (the running ones updated with the unbiased variance), running statistics in
/// evaluation.
pub struct BatchNorm2d {
    /// Per-channel scale (gamma).
    pub weight: Var,
    /// Per-channel shift (beta).
    pub bias: Var,
    running_mean: Var,
    running_var: Var,
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the batch statistic in the running-statistics update.
    pub momentum: f64,
}

impl BatchNorm2d {
    /// `weight` 1, `bias` 0, `running_mean` 0 and `running_var` 1 under `vb`'s path; eps 1e-5,
    /// momentum 0.1.
    pub fn new(channels: usize, vb: VarBuilder) -> Result<BatchNorm2d> {
        let var = |name: &str, value: f64| -> Result<Var> {
            Var::from_tensor(&vb.get_with_hints(channels, name, Init::Const(value))?)
        };
        Ok(BatchNorm2d {
            weight: var("weight", 1.0)?,
            bias: var("bias", 0.0)?,
            running_mean: var("running_mean", 0.0)?,
            running_var: var("running_var", 1.0)?,
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// A copy of `(running_mean, running_var)` as they are now.
    pub fn running_stats(&self) -> Result<(Tensor, Tensor)> {
        Ok((
            self.running_mean.as_tensor().copy()?,
            self.running_var.as_tensor().copy()?,
        ))
    }

    /// Replaces `(running_mean, running_var)` (checkpoints, pretrained weights); shapes must match.
    pub fn set_running_stats(&self, mean: &Tensor, var: &Tensor) -> Result<()> {
        self.running_mean.set(mean)?;
        self.running_var.set(var)
    }

    /// The running statistics' variables (updated by the forward pass, never by an optimizer).
    pub fn buffers(&self) -> [Var; 2] {
        [self.running_mean.clone(), self.running_var.clone()]
    }

    /// Normalises `x`: batch statistics when `train` (and the running ones move), running
    /// statistics otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        if !train {
            // Detached: no gradient is ever wanted for a running statistic.
            let rm = self.running_mean.as_tensor().detach();
            let rv = self.running_var.as_tensor().detach();
            return batch_norm_eval(x, w, b, &rm, &rv, self.eps);
        }
        // The running statistics move as PyTorch's do (momentum, unbiased variance).
        batch_norm_train_running(
            x,
            w,
            b,
            (&self.running_mean, &self.running_var),
            self.momentum,
            self.eps,
        )
    }
}
