//! Per-channel maps of an `(N, C, H, W)` tensor, on the CPU in one parallel pass each way: a bias
//! (`x + b[c]`) and an affine map (`x * a[c] + b[c]`, BatchNorm's evaluation form). Through
//! candle's broadcast ops the forward is one pass per operand and the gradient of the
//! per-channel operands a sum over (N, H, W) that candle reduces on one thread; here each plane
//! is mapped, and each channel summed, by its own task (f64 accumulation).

use crate::contiguous_f32;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor,
};

struct AddChannelBias;

impl CustomOp2 for AddChannelBias {
    fn name(&self) -> &'static str {
        "mmbal-add-channel-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = xl.shape().dims4()?;
        let (x, b) = (
            contiguous_f32("channel bias", xs, xl, "x")?,
            contiguous_f32("channel bias", bs, bl, "bias")?,
        );
        let hw = (h * w).max(1);
        let mut y = vec![0f32; x.len()];
        crate::pool::for_each_chunk(&mut y, hw, |p, out| {
            let v = b[p % c];
            for (o, &xi) in out.iter_mut().zip(&x[p * hw..(p + 1) * hw]) {
                *o = xi + v;
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = b.dim(0)?;
        let db = grad.contiguous()?.apply_op1_no_bwd(&SumPerChannel(c))?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// `(N, C, H, W)` to the `(C)` sums over N, H and W.
struct SumPerChannel(usize);

impl CustomOp1 for SumPerChannel {
    fn name(&self) -> &'static str {
        "mmbal-sum-per-channel"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let g = contiguous_f32("channel bias", s, l, "grad")?;
        let hw = h * w;
        let sums: Vec<f32> = crate::pool::map(c, |ch| {
            (0..n)
                .map(|i| {
                    g[(i * c + ch) * hw..(i * c + ch + 1) * hw]
                        .iter()
                        .map(|&v| v as f64)
                        .sum::<f64>()
                })
                .sum::<f64>() as f32
        });
        Ok((CpuStorage::F32(sums), Shape::from(self.0)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::elementwise::sum_per_channel(s, l)
    }
}

/// `x + bias[c]` over channel c of an `(N, C, H, W)` map; the custom op on the CPU in f32,
/// candle's `broadcast_add` elsewhere.
pub fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::through_f32(x, |x| add_channel_bias(x, bias))? {
        return Ok(y);
    }
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 && x.rank() == 4 {
        return x
            .contiguous()?
            .apply_op2(&bias.contiguous()?, AddChannelBias);
    }
    x.broadcast_add(&bias.reshape((1, (), 1, 1))?)
}

/// `(x, scale, shift)` to `x * scale[c] + shift[c]`.
struct ChannelAffine;

impl CustomOp3 for ChannelAffine {
    fn name(&self) -> &'static str {
        "mmbal-channel-affine"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        xs: &candle_core::CudaStorage,
        xl: &Layout,
        a_s: &candle_core::CudaStorage,
        al: &Layout,
        bs: &candle_core::CudaStorage,
        bl: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::elementwise::channel_affine((xs, xl), (a_s, al), (bs, bl))
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        a_s: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, h, w) = xl.shape().dims4()?;
        let (x, a, b) = (
            contiguous_f32("channel bias", xs, xl, "x")?,
            contiguous_f32("channel bias", a_s, al, "scale")?,
            contiguous_f32("channel bias", bs, bl, "shift")?,
        );
        if a.len() != c || b.len() != c {
            bail!(
                "channel affine: {c} channels, scale {}, shift {}",
                a.len(),
                b.len()
            );
        }
        let hw = (h * w).max(1);
        let mut y = vec![0f32; x.len()];
        crate::pool::for_each_chunk(&mut y, hw, |p, out| {
            let (a, b) = (a[p % c], b[p % c]);
            for (o, &xi) in out.iter_mut().zip(&x[p * hw..(p + 1) * hw]) {
                *o = xi * a + b;
            }
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let c = a.dim(0)?;
        let grad = grad.contiguous()?;
        let zero = a.zeros_like()?;
        let dx = grad.apply_op3_no_bwd(a, &zero, &ChannelAffine)?;
        let da = (&grad * x)?.apply_op1_no_bwd(&SumPerChannel(c))?;
        let db = grad.apply_op1_no_bwd(&SumPerChannel(c))?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// `x * scale[c] + shift[c]` over channel c of an `(N, C, H, W)` map; the custom op on the CPU
/// and CUDA in f32, candle's broadcast ops elsewhere.
pub fn channel_affine(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    if let Some(y) = crate::through_f32(x, |x| channel_affine(x, scale, shift))? {
        return Ok(y);
    }
    if crate::own_kernels(x.device()) && x.dtype() == candle_core::DType::F32 && x.rank() == 4 {
        return x.contiguous()?.apply_op3(
            &scale.contiguous()?,
            &shift.contiguous()?,
            ChannelAffine,
        );
    }
    let shape = (1, (), 1, 1);
    x.broadcast_mul(&scale.reshape(shape)?)?
        .broadcast_add(&shift.reshape(shape)?)
}
