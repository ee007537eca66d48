//! # mmbal-valuation
//!
//! Shapley modality valuation (Wei et al., CVPR 2024): how much each modality contributes to
//! each sample's correct prediction. For every sample, every non-empty subset S of the M
//! modalities is predicted with the other modalities removed, its benefit `v(S)` computed
//! ([`Benefit`]: the paper's `|S| * 1[correct]` by default), and the exact Shapley value of each
//! modality taken over all 2^M subsets ([`shapley_values`]). The cost grows as 2^M: M = 2 needs
//! 3 predictions per sample, M = 3 needs 7.
//!
//! [`valuate`] does this for a [`mmbal_fusion::MultimodalModel`] over dataset rows, removing a
//! modality by zeroing its pooled feature and rerunning only the head ([`MaskRoute::Features`],
//! the reference; encoders run once) or by zeroing its input and running the whole model
//! ([`MaskRoute::Inputs`], for intermediate fusion). Without a model, [`values_from_logits`]
//! turns any predictor's per-subset logits into contributions:
//!
//! ```
//! use mmbal_valuation::{values_from_logits, Benefit};
//! // One sample, label 0; subsets: {a} right, {v} wrong, {a, v} right.
//! let right = vec![vec![2.0f32, 0.0]];
//! let wrong = vec![vec![0.0f32, 2.0]];
//! let logits = vec![vec![], right.clone(), wrong, right];
//! let phi = values_from_logits(&logits, &[0], 2, Benefit::SizeIfCorrect).unwrap();
//! assert_eq!(phi, vec![1.5, 0.5]);
//! ```

#![warn(missing_docs)]

mod shapley;
mod valuate;
pub use shapley::{shapley_values, Benefit};
pub use valuate::{valuate, value_batch, values_from_logits, MaskRoute, Valuation};
