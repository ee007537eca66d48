//! # mmbal-ops
//!
//! The differentiable tensor ops mmbal's layers are built from, each with PyTorch's semantics in
//! both passes and, on the CPU, a fast kernel as a candle custom op (on candle's own CPU threads, fixed
//! summation orders, so a run resumes bitwise). Off the CPU each op falls back to candle's own
//! ops with the same semantics; that is where the CUDA kernels will go, behind the same
//! functions, so layers never branch on the device.
//!
//! | op | why it is here |
//! |---|---|
//! | [`conv2d`] | im2col + GEMM in both passes; candle's backward is slow and fails on a stride-2 input whose height and width differ in parity |
//! | [`batch_norm_train`], [`batch_norm_eval`] | one fused pass each way; candle's composed backward reduces on one thread |
//! | [`max_pool2d`] | padding, and the gradient to the first maximum; candle's backward is wrong unless kernel == stride |
//! | [`relu`] | no gradient at exactly 0, as PyTorch; candle passes it |
//! | [`add_channel_bias`], [`channel_affine`] | one parallel pass; the per-channel gradients summed per channel in parallel |
//!
//! [`retain_freed_memory`] is the one process-wide setting: binaries that train call it first.
//!
//! ```
//! use candle_core::{DType, Device, Var};
//! let x = Var::ones((1, 1, 257, 188), DType::F32, &Device::Cpu).unwrap();
//! let w = Var::ones((4, 1, 7, 7), DType::F32, &Device::Cpu).unwrap();
//! let y = mmbal_ops::conv2d(x.as_tensor(), w.as_tensor(), 2, 3).unwrap();
//! assert_eq!(y.dims(), &[1, 4, 129, 94]);
//! let y = mmbal_ops::max_pool2d(&mmbal_ops::relu(&y).unwrap(), 3, 2, 1).unwrap();
//! let grads = y.sum_all().unwrap().backward().unwrap();
//! assert_eq!(grads.get(&x).unwrap().dims(), &[1, 1, 257, 188]);
//! ```

#![warn(missing_docs)]

mod batch_norm;
mod channel;
mod conv;
mod max_pool;
mod memory;
mod pool;
mod relu;
mod window;

pub use batch_norm::{batch_norm_eval, batch_norm_train};
pub use channel::{add_channel_bias, channel_affine};
pub use conv::conv2d;
pub use max_pool::{max_pool2d, max_pool2d_composite};
pub use memory::retain_freed_memory;
pub use relu::relu;

/// The f32 values of a contiguous CPU tensor; the error names the op and the operand.
fn contiguous_f32<'a>(
    op: &str,
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op}: {what} must be contiguous")
    };
    Ok(&s.as_slice::<f32>()?[start..end])
}
