//! ReLU with PyTorch's backward. candle 0.11.1 passes the gradient where the input is `>= 0`, so an
//! input of exactly 0 (a zero-padded region through a bias-free convolution, a BatchNorm output
//! that lands on 0) gets the gradient that PyTorch withholds: PyTorch's `threshold_backward` passes
//! it only where the output is `> 0`. On the CPU and CUDA this is a custom op; on other devices
//! the same result comes from a constant mask.

use crate::contiguous_f32;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// Elements per parallel task: big enough that a task outweighs its scheduling.
const CHUNK: usize = 1 << 14;

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "mmbal-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32("relu", s, l, "input")?;
        let mut y = vec![0f32; x.len()];
        // `x > 0 ? x : 0`, keeping NaN as PyTorch does.
        crate::pool::for_each_chunk(&mut y, CHUNK, |i, y| {
            for (o, &v) in y.iter_mut().zip(&x[i * CHUNK..]) {
                *o = if v > 0.0 || v.is_nan() { v } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::elementwise::relu_fwd(s, l)
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &ReluBackward)?,
        ))
    }
}

/// `(y, dy)` to `dy` where `y > 0`, else 0, in one parallel pass.
struct ReluBackward;

impl CustomOp2 for ReluBackward {
    fn name(&self) -> &'static str {
        "mmbal-relu-backward"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        ys: &candle_core::CudaStorage,
        yl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::elementwise::relu_bwd(ys, yl, gs, gl)
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (
            contiguous_f32("relu", ys, yl, "output")?,
            contiguous_f32("relu", gs, gl, "grad")?,
        );
        if y.len() != g.len() {
            bail!(
                "relu backward: output {:?}, gradient {:?}",
                yl.shape(),
                gl.shape()
            );
        }
        let mut dx = vec![0f32; y.len()];
        crate::pool::for_each_chunk(&mut dx, CHUNK, |i, d| {
            let (y, g) = (&y[i * CHUNK..], &g[i * CHUNK..]);
            for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
                *d = if y > 0.0 { g } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}

/// `max(x, 0)` whose gradient is zero where the output is not positive (PyTorch's rule).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    // bf16 natively on CUDA (the kernel widens each value, exactly), through f32 elsewhere.
    if cfg!(feature = "cuda") && x.device().is_cuda() && x.dtype() == candle_core::DType::BF16 {
        return x.contiguous()?.apply_op1(Relu);
    }
    if let Some(y) = crate::through_f32(x, relu)? {
        return Ok(y);
    }
    if crate::own_kernels(x.device()) && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(Relu);
    }
    let mask = x.gt(0f32)?.to_dtype(x.dtype())?.detach();
    x.relu()?.mul(&mask)
}
