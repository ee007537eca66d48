//! # mmbal-encoders
//!
//! Encoders for candle behind one [`Encoder`] trait (run stage by stage, then pooled): a
//! trainable [`ResNet18`] (torchvision names, width multiplier, frames folded into the batch,
//! ImageNet weights from safetensors or the hf-hub cache via [`load_resnet18_weights`]) and a
//! [`SmallCnn`] for 28x28 images and small spectrograms, built from [`BatchNorm2d`] with PyTorch's
//! training and evaluation semantics and the ops of `mmbal_ops` (convolution, max-pool, ReLU with
//! PyTorch's backward, fast on the CPU).
//!
//! Layers are built from a `VarBuilder` path, candle-nn's way; [`ModelVars`] is the `VarMap`
//! that then holds every variable by name (with a seeded backend, so runs are reproducible).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmbal_encoders::{Encoder, ModelVars, SmallCnn};
//! let vars = ModelVars::new();
//! let net = SmallCnn::new(1, 8, vars.seeded(3, &Device::Cpu).pp("audio")).unwrap();
//! let x = Tensor::randn(0f32, 1.0, (2, 1, 28, 28), &Device::Cpu).unwrap();
//! assert_eq!(net.features(&x, true).unwrap().dims(), &[2, net.out_dim()]);
//! // The same through candle's `ModuleT`.
//! assert_eq!(x.apply_t(&net, false).unwrap().dims(), &[2, net.out_dim()]);
//! // Every variable is in the map under its path (running statistics included).
//! assert!(vars.get("audio.conv0.weight").is_some());
//! assert!(vars.get("audio.bn2.running_var").is_some());
//! ```

#![warn(missing_docs)]

mod batch_norm;
mod encoder;
mod pretrained;
mod resnet;
mod seeded;
mod small_cnn;
pub use batch_norm::BatchNorm2d;
pub use encoder::{fold_frames, init_batch_norm_weights, pool_map, Encoder};
pub use pretrained::{
    load_resnet18_weights, load_torchvision_weights, read_weights, resolve_weights,
    resolve_weights_from, torchvision_name, Hub, LoadReport,
};
pub use resnet::ResNet18;
pub use seeded::ModelVars;
pub use small_cnn::SmallCnn;
