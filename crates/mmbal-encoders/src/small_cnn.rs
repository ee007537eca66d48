//! A small CNN for 28x28 images and small spectrograms: three 3x3 conv + BatchNorm + ReLU stages,
//! the first two followed by a 2x2 max-pool, then a spatial mean. Widths `w, 2w, 4w`.

use crate::resnet::conv_kernel;
use crate::{BatchNorm2d, Encoder};
use candle_core::{bail, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use mmbal_ops::{add_channel_bias, conv2d, max_pool2d, relu};

/// Three 3x3 convolution + BatchNorm + ReLU stages of widths `w, 2w, 4w`, the first two followed
/// by a 2x2 max-pool, then a spatial mean (28x28 images, small spectrograms).
pub struct SmallCnn {
    convs: Vec<(Tensor, Tensor, BatchNorm2d)>,
}

impl SmallCnn {
    /// `in_channels` input planes, `width` channels in the first stage; Kaiming fan_out init for
    /// the kernels, zero conv bias. Variables `conv{i}.weight`, `conv{i}.bias` and `bn{i}.*`
    /// under `vb`'s path.
    pub fn new(in_channels: usize, width: usize, vb: VarBuilder) -> Result<SmallCnn> {
        let mut convs = Vec::new();
        let mut inp = in_channels;
        for (i, out) in [width, 2 * width, 4 * width].into_iter().enumerate() {
            let conv = vb.pp(format!("conv{i}"));
            let w = conv_kernel(&conv, out, inp, 3)?;
            let b = conv.get_with_hints(out, "bias", Init::Const(0.0))?;
            convs.push((w, b, BatchNorm2d::new(out, vb.pp(format!("bn{i}")))?));
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
        let y = add_channel_bias(&conv2d(x, w, 1, 1)?, b)?;
        let y = relu(&bn.forward(&y, train)?)?;
        // Not candle's pool: its backward scales the gradient by the share of tied maxima.
        if i < 2 {
            max_pool2d(&y, 2, 2, 0)
        } else {
            Ok(y)
        }
    }
    fn buffers(&self) -> Vec<Var> {
        self.convs
            .iter()
            .flat_map(|(_, _, bn)| bn.buffers())
            .collect()
    }
}
