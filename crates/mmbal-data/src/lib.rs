//! # mmbal-data
//!
//! A dataset's samples as batches of input tensors: per-modality recipes that decode a source
//! with the transforms of `mmbal-transforms` ([`recipe`]), a packed cache stamped with its recipe
//! and its source files ([`cache`]), and a deterministic parallel loader ([`loader`]) over a
//! `mmbal-dataset` manifest; plus the generated synthetic dataset ([`datasets`]), `.npy` arrays
//! ([`npy`]) and `KEY=VALUE` overrides of TOML documents ([`overrides`]).
//!
//! ```
//! use mmbal_data::recipe::{AudioRecipe, FramesRecipe, FrontEnd, Recipe};
//! use mmbal_data::{Dataset, Manifest, Split};
//! let dir = std::env::temp_dir().join(format!("mmbal-data-doc-{}", std::process::id()));
//! // 2 classes x 4 samples, seed 0, two modalities (a tone WAV and JPEG frames).
//! mmbal_data::datasets::generate_synthetic(&dir, 2, 4, 0, 2).unwrap();
//! let audio = Recipe::Audio(AudioRecipe {
//!     sample_rate: 8000, offset_seconds: 0.0, clip_seconds: None, remove_mean: true,
//!     bin_mean_norm: false, front_end: FrontEnd::Fbank(Default::default()), frames: 48,
//!     norm_mean: 0.0, norm_std: 1.0, word_window: None, noise_snr_db: None,
//! });
//! let frames = Recipe::Frames(FramesRecipe {
//!     count: 2, height: 16, width: 16, crop: None, cache_height: None, cache_width: None,
//!     span: None, word_window: None, grey: false, flow: false, crop_scale: (0.5, 1.0), flip: true,
//!     augment: true,
//! });
//! let manifest = Manifest::load(&dir, &dir).unwrap();
//! let data = std::sync::Arc::new(Dataset::new(manifest, vec![audio, frames]).unwrap());
//! let rows = data.rows(Split::Train);
//! let batch = mmbal_data::batches(data, rows, 2, None, 1).next().unwrap().unwrap();
//! assert_eq!(batch.inputs[1].dims(), &[2, 2, 3, 16, 16]); // (B, frames, RGB, H, W)
//! ```

#![warn(missing_docs)]

pub mod cache;
pub mod datasets;
pub mod loader;
pub mod npy;
pub mod overrides;
pub mod progress;
pub mod recipe;

pub use loader::{batches, drop_modalities, shuffle_rows, Batch, Dataset, Row};
// The loader's own signatures name these.
pub use mmbal_dataset::{Manifest, Split};
pub use recipe::Recipe;
