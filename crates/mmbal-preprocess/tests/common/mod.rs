//! Shared by the data tests: the shared data folder, scratch folders and a recipe.
#![allow(dead_code)]

use mmbal_data::recipe::{AudioRecipe, FrontEnd, Recipe};
use mmbal_transforms::audio::Fbank;
use std::path::{Path, PathBuf};

/// The shared data folder (MMBAL_SHARED_DATA), or None after saying that `checks` are not run.
pub fn shared(checks: &str) -> Option<PathBuf> {
    // A relative path is taken from the workspace root, where the README's command runs.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Under CI a missing folder fails the test instead of skipping it.
    let dir = mmbal_data::datasets::shared_data_dir(&root).unwrap_or_else(|e| panic!("{e:#}"));
    if dir.is_none() {
        eprintln!("MMBAL_SHARED_DATA is not set or not a folder: {checks} not run");
    }
    dir
}

/// An empty folder `mmbal-{prefix}-{name}-{pid}` under the system's temporary folder.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmbal-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Kaldi fbank with 40 mel bins, mean removed, padded or cut to `frames`.
pub fn fbank_recipe(sample_rate: u32, frames: usize) -> Recipe {
    Recipe::Audio(AudioRecipe {
        sample_rate,
        offset_seconds: 0.0,
        clip_seconds: None,
        remove_mean: true,
        bin_mean_norm: false,
        front_end: FrontEnd::Fbank(Fbank {
            num_mel_bins: 40,
            ..Fbank::default()
        }),
        frames,
        norm_mean: 0.0,
        norm_std: 1.0,
        word_window: None,
        noise_snr_db: None,
    })
}
