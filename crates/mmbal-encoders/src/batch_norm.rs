//! BatchNorm2d as PyTorch computes it: training mode normalises with the biased batch variance
//! and updates the running statistics with momentum (default 0.1) and the unbiased variance;
//! evaluation mode uses the running statistics. The running statistics are plain tensors kept
//! outside any optimizer. The arithmetic is `mmbal_ops`' (fused on the CPU).

use candle_core::{DType, Device, Result, Tensor, Var};
use mmbal_ops::{batch_norm_eval, batch_norm_train};
use std::sync::Mutex;

/// BatchNorm over the channels of `(N, C, H, W)` maps with PyTorch's semantics: batch statistics in
/// training (the running ones updated with the unbiased variance), running statistics in
/// evaluation.
pub struct BatchNorm2d {
    /// Per-channel scale (gamma).
    pub weight: Var,
    /// Per-channel shift (beta).
    pub bias: Var,
    running: Mutex<(Tensor, Tensor)>,
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the batch statistic in the running-statistics update.
    pub momentum: f64,
}

impl BatchNorm2d {
    /// Weight 1, bias 0, running mean 0 and variance 1, eps 1e-5, momentum 0.1.
    pub fn new(channels: usize, device: &Device) -> Result<BatchNorm2d> {
        Ok(BatchNorm2d {
            weight: Var::ones(channels, DType::F32, device)?,
            bias: Var::zeros(channels, DType::F32, device)?,
            running: Mutex::new((
                Tensor::zeros(channels, DType::F32, device)?,
                Tensor::ones(channels, DType::F32, device)?,
            )),
            eps: 1e-5,
            momentum: 0.1,
        })
    }

    /// `(running_mean, running_var)`.
    pub fn running_stats(&self) -> (Tensor, Tensor) {
        self.running.lock().unwrap().clone()
    }

    /// Replaces `(running_mean, running_var)` (checkpoints, pretrained weights).
    pub fn set_running_stats(&self, mean: Tensor, var: Tensor) {
        *self.running.lock().unwrap() = (mean, var);
    }

    /// Normalises `x`: batch statistics when `train` (and the running ones move), running
    /// statistics otherwise.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (w, b) = (self.weight.as_tensor(), self.bias.as_tensor());
        if !train {
            let (rm, rv) = self.running_stats();
            return batch_norm_eval(x, w, b, &rm, &rv, self.eps);
        }
        let (y, mean, var) = batch_norm_train(x, w, b, self.eps)?;
        let (n, _, h, wd) = x.dims4()?;
        self.update_running(&mean, &var, (n * h * wd) as f64)?;
        Ok(y)
    }

    /// Running statistics from a batch's per-channel mean and biased variance over `count`
    /// values: momentum `m`, the variance made unbiased, as PyTorch does.
    fn update_running(&self, mean: &Tensor, var: &Tensor, count: f64) -> Result<()> {
        let mut running = self.running.lock().unwrap();
        let m = self.momentum;
        let new_mean = ((&running.0 * (1.0 - m))? + (mean * m)?)?;
        let unbiased = (var * (count / (count - 1.0).max(1.0)))?;
        let new_var = ((&running.1 * (1.0 - m))? + (unbiased * m)?)?;
        *running = (new_mean, new_var);
        Ok(())
    }
}

/// Sets `running_mean` or `running_var` of `bn` by its PyTorch name.
pub(crate) fn set_named_stat(bn: &BatchNorm2d, stat: &str, value: Tensor) -> Result<()> {
    let (mean, var) = bn.running_stats();
    let want = mean.dims().to_vec();
    if value.dims() != want.as_slice() {
        candle_core::bail!("{stat}: shape {:?}, expected {want:?}", value.dims());
    }
    let value = value.to_device(mean.device())?.to_dtype(mean.dtype())?;
    match stat {
        "running_mean" => bn.set_running_stats(value, var),
        "running_var" => bn.set_running_stats(mean, value),
        _ => candle_core::bail!("unknown BatchNorm buffer `{stat}`"),
    }
    Ok(())
}
