//! ReLU with PyTorch's backward. candle 0.11.1 passes the gradient where the input is `>= 0`, so an
//! input of exactly 0 (a zero-padded region through a bias-free convolution, a BatchNorm output
//! that lands on 0) gets the gradient that PyTorch withholds: PyTorch's `threshold_backward` passes
//! it only where the output is `> 0`. On the CPU this is a custom op; on other devices the same
//! result comes from a constant mask.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "mmbal-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("relu: input must be contiguous")
        };
        // `x > 0 ? x : 0`, keeping NaN as PyTorch does.
        let y = s.as_slice::<f32>()?[start..end]
            .iter()
            .map(|&v| if v > 0.0 || v.is_nan() { v } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let mask = res.gt(0f32)?.to_dtype(grad.dtype())?;
        Ok(Some(grad.mul(&mask)?))
    }
}

/// `max(x, 0)` whose gradient is zero where the output is not positive (PyTorch's rule).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.contiguous()?.apply_op1(Relu);
    }
    let mask = x.gt(0f32)?.to_dtype(x.dtype())?.detach();
    x.relu()?.mul(&mask)
}
