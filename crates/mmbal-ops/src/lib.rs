//! # mmbal-ops
//!
//! The differentiable tensor ops mmbal's layers are built from, each with PyTorch's semantics in
//! both passes and, on the CPU, a fast kernel as a candle custom op (on candle's own CPU threads, fixed
//! summation orders, so a run resumes bitwise). With the `cuda` feature the same functions run on
//! a CUDA device through cuDNN (convolution, training BatchNorm) and this crate's own kernels
//! (ReLU, max-pool; PTX built from `src/cuda/kernels.cu`), so layers never branch on the device.
//! Elsewhere each op falls back to candle's own ops with the same semantics.
//! [`fused_sgd`] and [`fused_adam`] update many CUDA parameters in one launch.
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
//! Mixed precision: every op also takes bf16 activations (parameters stay f32, the master
//! weights). The convolution rounds its filter to bf16. On CUDA the convolution runs natively in
//! bf16 (cuDNN, f32 accumulation) and ReLU and max-pool have bf16 kernels; the other ops there,
//! and every op on the CPU, widen their bf16 operands to f32, run the f32 kernel and round the
//! result back to bf16: bf16 storage with f32 arithmetic, what tensor cores do with bf16
//! operands. Gradients follow the same casts (candle's `to_dtype` backward), so a parameter's
//! gradient arrives in f32.
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
#[cfg(feature = "cuda")]
mod cuda;
mod max_pool;
mod memory;
mod pool;
mod relu;
mod window;

pub use batch_norm::{batch_norm_eval, batch_norm_train, batch_norm_train_running};
pub use channel::{add_channel_bias, channel_affine};
pub use conv::{conv2d, count_conv_macs};
pub use max_pool::{max_pool2d, max_pool2d_composite};
pub use memory::retain_freed_memory;
pub use relu::relu;

/// Whether cuDNN convolutions may use TF32 tensor cores (the default, as PyTorch's
/// `torch.backends.cudnn.allow_tf32`); `false` asks for strict fp32. Applies to convolutions
/// planned afterwards; a no-op without the `cuda` feature.
pub fn set_cuda_tf32(allowed: bool) {
    #[cfg(feature = "cuda")]
    cuda::set_tf32(allowed);
    #[cfg(not(feature = "cuda"))]
    let _ = allowed;
}

/// Whether cuDNN convolution algorithms are chosen by timing each candidate once per shape (the
/// default, as PyTorch's `torch.backends.cudnn.benchmark = True`, which the field's training
/// scripts set) or by cuDNN's heuristics (`false`, PyTorch's own default; no timing, so the same
/// algorithms on every run). Applies to shapes planned afterwards; a no-op without `cuda`.
pub fn set_cuda_conv_benchmark(on: bool) {
    #[cfg(feature = "cuda")]
    cuda::set_benchmark(on);
    #[cfg(not(feature = "cuda"))]
    let _ = on;
}

/// The index of the first tensor holding a NaN or an infinity. On CUDA (f32, contiguous or not)
/// one kernel launch per 24 tensors and one copy of the flags to the host; elsewhere one
/// reduction per tensor (the sum of `x * 0` is NaN exactly when some element is not finite).
pub fn first_non_finite(tensors: &[&candle_core::Tensor]) -> candle_core::Result<Option<usize>> {
    #[cfg(feature = "cuda")]
    if tensors.first().is_some_and(|t| t.device().is_cuda())
        && tensors.iter().all(|t| t.dtype() == candle_core::DType::F32)
    {
        let owned: Vec<candle_core::Tensor> = tensors
            .iter()
            .map(|t| t.contiguous())
            .collect::<candle_core::Result<_>>()?;
        let refs: Vec<&candle_core::Tensor> = owned.iter().collect();
        return Ok(cuda::optim::non_finite(&refs)?.iter().position(|&bad| bad));
    }
    for (i, t) in tensors.iter().enumerate() {
        let probe = (*t * 0.0)?
            .sum_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?;
        if probe != 0.0 {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

/// Keeps freed device memory in the CUDA memory pool between steps (by default the pool returns
/// it to the driver at every synchronisation and allocates it again on the next step). A no-op
/// off CUDA.
pub fn keep_cuda_memory(dev: &candle_core::Device) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = dev {
        return cuda::keep_memory(d);
    }
    let _ = dev;
    Ok(())
}

/// Peak bytes in use in the CUDA device's memory pool since the last reset (`reset` starts a new
/// mark); `None` off CUDA.
pub fn cuda_peak_memory(
    dev: &candle_core::Device,
    reset: bool,
) -> candle_core::Result<Option<u64>> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = dev {
        return cuda::peak_memory(d, reset).map(Some);
    }
    let _ = (dev, reset);
    Ok(None)
}

/// One parameter of a fused optimizer update: the parameter, its gradient, its optimizer state
/// (SGD: the momentum buffer; Adam: first and second moments), all contiguous f32 on one CUDA
/// device, and its learning rate. The parameter and the state are updated in place.
pub struct ParamUpdate<'a> {
    /// The parameter (a `Var`'s tensor).
    pub param: &'a candle_core::Tensor,
    /// Its gradient.
    pub grad: &'a candle_core::Tensor,
    /// Its optimizer state, in the order above; unused slots `None`.
    pub state: [Option<&'a candle_core::Tensor>; 2],
    /// Its learning rate for this step.
    pub lr: f64,
}

/// PyTorch's SGD step (`g += wd * p`, `b = momentum * b + g`, `p -= lr * b`) over CUDA
/// parameters, many per kernel launch. A new momentum buffer must start at zeros (then `b = g`
/// exactly, as PyTorch's first step). Errors off CUDA or without the `cuda` feature.
pub fn fused_sgd(
    updates: &[ParamUpdate],
    momentum: f64,
    weight_decay: f64,
) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    return cuda::optim::sgd(updates, momentum, weight_decay);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (updates, momentum, weight_decay);
        candle_core::bail!("fused_sgd needs mmbal-ops built with the `cuda` feature")
    }
}

/// PyTorch's Adam (AdamW when `decoupled`) step number `step` (from 1) over CUDA parameters, many
/// per kernel launch; moments start at zeros. Errors off CUDA or without the `cuda` feature.
pub fn fused_adam(
    updates: &[ParamUpdate],
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    step: i32,
) -> candle_core::Result<()> {
    #[cfg(feature = "cuda")]
    return cuda::optim::adam(updates, betas, eps, weight_decay, decoupled, step);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (updates, betas, eps, weight_decay, decoupled, step);
        candle_core::bail!("fused_adam needs mmbal-ops built with the `cuda` feature")
    }
}

/// `op` run on `x` widened to f32 when `x` is bf16, its result rounded back to bf16 (see the crate
/// docs); `None` when `x` is not bf16.
fn through_f32(
    x: &candle_core::Tensor,
    op: impl FnOnce(&candle_core::Tensor) -> candle_core::Result<candle_core::Tensor>,
) -> candle_core::Result<Option<candle_core::Tensor>> {
    use candle_core::DType;
    if x.dtype() != DType::BF16 {
        return Ok(None);
    }
    op(&x.to_dtype(DType::F32)?)?
        .to_dtype(DType::BF16)
        .map(Some)
}

/// Whether this crate's own kernels serve `dev`: the CPU always, CUDA with the `cuda` feature
/// (candle may be built with CUDA by another crate while this one is not).
fn own_kernels(dev: &candle_core::Device) -> bool {
    dev.is_cpu() || (cfg!(feature = "cuda") && dev.is_cuda())
}

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
