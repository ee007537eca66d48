//! The CUDA side of the ops (feature `cuda`): cuDNN for the convolution (forward, backward-data,
//! backward-filter) and training-mode BatchNorm, this crate's own kernels (`kernels.cu`, PTX built
//! by `build.rs`) for ReLU, max-pool and the fused optimizer updates.
//!
//! Each op reaches raw device pointers through candle's custom-op interface and runs on candle's
//! stream, so it orders with candle's own kernels and never synchronises the host. cuDNN
//! descriptors, the chosen algorithms and their workspace sizes are built once per shape and
//! cached per thread and device (cuDNN handles are not `Send`), with one growing workspace.

pub(crate) mod batch_norm;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod optim;

use candle_core::cuda_backend::cudarc::cudnn::sys as dnn;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig};
use candle_core::cuda_backend::{CudaDevice, DeviceId};
use candle_core::{bail, CudaStorage, Layout, Result};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether convolutions may use TF32 tensor cores (PyTorch's default for cuDNN convolutions).
static TF32: AtomicBool = AtomicBool::new(true);

pub(crate) fn set_tf32(allowed: bool) {
    TF32.store(allowed, Ordering::Relaxed);
}

pub(crate) fn tf32() -> bool {
    TF32.load(Ordering::Relaxed)
}

/// Whether convolution algorithms are measured per shape (`cudnnFind*`) rather than taken from
/// cuDNN's heuristics.
static BENCHMARK: AtomicBool = AtomicBool::new(true);

pub(crate) fn set_benchmark(on: bool) {
    BENCHMARK.store(on, Ordering::Relaxed);
}

pub(crate) fn benchmark() -> bool {
    BENCHMARK.load(Ordering::Relaxed)
}

/// The PTX of `kernels.cu`.
pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// Launches `name` from this crate's kernels with `args` on the device's stream.
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        let func = $dev.get_or_load_custom_func($name, "mmbal_ops", $crate::cuda::PTX)?;
        let mut builder = func.builder();
        $( let a = $arg; builder.arg(&a); )*
        // SAFETY: the arguments match the kernel's signature in kernels.cu, and every pointer
        // refers to a live allocation of the length the kernel is told.
        unsafe { builder.launch($cfg) }.map_err(candle_core::Error::wrap)?;
    }};
}
pub(crate) use launch;

/// A grid-stride launch over `n` elements.
pub(crate) fn grid(n: usize) -> LaunchConfig {
    let threads = 256u32;
    let blocks = n.div_ceil(threads as usize).clamp(1, 132 * 32) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The device address of a contiguous f32 operand (its layout's offset applied). The address
/// stays valid while `s` is borrowed; every op here runs on `s`'s own stream, so no event is
/// needed to order it.
pub(crate) fn ptr(op: &str, s: &CudaStorage, l: &Layout, what: &str) -> Result<u64> {
    let Some((start, _)) = l.contiguous_offsets() else {
        bail!("{op}: {what} must be contiguous")
    };
    let slice = s.as_cuda_slice::<f32>()?;
    let (p, _sync) = slice.device_ptr(slice.stream());
    Ok(p + (start * 4) as u64)
}

/// The device address of a contiguous f32 or bf16 operand (the convolution's mixed-precision
/// path) and its element type.
pub(crate) fn ptr_typed(
    op: &str,
    s: &CudaStorage,
    l: &Layout,
    what: &str,
) -> Result<(u64, candle_core::DType)> {
    let Some((start, _)) = l.contiguous_offsets() else {
        bail!("{op}: {what} must be contiguous")
    };
    match candle_core::backend::BackendStorage::dtype(s) {
        candle_core::DType::F32 => Ok((ptr(op, s, l, what)?, candle_core::DType::F32)),
        candle_core::DType::BF16 => {
            let slice = s.as_cuda_slice::<half::bf16>()?;
            let (p, _sync) = slice.device_ptr(slice.stream());
            Ok((p + (start * 2) as u64, candle_core::DType::BF16))
        }
        d => bail!("{op}: {what} is {d:?}, expected f32 or bf16"),
    }
}

/// Uninitialised storage for `n` values of `dtype` (f32 or bf16) and its address; the op writes
/// every element before candle reads it.
pub(crate) fn alloc_storage(
    dev: &CudaDevice,
    dtype: candle_core::DType,
    n: usize,
) -> Result<(CudaStorage, u64)> {
    match dtype {
        candle_core::DType::F32 => {
            let s = alloc::<f32>(dev, n)?;
            let p = slice_ptr(&s);
            Ok((CudaStorage::wrap_cuda_slice(s, dev.clone()), p))
        }
        candle_core::DType::BF16 => {
            let s = alloc::<half::bf16>(dev, n)?;
            let p = slice_ptr(&s);
            Ok((CudaStorage::wrap_cuda_slice(s, dev.clone()), p))
        }
        d => bail!("no CUDA storage of {d:?} here (f32 or bf16)"),
    }
}

/// The device address of a contiguous f32 CUDA tensor, for ops that write a tensor candle
/// hands out read-only (an optimizer's parameters and state, a layer's running statistics):
/// those tensors belong to the caller, no graph holds them, and the write happens on candle's
/// stream exactly as `Var::set` would copy into them.
pub(crate) fn tensor_ptr(op: &str, t: &candle_core::Tensor, what: &str) -> Result<u64> {
    if t.dtype() != candle_core::DType::F32 {
        bail!("{op}: {what} is {:?}, expected f32", t.dtype());
    }
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cuda(s) = &*storage else {
        bail!("{op}: {what} is not on a CUDA device");
    };
    ptr(op, s, layout, what)
}

/// The device address of a freshly allocated slice.
pub(crate) fn slice_ptr<T>(s: &CudaSlice<T>) -> u64 {
    let (p, _sync) = s.device_ptr(s.stream());
    p
}

/// Uninitialised device memory for `n` values of `T` (every element is written by the op).
pub(crate) fn alloc<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
    dev: &CudaDevice,
    n: usize,
) -> Result<CudaSlice<T>> {
    // SAFETY: callers write every element before the slice is read.
    unsafe { dev.alloc::<T>(n.max(1)) }
}

pub(crate) fn check(status: dnn::cudnnStatus_t, what: &str) -> Result<()> {
    if status != dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        bail!("cuDNN {what}: {status:?}");
    }
    Ok(())
}

/// Per-thread cuDNN state of one device.
pub(crate) struct Context {
    pub handle: dnn::cudnnHandle_t,
    workspace: Option<CudaSlice<u8>>,
    pub convs: HashMap<conv::Key, conv::Plan>,
    pub norms: HashMap<[usize; 4], batch_norm::Plan>,
}

impl Context {
    /// A workspace of at least `bytes` (grown, never shrunk) and its address.
    pub fn workspace(&mut self, dev: &CudaDevice, bytes: usize) -> Result<(u64, usize)> {
        if bytes == 0 {
            return Ok((0, 0));
        }
        if self.workspace.as_ref().is_none_or(|w| w.len() < bytes) {
            // The old one may still be in use by queued work: cudarc frees it in stream order.
            self.workspace = Some(alloc::<u8>(dev, bytes)?);
        }
        let w = self.workspace.as_ref().unwrap();
        Ok((slice_ptr(w), w.len()))
    }
}

thread_local! {
    static CONTEXTS: RefCell<HashMap<DeviceId, Context>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's cuDNN context for `dev`, creating it (a handle on candle's stream)
/// on first use.
pub(crate) fn with_context<R>(
    dev: &CudaDevice,
    f: impl FnOnce(&mut Context) -> Result<R>,
) -> Result<R> {
    CONTEXTS.with(|c| {
        let mut map = c.borrow_mut();
        if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(dev.id()) {
            let mut handle = std::ptr::null_mut();
            // SAFETY: plain cuDNN calls on a fresh handle and candle's live stream.
            unsafe {
                check(dnn::cudnnCreate(&mut handle), "create handle")?;
                check(
                    dnn::cudnnSetStream(handle, dev.cuda_stream().cu_stream() as _),
                    "set stream",
                )?;
            }
            slot.insert(Context {
                handle,
                workspace: None,
                convs: HashMap::new(),
                norms: HashMap::new(),
            });
        }
        f(map.get_mut(&dev.id()).unwrap())
    })
}

/// The four dimensions of an `(N, C, H, W)` shape.
pub(crate) fn dims4(s: &candle_core::Shape) -> Result<[usize; 4]> {
    let (a, b, c, d) = s.dims4()?;
    Ok([a, b, c, d])
}

/// An NCHW f32 tensor descriptor.
pub(crate) fn tensor_desc(dims: [usize; 4]) -> Result<dnn::cudnnTensorDescriptor_t> {
    tensor_desc_of(dims, false)
}

/// cuDNN's name of the element type: bf16 or f32.
pub(crate) fn data_type(bf16: bool) -> dnn::cudnnDataType_t {
    if bf16 {
        dnn::cudnnDataType_t::CUDNN_DATA_BFLOAT16
    } else {
        dnn::cudnnDataType_t::CUDNN_DATA_FLOAT
    }
}

/// An NCHW tensor descriptor of bf16 or f32 elements.
pub(crate) fn tensor_desc_of(dims: [usize; 4], bf16: bool) -> Result<dnn::cudnnTensorDescriptor_t> {
    let mut d = std::ptr::null_mut();
    // SAFETY: plain descriptor calls.
    unsafe {
        check(
            dnn::cudnnCreateTensorDescriptor(&mut d),
            "create tensor descriptor",
        )?;
        check(
            dnn::cudnnSetTensor4dDescriptor(
                d,
                dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                data_type(bf16),
                dims[0] as i32,
                dims[1] as i32,
                dims[2] as i32,
                dims[3] as i32,
            ),
            "set tensor descriptor",
        )?;
    }
    Ok(d)
}

/// The CUDA device of a storage.
pub(crate) fn device(s: &CudaStorage) -> &CudaDevice {
    &s.device
}

/// The default memory pool of `dev` (the one candle's stream-ordered allocations come from).
fn default_pool(
    dev: &CudaDevice,
) -> Result<candle_core::cuda_backend::cudarc::driver::sys::CUmemoryPool> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let mut pool = std::ptr::null_mut();
    let cu = dev.cuda_stream().context().cu_device();
    // SAFETY: a plain driver query for a live device.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, cu) };
    if r != sys::CUresult::CUDA_SUCCESS {
        bail!("cuDeviceGetDefaultMemPool: {r:?}");
    }
    Ok(pool)
}

/// Keeps freed memory in the pool instead of returning it at every synchronisation.
pub(crate) fn keep_memory(dev: &CudaDevice) -> Result<()> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(dev)?;
    let mut threshold = u64::MAX;
    // SAFETY: the attribute takes a u64.
    let r = unsafe {
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as _,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        bail!("cuMemPoolSetAttribute(release threshold): {r:?}");
    }
    Ok(())
}

/// Bytes in use at the pool's high-water mark; `reset` starts a new mark.
pub(crate) fn peak_memory(dev: &CudaDevice, reset: bool) -> Result<u64> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let pool = default_pool(dev)?;
    let mut high = 0u64;
    // SAFETY: the attribute is a u64; resetting it takes 0.
    unsafe {
        let r = sys::cuMemPoolGetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            &mut high as *mut u64 as _,
        );
        if r != sys::CUresult::CUDA_SUCCESS {
            bail!("cuMemPoolGetAttribute(used high): {r:?}");
        }
        if reset {
            let mut zero = 0u64;
            let r = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as _,
            );
            if r != sys::CUresult::CUDA_SUCCESS {
                bail!("cuMemPoolSetAttribute(used high): {r:?}");
            }
        }
    }
    Ok(high)
}
