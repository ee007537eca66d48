//! BatchNorm2d as PyTorch computes it: training mode normalises with the biased batch variance
//! and updates the running statistics with momentum (default 0.1) and the unbiased variance;
//! evaluation mode uses the running statistics. The running statistics are plain tensors kept
//! outside any optimizer.

use crate::batch_norm_op::{BatchNormTrain, BatchStats};
use candle_core::{DType, Device, Result, Tensor, Var};
use std::sync::Mutex;

pub struct BatchNorm2d {
    pub weight: Var,
    pub bias: Var,
    running: Mutex<(Tensor, Tensor)>,
    pub eps: f64,
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

    pub fn set_running_stats(&self, mean: Tensor, var: Tensor) {
        *self.running.lock().unwrap() = (mean, var);
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if train && x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.forward_train_fused(x);
        }
        let c = self.weight.dim(0)?;
        let shape = (1, c, 1, 1);
        if !train {
            // Evaluation: one per-channel affine map, `x * scale + shift` with
            // `scale = w / sqrt(running_var + eps)` and `shift = b - running_mean * scale`
            // computed on the (C) vectors: two passes over x instead of four.
            let (rm, rv) = self.running_stats();
            let scale = self.weight.as_tensor().div(&(rv + self.eps)?.sqrt()?)?;
            let shift = self.bias.as_tensor().sub(&rm.mul(&scale)?)?;
            return x
                .broadcast_mul(&scale.reshape(shape)?)?
                .broadcast_add(&shift.reshape(shape)?);
        }
        let (mean, var) = {
            let (n, _, h, w) = x.dims4()?;
            let count = (n * h * w) as f64;
            let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
            let centred = x.broadcast_sub(&mean)?;
            let var = centred
                .sqr()?
                .mean_keepdim(0)?
                .mean_keepdim(2)?
                .mean_keepdim(3)?;
            self.update_running(
                &mean.flatten_all()?.detach(),
                &var.flatten_all()?.detach(),
                count,
            )?;
            (mean, var)
        };
        let xhat = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + self.eps)?.sqrt()?)?;
        xhat.broadcast_mul(&self.weight.reshape(shape)?)?
            .broadcast_add(&self.bias.reshape(shape)?)
    }
}

impl BatchNorm2d {
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

    /// Training-mode forward on the CPU through the fused op (`batch_norm_op`), then the running
    /// statistics from the batch's mean and biased variance, as the composed path does.
    fn forward_train_fused(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let stats: BatchStats = Default::default();
        let y = x.contiguous()?.apply_op3(
            self.weight.as_tensor(),
            self.bias.as_tensor(),
            BatchNormTrain {
                eps: self.eps,
                stats: stats.clone(),
            },
        )?;
        let Some((mean, var)) = stats.lock().unwrap().take() else {
            candle_core::bail!("batch norm: the fused forward left no statistics");
        };
        let dev = x.device();
        self.update_running(
            &Tensor::from_vec(mean, c, dev)?,
            &Tensor::from_vec(var, c, dev)?,
            (n * h * w) as f64,
        )?;
        Ok(y)
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
