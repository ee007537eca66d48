//! ReLU and max-pool on the GPU with this crate's kernels (`kernels.cu`).

use super::{alloc, grid, launch, ptr, slice_ptr};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::{bail, CudaStorage, Layout, Result, Shape};

pub(crate) fn relu_fwd(s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
    let dev = super::device(s).clone();
    let n = l.shape().elem_count();
    let y = alloc::<f32>(&dev, n)?;
    launch!(
        &dev,
        "mmbal_relu_fwd",
        grid(n),
        ptr("relu", s, l, "input")?,
        slice_ptr(&y),
        n as u64
    );
    Ok((CudaStorage::wrap_cuda_slice(y, dev), l.shape().clone()))
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
    let dx = alloc::<f32>(&dev, n)?;
    launch!(
        &dev,
        "mmbal_relu_bwd",
        grid(n),
        ptr("relu backward", ys, yl, "output")?,
        ptr("relu backward", gs, gl, "gradient")?,
        slice_ptr(&dx),
        n as u64
    );
    Ok((CudaStorage::wrap_cuda_slice(dx, dev), yl.shape().clone()))
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
    let y = alloc::<f32>(&dev, len)?;
    let idx = alloc::<i32>(&dev, len)?;
    launch!(
        &dev,
        "mmbal_max_pool_fwd",
        grid(len),
        ptr("max_pool2d", s, l, "input")?,
        slice_ptr(&y),
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
    Ok((
        CudaStorage::wrap_cuda_slice(y, dev),
        Shape::from((n, c, oh, ow)),
        idx,
    ))
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
    let dx = alloc::<f32>(&dev, len)?;
    launch!(
        &dev,
        "mmbal_max_pool_bwd",
        grid(len),
        ptr("max_pool2d backward", gs, gl, "gradient")?,
        slice_ptr(idx),
        slice_ptr(&dx),
        (n * c) as u64,
        h as i32,
        w as i32,
        oh as i32,
        ow as i32,
        pool.kernel as i32,
        pool.stride as i32,
        pool.padding as i32
    );
    Ok((CudaStorage::wrap_cuda_slice(dx, dev), input.clone()))
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
