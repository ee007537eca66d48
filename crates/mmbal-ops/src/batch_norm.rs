//! Batch normalisation of `(N, C, H, W)` maps as PyTorch computes it, without the running
//! statistics (those belong to the layer): [`batch_norm_train`] normalises with the batch's mean
//! and biased variance and returns them; [`batch_norm_eval`] applies given statistics.
//!
//! On the CPU the training forward and its backward are two fused passes (custom ops). Composed
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
    let (_, c, _, _) = x.dims4()?;
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
        let c = weight.dim(0)?;
        let len = x.elem_count();
        // One packed result: dx, then dw, then db.
        let packed = x.contiguous()?.apply_op3_no_bwd(
            &grad.contiguous()?,
            &weight.contiguous()?,
            &BatchNormTrainBackward { eps: self.eps },
        )?;
        let dx = packed.narrow(0, 0, len)?.reshape(x.shape())?;
        let dw = packed.narrow(0, len, c)?;
        let db = packed.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
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
