//! `noise_snr_db`: the noise added has the asked power, is the same for a clip every time and
//! differs between clips; a recipe with it decodes a WAV to another spectrogram, the same one
//! twice; a precomputed spectrogram cannot take it.

mod common;

use mmbal_data::recipe::{add_noise, AudioRecipe, DecodedData, Recipe};
use mmbal_dataset::manifest::Source;
use mmbal_transforms::audio::{write_wav, Waveform};

fn tone() -> Vec<f32> {
    (0..16000)
        .map(|i| (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16000.0).sin()) as f32)
        .collect()
}

fn power(x: &[f32]) -> f64 {
    x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64
}

#[test]
fn noise_has_the_asked_power_and_depends_on_the_key_only() {
    let clean = tone();
    for snr in [0.0, 10.0, 20.0] {
        let mut noisy = clean.clone();
        add_noise(&mut noisy, snr, "bbaf2n");
        let noise: Vec<f32> = noisy.iter().zip(&clean).map(|(a, b)| a - b).collect();
        let measured = 10.0 * (power(&clean) / power(&noise)).log10();
        assert!(
            (measured - snr).abs() < 0.2,
            "asked {snr} dB, got {measured:.3}"
        );
        let mut again = clean.clone();
        add_noise(&mut again, snr, "bbaf2n");
        assert_eq!(noisy, again, "the same clip gets the same noise");
        let mut other = clean.clone();
        add_noise(&mut other, snr, "bbaf3s");
        assert_ne!(noisy, other, "another clip gets other noise");
    }
    let mut silence = vec![0.0f32; 100];
    add_noise(&mut silence, 10.0, "x");
    assert!(silence.iter().all(|v| *v == 0.0));
}

fn recipe(noise_snr_db: Option<f64>) -> Recipe {
    Recipe::Audio(AudioRecipe {
        noise_snr_db,
        ..common::fbank_recipe()
    })
}

fn floats(d: DecodedData) -> Vec<f32> {
    match d {
        DecodedData::F32(v) => v,
        DecodedData::U8(_) => panic!("audio is floats"),
    }
}

#[test]
fn a_noisy_recipe_decodes_each_clip_the_same_way_every_time() {
    let dir = std::env::temp_dir().join(format!("mmbal-audio-noise-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let wave = Waveform {
        samples: tone(),
        sample_rate: 16000,
    };
    let (a, b) = (dir.join("a.wav"), dir.join("b.wav"));
    write_wav(&a, &wave).unwrap();
    write_wav(&b, &wave).unwrap();
    let decode = |r: &Recipe, p: &std::path::Path| {
        floats(r.decode(&Source::Path(p.to_path_buf())).unwrap().data)
    };
    let clean = decode(&recipe(None), &a);
    let noisy = decode(&recipe(Some(0.0)), &a);
    assert_ne!(clean, noisy);
    assert_eq!(noisy, decode(&recipe(Some(0.0)), &a));
    assert_ne!(
        noisy,
        decode(&recipe(Some(0.0)), &b),
        "same audio, another clip"
    );
    assert_eq!(clean, decode(&recipe(None), &b));

    let npy = dir.join("c.npy");
    mmbal_data::npy::write_f32(&npy, &[60, 40], &vec![0.0; 2400]).unwrap();
    let err = recipe(Some(0.0))
        .decode(&Source::Path(npy.clone()))
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("c.npy") && msg.contains("needs the waveform"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
