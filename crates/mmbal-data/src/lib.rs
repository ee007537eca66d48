//! # mmbal-data
//!
//! Multimodal datasets for balanced multimodal learning, usable without the rest of mmbal:
//! manifests with any number of named modalities ([`manifest`]), the community layouts of
//! Kinetics-Sounds, CREMA-D, UCF-101, VGGSound, AVE and MM-Debiased ([`layouts`]), the audio front ends of the
//! field (librosa STFT, Kaldi fbank: [`audio`]), video frames and their augmentation ([`video`]),
//! per-modality recipes ([`recipe`]), a packed cache stamped with its recipe and its source
//! files ([`cache`]), and a deterministic parallel loader ([`loader`]).
//!
//! ```
//! use mmbal_data::audio::{Fbank, Stft};
//! // A 440 Hz tone, one second at 16 kHz, through both front ends.
//! let wave: Vec<f32> = (0..16000)
//!     .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin())
//!     .collect();
//! let fbank = Fbank::default().compute(&wave, 16000).unwrap();
//! assert_eq!((fbank.rows, fbank.cols), (98, 128)); // (frames, mel bins)
//! let stft = Stft { n_fft: 512, hop: 160, log_eps: 1e-7, reflect_pad: false }.compute(&wave).unwrap();
//! assert_eq!((stft.rows, stft.cols), (257, 101)); // (bins, frames)
//! ```

pub mod audio;
pub mod cache;
mod csv_line;
pub mod datasets;
pub mod doctor;
pub mod layouts;
pub mod loader;
pub mod manifest;
pub mod npy;
pub mod overrides;
pub mod preprocess;
pub mod recipe;
pub mod video;

pub use loader::{batches, shuffle_rows, Batch, Dataset, Row};
pub use manifest::{Manifest, Split};
pub use recipe::Recipe;
