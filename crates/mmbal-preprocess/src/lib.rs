//! # mmbal-preprocess
//!
//! From raw videos to a dataset the loader reads: [`preprocess`] runs the `ffmpeg` program to
//! write frames, WAV audio and (for the named recipes) spectrograms in one of the field's
//! layouts, with the recipe it used beside the data; [`doctor`] checks a dataset before any
//! training (counts, frames per clip, gaps, spectrogram shapes, the recipe it was made with).
//!
//! ```
//! use mmbal_preprocess::preprocess::PreprocessRecipe;
//! let r = PreprocessRecipe::named("cremad-stft").unwrap();
//! assert_eq!(r.wav_sample_rate, 22050);
//! assert_eq!(r.spectrogram.as_deref(), Some("spec/{id}.npy"));
//! ```

#![warn(missing_docs)]

pub mod doctor;
pub mod preprocess;
