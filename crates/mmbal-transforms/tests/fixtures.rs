//! Golden tests against reference values computed with PyTorch 2.11 / torchaudio
//! (tests/fixtures, copied from the project's shared fixtures).

use candle_core::{safetensors, Device};
use mmbal_transforms::audio::{Fbank, Stft};
use std::path::PathBuf;

fn fixture(name: &str) -> std::collections::HashMap<String, Vec<f32>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name);
    safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .map(|(k, v)| (k, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn kaldi_fbank_matches_torchaudio() {
    let f = fixture("fbank_kaldi.safetensors");
    let fb = Fbank::default();
    let ours = fb.compute(&f["wave"], 16000).unwrap();
    assert_eq!((ours.rows, ours.cols), (198, 128));
    let d = max_abs_diff(&ours.data, &f["fbank"]);
    assert!(d < 2e-3, "fbank differs from torchaudio by {d}");
    // The Kinetics-Sounds recipe: pad to 1024 frames, then normalise.
    let padded = mmbal_transforms::audio::fix_rows(&ours, 1024);
    let norm: Vec<f32> = padded
        .data
        .iter()
        .map(|v| (v + 4.503877) / 10.282552)
        .collect();
    let d = max_abs_diff(&norm, &f["fbank_1024_norm"]);
    assert!(d < 2e-4, "normalised fbank differs by {d}");
    // FSDD at 8 kHz.
    let ours = fb.compute(&f["fsdd_wave"], 8000).unwrap();
    assert_eq!((ours.rows, ours.cols), (28, 128));
    let d = max_abs_diff(&ours.data, &f["fsdd_fbank"]);
    assert!(d < 2e-3, "fsdd fbank differs by {d}");
}

#[test]
fn librosa_stft_matches_reference() {
    let f = fixture("stft_log.safetensors");
    for (reflect, key) in [(false, "logmag_constant"), (true, "logmag_reflect")] {
        let s = Stft {
            n_fft: 512,
            hop: 353,
            log_eps: 1e-7,
            reflect_pad: reflect,
        };
        let ours = s.compute(&f["wave"]).unwrap();
        assert_eq!((ours.rows, ours.cols), (257, 188));
        // Compare where the magnitude is well above the epsilon: log of tiny values amplifies rounding.
        let worst = ours
            .data
            .iter()
            .zip(&f[key])
            .filter(|(_, r)| **r > -10.0)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "{key}: STFT differs by {worst}");
    }
}
