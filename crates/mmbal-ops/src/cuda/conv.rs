//! The convolution through cuDNN: forward, backward-data and backward-filter, each with the
//! fastest algorithm cuDNN measures for the shape on first use (`cudnnFind*`, PyTorch's
//! `cudnn.benchmark = True`, the default) or the one its heuristics rank first
//! (`set_cuda_conv_benchmark(false)`, PyTorch's default), TF32 allowed unless strict fp32 is asked
//! for (`set_cuda_tf32(false)`).
//! bf16 operands (mixed precision) run in bf16 with f32 accumulation, tensor cores allowed.
//! cuDNN handles every stride and parity, so candle's stride-2 backward failure on inputs whose
//! height and width differ in parity does not arise here.

use super::{check, ptr_typed, with_context, Context};
use candle_core::cuda_backend::cudarc::cudnn::sys as dnn;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

/// One convolution's shapes and math mode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Key {
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub stride: usize,
    pub pad: usize,
    pub tf32: bool,
    pub benchmark: bool,
    /// bf16 operands (mixed precision), f32 accumulation; tensor cores always allowed.
    pub bf16: bool,
}

impl Key {
    pub fn out(&self) -> [usize; 4] {
        let o = |n: usize, k: usize| (n + 2 * self.pad - k) / self.stride + 1;
        [
            self.x[0],
            self.w[0],
            o(self.x[2], self.w[2]),
            o(self.x[3], self.w[3]),
        ]
    }
}

/// Descriptors, algorithms and workspace sizes of one [`Key`].
pub(crate) struct Plan {
    x: dnn::cudnnTensorDescriptor_t,
    y: dnn::cudnnTensorDescriptor_t,
    w: dnn::cudnnFilterDescriptor_t,
    conv: dnn::cudnnConvolutionDescriptor_t,
    fwd: (dnn::cudnnConvolutionFwdAlgo_t, dnn::cudnnMathType_t, usize),
    data: (
        dnn::cudnnConvolutionBwdDataAlgo_t,
        dnn::cudnnMathType_t,
        usize,
    ),
    filter: (
        dnn::cudnnConvolutionBwdFilterAlgo_t,
        dnn::cudnnMathType_t,
        usize,
    ),
}

const STRICT: dnn::cudnnMathType_t = dnn::cudnnMathType_t::CUDNN_FMA_MATH;

/// Whether an algorithm's math type is allowed under the key's mode (`tensor_cores`: TF32
/// allowed, or bf16 operands). Never one that converts f32 operands down to f16, which PyTorch
/// does not choose either.
fn allowed(tensor_cores: bool, math: dnn::cudnnMathType_t) -> bool {
    if math == dnn::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION {
        return false;
    }
    tensor_cores || math == STRICT || math == dnn::cudnnMathType_t::CUDNN_DEFAULT_MATH
}

/// The first heuristic result that succeeded and whose math type the mode allows.
macro_rules! pick {
    ($results:expr, $count:expr, $tf32:expr, $what:expr) => {{
        let mut found = None;
        for r in &$results[..$count as usize] {
            if r.status == dnn::cudnnStatus_t::CUDNN_STATUS_SUCCESS && allowed($tf32, r.mathType) {
                found = Some((r.algo, if $tf32 { r.mathType } else { STRICT }));
                break;
            }
        }
        match found {
            Some(f) => f,
            None => bail!("cuDNN: no {} algorithm for this convolution", $what),
        }
    }};
}

impl Plan {
    fn new(ctx: &Context, key: &Key) -> Result<Plan> {
        let h = ctx.handle;
        let x = super::tensor_desc_of(key.x, key.bf16)?;
        let y = super::tensor_desc_of(key.out(), key.bf16)?;
        let tensor_cores = key.tf32 || key.bf16;
        let mut w = std::ptr::null_mut();
        let mut conv = std::ptr::null_mut();
        let p = key.pad as i32;
        let s = key.stride as i32;
        // SAFETY: descriptor and heuristic calls with live descriptors and sized result arrays.
        unsafe {
            check(
                dnn::cudnnCreateFilterDescriptor(&mut w),
                "create filter descriptor",
            )?;
            check(
                dnn::cudnnSetFilter4dDescriptor(
                    w,
                    super::data_type(key.bf16),
                    dnn::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                    key.w[0] as i32,
                    key.w[1] as i32,
                    key.w[2] as i32,
                    key.w[3] as i32,
                ),
                "set filter descriptor",
            )?;
            check(
                dnn::cudnnCreateConvolutionDescriptor(&mut conv),
                "create convolution",
            )?;
            check(
                dnn::cudnnSetConvolution2dDescriptor(
                    conv,
                    p,
                    p,
                    s,
                    s,
                    1,
                    1,
                    dnn::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    dnn::cudnnDataType_t::CUDNN_DATA_FLOAT,
                ),
                "set convolution",
            )?;
            let math = if tensor_cores {
                dnn::cudnnMathType_t::CUDNN_DEFAULT_MATH
            } else {
                STRICT
            };
            check(
                dnn::cudnnSetConvolutionMathType(conv, math),
                "set math type",
            )?;

            const N: usize = 16;
            let mut count = 0;
            let mut fr: [dnn::cudnnConvolutionFwdAlgoPerf_t; N] = std::mem::zeroed();
            let mut dr: [dnn::cudnnConvolutionBwdDataAlgoPerf_t; N] = std::mem::zeroed();
            let mut wr: [dnn::cudnnConvolutionBwdFilterAlgoPerf_t; N] = std::mem::zeroed();
            // Measured (cuDNN allocates its own buffers and times every algorithm; ranked by
            // time) or the heuristics' ranking.
            let (fa, fm) = {
                let status = if key.benchmark {
                    dnn::cudnnFindConvolutionForwardAlgorithm(
                        h,
                        x,
                        w,
                        conv,
                        y,
                        N as i32,
                        &mut count,
                        fr.as_mut_ptr(),
                    )
                } else {
                    dnn::cudnnGetConvolutionForwardAlgorithm_v7(
                        h,
                        x,
                        w,
                        conv,
                        y,
                        N as i32,
                        &mut count,
                        fr.as_mut_ptr(),
                    )
                };
                check(status, "forward algorithm search")?;
                pick!(fr, count, tensor_cores, "forward")
            };
            let (da, dm) = {
                let status = if key.benchmark {
                    dnn::cudnnFindConvolutionBackwardDataAlgorithm(
                        h,
                        w,
                        y,
                        conv,
                        x,
                        N as i32,
                        &mut count,
                        dr.as_mut_ptr(),
                    )
                } else {
                    dnn::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                        h,
                        w,
                        y,
                        conv,
                        x,
                        N as i32,
                        &mut count,
                        dr.as_mut_ptr(),
                    )
                };
                check(status, "backward-data algorithm search")?;
                pick!(dr, count, tensor_cores, "backward-data")
            };
            let (wa, wm) = {
                let status = if key.benchmark {
                    dnn::cudnnFindConvolutionBackwardFilterAlgorithm(
                        h,
                        x,
                        y,
                        conv,
                        w,
                        N as i32,
                        &mut count,
                        wr.as_mut_ptr(),
                    )
                } else {
                    dnn::cudnnGetConvolutionBackwardFilterAlgorithm_v7(
                        h,
                        x,
                        y,
                        conv,
                        w,
                        N as i32,
                        &mut count,
                        wr.as_mut_ptr(),
                    )
                };
                check(status, "backward-filter algorithm search")?;
                pick!(wr, count, tensor_cores, "backward-filter")
            };

            // Workspace sizes under each algorithm's own math type.
            let mut fs = 0;
            check(dnn::cudnnSetConvolutionMathType(conv, fm), "set math type")?;
            check(
                dnn::cudnnGetConvolutionForwardWorkspaceSize(h, x, w, conv, y, fa, &mut fs),
                "forward workspace",
            )?;
            let mut ds = 0;
            check(dnn::cudnnSetConvolutionMathType(conv, dm), "set math type")?;
            check(
                dnn::cudnnGetConvolutionBackwardDataWorkspaceSize(h, w, y, conv, x, da, &mut ds),
                "backward-data workspace",
            )?;
            let mut ws = 0;
            check(dnn::cudnnSetConvolutionMathType(conv, wm), "set math type")?;
            check(
                dnn::cudnnGetConvolutionBackwardFilterWorkspaceSize(h, x, y, conv, w, wa, &mut ws),
                "backward-filter workspace",
            )?;
            Ok(Plan {
                x,
                y,
                w,
                conv,
                fwd: (fa, fm, fs),
                data: (da, dm, ds),
                filter: (wa, wm, ws),
            })
        }
    }
}

/// Runs one pass of `key`'s plan (built on first use): `pass` gives its math type and
/// workspace size, `call` makes the cuDNN call with the handle, the plan and the workspace
/// (address, bytes); `what` names the pass in errors.
fn run_pass(
    dev: &candle_core::cuda_backend::CudaDevice,
    key: Key,
    what: &str,
    pass: impl FnOnce(&Plan) -> (dnn::cudnnMathType_t, usize),
    call: impl FnOnce(dnn::cudnnHandle_t, &Plan, u64, usize) -> dnn::cudnnStatus_t,
) -> Result<()> {
    with_context(dev, |ctx| {
        // Taken out of the cache while the pass uses the context, and put back after.
        let plan = match ctx.convs.remove(&key) {
            Some(plan) => plan,
            None => Plan::new(ctx, &key)?,
        };
        let r = (|| {
            let (math, bytes) = pass(&plan);
            let (wsp, wsl) = ctx.workspace(dev, bytes)?;
            // SAFETY: the plan's descriptor is live.
            check(
                unsafe { dnn::cudnnSetConvolutionMathType(plan.conv, math) },
                "set math type",
            )?;
            check(call(ctx.handle, &plan, wsp, wsl), what)
        })();
        ctx.convs.insert(key, plan);
        r
    })
}

pub(crate) fn key(
    x: &Shape,
    w: &Shape,
    stride: usize,
    pad: usize,
    dtype: candle_core::DType,
) -> Result<Key> {
    Ok(Key {
        x: super::dims4(x)?,
        w: super::dims4(w)?,
        stride,
        pad,
        tf32: super::tf32(),
        benchmark: super::benchmark(),
        bf16: dtype == candle_core::DType::BF16,
    })
}

/// Refuses operands of different element types (the mixed-precision path casts both).
fn same_dtype(op: &str, a: candle_core::DType, b: candle_core::DType) -> Result<()> {
    if a != b {
        bail!("{op}: operands of {a:?} and {b:?}; both must be f32 or both bf16");
    }
    Ok(())
}

/// Refuses an output gradient whose shape is not the convolution's output.
fn check_output_grad(gl: &Layout, key: &Key) -> Result<()> {
    if gl.shape().dims() != key.out() {
        bail!(
            "conv2d backward: gradient {:?}, expected {:?}",
            gl.shape(),
            key.out()
        );
    }
    Ok(())
}

const ONE: f32 = 1.0;
const ZERO: f32 = 0.0;

/// `y = conv(x, w)`.
pub(crate) fn forward(
    stride: usize,
    pad: usize,
    xs: &CudaStorage,
    xl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = super::device(xs).clone();
    let (xp, dt) = ptr_typed("conv2d", xs, xl, "input")?;
    let (wp, wdt) = ptr_typed("conv2d", ws, wl, "filter")?;
    same_dtype("conv2d", dt, wdt)?;
    let key = key(xl.shape(), wl.shape(), stride, pad, dt)?;
    let out = key.out();
    let (y, yp) = super::alloc_storage(&dev, dt, out.iter().product())?;
    run_pass(
        &dev,
        key,
        "convolution forward",
        |p| (p.fwd.1, p.fwd.2),
        // SAFETY: the plan's descriptors match the buffers' shapes; the workspace holds the
        // pass's bytes.
        |h, plan, wsp, wsl| unsafe {
            dnn::cudnnConvolutionForward(
                h,
                &ONE as *const f32 as _,
                plan.x,
                xp as _,
                plan.w,
                wp as _,
                plan.conv,
                plan.fwd.0,
                wsp as _,
                wsl,
                &ZERO as *const f32 as _,
                plan.y,
                yp as _,
            )
        },
    )?;
    Ok((y, Shape::from(out.to_vec())))
}

/// `dx` from `dy` and `w`.
pub(crate) fn backward_data(
    stride: usize,
    pad: usize,
    input: &Shape,
    gs: &CudaStorage,
    gl: &Layout,
    ws: &CudaStorage,
    wl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = super::device(gs).clone();
    let (gp, dt) = ptr_typed("conv2d backward", gs, gl, "gradient")?;
    let (wp, wdt) = ptr_typed("conv2d backward", ws, wl, "filter")?;
    same_dtype("conv2d backward", dt, wdt)?;
    let key = key(input, wl.shape(), stride, pad, dt)?;
    check_output_grad(gl, &key)?;
    let (dx, dxp) = super::alloc_storage(&dev, dt, input.elem_count())?;
    run_pass(
        &dev,
        key,
        "convolution backward-data",
        |p| (p.data.1, p.data.2),
        // SAFETY: the plan's descriptors match the buffers' shapes; the workspace holds the
        // pass's bytes.
        |h, plan, wsp, wsl| unsafe {
            dnn::cudnnConvolutionBackwardData(
                h,
                &ONE as *const f32 as _,
                plan.w,
                wp as _,
                plan.y,
                gp as _,
                plan.conv,
                plan.data.0,
                wsp as _,
                wsl,
                &ZERO as *const f32 as _,
                plan.x,
                dxp as _,
            )
        },
    )?;
    Ok((dx, input.clone()))
}

/// `dw` from `x` and `dy`.
pub(crate) fn backward_filter(
    stride: usize,
    pad: usize,
    filter: &Shape,
    xs: &CudaStorage,
    xl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let dev = super::device(xs).clone();
    let (xp, dt) = ptr_typed("conv2d backward", xs, xl, "input")?;
    let (gp, gdt) = ptr_typed("conv2d backward", gs, gl, "gradient")?;
    same_dtype("conv2d backward", dt, gdt)?;
    let key = key(xl.shape(), filter, stride, pad, dt)?;
    check_output_grad(gl, &key)?;
    let (dw, dwp) = super::alloc_storage(&dev, dt, filter.elem_count())?;
    run_pass(
        &dev,
        key,
        "convolution backward-filter",
        |p| (p.filter.1, p.filter.2),
        // SAFETY: the plan's descriptors match the buffers' shapes; the workspace holds the
        // pass's bytes.
        |h, plan, wsp, wsl| unsafe {
            dnn::cudnnConvolutionBackwardFilter(
                h,
                &ONE as *const f32 as _,
                plan.x,
                xp as _,
                plan.y,
                gp as _,
                plan.conv,
                plan.filter.0,
                wsp as _,
                wsl,
                &ZERO as *const f32 as _,
                plan.w,
                dwp as _,
            )
        },
    )?;
    Ok((dw, filter.clone()))
}
