//! # mmbal-transforms
//!
//! The audio and image transforms of the multimodal-learning field, with no dataset or tensor
//! library attached: WAV decoding, resampling and the two audio front ends (librosa's STFT,
//! Kaldi's fbank as torchaudio computes it: [`audio`]), and video frames with their decoding,
//! resizing, cropping, normalisation and training augmentation ([`video`]).
//!
//! ```
//! use mmbal_transforms::audio::{Fbank, Stft};
//! // A 440 Hz tone, one second at 16 kHz, through both front ends.
//! let wave: Vec<f32> = (0..16000)
//!     .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 16000.0).sin())
//!     .collect();
//! let fbank = Fbank::default().compute(&wave, 16000).unwrap();
//! assert_eq!((fbank.rows, fbank.cols), (98, 128)); // (frames, mel bins)
//! let stft = Stft { n_fft: 512, hop: 160, log_eps: 1e-7, reflect_pad: false }.compute(&wave).unwrap();
//! assert_eq!((stft.rows, stft.cols), (257, 101)); // (bins, frames)
//! ```

#![warn(missing_docs)]

pub mod audio;
pub mod video;
