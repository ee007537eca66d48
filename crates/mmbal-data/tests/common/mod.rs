//! Shared by the recipe tests: the small audio recipe they start from.

use mmbal_data::recipe::{AudioRecipe, FrontEnd};
use mmbal_transforms::audio::Fbank;

/// 16 kHz, 40 mel bins, 60 frames, no window, no noise, no normalisation.
pub fn fbank_recipe() -> AudioRecipe {
    AudioRecipe {
        sample_rate: 16000,
        offset_seconds: 0.0,
        clip_seconds: None,
        remove_mean: false,
        bin_mean_norm: false,
        front_end: FrontEnd::Fbank(Fbank {
            num_mel_bins: 40,
            ..Fbank::default()
        }),
        frames: 60,
        norm_mean: 0.0,
        norm_std: 1.0,
        word_window: None,
        noise_snr_db: None,
    }
}
