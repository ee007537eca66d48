//! The datasets that run on this toolkit's own machines: GRID s1 (audio + lips), AV-MNIST style
//! (MNIST image + FSDD spoken digit) and a generated synthetic dataset. Split files are made by
//! the functions here with a fixed seed and committed under `datasets/`.

use crate::loader::stream;
use crate::recipe::read_idx_labels;
use anyhow::{bail, Context, Result};
use mmbal_transforms::audio::{write_wav, Waveform};
use rand::seq::SliceRandom;
use rand::Rng;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The seed of the committed split files under `datasets/`.
pub const SPLIT_SEED: u64 = 20261122;

/// Class names of the spoken digits, indexed by digit (0 to 9).
pub const DIGITS: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// The spoken digit of a GRID file name (`bbaf2n` -> 2; character 5, `z` = zero).
pub fn grid_digit(id: &str) -> Result<usize> {
    match id.chars().nth(4) {
        Some('z') => Ok(0),
        Some(c @ '1'..='9') => Ok(c as usize - '0' as usize),
        _ => bail!("`{id}`: not a GRID sentence name (character 5 must be 1-9 or z)"),
    }
}

/// GRID split file: per digit, a seeded shuffle gives 70% train, 15% val, 15% test.
pub fn grid_split(ids: &[String], seed: u64) -> Result<String> {
    let mut by_digit: Vec<Vec<&String>> = vec![Vec::new(); 10];
    for id in ids {
        by_digit[grid_digit(id)?].push(id);
    }
    let mut out = String::from("id,label,split\n");
    for (d, list) in by_digit.iter_mut().enumerate() {
        list.sort();
        list.shuffle(&mut stream(seed, 0, d as u64));
        let n = list.len();
        let n_val = (n * 15).div_ceil(100);
        for (k, id) in list.iter().enumerate() {
            let split = if k < n - 2 * n_val {
                "train"
            } else if k < n - n_val {
                "val"
            } else {
                "test"
            };
            writeln!(out, "{id},{},{split}", DIGITS[d]).unwrap();
        }
    }
    Ok(out)
}

/// FSDD speakers held out: `theo` for validation, `yweweler` for test.
pub const AVMNIST_VAL_SPEAKER: &str = "theo";
/// The FSDD speaker whose recordings form the test split.
pub const AVMNIST_TEST_SPEAKER: &str = "yweweler";

/// AV-MNIST pairing list: every FSDD recording (`{digit}_{speaker}_{index}.wav`) is paired with
/// an MNIST image of the same digit, drawn with a fixed seed without reuse inside a split (train and
/// val images from MNIST's training set, test images from its test set). Paths are relative to
/// the shared data folder.
pub fn avmnist_split(shared: &Path, seed: u64) -> Result<String> {
    let rec_dir = shared.join("fsdd/recordings");
    let mut files: Vec<String> = std::fs::read_dir(&rec_dir)
        .with_context(|| format!("{}: FSDD recordings missing", rec_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".wav"))
        .collect();
    files.sort();
    let train_labels = read_idx_labels(&shared.join("mnist/train-labels-idx1-ubyte.gz"))?;
    let test_labels = read_idx_labels(&shared.join("mnist/t10k-labels-idx1-ubyte.gz"))?;
    // Per split and digit, a shuffled pool of MNIST indices to draw from.
    let pools = |labels: &[u8], key: u64| -> Vec<Vec<usize>> {
        (0..10)
            .map(|d| {
                let mut p: Vec<usize> = (0..labels.len())
                    .filter(|&i| labels[i] as usize == d)
                    .collect();
                p.shuffle(&mut stream(seed, key, d as u64));
                p
            })
            .collect()
    };
    let mut train_pool = pools(&train_labels, 1);
    let mut test_pool = pools(&test_labels, 2);
    let mut out = String::from("id,label,split,audio,image\n");
    for f in &files {
        let stem = f.trim_end_matches(".wav");
        let parts: Vec<&str> = stem.split('_').collect();
        let (Some(d), Some(speaker)) = (
            parts.first().and_then(|d| d.parse::<usize>().ok()),
            parts.get(1),
        ) else {
            bail!(
                "{}: not an FSDD name `{{digit}}_{{speaker}}_{{index}}.wav`",
                rec_dir.join(f).display()
            );
        };
        if d > 9 {
            bail!("{}: digit {d} out of range", rec_dir.join(f).display());
        }
        let split = match *speaker {
            AVMNIST_TEST_SPEAKER => "test",
            AVMNIST_VAL_SPEAKER => "val",
            _ => "train",
        };
        let (pool, file) = if split == "test" {
            (&mut test_pool[d], "mnist/t10k-images-idx3-ubyte.gz")
        } else {
            (&mut train_pool[d], "mnist/train-images-idx3-ubyte.gz")
        };
        let image = pool
            .pop()
            .context("MNIST has too few images of a digit for the pairing")?;
        writeln!(
            out,
            "{stem},{},{split},fsdd/recordings/{f},{file}#{image}",
            DIGITS[d]
        )
        .unwrap();
    }
    Ok(out)
}

/// Generates the synthetic dataset into `dir` (WAV audio, JPEG frames, card and split file):
/// `classes` classes (at most 9), `per_class` samples each. Audio (strong): a tone whose pitch
/// and loudness rise with the class, in noise. Visual (weak): a square whose position and
/// brightness follow the class in only 40% of the clips and are random otherwise. Loudness and
/// brightness matter because the field's encoders average over space, which discards where a
/// pattern is but keeps how strong it is. With `modalities = 3` a third modality `hum` (WAV,
/// `hum/{id}.wav`) carries the class in its loudness under heavy noise (in between the other
/// two); it is drawn from its own stream, so the first two modalities do not change.
pub fn generate_synthetic(
    dir: &Path,
    classes: usize,
    per_class: usize,
    seed: u64,
    modalities: usize,
) -> Result<()> {
    if !(1..=9).contains(&classes) {
        anyhow::bail!("the synthetic dataset has 1 to 9 classes, not {classes}");
    }
    if !(2..=3).contains(&modalities) {
        anyhow::bail!("the synthetic dataset has 2 or 3 modalities, not {modalities}");
    }
    if modalities == 3 {
        std::fs::create_dir_all(dir.join("hum"))?;
    }
    std::fs::create_dir_all(dir.join("audio"))?;
    let sr = 8000u32;
    let mut split = String::from("id,label,split\n");
    let side = 32usize;
    for c in 0..classes {
        for k in 0..per_class {
            let id = format!("c{c}_{k:03}");
            let mut rng = stream(seed, c as u64, k as u64);
            let freq = 300.0 + 250.0 * c as f64 + rng.random_range(-20.0..20.0);
            let amp = 0.03 * 1.5f64.powi(c as i32) * rng.random_range(0.92..1.08);
            let samples = (0..sr / 2)
                .map(|i| {
                    let t = i as f64 / sr as f64;
                    (amp * (2.0 * std::f64::consts::PI * freq * t).sin()
                        + rng.random_range(-0.02..0.02))
                    .clamp(-1.0, 1.0) as f32
                })
                .collect();
            write_wav(
                &dir.join(format!("audio/{id}.wav")),
                &Waveform {
                    samples,
                    sample_rate: sr,
                },
            )?;
            if modalities == 3 {
                let mut hum_rng = stream(seed ^ 0x4855_4D00, c as u64, k as u64);
                let amp = 0.05 * 1.4f64.powi(c as i32) * hum_rng.random_range(0.8..1.2);
                let samples = (0..sr / 2)
                    .map(|i| {
                        let t = i as f64 / sr as f64;
                        (amp * (2.0 * std::f64::consts::PI * 120.0 * t).sin()
                            + hum_rng.random_range(-0.15..0.15))
                        .clamp(-1.0, 1.0) as f32
                    })
                    .collect();
                write_wav(
                    &dir.join(format!("hum/{id}.wav")),
                    &Waveform {
                        samples,
                        sample_rate: sr,
                    },
                )?;
            }
            let frame_dir = dir.join(format!("visual/{id}"));
            std::fs::create_dir_all(&frame_dir)?;
            let informative = rng.random_bool(0.4);
            let cell = if informative {
                c
            } else {
                rng.random_range(0..classes)
            };
            let (cy, cx) = (4 + (cell / 3) * 9, 4 + (cell % 3) * 9);
            for f in 0..3 {
                let img = image::RgbImage::from_fn(side as u32, side as u32, |x, y| {
                    let inside = (cy..cy + 7).contains(&(y as usize))
                        && (cx..cx + 7).contains(&(x as usize));
                    let base: f64 = if inside {
                        70.0 + 20.0 * cell as f64
                    } else {
                        40.0
                    };
                    let v = (base + rng.random_range(-20.0..20.0)).clamp(0.0, 255.0) as u8;
                    image::Rgb([v, v, v])
                });
                img.save(frame_dir.join(format!("frame_{:05}.jpg", f + 1)))?;
            }
            let s = match k * 10 / per_class {
                0..=5 => "train",
                6 | 7 => "val",
                _ => "test",
            };
            writeln!(split, "{id},class{c},{s}").unwrap();
        }
    }
    let classes_toml: Vec<String> = (0..classes).map(|c| format!("\"class{c}\"")).collect();
    std::fs::write(dir.join("split.csv"), split)?;
    std::fs::write(
        dir.join("dataset.toml"),
        format!(
            "name = \"synthetic\"\ndescription = \"Generated by mmbal (seed {seed}): class tones in noise, pitch and loudness by class (strong audio); a square whose position and brightness follow the class in 40% of clips (weak visual).\"\nclasses = [{}]\nsplit_file = \"split.csv\"\n\n[[modality]]\nname = \"audio\"\nsource = \"audio/{{id}}.wav\"\n\n[[modality]]\nname = \"visual\"\nsource = \"visual/{{id}}\"\n{}",
            classes_toml.join(", "),
            if modalities == 3 {
                "\n[[modality]]\nname = \"hum\"\nsource = \"hum/{id}.wav\"\n"
            } else {
                ""
            }
        ),
    )?;
    Ok(())
}

/// The shared real-data folder named by `MMBAL_SHARED_DATA` (a relative path is taken from
/// `base`, the workspace root where the README's test command runs), for the tests and tools
/// that read real data. `Ok(None)` when it is unset, empty or not a folder with files, so a
/// local run can skip real-data checks; under CI (`CI=true`) the same is an error, so a test that
/// exists to read real data fails instead of passing without having run.
pub fn shared_data_dir(base: &Path) -> Result<Option<PathBuf>> {
    let named = std::env::var("MMBAL_SHARED_DATA")
        .ok()
        .filter(|s| !s.is_empty());
    let dir = named.as_ref().map(|s| base.join(s));
    let usable = dir
        .as_ref()
        .is_some_and(|d| std::fs::read_dir(d).is_ok_and(|mut e| e.next().is_some()));
    if usable {
        return Ok(dir);
    }
    let what = match &dir {
        None => "MMBAL_SHARED_DATA is not set".to_string(),
        Some(d) => format!(
            "MMBAL_SHARED_DATA={} is not a folder with data",
            d.display()
        ),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        anyhow::bail!("{what}: under CI the real-data tests must run (point it at shared/data)");
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_labels_from_names() {
        assert_eq!(grid_digit("bbaf2n").unwrap(), 2);
        assert_eq!(grid_digit("bbazzn").unwrap(), 0);
        assert!(grid_digit("bbafxn").is_err());
    }

    #[test]
    fn grid_split_is_stratified_and_seeded() {
        let ids: Vec<String> = (0..10u8)
            .flat_map(|d| {
                (0..20).map(move |k| {
                    format!("bbaf{}{k}", if d == 0 { 'z' } else { (b'0' + d) as char })
                })
            })
            .collect();
        let a = grid_split(&ids, 1).unwrap();
        assert_eq!(a, grid_split(&ids, 1).unwrap());
        assert_eq!(a.lines().filter(|l| l.ends_with(",test")).count(), 30);
        assert_eq!(a.lines().filter(|l| l.ends_with(",val")).count(), 30);
        assert_eq!(a.lines().filter(|l| l.ends_with(",train")).count(), 140);
    }
}
