//! # mmbal-resample
//!
//! The epoch plans of Wei et al. (CVPR 2024): given each modality's contribution, the next epoch
//! gets extra rows that keep one modality and zero the others, so the weak modality is trained
//! more. The output is a list of [`Row`]s (sample index, which modalities are zeroed): the
//! originals (every sample once, nothing zeroed) followed by the copies; the trainer shuffles.
//!
//! * Sample-level ([`sample_level_plan`]): for every sample and every modality with contribution
//!   phi, [`copies_for`] extra rows: `0.4 < phi < 1` -> 1, `-0.1 < phi <= 0.4` -> 2,
//!   `phi <= -0.1` -> 3, `phi >= 1` -> 0. There is no comparison between modalities: every
//!   modality below 1 is resampled.
//! * Modality-level ([`subset_for_valuation`], [`modality_level_plan`]): contributions are
//!   estimated on a random part Z of the training set (`part_ratio`, 0.2), drawn without
//!   replacement, and only Z is valued (the reference values all N and then averages over Z drawn
//!   with replacement). With `gap_m = 1 - mean phi_m`, two modalities get
//!   `d = (2/3) * alpha * |gap_a - gap_v|` and `floor(d * N)` copies of the modality with the
//!   larger gap, samples drawn uniformly with replacement from the whole training set. For M
//!   modalities every modality m gets `floor((2/3) * alpha * (gap_m - min gap) * N)` copies,
//!   which is the two-modality rule when M = 2.
//!
//! ```
//! use mmbal_resample::{copies_for, sample_level_plan};
//! assert_eq!(copies_for(1.5), 0);
//! assert_eq!(copies_for(-0.5), 3);
//! // Two samples (manifest indices 7 and 9), two modalities each.
//! let phi = [1.5, 0.5, 0.0, 1.0];
//! let rows = sample_level_plan(&[7, 9], &phi, 2).unwrap();
//! // Originals, then sample 7: 1 copy of modality 1; sample 9: 2 copies of modality 0.
//! assert_eq!(rows.len(), 2 + 1 + 2);
//! assert_eq!(rows[2].sample, 7);
//! assert_eq!(rows[2].zeroed, vec![true, false]);
//! ```

#![warn(missing_docs)]

use anyhow::{bail, Result};
use mmbal_data::Row;
use rand::seq::index::sample;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Extra copies of one modality of one sample for contribution `phi`: the reference's table
/// (`code/datasets/dataloader.py`, strict bounds in f64): 1 for `0.4 < phi < 1`, 2 for
/// `-0.1 < phi < 0.4`, 3 for `phi < -0.1`, none otherwise (`phi >= 1`, exactly 0.4 or -0.1, NaN).
/// On the attainable values of two modalities it is `max(0, 2 (1 - phi))`.
pub fn copies_for(phi: f32) -> usize {
    let c = phi as f64;
    if 0.4 < c && c < 1.0 {
        1
    } else if -0.1 < c && c < 0.4 {
        2
    } else if c < -0.1 {
        3
    } else {
        0
    }
}

/// A row that keeps only modality `keep` of `sample`.
pub fn only(sample: usize, keep: usize, modalities: usize) -> Row {
    Row {
        sample,
        zeroed: (0..modalities).map(|m| m != keep).collect(),
    }
}

/// Sample-level plan: `samples[k]` has contributions `values[k * modalities ..][..modalities]`.
/// Returns every sample once, then the copies (sample by sample, modality by modality).
pub fn sample_level_plan(samples: &[usize], values: &[f32], modalities: usize) -> Result<Vec<Row>> {
    if values.len() != samples.len() * modalities {
        bail!(
            "{} contributions for {} samples of {modalities} modalities",
            values.len(),
            samples.len()
        );
    }
    let mut rows: Vec<Row> = samples.iter().map(|&s| Row::full(s, modalities)).collect();
    for (k, &s) in samples.iter().enumerate() {
        for m in 0..modalities {
            let n = copies_for(values[k * modalities + m]);
            rows.extend(std::iter::repeat_n(only(s, m, modalities), n));
        }
    }
    Ok(rows)
}

/// The random part Z of the training set that modality-level resampling values:
/// `round(part_ratio * N)` (at least 1) distinct samples, seeded by `(seed, epoch)`.
pub fn subset_for_valuation(train: &[usize], part_ratio: f64, seed: u64, epoch: u64) -> Vec<usize> {
    let n = train.len();
    let k = ((part_ratio * n as f64).round() as usize).clamp(1.min(n), n);
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5A);
    let mut picked: Vec<usize> = sample(&mut rng, n, k)
        .into_iter()
        .map(|i| train[i])
        .collect();
    picked.sort_unstable();
    picked
}

/// Copies per modality for modality-level resampling from the mean contributions, as the
/// reference computes them (`code/datasets/dataloader.py`: `int((|gap_a - gap_v| / 3 * 2) *
/// alpha * length)`, in that order of operations and truncated, so a product that is whole in
/// exact arithmetic may come out one short, as it does there), with `gap_m = 1 - means[m]` and,
/// for any number of modalities, `gap_m - min gap` in place of the absolute difference.
pub fn modality_level_copies(means: &[f64], alpha: f64, n: usize) -> Vec<usize> {
    let gaps: Vec<f64> = means.iter().map(|m| 1.0 - m).collect();
    let min = gaps.iter().cloned().fold(f64::INFINITY, f64::min);
    gaps.iter()
        .map(|g| ((g - min) / 3.0 * 2.0 * alpha * n as f64).max(0.0) as usize)
        .collect()
}

/// Modality-level plan: every training sample once, then for each modality its
/// [`modality_level_copies`], samples drawn uniformly with replacement from `train`.
pub fn modality_level_plan(
    train: &[usize],
    means: &[f64],
    alpha: f64,
    seed: u64,
    epoch: u64,
) -> Vec<Row> {
    let m = means.len();
    let mut rows: Vec<Row> = train.iter().map(|&s| Row::full(s, m)).collect();
    if train.is_empty() {
        return rows;
    }
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ 0xA5);
    for (modality, count) in modality_level_copies(means, alpha, train.len())
        .into_iter()
        .enumerate()
    {
        for _ in 0..count {
            let s = train[rng.random_range(0..train.len())];
            rows.push(only(s, modality, m));
        }
    }
    rows
}
