//! Trainable ResNet-18 (BasicBlock [2, 2, 2, 2], 7x7/2 conv + 3x3/2 max-pool stem) without the
//! average pool and classifier: `forward` returns the layer4 map. Built from a `VarBuilder` path
//! whose names follow torchvision (`conv1.weight`, `layer1.0.bn1.weight`,
//! `layer2.0.downsample.0.weight`, ...), so ImageNet weights map by name. Init: conv Kaiming
//! normal, fan_out, ReLU gain; BN weight 1, bias 0.

use crate::{BatchNorm2d, Encoder};
use candle_core::{bail, DType, Result, Tensor, Var};
use candle_nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use candle_nn::{Init, VarBuilder};
use mmbal_ops::{conv2d, max_pool2d, relu};

/// The conv kernel `(O, I, K, K)` at `vb`'s `weight`, Kaiming normal, fan_out, ReLU gain
/// (torchvision's ResNet init).
pub(crate) fn conv_kernel(vb: &VarBuilder, out: usize, inp: usize, k: usize) -> Result<Tensor> {
    let hint = Init::Kaiming {
        dist: NormalOrUniform::Normal,
        fan: FanInOut::FanOut,
        non_linearity: NonLinearity::ReLU,
    };
    vb.get_with_hints((out, inp, k, k), "weight", hint)
}

struct BasicBlock {
    conv1: Tensor,
    bn1: BatchNorm2d,
    conv2: Tensor,
    bn2: BatchNorm2d,
    downsample: Option<(Tensor, BatchNorm2d)>,
    stride: usize,
}

impl BasicBlock {
    fn new(inp: usize, out: usize, stride: usize, vb: VarBuilder) -> Result<BasicBlock> {
        // The shortcut's kernel first: the seeded stream draws in the order layers ask.
        let downsample = if stride != 1 || inp != out {
            Some((
                conv_kernel(&vb.pp("downsample.0"), out, inp, 1)?,
                BatchNorm2d::new(out, vb.pp("downsample.1"))?,
            ))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv_kernel(&vb.pp("conv1"), out, inp, 3)?,
            bn1: BatchNorm2d::new(out, vb.pp("bn1"))?,
            conv2: conv_kernel(&vb.pp("conv2"), out, out, 3)?,
            bn2: BatchNorm2d::new(out, vb.pp("bn2"))?,
            downsample,
            stride,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = relu(
            &self
                .bn1
                .forward(&conv2d(x, &self.conv1, self.stride, 1)?, train)?,
        )?;
        let y = self.bn2.forward(&conv2d(&y, &self.conv2, 1, 1)?, train)?;
        let skip = match &self.downsample {
            Some((w, bn)) => bn.forward(&conv2d(x, w, self.stride, 0)?, train)?,
            None => x.clone(),
        };
        relu(&(y + skip)?)
    }

    /// BatchNorm layers in the order `init_batch_norm_weights` draws for them.
    fn batch_norms(&self) -> Vec<&BatchNorm2d> {
        let mut out = vec![&self.bn1, &self.bn2];
        if let Some((_, bn)) = &self.downsample {
            out.push(bn);
        }
        out
    }
}

/// ResNet-18 as torchvision builds it (stem, four stages of two basic blocks), any input channels,
/// channel widths scaled by `width`; pooled features of `out_channels`.
pub struct ResNet18 {
    conv1: Tensor,
    bn1: BatchNorm2d,
    blocks: Vec<BasicBlock>,
    out_channels: usize,
}

impl ResNet18 {
    /// `in_channels` 1 (audio), 2 (flow) or 3 (RGB); `width` scales the channel counts
    /// (1.0 = 64/128/256/512; 0.125 for small CPU runs). The variables come from `vb`
    /// (torchvision's names under its path).
    pub fn new(in_channels: usize, width: f64, vb: VarBuilder) -> Result<ResNet18> {
        let ch = |c: usize| ((c as f64 * width).round() as usize).max(1);
        let conv1 = conv_kernel(&vb.pp("conv1"), ch(64), in_channels, 7)?;
        let bn1 = BatchNorm2d::new(ch(64), vb.pp("bn1"))?;
        let mut blocks = Vec::new();
        let mut inp = ch(64);
        for (li, c) in [64, 128, 256, 512].into_iter().enumerate() {
            let out = ch(c);
            for b in 0..2 {
                let stride = if li > 0 && b == 0 { 2 } else { 1 };
                let path = format!("layer{}.{b}", li + 1);
                blocks.push(BasicBlock::new(inp, out, stride, vb.pp(path))?);
                inp = out;
            }
        }
        Ok(ResNet18 {
            conv1,
            bn1,
            blocks,
            out_channels: inp,
        })
    }

    /// Channels of the last stage: the pooled feature width.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// `(N, C, H, W)` to the layer4 map `(N, C4, H/32, W/32)`.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        for i in 0..5 {
            y = self.stage(i, &y, train)?;
        }
        Ok(y)
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> DType {
        self.conv1.dtype()
    }
}

/// candle's idiom for a layer with a train/eval switch: `x.apply_t(&net, train)` gives the pooled
/// features, as [`Encoder::features`].
impl candle_core::ModuleT for ResNet18 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.features(xs, train)
    }
}

impl Encoder for ResNet18 {
    fn batch_norm_layers(&self) -> Vec<&BatchNorm2d> {
        let mut out = vec![&self.bn1];
        for b in &self.blocks {
            out.extend(b.batch_norms());
        }
        out
    }
    fn out_dim(&self) -> usize {
        self.out_channels
    }
    fn num_stages(&self) -> usize {
        5
    }
    fn stage_channels(&self, i: usize) -> usize {
        match i {
            0 => self.conv1.dim(0).unwrap_or(0),
            _ => self.blocks[(2 * i).min(self.blocks.len()) - 1]
                .conv2
                .dim(0)
                .unwrap_or(0),
        }
    }
    /// Stage 0 is the stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool); stages 1-4 are layer1-layer4.
    fn stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        if i == 0 {
            let y = relu(&self.bn1.forward(&conv2d(x, &self.conv1, 2, 3)?, train)?)?;
            return max_pool2d(&y, 3, 2, 1);
        }
        if i > 4 {
            bail!("ResNet18 has 5 stages, asked for stage {i}");
        }
        let mut y = x.clone();
        for b in &self.blocks[2 * (i - 1)..2 * i] {
            y = b.forward(&y, train)?;
        }
        Ok(y)
    }
    fn buffers(&self) -> Vec<Var> {
        self.batch_norm_layers()
            .into_iter()
            .flat_map(|bn| bn.buffers())
            .collect()
    }
}
