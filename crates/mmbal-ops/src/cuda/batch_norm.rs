//! Training-mode BatchNorm through cuDNN (spatial mode, PyTorch's formulas): the forward returns
//! `y` and keeps the batch mean and inverse standard deviation that cuDNN saves for its backward;
//! the batch's biased variance for the caller's running statistics comes from cuDNN's running
//! variance (unbiased, computed in the same pass) with average factor 1.

use super::{check, ptr, with_context};
use candle_core::cuda_backend::cudarc::cudnn::sys as dnn;
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::CudaDevice;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

/// Descriptors of one input shape: the map and the per-channel vectors.
pub(crate) struct Plan {
    x: dnn::cudnnTensorDescriptor_t,
    c: dnn::cudnnTensorDescriptor_t,
}

fn with_plan<R>(
    dev: &CudaDevice,
    dims: [usize; 4],
    f: impl FnOnce(dnn::cudnnHandle_t, &Plan) -> Result<R>,
) -> Result<R> {
    with_context(dev, |ctx| {
        if let std::collections::hash_map::Entry::Vacant(slot) = ctx.norms.entry(dims) {
            slot.insert(Plan {
                x: super::tensor_desc(dims)?,
                c: super::tensor_desc([1, dims[1], 1, 1])?,
            });
        }
        f(ctx.handle, &ctx.norms[&dims])
    })
}

/// What the forward keeps: per-channel batch mean, inverse std and, when the caller's running
/// statistics were not updated in place, the unbiased variance.
pub(crate) struct Saved {
    pub mean: CudaSlice<f32>,
    pub invstd: CudaSlice<f32>,
    pub unbiased_var: Option<CudaSlice<f32>>,
}

/// The caller's running statistics, moved in place by cuDNN with `momentum` (PyTorch's rule:
/// `(1 - m) * running + m * batch`, the variance unbiased): device addresses of two `(C)` f32
/// buffers.
#[derive(Clone, Copy)]
pub(crate) struct Running {
    pub mean: u64,
    pub var: u64,
    pub momentum: f64,
}

/// Where the forward leaves its [`Saved`] statistics for the backward and the caller.
pub(crate) type Slot = std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<Saved>>>>;

/// The batch mean and unbiased variance of the last forward, as `(C)` tensors (copies).
pub(crate) fn statistics(
    slot: &Slot,
    dev: &candle_core::Device,
) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
    let Some(saved) = slot.lock().unwrap().clone() else {
        bail!("batch norm: the forward saved no statistics");
    };
    let candle_core::Device::Cuda(cuda) = dev else {
        bail!("batch norm: statistics asked for off CUDA");
    };
    let tensor = |s: &CudaSlice<f32>| -> Result<candle_core::Tensor> {
        let c = s.len();
        let copy = s.try_clone().map_err(candle_core::Error::wrap)?;
        Ok(candle_core::Tensor::from_storage(
            candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(copy, cuda.clone())),
            c,
            candle_core::op::BackpropOp::none(),
            false,
        ))
    };
    let Some(var) = &saved.unbiased_var else {
        bail!("batch norm: the forward moved the running statistics and kept no variance");
    };
    Ok((tensor(&saved.mean)?, tensor(var)?))
}

/// cuDNN's smallest accepted epsilon (`CUDNN_BN_MIN_EPSILON` in cudnn.h).
const CUDNN_BN_MIN_EPSILON: f64 = 1e-5;

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

/// `y` and the saved statistics.
pub(crate) fn forward(
    eps: f64,
    running: Option<Running>,
    (xs, xl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape, Saved)> {
    let dev = super::device(xs).clone();
    let d = super::dims4(xl.shape())?;
    if d[0] * d[2] * d[3] < 2 {
        bail!("batch norm: training needs more than one value per channel, got input {d:?}");
    }
    if eps < CUDNN_BN_MIN_EPSILON {
        bail!(
            "batch norm: eps {eps} is below cuDNN's minimum {}",
            CUDNN_BN_MIN_EPSILON
        );
    }
    let c = d[1];
    let y = super::alloc::<f32>(&dev, xl.shape().elem_count())?;
    let mut saved = Saved {
        mean: super::alloc::<f32>(&dev, c)?,
        invstd: super::alloc::<f32>(&dev, c)?,
        unbiased_var: None,
    };
    // Without the caller's buffers: zeroed ones with factor 1, so the running variance is the
    // batch's unbiased variance (and the running mean, which cuDNN needs alongside, unused).
    let (run_mean, run_var, factor, _own) = match running {
        Some(r) => (r.mean, r.var, r.momentum, None),
        None => {
            let mean = dev.alloc_zeros::<f32>(c)?;
            let var = dev.alloc_zeros::<f32>(c)?;
            let addresses = (super::slice_ptr(&mean), super::slice_ptr(&var));
            saved.unbiased_var = Some(var);
            (addresses.0, addresses.1, 1.0, Some(mean))
        }
    };
    let (xp, wp, bp) = (
        ptr("batch norm", xs, xl, "input")?,
        ptr("batch norm", ws, wl, "weight")?,
        ptr("batch norm", bs, bl, "bias")?,
    );
    with_plan(&dev, d, |h, plan| {
        // SAFETY: descriptors match the buffers; the saved and running buffers hold C floats.
        unsafe {
            check(
                dnn::cudnnBatchNormalizationForwardTraining(
                    h,
                    dnn::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                    &ONE as *const f32 as _,
                    &ZERO as *const f32 as _,
                    plan.x,
                    xp as _,
                    plan.x,
                    super::slice_ptr(&y) as _,
                    plan.c,
                    wp as _,
                    bp as _,
                    factor,
                    run_mean as _,
                    run_var as _,
                    eps,
                    super::slice_ptr(&saved.mean) as _,
                    super::slice_ptr(&saved.invstd) as _,
                ),
                "batch norm forward",
            )
        }
    })?;
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev),
        xl.shape().clone(),
        saved,
    ))
}

/// `[dx | dw | db]` as one flat buffer, from `x`, `dy`, `w` and the saved statistics.
pub(crate) fn backward(
    eps: f64,
    saved: &Saved,
    (xs, xl): (&CudaStorage, &Layout),
    (gs, gl): (&CudaStorage, &Layout),
    (ws, wl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let dev = super::device(xs).clone();
    let d = super::dims4(xl.shape())?;
    if gl.shape() != xl.shape() {
        bail!(
            "batch norm backward: gradient {:?}, input {:?}",
            gl.shape(),
            xl.shape()
        );
    }
    let n = xl.shape().elem_count();
    let c = d[1];
    let out = super::alloc::<f32>(&dev, n + 2 * c)?;
    let base = super::slice_ptr(&out);
    let (xp, gp, wp) = (
        ptr("batch norm backward", xs, xl, "input")?,
        ptr("batch norm backward", gs, gl, "gradient")?,
        ptr("batch norm backward", ws, wl, "weight")?,
    );
    with_plan(&dev, d, |h, plan| {
        // SAFETY: as in `forward`; `out` holds n + 2C floats.
        unsafe {
            check(
                dnn::cudnnBatchNormalizationBackward(
                    h,
                    dnn::cudnnBatchNormMode_t::CUDNN_BATCHNORM_SPATIAL,
                    &ONE as *const f32 as _,
                    &ZERO as *const f32 as _,
                    &ONE as *const f32 as _,
                    &ZERO as *const f32 as _,
                    plan.x,
                    xp as _,
                    plan.x,
                    gp as _,
                    plan.x,
                    base as _,
                    plan.c,
                    wp as _,
                    (base + 4 * n as u64) as _,
                    (base + 4 * (n + c) as u64) as _,
                    eps,
                    super::slice_ptr(&saved.mean) as _,
                    super::slice_ptr(&saved.invstd) as _,
                ),
                "batch norm backward",
            )
        }
    })?;
    Ok((
        CudaStorage::wrap_cuda_slice(out, dev),
        Shape::from(n + 2 * c),
    ))
}
