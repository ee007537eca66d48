//! Batch normalisation of `(N, C, H, W)` maps as PyTorch computes it, without the running
//! statistics (those belong to the layer): [`batch_norm_train`] normalises with the batch's mean
//! and biased variance and returns them; [`batch_norm_eval`] applies given statistics.
//!
//! On the CPU the training forward and its backward are two fused passes (custom ops); on CUDA
//! both are cuDNN's (`cuda::batch_norm`). Composed
//! from candle ops, the forward is a dozen tensor ops and its backward a chain of broadcast
//! reductions that candle runs on one thread; here each channel's statistics, and each plane's
//! output, are computed in parallel, in f64 accumulation, with PyTorch's formulas:
//!
//! * forward: `mean`, biased `var` over (N, H, W); `y = (x - mean) / sqrt(var + eps) * w + b`;
//! * backward: with `xhat = (x - mean) * invstd` and `M = N * H * W`, `db = sum dy`,
//!   `dw = sum dy * xhat`, `dx = w * invstd / M * (M * dy - db - xhat * dw)`.

use crate::contiguous_f32;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::{Arc, Mutex};

/// Per-channel mean and biased variance of the last forward, handed out of the op.
type BatchStats = Arc<Mutex<Option<(Vec<f32>, Vec<f32>)>>>;

/// Training-mode batch norm of an `(N, C, H, W)` map with per-channel `weight` and `bias`:
/// `(y, mean, var)`, the batch's per-channel mean and biased variance as detached `(C)` tensors
/// (for the caller's running statistics). Gradients flow to `x`, `weight` and `bias`.
pub fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    if x.dtype() == DType::BF16 {
        // Statistics and arithmetic in f32, the output rounded to bf16 (see the crate docs).
        let (y, mean, var) = batch_norm_train(&x.to_dtype(DType::F32)?, weight, bias, eps)?;
        return Ok((y.to_dtype(DType::BF16)?, mean, var));
    }
    let (n, c, h, w) = x.dims4()?;
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F32 {
        let saved: crate::cuda::batch_norm::Slot = Default::default();
        let y = x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            cuda_norm::BatchNormCuda {
                eps,
                saved: saved.clone(),
                running: None,
            },
        )?;
        let (mean, unbiased) = crate::cuda::batch_norm::statistics(&saved, x.device())?;
        let m = (n * h * w) as f64;
        return Ok((y, mean, (unbiased * ((m - 1.0) / m))?));
    }
    let _ = (n, h, w);
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        let stats: BatchStats = Default::default();
        let y = x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            BatchNormTrain {
                eps,
                stats: stats.clone(),
            },
        )?;
        let Some((mean, var)) = stats.lock().unwrap().take() else {
            bail!("batch norm: the fused forward left no statistics");
        };
        let dev = x.device();
        return Ok((
            y,
            Tensor::from_vec(mean, c, dev)?,
            Tensor::from_vec(var, c, dev)?,
        ));
    }
    let shape = (1, c, 1, 1);
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let var = x
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .mean_keepdim(2)?
        .mean_keepdim(3)?;
    let y = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&weight.reshape(shape)?)?
        .broadcast_add(&bias.reshape(shape)?)?;
    Ok((y, mean.flatten_all()?.detach(), var.flatten_all()?.detach()))
}

/// Training-mode batch norm that also moves the running statistics in place, PyTorch's rule:
/// `running = (1 - momentum) * running + momentum * batch`, the batch variance made unbiased
/// (`count / (count - 1)`). Returns `y`. On CUDA cuDNN updates the buffers in the same pass;
/// elsewhere [`batch_norm_train`] and the update as candle ops.
pub fn batch_norm_train_running(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    (running_mean, running_var): (&candle_core::Var, &candle_core::Var),
    momentum: f64,
    eps: f64,
) -> Result<Tensor> {
    let moved = |x: &Tensor| {
        batch_norm_train_running(x, weight, bias, (running_mean, running_var), momentum, eps)
    };
    if let Some(y) = crate::through_f32(x, moved)? {
        return Ok(y);
    }
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() && x.dtype() == DType::F32 {
        let address = |v: &candle_core::Var| -> Result<u64> {
            crate::cuda::tensor_ptr("batch norm", v.as_tensor(), "running statistic")
        };
        let c = x.dim(1)?;
        if running_mean.elem_count() != c || running_var.elem_count() != c {
            bail!(
                "batch norm: {c} channels, running statistics {:?} and {:?}",
                running_mean.shape(),
                running_var.shape()
            );
        }
        // The addresses stay valid: the layer owns the variables beyond this call, and cuDNN
        // writes them on candle's stream, as `Var::set` would.
        let running = crate::cuda::batch_norm::Running {
            mean: address(running_mean)?,
            var: address(running_var)?,
            momentum,
        };
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            cuda_norm::BatchNormCuda {
                eps,
                saved: Default::default(),
                running: Some(running),
            },
        );
    }
    let (y, mean, var) = batch_norm_train(x, weight, bias, eps)?;
    let (n, _, h, w) = x.dims4()?;
    let count = (n * h * w) as f64;
    let m = momentum;
    let new_mean = ((running_mean.as_tensor().detach() * (1.0 - m))? + (mean * m)?)?;
    let unbiased = (var * (count / (count - 1.0).max(1.0)))?;
    let new_var = ((running_var.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?;
    running_mean.set(&new_mean.detach())?;
    running_var.set(&new_var.detach())?;
    Ok(y)
}

/// Evaluation-mode batch norm with given per-channel `mean` and `var`: one per-channel affine
/// map, `x * scale + shift` with `scale = w / sqrt(var + eps)` and `shift = b - mean * scale`
/// computed on the `(C)` vectors (two passes over x instead of four).
pub fn batch_norm_eval(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    // A bf16 `x` is handled by `channel_affine`; the statistics stay f32.
    let scale = weight.div(&(var + eps)?.sqrt()?)?;
    let shift = bias.sub(&mean.mul(&scale)?)?;
    crate::channel::channel_affine(x, &scale, &shift)
}

struct BatchNormTrain {
    eps: f64,
    stats: BatchStats,
}

/// Mean and biased variance of every channel of an `(n, c, hw)` array (two passes, f64).
fn channel_stats(x: &[f32], n: usize, c: usize, hw: usize) -> Vec<(f64, f64)> {
    crate::pool::map(c, |ch| {
        let planes = || (0..n).map(move |i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw]);
        let m = (n * hw) as f64;
        let mean = planes()
            .map(|p| p.iter().map(|&v| v as f64).sum::<f64>())
            .sum::<f64>()
            / m;
        let var = planes()
            .map(|p| p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>())
            .sum::<f64>()
            / m;
        (mean, var)
    })
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "mmbal-batch-norm-train"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (x, weight, bias) = (
            contiguous_f32("batch norm", xs, xl, "x")?,
            contiguous_f32("batch norm", ws, wl, "weight")?,
            contiguous_f32("batch norm", bs, bl, "bias")?,
        );
        let hw = h * w;
        let stats = channel_stats(x, n, c, hw);
        let mut y = vec![0f32; x.len()];
        crate::pool::for_each_chunk(&mut y, hw.max(1), |p, out| {
            let ch = p % c;
            let (mean, var) = stats[ch];
            let invstd = 1.0 / (var + self.eps).sqrt();
            let (scale, shift) = (invstd * weight[ch] as f64, bias[ch] as f64);
            for (o, &v) in out.iter_mut().zip(&x[p * hw..(p + 1) * hw]) {
                *o = ((v as f64 - mean) * scale + shift) as f32;
            }
        });
        *self.stats.lock().unwrap() = Some((
            stats.iter().map(|s| s.0 as f32).collect(),
            stats.iter().map(|s| s.1 as f32).collect(),
        ));
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &weight.contiguous()?,
            &BatchNormTrainBackward { eps: self.eps },
        )?;
        unpack_backward(&packed, x, weight.dim(0)?)
    }
}

/// The gradients of `x`, the weight and the bias from the backward ops' one packed result:
/// `dx` (as `x`), then `dw` and `db` (`c` each).
fn unpack_backward(
    packed: &Tensor,
    x: &Tensor,
    c: usize,
) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
    let len = x.elem_count();
    let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
    let dw = packed.narrow(0, len, c)?;
    let db = packed.narrow(0, len + c, c)?;
    Ok((Some(dx), Some(dw), Some(db)))
}

struct BatchNormTrainBackward {
    eps: f64,
}

impl CustomOp3 for BatchNormTrainBackward {
    fn name(&self) -> &'static str {
        "mmbal-batch-norm-train-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = xl.shape().dims4()?;
        let (x, dy, weight) = (
            contiguous_f32("batch norm", xs, xl, "x")?,
            contiguous_f32("batch norm", gs, gl, "grad")?,
            contiguous_f32("batch norm", ws, wl, "weight")?,
        );
        let hw = h * w;
        let m = (n * hw) as f64;
        let stats = channel_stats(x, n, c, hw);
        // Per channel: invstd, sum dy, sum dy * xhat.
        let sums: Vec<(f64, f64, f64)> = crate::pool::map(c, |ch| {
            let (mean, var) = stats[ch];
            let invstd = 1.0 / (var + self.eps).sqrt();
            let (mut db, mut dw) = (0.0, 0.0);
            for i in 0..n {
                let r = (i * c + ch) * hw..(i * c + ch + 1) * hw;
                for (&g, &v) in dy[r.clone()].iter().zip(&x[r]) {
                    db += g as f64;
                    dw += g as f64 * (v as f64 - mean) * invstd;
                }
            }
            (invstd, db, dw)
        });
        let len = x.len();
        let mut out = vec![0f32; len + 2 * c];
        let (dx, rest) = out.split_at_mut(len);
        crate::pool::for_each_chunk(dx, hw.max(1), |p, o| {
            let ch = p % c;
            let (mean, _) = stats[ch];
            let (invstd, db, dw) = sums[ch];
            let k = weight[ch] as f64 * invstd / m;
            let r = p * hw..(p + 1) * hw;
            for ((o, &g), &v) in o.iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
                let xhat = (v as f64 - mean) * invstd;
                *o = (k * (m * g as f64 - db - xhat * dw)) as f32;
            }
        });
        for (ch, (_, db, dw)) in sums.iter().enumerate() {
            rest[ch] = *dw as f32;
            rest[c + ch] = *db as f32;
        }
        Ok((CpuStorage::F32(out), Shape::from(len + 2 * c)))
    }
}

/// The CUDA op: cuDNN's forward, whose saved statistics its backward reuses.
#[cfg(feature = "cuda")]
mod cuda_norm {
    use crate::cuda::batch_norm::{backward, forward, Slot};
    use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, Layout, Result, Shape, Tensor};

    pub(super) struct BatchNormCuda {
        pub eps: f64,
        pub saved: Slot,
        pub running: Option<crate::cuda::batch_norm::Running>,
    }

    impl CustomOp3 for BatchNormCuda {
        fn name(&self) -> &'static str {
            "mmbal-batch-norm-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("mmbal-batch-norm-cuda runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            xs: &CudaStorage,
            xl: &Layout,
            ws: &CudaStorage,
            wl: &Layout,
            bs: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let (y, shape, saved) = forward(self.eps, self.running, (xs, xl), (ws, wl), (bs, bl))?;
            *self.saved.lock().unwrap() = Some(std::sync::Arc::new(saved));
            Ok((y, shape))
        }

        fn bwd(
            &self,
            x: &Tensor,
            weight: &Tensor,
            _bias: &Tensor,
            _res: &Tensor,
            grad: &Tensor,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let packed = x.contiguous()?.apply_op3_no_bwd(
                &grad.contiguous()?,
                &weight.contiguous()?,
                &BatchNormCudaBackward {
                    eps: self.eps,
                    saved: self.saved.clone(),
                },
            )?;
            super::unpack_backward(&packed, x, weight.dim(0)?)
        }
    }

    struct BatchNormCudaBackward {
        eps: f64,
        saved: Slot,
    }

    impl CustomOp3 for BatchNormCudaBackward {
        fn name(&self) -> &'static str {
            "mmbal-batch-norm-cuda-backward"
        }

        fn cpu_fwd(
            &self,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<(CpuStorage, Shape)> {
            bail!("mmbal-batch-norm-cuda-backward runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            xs: &CudaStorage,
            xl: &Layout,
            gs: &CudaStorage,
            gl: &Layout,
            ws: &CudaStorage,
            wl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let Some(saved) = self.saved.lock().unwrap().clone() else {
                bail!("batch norm backward: the forward saved no statistics");
            };
            backward(self.eps, &saved, (xs, xl), (gs, gl), (ws, wl))
        }
    }
}
