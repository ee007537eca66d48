//! A dataset's health, before any training: counts per class and split, frames per clip,
//! spectrogram shapes, and the recipe the data was made with (`recipe.toml` beside it) against
//! the recipes about to read it. Whether every file decodes is [`crate::Dataset::check_all`]:
//! [`examine`] leaves unreadable files to it, so that each problem is reported once.

use crate::manifest::{Manifest, Source, Split};
use crate::preprocess::PreprocessRecipe;
use crate::recipe::{FrontEnd, Recipe};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// What [`examine`] found: lines to show, and problems (each naming a file or a sample).
#[derive(Debug, Default)]
pub struct Examination {
    pub lines: Vec<String>,
    pub problems: Vec<String>,
}

/// Examines `manifest` read with `recipes` (one per modality); `root` is the data root, where
/// preprocessing leaves its `recipe.toml`.
pub fn examine(manifest: &Manifest, recipes: &[Recipe], root: &Path) -> Examination {
    let mut ex = Examination::default();
    ex.lines.push(format!(
        "dataset {} at {}: {} samples, {} classes, modalities {:?}",
        manifest.name,
        root.display(),
        manifest.samples.len(),
        manifest.classes.len(),
        manifest.modalities
    ));
    for note in &manifest.notes {
        ex.lines.push(format!("note: {note}"));
    }
    for split in Split::ALL {
        let idx = manifest.indices(split);
        let mut per_class = vec![0usize; manifest.classes.len()];
        for &i in &idx {
            per_class[manifest.samples[i].label] += 1;
        }
        let empty: Vec<&str> = per_class
            .iter()
            .zip(&manifest.classes)
            .filter(|(n, _)| **n == 0)
            .map(|(_, c)| c.as_str())
            .collect();
        let (min, max) = (
            per_class.iter().min().copied().unwrap_or(0),
            per_class.iter().max().copied().unwrap_or(0),
        );
        ex.lines.push(format!(
            "{}: {} samples; per class {min}..{max}: {per_class:?}",
            split.name(),
            idx.len()
        ));
        if !idx.is_empty() && !empty.is_empty() {
            ex.lines.push(format!(
                "  {} class(es) without {} samples: {}",
                empty.len(),
                split.name(),
                empty.join(", ")
            ));
        }
        if idx.is_empty() && split != Split::Test {
            ex.problems.push(format!(
                "the {} split is empty{}",
                split.name(),
                if split == Split::Val {
                    ": model selection would have to use test"
                } else {
                    ""
                }
            ));
        }
    }
    for (m, recipe) in recipes.iter().enumerate() {
        let name = &manifest.modalities[m];
        let sources: Vec<&Source> = manifest.samples.iter().map(|s| &s.sources[m]).collect();
        match recipe {
            Recipe::Frames(f) => {
                let counts: Vec<Result<usize, String>> = sources
                    .par_iter()
                    .map(|s| {
                        s.paths()
                            .iter()
                            .map(|p| crate::video::list_frames(p).map(|v| v.len()))
                            .try_fold(usize::MAX, |acc, n| n.map(|n| acc.min(n)))
                            .map_err(|e| format!("{e:#}"))
                    })
                    .collect();
                let ok: Vec<usize> = counts
                    .iter()
                    .filter_map(|c| c.as_ref().ok())
                    .copied()
                    .collect();
                // Unreadable folders are left to `check_all`, which names each one.
                let unreadable = counts.len() - ok.len();
                if unreadable > 0 {
                    ex.lines.push(format!(
                        "[{name}] {unreadable} clip(s) without a readable frame folder (named below)"
                    ));
                }
                if let (Some(min), Some(max)) = (ok.iter().min(), ok.iter().max()) {
                    let mean = ok.iter().sum::<usize>() as f64 / ok.len() as f64;
                    let short = ok.iter().filter(|&&n| n < f.count).count();
                    ex.lines.push(format!(
                        "[{name}] frames per clip: min {min}, mean {mean:.1}, max {max}; the recipe uses {}{}",
                        f.count,
                        if short > 0 {
                            format!(" ({short} clip(s) have fewer and repeat frames)")
                        } else {
                            String::new()
                        }
                    ));
                }
            }
            Recipe::Audio(a) => {
                let npy: Vec<&Source> = sources
                    .iter()
                    .copied()
                    .filter(|s| s.path().extension().is_some_and(|e| e == "npy"))
                    .collect();
                if !npy.is_empty() {
                    let shapes: Vec<Result<Vec<usize>, String>> = npy
                        .par_iter()
                        .map(|s| {
                            crate::npy::read_f32(s.path())
                                .map(|(shape, _)| shape)
                                .map_err(|e| format!("{e:#}"))
                        })
                        .collect();
                    let mut hist: BTreeMap<Vec<usize>, usize> = BTreeMap::new();
                    // Unreadable files are left to `check_all`, which names each one.
                    for shape in shapes.iter().flatten() {
                        *hist.entry(shape.clone()).or_default() += 1;
                    }
                    let text: Vec<String> =
                        hist.iter().map(|(s, n)| format!("{s:?} x{n}")).collect();
                    ex.lines.push(format!(
                        "[{name}] spectrogram shapes: {}; the recipe gives {:?}",
                        text.join(", "),
                        recipe.input_shape()
                    ));
                }
                if let Some(p) = recipe_mismatch(root, a, !npy.is_empty()) {
                    ex.problems.push(format!("[{name}] {p}"));
                }
            }
            Recipe::Image(_) => {}
        }
    }
    ex
}

/// Compares the audio recipe about to read the data with the one that made it, if recorded.
fn recipe_mismatch(root: &Path, a: &crate::recipe::AudioRecipe, reads_npy: bool) -> Option<String> {
    let path = root.join("recipe.toml");
    if !path.exists() {
        return None;
    }
    let made = match PreprocessRecipe::load(&path) {
        Ok(r) => r,
        Err(e) => return Some(format!("{e:#}")),
    };
    if reads_npy {
        let Some(stored) = &made.audio else {
            return Some(format!(
                "{}: recipe {} wrote no spectrograms, but the sources are .npy",
                path.display(),
                made.name
            ));
        };
        let describe = |f: &FrontEnd| match f {
            FrontEnd::Fbank(b) => format!("fbank with {} mel bins", b.num_mel_bins),
            FrontEnd::Stft(s) => format!("STFT n_fft {} hop {}", s.n_fft, s.hop),
        };
        if stored.front_end != a.front_end || stored.sample_rate != a.sample_rate {
            return Some(format!(
                "{}: the spectrograms were made by recipe {} ({} at {} Hz), the config's recipe reads them as {} at {} Hz",
                path.display(),
                made.name,
                describe(&stored.front_end),
                stored.sample_rate,
                describe(&a.front_end),
                a.sample_rate
            ));
        }
    } else if made.wav_sample_rate < a.sample_rate {
        return Some(format!(
            "{}: the WAVs were written at {} Hz, below the recipe's {} Hz (upsampling adds nothing)",
            path.display(),
            made.wav_sample_rate,
            a.sample_rate
        ));
    }
    None
}
