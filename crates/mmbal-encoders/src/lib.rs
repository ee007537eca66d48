//! # mmbal-encoders
//!
//! Encoders for candle behind one [`Encoder`] trait (run stage by stage, then pooled): a
//! trainable [`ResNet18`] (torchvision names, width multiplier, frames folded into the batch,
//! ImageNet weights from safetensors or the hf-hub cache via [`load_resnet18_weights`]) and a
//! [`SmallCnn`] for 28x28 images and small spectrograms, built from [`BatchNorm2d`] with PyTorch's training and
//! evaluation semantics, [`max_pool2d`] with padding and PyTorch's backward
//! (the ResNet stem pool, 3x3 stride 2 padding 1), and [`conv2d`], a 2-D convolution whose backward pass
//! is right for every input shape. candle 0.11.1 computes one output padding from the height and
//! reuses it for the width in its conv2d backward, so a stride-2 convolution of a 257x188
//! spectrogram (the OGM-GE CREMA-D shape) fails; this version pads explicitly and keeps only the
//! input rows and columns the windows reach, so the transposed convolution of the backward pass
//! needs no output padding.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! let x = Var::ones((1, 1, 257, 188), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let w = Var::ones((4, 1, 7, 7), candle_core::DType::F32, &Device::Cpu).unwrap();
//! let y = mmbal_encoders::conv2d(x.as_tensor(), w.as_tensor(), 2, 3).unwrap();
//! assert_eq!(y.dims(), &[1, 4, 129, 94]);
//! let grads = y.sum_all().unwrap().backward().unwrap();
//! assert_eq!(grads.get(&x).unwrap().dims(), &[1, 1, 257, 188]);
//! ```

use candle_core::{Result, Tensor};

mod activation;
mod batch_norm;
mod batch_norm_op;
mod bias_op;
mod encoder;
mod pool;
mod pretrained;
mod resnet;
mod small_cnn;
pub use activation::relu;
pub use batch_norm::BatchNorm2d;
pub use bias_op::add_channel_bias;
pub use encoder::{fold_frames, init_batch_norm_weights, pool_map, Encoder};
pub use pool::{max_pool2d, max_pool2d_composite};
pub use pretrained::{load_resnet18_weights, resolve_weights, torchvision_name, LoadReport};
pub use resnet::ResNet18;
pub use small_cnn::SmallCnn;

/// `conv2d(x, w)` with square stride and padding, no dilation, one group. `x`: (N, C, H, W),
/// `w`: (O, C, K, K').
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    if stride == 1 {
        // Stride 1 needs no output padding in backward: candle's own path is exact.
        return x.conv2d(w, padding, 1, 1, 1);
    }
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let used = |n: usize, k: usize| -> Result<usize> {
        if n + 2 * padding < k {
            candle_core::bail!(
                "conv2d: input {n} + 2 * padding {padding} is smaller than kernel {k}"
            );
        }
        let out = (n + 2 * padding - k) / stride + 1;
        Ok((out - 1) * stride + k)
    };
    let (uh, uw) = (used(h, kh)?, used(wd, kw)?);
    let x = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    let x = x.narrow(2, 0, uh)?.narrow(3, 0, uw)?;
    x.conv2d(w, 0, stride, 1, 1)
}
