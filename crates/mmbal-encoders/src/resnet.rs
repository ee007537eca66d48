//! Trainable ResNet-18 (BasicBlock [2, 2, 2, 2], 7x7/2 conv + 3x3/2 max-pool stem) without the
//! average pool and classifier: `forward` returns the layer4 map. Parameter names follow
//! torchvision (`conv1.weight`, `layer1.0.bn1.weight`, `layer2.0.downsample.0.weight`, ...), so
//! ImageNet weights map by name. Init: conv Kaiming normal, fan_out, ReLU gain; BN weight 1, bias 0.

use crate::batch_norm::set_named_stat;
use crate::{BatchNorm2d, Encoder};
use candle_core::{bail, DType, Device, Result, Tensor, Var};
use mmbal_ops::{conv2d, max_pool2d, relu};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Conv kernel (O, I, K, K) with Kaiming normal fan_out init from a seeded stream.
pub(crate) fn kaiming(
    out: usize,
    inp: usize,
    k: usize,
    rng: &mut ChaCha8Rng,
    dev: &Device,
) -> Result<Var> {
    let std = (2.0 / (out * k * k) as f64).sqrt();
    let normal = Normal::new(0.0, std).unwrap();
    let data: Vec<f32> = (0..out * inp * k * k)
        .map(|_| normal.sample(rng) as f32)
        .collect();
    Var::from_tensor(&Tensor::from_vec(data, (out, inp, k, k), dev)?)
}

struct BasicBlock {
    conv1: Var,
    bn1: BatchNorm2d,
    conv2: Var,
    bn2: BatchNorm2d,
    downsample: Option<(Var, BatchNorm2d)>,
    stride: usize,
}

impl BasicBlock {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = relu(
            &self
                .bn1
                .forward(&conv2d(x, self.conv1.as_tensor(), self.stride, 1)?, train)?,
        )?;
        let y = self
            .bn2
            .forward(&conv2d(&y, self.conv2.as_tensor(), 1, 1)?, train)?;
        let skip = match &self.downsample {
            Some((w, bn)) => bn.forward(&conv2d(x, w.as_tensor(), self.stride, 0)?, train)?,
            None => x.clone(),
        };
        relu(&(y + skip)?)
    }
}

/// ResNet-18 as torchvision builds it (stem, four stages of two basic blocks), any input channels,
/// channel widths scaled by `width`; pooled features of `out_channels`.
pub struct ResNet18 {
    conv1: Var,
    bn1: BatchNorm2d,
    blocks: Vec<(String, BasicBlock)>,
    out_channels: usize,
}

impl ResNet18 {
    /// `in_channels` 1 (audio), 2 (flow) or 3 (RGB); `width` scales the channel counts
    /// (1.0 = 64/128/256/512; 0.125 for small CPU runs).
    pub fn new(in_channels: usize, width: f64, seed: u64, dev: &Device) -> Result<ResNet18> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let ch = |c: usize| ((c as f64 * width).round() as usize).max(1);
        let conv1 = kaiming(ch(64), in_channels, 7, &mut rng, dev)?;
        let bn1 = BatchNorm2d::new(ch(64), dev)?;
        let mut blocks = Vec::new();
        let mut inp = ch(64);
        for (li, c) in [64, 128, 256, 512].into_iter().enumerate() {
            let out = ch(c);
            for b in 0..2 {
                let stride = if li > 0 && b == 0 { 2 } else { 1 };
                let downsample = if stride != 1 || inp != out {
                    Some((
                        kaiming(out, inp, 1, &mut rng, dev)?,
                        BatchNorm2d::new(out, dev)?,
                    ))
                } else {
                    None
                };
                let block = BasicBlock {
                    conv1: kaiming(out, inp, 3, &mut rng, dev)?,
                    bn1: BatchNorm2d::new(out, dev)?,
                    conv2: kaiming(out, out, 3, &mut rng, dev)?,
                    bn2: BatchNorm2d::new(out, dev)?,
                    downsample,
                    stride,
                };
                blocks.push((format!("layer{}.{b}", li + 1), block));
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

    /// BatchNorm layers with their torchvision prefixes.
    fn batch_norms(&self) -> Vec<(String, &BatchNorm2d)> {
        let mut out = vec![("bn1".to_string(), &self.bn1)];
        for (name, b) in &self.blocks {
            out.push((format!("{name}.bn1"), &b.bn1));
            out.push((format!("{name}.bn2"), &b.bn2));
            if let Some((_, bn)) = &b.downsample {
                out.push((format!("{name}.downsample.1"), bn));
            }
        }
        out
    }

    /// Trainable parameters with torchvision names.
    fn params_named(&self) -> Vec<(String, Var)> {
        let mut out = vec![
            ("conv1.weight".to_string(), self.conv1.clone()),
            ("bn1.weight".to_string(), self.bn1.weight.clone()),
            ("bn1.bias".to_string(), self.bn1.bias.clone()),
        ];
        for (name, b) in &self.blocks {
            out.push((format!("{name}.conv1.weight"), b.conv1.clone()));
            out.push((format!("{name}.bn1.weight"), b.bn1.weight.clone()));
            out.push((format!("{name}.bn1.bias"), b.bn1.bias.clone()));
            out.push((format!("{name}.conv2.weight"), b.conv2.clone()));
            out.push((format!("{name}.bn2.weight"), b.bn2.weight.clone()));
            out.push((format!("{name}.bn2.bias"), b.bn2.bias.clone()));
            if let Some((w, bn)) = &b.downsample {
                out.push((format!("{name}.downsample.0.weight"), w.clone()));
                out.push((format!("{name}.downsample.1.weight"), bn.weight.clone()));
                out.push((format!("{name}.downsample.1.bias"), bn.bias.clone()));
            }
        }
        out
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
        self.batch_norms().into_iter().map(|(_, bn)| bn).collect()
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
                .1
                .conv2
                .dim(0)
                .unwrap_or(0),
        }
    }
    /// Stage 0 is the stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool); stages 1-4 are layer1-layer4.
    fn stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor> {
        if i == 0 {
            let y = relu(
                &self
                    .bn1
                    .forward(&conv2d(x, self.conv1.as_tensor(), 2, 3)?, train)?,
            )?;
            return max_pool2d(&y, 3, 2, 1);
        }
        if i > 4 {
            bail!("ResNet18 has 5 stages, asked for stage {i}");
        }
        let mut y = x.clone();
        for (_, b) in &self.blocks[2 * (i - 1)..2 * i] {
            y = b.forward(&y, train)?;
        }
        Ok(y)
    }
    fn params(&self) -> Vec<(String, Var)> {
        self.params_named()
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (name, bn) in self.batch_norms() {
            let (m, v) = bn.running_stats();
            out.push((format!("{name}.running_mean"), m));
            out.push((format!("{name}.running_var"), v));
        }
        out
    }
    fn set_buffer(&self, name: &str, value: Tensor) -> Result<()> {
        let Some((prefix, stat)) = name.rsplit_once('.') else {
            bail!("ResNet18 has no buffer `{name}`")
        };
        match self.batch_norms().into_iter().find(|(n, _)| n == prefix) {
            Some((_, bn)) => set_named_stat(bn, stat, value),
            None => bail!("ResNet18 has no buffer `{name}`"),
        }
    }
}
