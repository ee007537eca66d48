//! # mmbal-fusion
//!
//! Fusion heads ([`FusionHead`]: concat, sum, FiLM, gated) that return fused and per-modality
//! logits, and the [`MultimodalModel`] they close: one [`mmbal_encoders::Encoder`] per modality,
//! optional blocks between encoder stages ([`StageMixer`], for MMTM), per-row feature masking,
//! and [`ParamGroup`]s for methods that edit gradients of one part of the model. Encoders are
//! built by kind from a config's table ([`EncoderSpec`], [`ENCODERS`], [`register_encoder`]).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmbal_fusion::{BnInit, EncoderSpec, FusionKind, LinearInit, MultimodalModel, SmallCnnOptions};
//! let dev = Device::Cpu;
//! let names = vec!["audio".to_string(), "image".to_string()];
//! let enc: EncoderSpec = SmallCnnOptions { in_channels: 1, width: 4, bn_init: BnInit::Ones }.into();
//! let model = MultimodalModel::new(&names, &[enc.clone(), enc], FusionKind::Concat,
//!     LinearInit::Pytorch, 10, 7, &dev).unwrap();
//! let x = Tensor::randn(0f32, 1.0, (2, 1, 28, 28), &dev).unwrap();
//! let out = model.forward(&[x.clone(), x], None, false).unwrap();
//! assert_eq!(out.fused_logits.dims(), &[2, 10]);
//! // concat: the per-modality logits add up to the fused logits.
//! let sum = (&out.unimodal_logits[0] + &out.unimodal_logits[1]).unwrap();
//! let diff = (sum - &out.fused_logits).unwrap().abs().unwrap().max_all().unwrap();
//! assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
//! ```

#![warn(missing_docs)]

mod encoders;
mod head;
mod mmtm;
mod model;
pub use encoders::{
    register_encoder, BnInit, EncoderKind, EncoderSlot, EncoderSpec, Resnet18Options,
    SmallCnnOptions, ENCODERS,
};
pub use head::{linear, linear_vars, mask_features, FusionHead, FusionKind, HeadOut, LinearInit};
pub use mmtm::{MeanRule, Mmtm, MmtmMixer};
pub use model::{encoder_path, ForwardOut, MultimodalModel, ParamGroup, StageMixer};
