//! # mmbal-methods
//!
//! Balancing methods behind one trait, [`BalanceMethod`]: hooks at the places where methods
//! differ from joint training (epoch plan of rows, loss, gradient edits between backward and the
//! optimizer step, steps per batch, epoch-end passes, prediction, diagnostics), each defaulting to
//! joint training. A method is one file plus one line in [`METHODS`].
//!
//! Using a method without the trainer: run the model, ask the method for its loss, back-propagate,
//! let it edit the gradients, then step an optimizer of your choice.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use mmbal_fusion::{BnInit, EncoderSpec, FusionKind, LinearInit, MultimodalModel, SmallCnnOptions};
//! use mmbal_methods::{build_method, Grads, StepCtx};
//! let dev = Device::Cpu;
//! let names = vec!["audio".to_string(), "image".to_string()];
//! let enc: EncoderSpec = SmallCnnOptions { in_channels: 1, width: 2, bn_init: BnInit::Ones }.into();
//! let model = MultimodalModel::new(&names, &[enc.clone(), enc], FusionKind::Concat,
//!     LinearInit::Pytorch, 3, 0, &dev).unwrap();
//! let x = Tensor::randn(0f32, 1.0, (4, 1, 12, 12), &dev).unwrap();
//! let labels = Tensor::new(&[0u32, 1, 2, 0], &dev).unwrap();
//! let keep = Tensor::ones((4, 2), candle_core::DType::F32, &dev).unwrap();
//! let mut method = build_method("joint", &Default::default()).unwrap();
//! let inputs = [x.clone(), x];
//! let out = model.forward(&inputs, Some(&keep), true).unwrap();
//! let ctx = StepCtx { epoch: 0, step: 0, batch: 0, batches: 1, model: &model, labels: &labels,
//!     keep: &keep, inputs: &inputs, rows: &[], turn: None };
//! let loss = method.loss(&ctx, &out).unwrap();
//! let mut grads = Grads { store: loss.backward().unwrap() };
//! method.edit_gradients(&ctx, &out, &mut grads).unwrap();
//! assert!(grads.get(&model.params()[0]).is_some());
//! ```

#![warn(missing_docs)]

mod agm;
mod amco;
mod cml;
mod collect;
mod dimml;
mod gblending;
mod greedy;
mod inforeg;
mod joint;
mod lfm;
mod mbsd;
mod method;
mod mla;
mod mmcosine;
mod mmpareto;
mod modality_level;
mod mses;
mod mslr;
mod ogm;
mod opm;
mod pmr;
mod qmf;
mod ratio;
mod reconboost;
mod registry;
mod relearning;
mod sample_level;
mod teachers;
mod ume;
mod umt;
mod valuation_pass;
pub use agm::{agm_coefficients, agm_responses, agm_score};
pub use amco::{amco_dominant, amco_forward, AmcoOut};
pub use cml::{cml_loss, ConfidenceRule};
pub use collect::{collect_outputs, Collected};
pub use dimml::{dimml_contrast, dimml_fuse, dimml_top_dimensions};
pub use gblending::{blend_weights, gain_and_overfitting};
pub use greedy::Utilisation;
pub use inforeg::inforeg_window;
pub use joint::Joint;
pub use lfm::{lfm_alignment, lfm_alpha};
pub use mbsd::{mbsd_terms, MbsdDistance};
pub use method::{
    BalanceMethod, EpochCtx, Grads, Phase, Prediction, Requirements, StepCtx, StepIndex, StepPlan,
};
pub use mla::{batch_entropy_weights, entropy_weights, update_projector};
pub use mmcosine::{cosine_logits, nce_loss};
pub use mmpareto::min_norm_weight;
pub use mses::mses_loss;
pub use ogm::ogm_coefficients;
pub use opm::{opm_drop, opm_drop_probabilities, opm_theta_term, OpmDrop};
pub use pmr::{prototype_logits, prototypes_from};
pub use qmf::{qmf_confidences, qmf_fuse, qmf_rank_loss};
pub use ratio::{ratios_against_others, true_class_score};
pub use reconboost::{reconboost_boost_loss, reconboost_ensemble, reconboost_ga, SharedMlp};
pub use registry::{
    build_method, no_options, options_table, parse_options, register, Builder, METHODS,
};
pub use relearning::{
    relearning_blend, relearning_kmeans, relearning_min_max_scale, relearning_purity,
    relearning_weight,
};
pub use ume::ume_logits;
pub use umt::umt_loss;
pub use valuation_pass::{valuation_pass, ValuationOptions};
