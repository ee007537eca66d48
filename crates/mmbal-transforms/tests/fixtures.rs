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

/// Resampling against soxr's `soxr_hq`, what librosa (the references' loader) resamples with:
/// on band-limited speech-like signals (the pass band) every case must stay within the
/// measured agreement (tests/fixtures/gen_resample.py).
#[test]
fn resampling_matches_soxr_hq_in_the_pass_band() {
    let f = fixture("resample_soxr.safetensors");
    let mut names: Vec<&str> = f.keys().filter_map(|k| k.strip_suffix(".rates")).collect();
    names.sort();
    assert_eq!(names.len(), 5);
    for name in names {
        let rates = &f[&format!("{name}.rates")];
        let (from, to) = (rates[0] as u32, rates[1] as u32);
        let (x, want) = (&f[&format!("{name}.x")], &f[&format!("{name}.y")]);
        let ours = mmbal_transforms::audio::resample(x, from, to);
        // soxr's length comes from its stream arithmetic: the same as ours or one apart.
        assert!(
            ours.len().abs_diff(want.len()) <= 1,
            "{name}: {} vs {}",
            ours.len(),
            want.len()
        );
        let n = ours.len().min(want.len());
        let (mut signal, mut error) = (0.0f64, 0.0f64);
        for (a, b) in ours[..n].iter().zip(&want[..n]) {
            signal += (*b as f64).powi(2);
            error += ((a - b) as f64).powi(2);
        }
        let snr_db = 10.0 * (signal / error).log10();
        eprintln!("{name} {from} -> {to}: {snr_db:.1} dB from soxr_hq");
        assert!(snr_db >= 45.0, "{name}: {snr_db:.1} dB from soxr_hq");
    }
}
