//! A dataset's health, before any training: counts per class and split, frames per clip,
//! spectrogram shapes, and the recipe the data was made with (`recipe.toml` beside it) against
//! the recipes about to read it; every file of a frame folder, with gaps in its numbered
//! sequence. Whether every file the recipes read decodes is [`mmbal_data::Dataset::check_all`]:
//! [`examine`] leaves those files to it, so that each problem is reported once, and checks the
//! frames that decoding never reads (outside a recipe's `span`).

use crate::preprocess::PreprocessRecipe;
use mmbal_data::recipe::{FramesRecipe, FrontEnd, Recipe};
use mmbal_dataset::manifest::{Manifest, Source, Split};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// What [`examine`] found: lines to show, and problems (each naming a file or a sample).
#[derive(Debug, Default)]
pub struct Examination {
    /// Report lines, in order: counts, shapes and recipe comparisons.
    pub lines: Vec<String>,
    /// Problems found, each naming a file or a sample; empty when the dataset is healthy.
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
        if split == Split::Train && !idx.is_empty() && !empty.is_empty() {
            ex.problems.push(format!(
                "{} class(es) without a training sample: {} (a class never seen in training cannot be learnt)",
                empty.len(),
                empty.join(", ")
            ));
        } else if !idx.is_empty() && !empty.is_empty() {
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
        // A recipe cut to a word: every clip needs its alignment, with that word.
        if let Some(w) = recipe.word_window() {
            let failed: Vec<String> = sources
                .par_iter()
                .filter_map(|s| w.window(s.path()).err().map(|e| format!("[{name}] {e:#}")))
                .collect();
            ex.lines.push(format!(
                "[{name}] word alignments: {} of {} clip(s) have word {} ({})",
                sources.len() - failed.len(),
                sources.len(),
                w.word,
                w.alignments
            ));
            ex.problems.extend(failed);
        }
        match recipe {
            Recipe::Frames(f) => {
                let folders: Vec<FolderCheck> = sources
                    .par_iter()
                    .map(|s| {
                        let checks: Vec<FolderCheck> =
                            s.paths().iter().map(|p| check_frame_folder(f, p)).collect();
                        FolderCheck {
                            frames: checks
                                .iter()
                                .map(|c| c.frames)
                                .try_fold(usize::MAX, |acc, n| n.map(|n| acc.min(n))),
                            problems: checks.into_iter().flat_map(|c| c.problems).collect(),
                        }
                    })
                    .collect();
                let ok: Vec<usize> = folders.iter().filter_map(|c| c.frames).collect();
                // Unreadable folders are left to `check_all`, which names each one.
                let unreadable = folders.len() - ok.len();
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
                for c in folders {
                    ex.problems
                        .extend(c.problems.into_iter().map(|p| format!("[{name}] {p}")));
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
                            mmbal_data::npy::read_f32(s.path())
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

/// What [`check_frame_folder`] found in one folder.
struct FolderCheck {
    /// The number of frames; `None` when the folder cannot be listed (left to `check_all`).
    frames: Option<usize>,
    problems: Vec<String>,
}

/// Checks every file of a frame folder, not only those the recipe reads: a gap in the numbered
/// sequence, and frames outside the recipe's span that are cut short or do not decode (frames
/// inside the span are decoded by `check_all`, which reports them).
fn check_frame_folder(f: &FramesRecipe, dir: &Path) -> FolderCheck {
    let Ok(files) = mmbal_transforms::video::list_frames(dir) else {
        return FolderCheck {
            frames: None,
            problems: Vec::new(),
        };
    };
    let mut problems = Vec::new();
    let (missing, total) = mmbal_transforms::video::frame_gaps(&files, 5);
    if total > 0 {
        problems.push(format!(
            "{}: {total} frame(s) missing from the sequence of {} frames: {}{}",
            dir.display(),
            files.len(),
            missing.join(", "),
            if total > missing.len() { ", ..." } else { "" }
        ));
    }
    let read = f.span_range(files.len()).unwrap_or(0..0);
    for (i, file) in files.iter().enumerate() {
        if read.contains(&i) {
            continue;
        }
        if let Err(e) = mmbal_transforms::video::read_image(file, f.grey || f.flow) {
            problems.push(format!(
                "{e:#} (outside the recipe's span, not read in training)"
            ));
        }
    }
    FolderCheck {
        frames: Some(files.len()),
        problems,
    }
}

/// Compares the audio recipe about to read the data with the one that made it, if recorded.
fn recipe_mismatch(
    root: &Path,
    a: &mmbal_data::recipe::AudioRecipe,
    reads_npy: bool,
) -> Option<String> {
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
