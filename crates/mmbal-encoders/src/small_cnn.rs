//! A small CNN for 28x28 images and small spectrograms: three 3x3 conv + BatchNorm + ReLU stages,
//! the first two followed by a 2x2 max-pool, then a spatial mean. Widths `w, 2w, 4w`.

use crate::resnet::kaiming;
use crate::{BatchNorm2d, Encoder};
use candle_core::{bail, Device, Result, Tensor, Var};
use mmbal_ops::{add_channel_bias, conv2d, max_pool2d, relu};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Three 3x3 convolution + BatchNorm + ReLU stages of widths `w, 2w, 4w`, the first two followed
/// by a 2x2 max-pool, then a spatial mean (28x28 images, small spectrograms).
pub struct SmallCnn {
    convs: Vec<(Var, Var, BatchNorm2d)>,
}

impl SmallCnn {
    /// `in_channels` input planes, `width` channels in the first stage; seeded Kaiming fan_out
    /// init for the kernels, zero conv bias.
    pub fn new(in_channels: usize, width: usize, seed: u64, dev: &Device) -> Result<SmallCnn> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut convs = Vec::new();
        let mut inp = in_channels;
        for out in [width, 2 * width, 4 * width] {
            let w = kaiming(out, inp, 3, &mut rng, dev)?;
            let b = Var::zeros(out, candle_core::DType::F32, dev)?;
            convs.push((w, b, BatchNorm2d::new(out, dev)?));
            inp = out;
        }
        Ok(SmallCnn { convs })
    }
}

/// candle's idiom for a layer with a train/eval switch: `x.apply_t(&net, train)` gives the pooled
/// features, as [`Encoder::features`].
impl candle_core::ModuleT for SmallCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.features(xs, train)
    }
}

impl Encoder for SmallCnn {
    fn batch_norm_layers(&self) -> Vec<&BatchNorm2d> {
        self.convs.iter().map(|(_, _, bn)| bn).collect()
    }
    fn out_dim(&self) -> usize {
        self.convs[2].0.dim(0).unwrap_or(0)
    }
    fn num_stages(&self) -> usize {
        3
    }
    fn stage_channels(&self, i: usize) -> usize {
        self.convs[i.min(2)].0.dim(0).unwrap_or(0)
    }
    fn stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        let Some((w, b, bn)) = self.convs.get(i) else {
            bail!("SmallCnn has 3 stages, asked for stage {i}")
        };
        let y = add_channel_bias(&conv2d(x, w.as_tensor(), 1, 1)?, b.as_tensor())?;
        let y = relu(&bn.forward(&y, train)?)?;
        // Not candle's pool: its backward scales the gradient by the share of tied maxima.
        if i < 2 {
            max_pool2d(&y, 2, 2, 0)
        } else {
            Ok(y)
        }
    }
    fn params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, (w, b, bn)) in self.convs.iter().enumerate() {
            out.push((format!("conv{i}.weight"), w.clone()));
            out.push((format!("conv{i}.bias"), b.clone()));
            out.push((format!("bn{i}.weight"), bn.weight.clone()));
            out.push((format!("bn{i}.bias"), bn.bias.clone()));
        }
        out
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (_, _, bn)) in self.convs.iter().enumerate() {
            let (m, v) = bn.running_stats();
            out.push((format!("bn{i}.running_mean"), m));
            out.push((format!("bn{i}.running_var"), v));
        }
        out
    }
    fn set_buffer(&self, name: &str, value: Tensor) -> Result<()> {
        for (i, (_, _, bn)) in self.convs.iter().enumerate() {
            if let Some(bn_name) = name.strip_prefix(&format!("bn{i}.")) {
                return crate::batch_norm::set_named_stat(bn, bn_name, value);
            }
        }
        bail!("SmallCnn has no buffer `{name}`")
    }
}
