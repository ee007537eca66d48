//! 2-D convolution (square stride and padding, no dilation, one group), right for every input
//! shape in both passes.
//!
//! On the CPU it is a custom op built on im2col and the `gemm` crate (the one candle uses):
//! forward `y_n = W · cols(x_n)`, data gradient `dx_n = col2im(Wᵀ · dy_n)`, filter gradient
//! `dW = Σ_n dy_n · cols(x_n)ᵀ`, chunks of samples in parallel. On small maps a chunk's samples
//! share one product (their column matrices side by side), since `gemm` is slow on products of
//! a few dozen columns. candle's own backward runs the data gradient through its direct
//! transposed-convolution loops and the filter gradient as a convolution whose kernel is the
//! whole output map, both far slower; the filter gradient is also where candle
//! 0.11.1 breaks: it computes one output padding from the height and reuses it for the width, so
//! a stride-2 convolution of a 257x188 spectrogram (the OGM-GE CREMA-D shape) fails. Off the CPU
//! On CUDA (feature `cuda`) the same op runs its three passes through cuDNN (`cuda::conv`).
//! Elsewhere the convolution goes through candle with explicit padding, keeping only the input
//! rows and columns the windows reach, so its backward needs no output padding.
//!
//! Determinism: every sum has a fixed order that does not depend on the thread count. The filter
//! gradient is summed in at most [`FILTER_GROUPS`] groups of consecutive samples, each in sample
//! order, then the groups in order; how many samples share a product depends on the shapes alone.
//!
//! Threads (candle's pool, see `pool`) take whole chunks, and each product runs on one thread:
//! a batch that fits one product (the deep layers of a small batch) runs on one thread. Giving
//! `gemm` rayon's threads there measured no faster (GRID row 26.9 against 25.8 ms) and brought
//! back the second pool whose threads fought candle's.

use crate::{contiguous_f32, window};
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use gemm::Parallelism;

/// Most partial filter gradients summed at once (memory: this many copies of the filter).
const FILTER_GROUPS: usize = 8;

/// `conv2d(x, w)` with square stride and padding, no dilation, one group. `x`: (N, C, H, W),
/// `w`: (O, C, KH, KW); output (N, O, OH, OW) with `OH = (H + 2 padding - KH) / stride + 1`.
/// A bf16 `x` gives a bf16 output (mixed precision, see the crate docs).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, wc, kh, kw) = w.dims4()?;
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
    MACS.with(|m| {
        if let Some(count) = m.get() {
            let (ho, wo) = (
                (h + 2 * padding - kh) / stride + 1,
                (wd + 2 * padding - kw) / stride + 1,
            );
            m.set(Some(count + (n * o * ho * wo * c * kh * kw) as u64));
        }
    });
    if x.dtype() == DType::BF16 {
        // Mixed precision: the f32 master filter rounded to bf16 (its gradient comes back f32
        // through the cast); cuDNN runs bf16 natively, other devices widen to f32.
        let w = w.to_dtype(DType::BF16)?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return x
                .contiguous()?
                .apply_op2(&w.contiguous()?, Conv2dOp { stride, padding });
        }
        let (x, w) = (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?);
        return conv2d_f32(&x, &w, stride, padding)?.to_dtype(DType::BF16);
    }
    conv2d_f32(x, w, stride, padding)
}

/// The convolution of f32 operands: this crate's kernels where they serve the device, candle's
/// op elsewhere.
fn conv2d_f32(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if crate::own_kernels(x.device()) && x.dtype() == DType::F32 && w.dtype() == DType::F32 {
        return x
            .contiguous()?
            .apply_op2(&w.contiguous()?, Conv2dOp { stride, padding });
    }
    conv2d_candle(x, w, stride, padding)
}

thread_local! {
    /// The multiply-accumulates of the convolutions run on this thread, while counting.
    static MACS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` and counts the multiply-accumulates of every [`conv2d`] it calls on this thread
/// (each call: output elements times input channels times kernel area, the convention of
/// ResNet-18's "1.8 GFLOPs"); returns `f`'s result and the count. Counting nests.
pub fn count_conv_macs<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let outer = MACS.with(|m| m.replace(Some(0)));
    let out = f();
    let counted = MACS.with(|m| m.replace(outer)).unwrap_or(0);
    if let Some(o) = outer {
        MACS.with(|m| m.set(Some(o + counted)));
    }
    (out, counted)
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

    /// Samples per matrix product so that it has about `target` columns; one for a pointwise
    /// convolution, whose input is its own column matrix. Depends on the shapes alone, so the
    /// sums (and their bits) do not depend on the thread count.
    fn samples_per_product(&self, target: usize) -> usize {
        if self.pointwise() {
            1
        } else {
            (target / self.l().max(1)).clamp(1, self.n.max(1))
        }
    }

    /// A 1x1 stride-1 unpadded convolution: the column matrix is the input itself.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// The output columns `ow` whose input column `ow * stride + j - pad` lies inside the image.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        window::outputs_inside(j, self.stride, self.pad, self.w, self.ow)
    }

    /// The input row output row `oh` reads at kernel row `i`, or `None` in the padding.
    fn input_row(&self, oh: usize, i: usize) -> Option<usize> {
        window::input_at(oh, i, self.stride, self.pad, self.h)
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
                        if let Some(ih) = self.input_row(oh, i) {
                            f(row, c, ih, oh, lo, hi - lo);
                        }
                    }
                }
            }
        }
    }
}

/// Builds and scatters back one sample's column matrix (K x L) inside a wider matrix: row `r`
/// of sample `t` at `cols[r * ld + t * L..][..L]`, so that several samples share one product.
///
/// Wide stride-1 rows are copied in runs; short or strided rows (small maps, the stride-2 stems)
/// go through a gather table, one input index per column-matrix entry, because there the cost of
/// each run's bounds and loop set-up outweighs the copy (measured: 0.3 ns per entry for the
/// table against 0.5 to 4.6 ns for runs on 2x3 to 32x48 maps, 0.15 for runs 47 wide).
struct Columns<'g> {
    g: &'g Geometry,
    /// Input index of each entry, the sample's length for entries in the zero padding.
    table: Option<Vec<u32>>,
}

/// Output rows at least this wide (at stride 1) are copied in runs rather than gathered.
const RUN_MIN_WIDTH: usize = 16;

impl<'g> Columns<'g> {
    fn new(g: &'g Geometry) -> Columns<'g> {
        let by_table = (g.stride > 1 || g.ow < RUN_MIN_WIDTH) && g.input_len() < u32::MAX as usize;
        let table = by_table.then(|| {
            let l = g.l();
            let mut t = vec![g.input_len() as u32; g.k() * l];
            g.for_each_segment(|row, c, ih, oh, lo, len| {
                let iw0 = lo * g.stride + row % g.kw - g.pad;
                let first = (c * g.h + ih) * g.w + iw0;
                let dst = &mut t[row * l + oh * g.ow + lo..][..len];
                for (q, d) in dst.iter_mut().enumerate() {
                    *d = (first + q * g.stride) as u32;
                }
            });
            t
        });
        Columns { g, table }
    }

    /// A scratch copy of one sample with a zero after it, for the table's padding entries.
    fn scratch(&self) -> Vec<f32> {
        let len = match self.table {
            Some(_) => self.g.input_len() + 1,
            None => 0,
        };
        vec![0.0; len]
    }

    /// Writes sample `x` (C x H x W) into columns `off..off + L` of `cols` (row stride `ld`);
    /// every entry is written, zeros where a window leaves the image.
    fn fill(&self, x: &[f32], scratch: &mut [f32], cols: &mut [f32], ld: usize, off: usize) {
        let g = self.g;
        let l = g.l();
        if let Some(table) = &self.table {
            scratch[..x.len()].copy_from_slice(x);
            scratch[x.len()] = 0.0;
            for (r, idx) in table.chunks_exact(l).enumerate() {
                for (d, &i) in cols[r * ld + off..][..l].iter_mut().zip(idx) {
                    *d = scratch[i as usize];
                }
            }
            return;
        }
        let s = g.stride;
        for c in 0..g.c {
            let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
            for i in 0..g.kh {
                for j in 0..g.kw {
                    let row = (c * g.kh + i) * g.kw + j;
                    let (lo, hi) = g.valid_cols(j);
                    let out = &mut cols[row * ld + off..][..l];
                    for (oh, seg) in out.chunks_exact_mut(g.ow).enumerate() {
                        let (Some(ih), true) = (g.input_row(oh, i), lo < hi) else {
                            seg.fill(0.0);
                            continue;
                        };
                        // Plain loops: the runs are short, where memcpy and memset calls cost
                        // more than the copies.
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
                            let src = src[iw0..].iter().step_by(s);
                            for (d, v) in seg[lo..hi].iter_mut().zip(src) {
                                *d = *v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes the samples `xs` (each C x H x W) side by side into `sc.cols` (row stride
    /// samples x L).
    fn fill_samples(&self, xs: &[f32], sc: &mut Scratch) {
        let (n, l) = (xs.len() / self.g.input_len(), self.g.l());
        for (t, xi) in xs.chunks_exact(self.g.input_len()).enumerate() {
            self.fill(xi, &mut sc.sample, &mut sc.cols, n * l, t * l);
        }
    }

    /// Adds columns `off..off + L` of `cols` (row stride `ld`) back onto one sample's gradient
    /// `dx` (C x H x W), which the caller zeroed. The additions run in column-matrix order (row,
    /// then output position) on both paths, so the two give the same bits.
    fn add_back(&self, cols: &[f32], ld: usize, off: usize, scratch: &mut [f32], dx: &mut [f32]) {
        let g = self.g;
        let l = g.l();
        if let Some(table) = &self.table {
            scratch.fill(0.0);
            for (r, idx) in table.chunks_exact(l).enumerate() {
                for (v, &i) in cols[r * ld + off..][..l].iter().zip(idx) {
                    scratch[i as usize] += v;
                }
            }
            dx.copy_from_slice(&scratch[..dx.len()]);
            return;
        }
        let s = g.stride;
        g.for_each_segment(|row, c, ih, oh, lo, len| {
            let iw0 = lo * s + row % g.kw - g.pad;
            let dst = &mut dx[(c * g.h + ih) * g.w..(c * g.h + ih + 1) * g.w];
            let src = &cols[row * ld + off + oh * g.ow + lo..][..len];
            for (t, v) in src.iter().enumerate() {
                dst[iw0 + t * s] += v;
            }
        });
    }
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
fn matmul(dst: &mut [f32], (m, n, k): (usize, usize, usize), lhs: Mat, rhs: Mat, accumulate: bool) {
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
            Parallelism::None,
        )
    }
}

/// Columns aimed at per matrix product in the forward and data-gradient passes: products over
/// a few dozen columns (small maps) run at a tenth of `gemm`'s speed, so samples are batched
/// until about this many (measured with `gemm` 0.19 at 8-64 channels, 2 to 1920 columns).
const PRODUCT_COLUMNS: usize = 256;

/// The same for the filter gradient, whose product sums over the columns: past a few hundred
/// `gemm` slows down again there.
const FILTER_PRODUCT_COLUMNS: usize = 128;

/// Per-thread buffers: one chunk's column matrix, its output or output-gradient rows, and one
/// padded sample for the gather table.
struct Scratch {
    cols: Vec<f32>,
    out: Vec<f32>,
    sample: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry, columns: &Columns, nb: usize) -> Scratch {
        let several = nb > 1 && !g.pointwise();
        Scratch {
            cols: vec![0.0; if g.pointwise() { 0 } else { g.k() * g.l() * nb }],
            out: vec![0.0; if several { g.o * g.l() * nb } else { 0 }],
            sample: columns.scratch(),
        }
    }
}

/// The inverse of [`gather_samples`]: an O x mL matrix back into `m` samples' (O x L) blocks.
/// `m` comes from `dst`; `src` may be a longer scratch buffer.
fn scatter_samples(src: &[f32], o: usize, l: usize, dst: &mut [f32]) {
    let ld = dst.len() / o;
    for (t, dt) in dst.chunks_exact_mut(o * l).enumerate() {
        for (r, dr) in dt.chunks_exact_mut(l).enumerate() {
            dr.copy_from_slice(&src[r * ld + t * l..][..l]);
        }
    }
}

/// `m` samples' (O x L) blocks side by side as one O x mL matrix.
fn gather_samples(src: &[f32], o: usize, l: usize, dst: &mut [f32]) {
    let ld = src.len() / o;
    for (t, st) in src.chunks_exact(o * l).enumerate() {
        for (r, sr) in st.chunks_exact(l).enumerate() {
            dst[r * ld + t * l..][..l].copy_from_slice(sr);
        }
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv::forward(self.stride, self.padding, xs, xl, ws, wl)
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
        let nb = g.samples_per_product(PRODUCT_COLUMNS);
        let columns = Columns::new(&g);
        let mut y = vec![0f32; g.n * o * l];
        crate::pool::for_each_chunk_init(
            &mut y,
            nb * o * l,
            || Scratch::new(&g, &columns, nb),
            |sc, ci, ychunk| {
                let m = ychunk.len() / (o * l);
                let xs = &x[ci * nb * g.input_len()..][..m * g.input_len()];
                if g.pointwise() {
                    // nb is 1 here: the input is its own column matrix.
                    matmul(ychunk, (o, l, k), mat(w, k, 1), mat(xs, l, 1), false);
                    return;
                }
                let ld = m * l;
                columns.fill_samples(xs, sc);
                if m == 1 {
                    matmul(ychunk, (o, l, k), mat(w, k, 1), mat(&sc.cols, l, 1), false);
                    return;
                }
                // One product for the chunk (O x mL), then each sample's rows into place.
                matmul(
                    &mut sc.out,
                    (o, ld, k),
                    mat(w, k, 1),
                    mat(&sc.cols, ld, 1),
                    false,
                );
                scatter_samples(&sc.out, o, l, ychunk);
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
        ws: &candle_core::CudaStorage,
        wl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv::backward_data(self.stride, self.padding, &self.input, gs, gl, ws, wl)
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
        let nb = g.samples_per_product(PRODUCT_COLUMNS);
        let columns = Columns::new(&g);
        let mut dx = vec![0f32; g.n * g.input_len()];
        crate::pool::for_each_chunk_init(
            &mut dx,
            nb * g.input_len(),
            || Scratch::new(&g, &columns, nb),
            |sc, ci, dxchunk| {
                let m = dxchunk.len() / g.input_len();
                let dys = &dy[ci * nb * o * l..][..m * o * l];
                // Wᵀ (K x O): element (r, o) at w[o * K + r].
                if g.pointwise() {
                    matmul(dxchunk, (k, l, o), mat(w, 1, k), mat(dys, l, 1), false);
                    return;
                }
                let ld = m * l;
                let dys: &[f32] = if m == 1 {
                    dys
                } else {
                    gather_samples(dys, o, l, &mut sc.out);
                    &sc.out
                };
                matmul(
                    &mut sc.cols,
                    (k, ld, o),
                    mat(w, 1, k),
                    mat(dys, ld, 1),
                    false,
                );
                for (t, dxi) in dxchunk.chunks_exact_mut(g.input_len()).enumerate() {
                    columns.add_back(&sc.cols, ld, t * l, &mut sc.sample, dxi);
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

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        gs: &candle_core::CudaStorage,
        gl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::conv::backward_filter(self.stride, self.padding, &self.filter, xs, xl, gs, gl)
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
        let nb = g.samples_per_product(FILTER_PRODUCT_COLUMNS).min(per_group);
        let columns = Columns::new(&g);
        let partials: Vec<Vec<f32>> = crate::pool::map(groups, |grp| {
            let mut acc = vec![0f32; o * k];
            let mut sc = Scratch::new(&g, &columns, nb);
            let samples = grp * per_group..((grp + 1) * per_group).min(g.n);
            for (t, first) in samples.clone().step_by(nb).enumerate() {
                let m = nb.min(samples.end - first);
                let xs = &x[first * g.input_len()..][..m * g.input_len()];
                let dys = &dy[first * o * l..][..m * o * l];
                let ld = m * l;
                let cols: &[f32] = if g.pointwise() {
                    xs
                } else {
                    columns.fill_samples(xs, &mut sc);
                    &sc.cols
                };
                let dys: &[f32] = if m == 1 {
                    dys
                } else {
                    gather_samples(dys, o, l, &mut sc.out);
                    &sc.out
                };
                // colsᵀ (mL x K): element (p, r) at cols[r * ld + p].
                matmul(
                    &mut acc,
                    (o, k, ld),
                    mat(dys, ld, 1),
                    mat(cols, 1, ld),
                    t > 0,
                );
            }
            acc
        });
        let mut dw = vec![0f32; o * k];
        crate::pool::for_each_chunk(&mut dw, k.max(1), |r, row| {
            for part in &partials {
                for (d, v) in row.iter_mut().zip(&part[r * k..(r + 1) * k]) {
                    *d += v;
                }
            }
        });
        Ok((CpuStorage::F32(dw), self.filter.clone()))
    }
}
