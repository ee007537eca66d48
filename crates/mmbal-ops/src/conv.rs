//! 2-D convolution (square stride and padding, no dilation, one group), right for every input
//! shape in both passes.
//!
//! On the CPU it is a custom op built on im2col and the `gemm` crate (the one candle uses):
//! forward `y_n = W · cols(x_n)`, data gradient `dx_n = col2im(Wᵀ · dy_n)`, filter gradient
//! `dW = Σ_n dy_n · cols(x_n)ᵀ`, samples in parallel. candle's own backward runs the data gradient
//! through its direct transposed-convolution loops and the filter gradient as a convolution whose
//! kernel is the whole output map, both far slower; the filter gradient is also where candle
//! 0.11.1 breaks: it computes one output padding from the height and reuses it for the width, so
//! a stride-2 convolution of a 257x188 spectrogram (the OGM-GE CREMA-D shape) fails. Off the CPU
//! the convolution goes through candle with explicit padding, keeping only the input rows and
//! columns the windows reach, so its backward needs no output padding.
//!
//! Determinism: every sum has a fixed order that does not depend on the thread count. The filter
//! gradient is summed in at most [`FILTER_GROUPS`] groups of consecutive samples, each in sample
//! order, then the groups in order.

use crate::contiguous_f32;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Most partial filter gradients summed at once (memory: this many copies of the filter).
const FILTER_GROUPS: usize = 8;

/// `conv2d(x, w)` with square stride and padding, no dilation, one group. `x`: (N, C, H, W),
/// `w`: (O, C, KH, KW); output (N, O, OH, OW) with `OH = (H + 2 padding - KH) / stride + 1`.
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, c, h, wd) = x.dims4()?;
    let (_, wc, kh, kw) = w.dims4()?;
    if wc != c {
        bail!("conv2d: input has {c} channels, the filter expects {wc}");
    }
    if stride == 0 || c == 0 {
        bail!("conv2d: needs stride >= 1 and at least one input channel (stride {stride}, {c} channels)");
    }
    for (n, k) in [(h, kh), (wd, kw)] {
        if n + 2 * padding < k {
            bail!("conv2d: input {n} + 2 * padding {padding} is smaller than kernel {k}");
        }
    }
    if x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op2(&w.contiguous()?, Conv2dOp { stride, padding });
    }
    conv2d_candle(x, w, stride, padding)
}

/// The convolution through candle's own op (any device), with explicit padding so that its
/// backward needs no output padding.
fn conv2d_candle(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if stride == 1 {
        // Stride 1 needs no output padding in backward: candle's own path is exact.
        return x.conv2d(w, padding, 1, 1, 1);
    }
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let used = |n: usize, k: usize| ((n + 2 * padding - k) / stride) * stride + k;
    let x = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let x = x.narrow(2, 0, used(h, kh))?.narrow(3, 0, used(wd, kw))?;
    x.conv2d(w, 0, stride, 1, 1)
}

/// Shapes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &Shape, w: &Shape, stride: usize, pad: usize) -> Result<Geometry> {
        let (n, c, h, wd) = x.dims4()?;
        let (o, _, kh, kw) = w.dims4()?;
        Ok(Geometry {
            n,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            stride,
            pad,
            oh: (h + 2 * pad - kh) / stride + 1,
            ow: (wd + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the column matrix: `C * KH * KW`.
    fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the column matrix: `OH * OW`.
    fn l(&self) -> usize {
        self.oh * self.ow
    }

    fn input_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Refuses an output gradient whose shape is not the output's.
    fn check_output_grad(&self, grad: &Shape) -> Result<()> {
        let want = [self.n, self.o, self.oh, self.ow];
        if grad.dims() != want {
            bail!("conv2d backward: gradient {grad:?}, expected {want:?}");
        }
        Ok(())
    }

    /// A 1x1 stride-1 unpadded convolution: the column matrix is the input itself.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// The output columns `ow` whose input column `ow * stride + j - pad` lies inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        let lo = if p > j { (p - j).div_ceil(s) } else { 0 };
        let hi = (self.w + p)
            .checked_sub(j)
            .map_or(0, |e| e.div_ceil(s))
            .min(self.ow);
        (lo.min(hi), hi)
    }

    /// Calls `f(row, c, ih, oh, lo, len)` for each run of the column matrix that reads inside
    /// the image: row `(c * KH + i) * KW + j`, output row `oh`, input row `ih`, output columns
    /// `lo..lo + len`.
    fn for_each_segment(&self, mut f: impl FnMut(usize, usize, usize, usize, usize, usize)) {
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    let row = (c * self.kh + i) * self.kw + j;
                    let (lo, hi) = self.valid_cols(j);
                    if lo >= hi {
                        continue;
                    }
                    for oh in 0..self.oh {
                        match (oh * self.stride + i).checked_sub(self.pad) {
                            Some(ih) if ih < self.h => f(row, c, ih, oh, lo, hi - lo),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// `cols` (K x L, row-major) from one sample `x` (C x H x W); zeros where a window leaves the
/// image. Every value of `cols` is written (no clearing pass first).
fn im2col(g: &Geometry, x: &[f32], cols: &mut [f32]) {
    let (l, s) = (g.l(), g.stride);
    for c in 0..g.c {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = (c * g.kh + i) * g.kw + j;
                let (lo, hi) = g.valid_cols(j);
                let out = &mut cols[row * l..(row + 1) * l];
                for (oh, seg) in out.chunks_exact_mut(g.ow).enumerate() {
                    let ih = (oh * s + i).checked_sub(g.pad).filter(|&ih| ih < g.h);
                    let (Some(ih), true) = (ih, lo < hi) else {
                        seg.fill(0.0);
                        continue;
                    };
                    // Plain loops: the runs are short (a few to a few dozen values), where
                    // memcpy and memset calls cost more than the copies.
                    for v in &mut seg[..lo] {
                        *v = 0.0;
                    }
                    for v in &mut seg[hi..] {
                        *v = 0.0;
                    }
                    let src = &plane[ih * g.w..(ih + 1) * g.w];
                    let iw0 = lo * s + j - g.pad;
                    if s == 1 {
                        for (d, v) in seg[lo..hi].iter_mut().zip(&src[iw0..]) {
                            *d = *v;
                        }
                    } else {
                        for (d, v) in seg[lo..hi].iter_mut().zip(src[iw0..].iter().step_by(s)) {
                            *d = *v;
                        }
                    }
                }
            }
        }
    }
}

/// Adds `cols` (K x L) back onto one sample's gradient `dx` (C x H x W), which the caller
/// zeroed; the order of the additions is fixed.
fn col2im(g: &Geometry, cols: &[f32], dx: &mut [f32]) {
    let (l, s) = (g.l(), g.stride);
    g.for_each_segment(|row, c, ih, oh, lo, len| {
        let j = row % g.kw;
        let iw0 = lo * s + j - g.pad;
        let dst = &mut dx[(c * g.h + ih) * g.w..(c * g.h + ih + 1) * g.w];
        let src = &cols[row * l + oh * g.ow + lo..row * l + oh * g.ow + lo + len];
        for (t, v) in src.iter().enumerate() {
            dst[iw0 + t * s] += v;
        }
    });
}

/// Row-major matrix view for `gemm`: element (r, c) at `ptr[r * rs + c * cs]`.
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

fn mat(data: &[f32], rs: usize, cs: usize) -> Mat {
    Mat {
        ptr: data.as_ptr(),
        rs: rs as isize,
        cs: cs as isize,
    }
}

/// `dst (m x n, row-major) = [dst +] lhs (m x k) · rhs (k x n)`.
fn matmul(
    dst: &mut [f32],
    (m, n, k): (usize, usize, usize),
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: Parallelism,
) {
    assert!(dst.len() >= m * n);
    // Safety: `dst` holds m x n values; `lhs` and `rhs` were built by `mat` from slices the
    // callers size as m x k and k x n under the given strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Parallelism inside one matrix product: none when the samples already fill the threads.
fn inner_parallelism(tasks: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if tasks >= threads || threads == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

struct Conv2dOp {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mmbal-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl.shape(), wl.shape(), self.stride, self.padding)?;
        let (x, w) = (
            contiguous_f32("conv2d", xs, xl, "x")?,
            contiguous_f32("conv2d", ws, wl, "w")?,
        );
        let (k, l, o) = (g.k(), g.l(), g.o);
        let par = inner_parallelism(g.n);
        let mut y = vec![0f32; g.n * o * l];
        y.par_chunks_mut(o * l).enumerate().for_each_init(
            || vec![0f32; if g.pointwise() { 0 } else { k * l }],
            |cols, (i, yi)| {
                let xi = &x[i * g.input_len()..(i + 1) * g.input_len()];
                let cols: &[f32] = if g.pointwise() {
                    xi
                } else {
                    im2col(&g, xi, cols);
                    cols
                };
                matmul(yi, (o, l, k), mat(w, k, 1), mat(cols, l, 1), false, par);
            },
        );
        Ok((CpuStorage::F32(y), Shape::from((g.n, o, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (stride, padding) = (self.stride, self.padding);
        // The input of a first layer is data: no gradient to compute.
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                w,
                &Conv2dDataGrad {
                    stride,
                    padding,
                    input: x.shape().clone(),
                },
            )?)
        } else {
            None
        };
        let dw = w
            .track_op()
            .then(|| {
                x.apply_op2_no_bwd(
                    &grad,
                    &Conv2dFilterGrad {
                        stride,
                        padding,
                        filter: w.shape().clone(),
                    },
                )
            })
            .transpose()?;
        Ok((dx, dw))
    }
}

/// `(dy, w)` to `dx`.
struct Conv2dDataGrad {
    stride: usize,
    padding: usize,
    input: Shape,
}

impl CustomOp2 for Conv2dDataGrad {
    fn name(&self) -> &'static str {
        "mmbal-conv2d-data-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(&self.input, wl.shape(), self.stride, self.padding)?;
        g.check_output_grad(gl.shape())?;
        let (dy, w) = (
            contiguous_f32("conv2d", gs, gl, "grad")?,
            contiguous_f32("conv2d", ws, wl, "w")?,
        );
        let (k, l, o) = (g.k(), g.l(), g.o);
        let par = inner_parallelism(g.n);
        let mut dx = vec![0f32; g.n * g.input_len()];
        dx.par_chunks_mut(g.input_len()).enumerate().for_each_init(
            || vec![0f32; if g.pointwise() { 0 } else { k * l }],
            |cols, (i, dxi)| {
                let dyi = &dy[i * o * l..(i + 1) * o * l];
                // Wᵀ (K x O): element (r, o) at w[o * K + r].
                if g.pointwise() {
                    matmul(dxi, (k, l, o), mat(w, 1, k), mat(dyi, l, 1), false, par);
                } else {
                    matmul(cols, (k, l, o), mat(w, 1, k), mat(dyi, l, 1), false, par);
                    col2im(&g, cols, dxi);
                }
            },
        );
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// `(x, dy)` to `dW`.
struct Conv2dFilterGrad {
    stride: usize,
    padding: usize,
    filter: Shape,
}

impl CustomOp2 for Conv2dFilterGrad {
    fn name(&self) -> &'static str {
        "mmbal-conv2d-filter-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::new(xl.shape(), &self.filter, self.stride, self.padding)?;
        g.check_output_grad(gl.shape())?;
        let (x, dy) = (
            contiguous_f32("conv2d", xs, xl, "x")?,
            contiguous_f32("conv2d", gs, gl, "grad")?,
        );
        let (k, l, o) = (g.k(), g.l(), g.o);
        let groups = g.n.clamp(1, FILTER_GROUPS);
        let per_group = g.n.div_ceil(groups);
        let par = inner_parallelism(groups);
        let partials: Vec<Vec<f32>> = (0..groups)
            .into_par_iter()
            .map(|grp| {
                let mut acc = vec![0f32; o * k];
                let mut cols = vec![0f32; if g.pointwise() { 0 } else { k * l }];
                let samples = grp * per_group..((grp + 1) * per_group).min(g.n);
                for (t, i) in samples.enumerate() {
                    let xi = &x[i * g.input_len()..(i + 1) * g.input_len()];
                    let cols: &[f32] = if g.pointwise() {
                        xi
                    } else {
                        im2col(&g, xi, &mut cols);
                        &cols
                    };
                    let dyi = &dy[i * o * l..(i + 1) * o * l];
                    // colsᵀ (L x K): element (p, r) at cols[r * L + p].
                    matmul(
                        &mut acc,
                        (o, k, l),
                        mat(dyi, l, 1),
                        mat(cols, 1, l),
                        t > 0,
                        par,
                    );
                }
                acc
            })
            .collect();
        let mut dw = vec![0f32; o * k];
        dw.par_chunks_mut(k.max(1))
            .enumerate()
            .for_each(|(r, row)| {
                for part in &partials {
                    for (d, v) in row.iter_mut().zip(&part[r * k..(r + 1) * k]) {
                        *d += v;
                    }
                }
            });
        Ok((CpuStorage::F32(dw), self.filter.clone()))
    }
}
