//! ReLU and max-pool on the GPU with this crate's kernels (`kernels.cu`), on f32 or bf16 maps
//! (mixed precision: bf16 in and out, f32 inside); the per-channel affine map and sums in f32.

use super::{alloc, alloc_storage, grid, launch, ptr, ptr_typed, slice_ptr};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::{bail, CudaStorage, DType, Layout, Result, Shape};

/// The kernel `name` for the element type: f32 as named, bf16 with `_bf16` appended.
fn kernel(name: &'static str, dtype: DType) -> &'static str {
    match (name, dtype) {
        (_, DType::F32) => name,
        ("mmbal_relu_fwd", _) => "mmbal_relu_fwd_bf16",
        ("mmbal_relu_bwd", _) => "mmbal_relu_bwd_bf16",
        ("mmbal_max_pool_fwd", _) => "mmbal_max_pool_fwd_bf16",
        _ => "mmbal_max_pool_bwd_bf16",
    }
}

/// Refuses operands of different element types.
fn same(op: &str, a: DType, b: DType) -> Result<()> {
    if a != b {
        bail!("{op}: operands of {a:?} and {b:?}");
    }
    Ok(())
}

pub(crate) fn relu_fwd(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = super::device(s).clone();
    let n = l.shape().elem_count();
    let (xp, dt) = ptr_typed("relu", s, l, "input")?;
    let (y, yp) = alloc_storage(&dev, dt, n)?;
    launch!(
        &dev,
        kernel("mmbal_relu_fwd", dt),
        grid(n),
        xp,
        yp,
        n as u64
    );
    Ok((y, l.shape().clone()))
}

pub(crate) fn relu_bwd(
    ys: &CudaStorage,
    yl: &Layout,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    if yl.shape() != gl.shape() {
        bail!(
            "relu backward: output {:?}, gradient {:?}",
            yl.shape(),
            gl.shape()
        );
    }
    let dev = super::device(ys).clone();
    let n = yl.shape().elem_count();
    let (yp, dt) = ptr_typed("relu backward", ys, yl, "output")?;
    let (gp, gdt) = ptr_typed("relu backward", gs, gl, "gradient")?;
    same("relu backward", dt, gdt)?;
    let (dx, dxp) = alloc_storage(&dev, dt, n)?;
    launch!(
        &dev,
        kernel("mmbal_relu_bwd", dt),
        grid(n),
        yp,
        gp,
        dxp,
        n as u64
    );
    Ok((dx, yl.shape().clone()))
}

/// Pool geometry: kernel, stride, padding, and the output size.
#[derive(Clone, Copy)]
pub(crate) struct Pool {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    pub out: (usize, usize),
}

/// The pooled map and the within-plane index of each output's maximum.
pub(crate) fn max_pool_fwd(
    pool: Pool,
    s: &CudaStorage,
    l: &Layout,
) -> Result<(CudaStorage, Shape, CudaSlice<i32>)> {
    let (n, c, h, w) = l.shape().dims4()?;
    let (oh, ow) = pool.out;
    let dev = super::device(s).clone();
    let len = n * c * oh * ow;
    let (xp, dt) = ptr_typed("max_pool2d", s, l, "input")?;
    let (y, yp) = alloc_storage(&dev, dt, len)?;
    let idx = alloc::<i32>(&dev, len)?;
    launch!(
        &dev,
        kernel("mmbal_max_pool_fwd", dt),
        grid(len),
        xp,
        yp,
        slice_ptr(&idx),
        (n * c) as u64,
        h as i32,
        w as i32,
        oh as i32,
        ow as i32,
        pool.kernel as i32,
        pool.stride as i32,
        pool.padding as i32
    );
    Ok((y, Shape::from((n, c, oh, ow)), idx))
}

/// `dx` of the input shape `input` from `dy` and the forward's indices.
pub(crate) fn max_pool_bwd(
    pool: Pool,
    input: &Shape,
    idx: &CudaSlice<i32>,
    gs: &CudaStorage,
    gl: &Layout,
) -> Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = input.dims4()?;
    let (oh, ow) = pool.out;
    if gl.shape().dims() != [n, c, oh, ow] {
        bail!(
            "max_pool2d backward: gradient {:?}, expected {:?}",
            gl.shape(),
            (n, c, oh, ow)
        );
    }
    let dev = super::device(gs).clone();
    let len = n * c * h * w;
    let (gp, dt) = ptr_typed("max_pool2d backward", gs, gl, "gradient")?;
    let (dx, dxp) = alloc_storage(&dev, dt, len)?;
    launch!(
        &dev,
        kernel("mmbal_max_pool_bwd", dt),
        grid(len),
        gp,
        slice_ptr(idx),
        dxp,
        (n * c) as u64,
        h as i32,
        w as i32,
        oh as i32,
        ow as i32,
        pool.kernel as i32,
        pool.stride as i32,
        pool.padding as i32
    );
    Ok((dx, input.clone()))
}

/// `x * a[c] + b[c]` over channel c of an `(N, C, H, W)` map.
pub(crate) fn channel_affine(
    (xs, xl): (&CudaStorage, &Layout),
    (as_, al): (&CudaStorage, &Layout),
    (bs, bl): (&CudaStorage, &Layout),
) -> Result<(CudaStorage, Shape)> {
    let (_, c, h, w) = xl.shape().dims4()?;
    if al.shape().elem_count() != c || bl.shape().elem_count() != c {
        bail!(
            "channel affine: {c} channels, scale {:?}, shift {:?}",
            al.shape(),
            bl.shape()
        );
    }
    let dev = super::device(xs).clone();
    let n = xl.shape().elem_count();
    let y = alloc::<f32>(&dev, n)?;
    launch!(
        &dev,
        "mmbal_channel_affine",
        grid(n),
        ptr("channel affine", xs, xl, "input")?,
        ptr("channel affine", as_, al, "scale")?,
        ptr("channel affine", bs, bl, "shift")?,
        slice_ptr(&y),
        n as u64,
        c as i32,
        (h * w) as u64
    );
    Ok((CudaStorage::wrap_cuda_slice(y, dev), xl.shape().clone()))
}

/// Per-channel sums of an `(N, C, H, W)` map, `(C)`.
pub(crate) fn sum_per_channel(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let (n, c, h, w) = l.shape().dims4()?;
    let dev = super::device(s).clone();
    let out = alloc::<f32>(&dev, c)?;
    let cfg = super::LaunchConfig {
        grid_dim: (c.max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(
        &dev,
        "mmbal_sum_per_channel",
        cfg,
        ptr("sum per channel", s, l, "input")?,
        slice_ptr(&out),
        n as i32,
        c as i32,
        (h * w) as u64
    );
    Ok((CudaStorage::wrap_cuda_slice(out, dev), Shape::from(c)))
}
