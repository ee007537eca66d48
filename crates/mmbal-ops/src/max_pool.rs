//! Max-pool with PyTorch's semantics in both passes (padding counts as -inf; the gradient goes to
//! the first maximum of each window in scan order). candle 0.11.1's max-pool has no padding and its
//! backward is only right when the kernel equals the stride, which the ResNet stem (3x3, stride 2,
//! padding 1) is not. On the CPU and CUDA this is a custom op (on CUDA the forward keeps each
//! window's argmax for the backward, as PyTorch's CUDA kernel does); on other devices the same
//! result is built from basic ops (strided window views and `maximum`), whose backward candle
//! gets right.

use crate::{contiguous_f32, window};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

#[derive(Debug, Clone, Copy)]
struct MaxPool {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool {
    fn out_dims(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize| (n + 2 * self.padding - self.kernel) / self.stride + 1;
        (o(h), o(w))
    }

    /// Calls `visit(out_index, in_index_of_max)` for every output element of one plane, in
    /// scan order (indices within the plane): PyTorch's CPU rule written as a plain scan, kept
    /// as the reference the branch-free kernels below are tested against.
    #[cfg(test)]
    fn plane_argmax(&self, plane: &[f32], h: usize, w: usize, mut visit: impl FnMut(usize, usize)) {
        let (oh, ow) = self.out_dims(h, w);
        // The kernel rows (columns) of output row (column) `o` that lie inside the input.
        let range = |o: usize, n: usize| {
            let start = o * self.stride;
            let lo = start.max(self.padding);
            let hi = (start + self.kernel).min(n + self.padding);
            (lo - self.padding, hi - self.padding)
        };
        for oy in 0..oh {
            let (y0, y1) = range(oy, h);
            for ox in 0..ow {
                let (x0, x1) = range(ox, w);
                let mut best = (f32::NEG_INFINITY, usize::MAX);
                for iy in y0..y1 {
                    for (ix, &v) in plane[iy * w + x0..iy * w + x1].iter().enumerate() {
                        // Strictly greater keeps the first maximum; NaN propagates as PyTorch does.
                        if v > best.0 || v.is_nan() || best.1 == usize::MAX {
                            best = (v, iy * w + x0 + ix);
                        }
                    }
                }
                visit(oy * ow + ox, best.1);
            }
        }
    }

    /// Forward values of one plane. The scan-order rule (a value is taken if strictly greater
    /// or NaN) is applied to a whole output row at once, one window offset at a time, with
    /// selects instead of branches: on activations "is this the new maximum?" is a coin toss,
    /// and the mispredicted branches of a plain scan cost ~40x the arithmetic (2.4 against
    /// 0.05 ns per input for a 2x2 pool on this machine). Starting from -inf instead of the
    /// window's first value gives the same value bits (tested against the scan).
    fn plane_max(&self, plane: &[f32], (h, w): (usize, usize), out: &mut [f32], ow: usize) {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        for (oy, best) in out.chunks_exact_mut(ow).enumerate() {
            best.fill(f32::NEG_INFINITY);
            for i in 0..k {
                let Some(iy) = window::input_at(oy, i, s, p, h) else {
                    continue;
                };
                let row = &plane[iy * w..(iy + 1) * w];
                for j in 0..k {
                    let (lo, hi) = window::outputs_inside(j, s, p, w, ow);
                    if lo >= hi {
                        continue;
                    }
                    let src = row[lo * s + j - p..].iter().step_by(s);
                    for (b, &v) in best[lo..hi].iter_mut().zip(src) {
                        let take = (v > *b) | v.is_nan();
                        *b = if take { v } else { *b };
                    }
                }
            }
        }
    }

    /// The input position the scan picks for output `(oy, ox)` whose value is `y`: the first
    /// window position equal to `y` (an earlier equal one would have been kept), or for a NaN
    /// the last NaN (each NaN replaces the one before), as PyTorch's CPU kernel does.
    fn argmax(
        &self,
        plane: &[f32],
        (h, w): (usize, usize),
        (oy, ox): (usize, usize),
        y: f32,
    ) -> usize {
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let nan = y.is_nan();
        let mut at = usize::MAX;
        for i in 0..k {
            let Some(iy) = window::input_at(oy, i, s, p, h) else {
                continue;
            };
            for j in 0..k {
                let Some(ix) = window::input_at(ox, j, s, p, w) else {
                    continue;
                };
                let q = iy * w + ix;
                let v = plane[q];
                let hit = if nan {
                    v.is_nan()
                } else {
                    (v == y) & (at == usize::MAX)
                };
                at = if hit { q } else { at };
            }
        }
        at
    }
}

fn f32_input<'a>(s: &'a CpuStorage, l: &Layout) -> Result<(&'a [f32], usize, usize, usize)> {
    let (n, c, h, w) = l.shape().dims4()?;
    Ok((contiguous_f32("max_pool2d", s, l, "input")?, n * c, h, w))
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "mmbal-max-pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, planes, h, w) = f32_input(s, l)?;
        let (oh, ow) = self.out_dims(h, w);
        let mut y = vec![0f32; planes * oh * ow];
        crate::pool::for_each_chunk(&mut y, (oh * ow).max(1), |p, out| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            if ow > 0 {
                self.plane_max(plane, (h, w), out, ow);
            }
        });
        let (n, c, _, _) = l.shape().dims4()?;
        Ok((CpuStorage::F32(y), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op3_no_bwd(
            &res.contiguous()?,
            &grad.contiguous()?,
            &MaxPoolBackward(*self),
        )?))
    }
}

struct MaxPoolBackward(MaxPool);

/// `(x, y, dy)` to `dx`, `y` the forward output.
impl CustomOp3 for MaxPoolBackward {
    fn name(&self) -> &'static str {
        "mmbal-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, _, h, w) = f32_input(s1, l1)?;
        let y = contiguous_f32("max_pool2d backward", s2, l2, "output")?;
        let g = contiguous_f32("max_pool2d backward", s3, l3, "grad")?;
        let (oh, ow) = self.0.out_dims(h, w);
        let mut dx = vec![0f32; x.len()];
        // Planes in parallel; within a plane the additions go in output scan order (windows
        // may overlap), as the plain scan's did.
        crate::pool::for_each_chunk(&mut dx, (h * w).max(1), |p, d| {
            let plane = &x[p * h * w..(p + 1) * h * w];
            let g = &g[p * oh * ow..(p + 1) * oh * ow];
            let y = &y[p * oh * ow..(p + 1) * oh * ow];
            for (o, (&yo, &go)) in y.iter().zip(g).enumerate() {
                d[self.0.argmax(plane, (h, w), (o / ow, o % ow), yo)] += go;
            }
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Max-pool over `(N, C, H, W)` f32 (or bf16, see the crate docs) with a square kernel, stride and padding (padding < kernel).
pub fn max_pool2d(x: &Tensor, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    if kernel == 0 || stride == 0 || 2 * padding > kernel {
        bail!("max_pool2d: need kernel >= 1, stride >= 1 and padding <= kernel / 2");
    }
    let pool = MaxPool {
        kernel,
        stride,
        padding,
    };
    // bf16 natively on CUDA (compared in f32, exactly), through f32 elsewhere.
    #[cfg(feature = "cuda")]
    if x.device().is_cuda()
        && matches!(
            x.dtype(),
            candle_core::DType::F32 | candle_core::DType::BF16
        )
    {
        return x.contiguous()?.apply_op1(cuda_pool::MaxPoolCuda {
            pool,
            indices: Default::default(),
        });
    }
    if let Some(y) = crate::through_f32(x, |x| max_pool2d(x, kernel, stride, padding))? {
        return Ok(y);
    }
    if x.device().is_cpu() {
        return x.contiguous()?.apply_op1(pool);
    }
    max_pool2d_composite(x, kernel, stride, padding)
}

/// The same pool from basic ops, for devices without the custom op, with the same semantics in
/// both passes. Each of the `k * k` window offsets is a strided view of the padded input (taken by
/// reshaping rows into `(i, stride)` pairs). Padding is `f32::MIN`, which never wins against a real
/// value and stays finite (so `0 * pad` is 0, not NaN). The forward value is the elementwise
/// maximum; the gradient goes to the first maximum in scan order, as PyTorch's does: each view is
/// multiplied by a constant 0/1 mask that marks the first offset equal to the maximum, so ties
/// (common after ReLU) give the whole gradient to one input instead of splitting or multiplying it.
pub fn max_pool2d_composite(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (k, s, p) = (kernel, stride, padding);
    let (oh, ow) = MaxPool {
        kernel,
        stride,
        padding,
    }
    .out_dims(h, w);
    let extra = k.div_ceil(s);
    let (lh, lw) = (s * (oh + extra), s * (ow + extra));
    let pad = |t: &Tensor, dim: usize, before: usize, after: usize| -> Result<Tensor> {
        let mut dims = t.dims().to_vec();
        let mut parts = Vec::new();
        if before > 0 {
            dims[dim] = before;
            parts.push(Tensor::full(f32::MIN, dims.as_slice(), t.device())?.to_dtype(t.dtype())?);
        }
        parts.push(t.clone());
        if after > 0 {
            dims[dim] = after;
            parts.push(Tensor::full(f32::MIN, dims.as_slice(), t.device())?.to_dtype(t.dtype())?);
        }
        Tensor::cat(&parts, dim)
    };
    let y = pad(&pad(x, 2, p, lh - h - p)?, 3, p, lw - w - p)?;
    let rows = y.reshape((n, c, oh + extra, s, lw))?;
    let mut views = Vec::with_capacity(k * k);
    for dy in 0..k {
        let r = rows
            .narrow(2, dy / s, oh)?
            .narrow(3, dy % s, 1)?
            .squeeze(3)?
            .reshape((n, c, oh, ow + extra, s))?;
        for dx in 0..k {
            views.push(r.narrow(3, dx / s, ow)?.narrow(4, dx % s, 1)?.squeeze(4)?);
        }
    }
    let mut best = views[0].detach();
    for v in &views[1..] {
        best = best.maximum(&v.detach())?;
    }
    // `taken` marks outputs whose first maximum has been found; each view contributes only where
    // it is the first maximum.
    let mut taken = best.zeros_like()?;
    let mut out: Option<Tensor> = None;
    for v in &views {
        let first = (v.detach().eq(&best)?.to_dtype(v.dtype())? * (1.0 - &taken)?)?;
        taken = (taken + &first)?;
        let part = (v * &first)?;
        out = Some(match out {
            None => part,
            Some(o) => (o + part)?,
        });
    }
    Ok(out.expect("kernel >= 1"))
}

#[cfg(test)]
mod tests {
    use super::MaxPool;

    #[test]
    fn branch_free_kernels_match_the_plain_scan_bitwise() {
        // Values from a small set (ties everywhere), with NaN, -inf and signed zeros.
        let pool = [
            -0.0f32,
            0.0,
            1.0,
            2.0,
            f32::NAN,
            f32::NEG_INFINITY,
            1.0,
            2.0,
        ];
        let mut state = 7u64;
        for (h, w, kernel, stride, padding) in [
            (9, 8, 3, 2, 1),
            (8, 8, 2, 2, 0),
            (7, 9, 3, 1, 1),
            (9, 7, 2, 2, 0),
            (10, 11, 3, 3, 0),
            (5, 6, 2, 1, 1),
            (3, 3, 3, 2, 1),
        ] {
            let m = MaxPool {
                kernel,
                stride,
                padding,
            };
            let (oh, ow) = m.out_dims(h, w);
            for _ in 0..20 {
                let plane: Vec<f32> = (0..h * w)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        pool[(state % pool.len() as u64) as usize]
                    })
                    .collect();
                let mut want = vec![0usize; oh * ow];
                m.plane_argmax(&plane, h, w, |o, i| want[o] = i);
                let mut y = vec![0f32; oh * ow];
                m.plane_max(&plane, (h, w), &mut y, ow);
                for (o, &i) in want.iter().enumerate() {
                    let tag = format!("{h}x{w} k{kernel} s{stride} p{padding} output {o}");
                    assert_eq!(y[o].to_bits(), plane[i].to_bits(), "{tag}: value");
                    assert_eq!(
                        m.argmax(&plane, (h, w), (o / ow, o % ow), y[o]),
                        i,
                        "{tag}: index"
                    );
                }
            }
        }
    }
}

/// The CUDA op: the forward records each output's argmax, the backward gathers through it.
#[cfg(feature = "cuda")]
mod cuda_pool {
    use super::MaxPool;
    use crate::cuda::elementwise::{max_pool_bwd, max_pool_fwd, Pool};
    use candle_core::cuda_backend::cudarc::driver::CudaSlice;
    use candle_core::{bail, CpuStorage, CudaStorage, CustomOp1, Layout, Result, Shape, Tensor};
    use std::sync::{Arc, Mutex};

    pub(super) struct MaxPoolCuda {
        pub pool: MaxPool,
        pub indices: Arc<Mutex<Option<Arc<CudaSlice<i32>>>>>,
    }

    fn geometry(pool: MaxPool, input: &Shape) -> Result<Pool> {
        let (_, _, h, w) = input.dims4()?;
        Ok(Pool {
            kernel: pool.kernel,
            stride: pool.stride,
            padding: pool.padding,
            out: pool.out_dims(h, w),
        })
    }

    impl CustomOp1 for MaxPoolCuda {
        fn name(&self) -> &'static str {
            "mmbal-max-pool-cuda"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            bail!("mmbal-max-pool-cuda runs on CUDA only")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let (y, shape, idx) = max_pool_fwd(geometry(self.pool, l.shape())?, s, l)?;
            *self.indices.lock().unwrap() = Some(Arc::new(idx));
            Ok((y, shape))
        }

        fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let Some(indices) = self.indices.lock().unwrap().clone() else {
                bail!("max_pool2d backward: the forward kept no indices");
            };
            let op = MaxPoolCudaBackward {
                pool: geometry(self.pool, x.shape())?,
                input: x.shape().clone(),
                indices,
            };
            Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
        }
    }

    struct MaxPoolCudaBackward {
        pool: Pool,
        input: Shape,
        indices: Arc<CudaSlice<i32>>,
    }

    impl CustomOp1 for MaxPoolCudaBackward {
        fn name(&self) -> &'static str {
            "mmbal-max-pool-cuda-backward"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            bail!("mmbal-max-pool-cuda-backward runs on CUDA only")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            max_pool_bwd(self.pool, &self.input, &self.indices, s, l)
        }
    }
}
