//! The loader: an epoch is a list of [`Row`]s (a sample and which of its modalities to zero);
//! batches are assembled in parallel with rayon and prefetched on a background thread.
//!
//! Determinism: each row draws its augmentation from its own stream, seeded by
//! `(seed, epoch, position of the row in the epoch plan)`, so results do not depend on thread
//! scheduling, and copies of one sample get fresh augmentation.

use crate::cache::PackedCache;
use crate::recipe::{Decoded, Recipe};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use mmbal_dataset::manifest::{Manifest, Split};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

/// One row of an epoch: which sample, and which modalities are zeroed (resampled copies keep one
/// modality and zero the others).
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Index of the sample in the manifest (0-based).
    pub sample: usize,
    /// One flag per modality, in the manifest's order: `true` zeroes that modality for this row.
    pub zeroed: Vec<bool>,
}

impl Row {
    /// A row of `sample` with all `modalities` kept (none zeroed).
    pub fn full(sample: usize, modalities: usize) -> Row {
        Row {
            sample,
            zeroed: vec![false; modalities],
        }
    }
}

/// A batch, on the CPU. `keep[b][m]` is 0.0 where modality `m` of row `b` is zeroed.
pub struct Batch {
    /// One tensor per modality, `(B, ...input_shape)`.
    pub inputs: Vec<Tensor>,
    /// `(B,)` u32.
    pub labels: Tensor,
    /// `(B, M)` f32, 1 = keep, 0 = zero this modality's feature.
    pub keep: Tensor,
    /// The rows the batch was built from, in batch order.
    pub rows: Vec<Row>,
}

/// A manifest, its recipes, and where decoded items come from.
pub struct Dataset {
    /// The samples: ids, labels, splits and sources.
    pub manifest: Manifest,
    /// One recipe per modality, in the manifest's modality order.
    pub recipes: Vec<Recipe>,
    cache: Option<PackedCache>,
}

/// A seeded random stream for `(seed, epoch, key)`.
pub fn stream(seed: u64, epoch: u64, key: u64) -> ChaCha8Rng {
    let mut z = seed ^ 0x9E37_79B9_7F4A_7C15;
    for v in [epoch, key] {
        z = (z ^ v).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z ^= z >> 31;
    }
    ChaCha8Rng::seed_from_u64(z)
}

impl Dataset {
    /// Decodes on the fly (no cache).
    pub fn new(manifest: Manifest, recipes: Vec<Recipe>) -> Result<Dataset> {
        if recipes.len() != manifest.modalities.len() {
            bail!(
                "dataset {} has {} modalities ({:?}) but {} recipes were given",
                manifest.name,
                manifest.modalities.len(),
                manifest.modalities,
                recipes.len()
            );
        }
        Ok(Dataset {
            manifest,
            recipes,
            cache: None,
        })
    }

    /// Uses the packed cache at `path`, building it first when absent. A cache stamped with
    /// another recipe is an error, never silently rebuilt. A cache whose source files changed
    /// since it was built is rebuilt, and a note in the manifest's notes names the files; one
    /// whose source files were deleted is an error naming them
    /// ([`PackedCache::open_or_rebuild`]).
    pub fn with_cache(manifest: Manifest, recipes: Vec<Recipe>, path: &Path) -> Result<Dataset> {
        let mut ds = Dataset::new(manifest, recipes)?;
        let (cache, note) = PackedCache::open_or_rebuild(path, &ds.manifest, &ds.recipes)?;
        ds.manifest.notes.extend(note);
        ds.cache = Some(cache);
        Ok(ds)
    }

    /// Uses the packed cache at `path` without checking its source files against the disk
    /// (the recipes and samples still must match its stamp): for timing on a machine that
    /// holds the cache but not the sources (`cargo xtask bench epoch --unchecked-cache-sources`).
    /// Anything that trains or reports results takes [`Dataset::with_cache`], which refuses
    /// stale caches. The manifest's notes say the sources were not checked.
    pub fn with_cache_sources_unchecked(
        manifest: Manifest,
        recipes: Vec<Recipe>,
        path: &Path,
    ) -> Result<Dataset> {
        let mut ds = Dataset::new(manifest, recipes)?;
        let cache = PackedCache::open_sources_unchecked(path, &ds.manifest, &ds.recipes)?;
        ds.manifest.notes.push(format!(
            "the input cache {} was opened without checking its source files",
            path.display()
        ));
        ds.cache = Some(cache);
        Ok(ds)
    }

    /// Number of modalities (one per recipe).
    pub fn num_modalities(&self) -> usize {
        self.recipes.len()
    }

    /// The decoded item of `sample` (0-based index into the manifest) for `modality`: read
    /// from the cache when there is one, decoded from its source otherwise. Per-sample
    /// transforms and augmentation are not applied yet.
    pub fn decoded(&self, sample: usize, modality: usize) -> Result<Decoded> {
        match &self.cache {
            Some(c) => c.read(sample, modality),
            None => {
                let s = &self.manifest.samples[sample];
                self.recipes[modality]
                    .decode(&s.sources[modality])
                    .with_context(|| format!("sample `{}`", s.id))
            }
        }
    }

    /// Checks that every sample of the manifest decodes; returns one message per failure.
    pub fn check_all(&self) -> Vec<String> {
        (0..self.manifest.samples.len())
            .into_par_iter()
            .flat_map_iter(|i| {
                (0..self.num_modalities()).filter_map(move |m| {
                    self.decoded(i, m).err().map(|e| {
                        format!(
                            "{} [{}]: {e:#}",
                            self.manifest.samples[i].id, self.manifest.modalities[m]
                        )
                    })
                })
            })
            .collect()
    }

    /// Plain rows of a split, in manifest order.
    pub fn rows(&self, split: Split) -> Vec<Row> {
        self.manifest
            .indices(split)
            .into_iter()
            .map(|i| Row::full(i, self.num_modalities()))
            .collect()
    }

    /// Builds one batch from rows; `augment_key` = `Some((seed, epoch, first position))` for
    /// training augmentation, `None` for deterministic evaluation transforms.
    pub fn batch(&self, rows: &[Row], augment_key: Option<(u64, u64, usize)>) -> Result<Batch> {
        let b = rows.len();
        let sizes: Vec<usize> = self
            .recipes
            .iter()
            .map(|r| r.input_shape().iter().product())
            .collect();
        let mut flats: Vec<Vec<f32>> = sizes.iter().map(|n| vec![0f32; b * n]).collect();
        // One output slice per (row, modality), so that rows fill the batch in parallel.
        let mut slots: Vec<Vec<&mut [f32]>> = (0..b).map(|_| Vec::new()).collect();
        for (flat, &n) in flats.iter_mut().zip(&sizes) {
            for (slot, chunk) in slots.iter_mut().zip(flat.chunks_mut(n.max(1))) {
                slot.push(chunk);
            }
        }
        slots
            .into_par_iter()
            .enumerate()
            .try_for_each(|(k, outs)| -> Result<()> {
                let row = &rows[k];
                let mut rng =
                    augment_key.map(|(seed, epoch, start)| stream(seed, epoch, (start + k) as u64));
                for (m, out) in outs.into_iter().enumerate() {
                    let item = self.decoded(row.sample, m)?;
                    self.recipes[m]
                        .finish_into(&item, rng.as_mut(), out)
                        .with_context(|| {
                            format!(
                                "sample `{}` modality {}",
                                self.manifest.samples[row.sample].id, self.manifest.modalities[m]
                            )
                        })?;
                }
                Ok(())
            })?;
        let mut inputs = Vec::new();
        for (flat, recipe) in flats.into_iter().zip(&self.recipes) {
            let mut dims = vec![b];
            dims.extend(recipe.input_shape());
            inputs.push(Tensor::from_vec(flat, dims, &Device::Cpu)?);
        }
        let labels: Vec<u32> = rows
            .iter()
            .map(|r| self.manifest.samples[r.sample].label as u32)
            .collect();
        let keep: Vec<f32> = rows
            .iter()
            .flat_map(|r| r.zeroed.iter().map(|&z| if z { 0.0 } else { 1.0 }))
            .collect();
        Ok(Batch {
            inputs,
            labels: Tensor::from_vec(labels, b, &Device::Cpu)?,
            keep: Tensor::from_vec(keep, (b, self.num_modalities()), &Device::Cpu)?,
            rows: rows.to_vec(),
        })
    }
}

/// Shuffles an epoch's rows with the stream of `(seed, epoch)`.
pub fn shuffle_rows(rows: &mut [Row], seed: u64, epoch: u64) {
    rows.shuffle(&mut stream(seed, epoch, u64::MAX));
}

/// Missing modalities: each row loses modality `m` with probability `rates[m]` (zeroed, on top
/// of what it already lacks), drawn from the stream of `(seed, epoch)` kept for this (one draw
/// per row and modality, in row order, whatever the rates, so the rows that lose a modality at
/// one rate also lose it at every higher rate). A row left with no modality keeps the one of
/// those just dropped whose draw was highest, so the rate a row sees is a little below the
/// asked one when several modalities are dropped. Returns how many modality slots were zeroed.
pub fn drop_modalities(rows: &mut [Row], rates: &[f64], seed: u64, epoch: u64) -> Result<usize> {
    if let Some(r) = rates.iter().find(|r| !(0.0..=1.0).contains(*r)) {
        bail!("a missing rate is {r}; rates are between 0 and 1");
    }
    let mut rng = stream(seed, epoch, u64::MAX - 1);
    let mut dropped = 0;
    for row in rows.iter_mut() {
        if row.zeroed.len() != rates.len() {
            anyhow::bail!(
                "{} missing rates for rows of {} modalities",
                rates.len(),
                row.zeroed.len()
            );
        }
        let draws: Vec<f64> = rates.iter().map(|_| rng.random::<f64>()).collect();
        let newly: Vec<usize> = (0..rates.len())
            .filter(|&m| !row.zeroed[m] && draws[m] < rates[m])
            .collect();
        for &m in &newly {
            row.zeroed[m] = true;
        }
        if row.zeroed.iter().all(|&z| z) {
            if let Some(&m) = newly
                .iter()
                .max_by(|&&a, &&b| draws[a].total_cmp(&draws[b]))
            {
                row.zeroed[m] = false;
            }
        }
        dropped += row.zeroed.iter().filter(|&&z| z).count();
    }
    Ok(dropped)
}

/// Iterates over the batches of `rows`, built `prefetch` batches ahead on a background thread.
/// Every row is served exactly once; the last batch may be smaller.
pub fn batches(
    dataset: Arc<Dataset>,
    rows: Vec<Row>,
    batch_size: usize,
    augment: Option<(u64, u64)>,
    prefetch: usize,
) -> impl Iterator<Item = Result<Batch>> {
    let (tx, rx) = mpsc::sync_channel(prefetch.max(1));
    std::thread::spawn(move || {
        for (i, chunk) in rows.chunks(batch_size.max(1)).enumerate() {
            let key = augment.map(|(seed, epoch)| (seed, epoch, i * batch_size));
            let b = dataset.batch(chunk, key);
            let failed = b.is_err();
            if tx.send(b).is_err() || failed {
                return; // receiver dropped, or the error was delivered
            }
        }
    });
    rx.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, m: usize) -> Vec<Row> {
        (0..n).map(|i| Row::full(i, m)).collect()
    }

    fn lost(rows: &[Row], m: usize) -> Vec<usize> {
        rows.iter()
            .filter(|r| r.zeroed[m])
            .map(|r| r.sample)
            .collect()
    }

    #[test]
    fn dropped_modalities_follow_the_rates_nest_and_never_empty_a_row() {
        let mut a = rows(4000, 2);
        drop_modalities(&mut a, &[0.3, 0.0], 1, 2).unwrap();
        let share = lost(&a, 0).len() as f64 / 4000.0;
        assert!((share - 0.3).abs() < 0.03, "{share}");
        assert!(lost(&a, 1).is_empty());
        // The same seed and epoch: the same rows; a higher rate: a superset of them.
        let mut again = rows(4000, 2);
        drop_modalities(&mut again, &[0.3, 0.0], 1, 2).unwrap();
        assert_eq!(a, again);
        let mut more = rows(4000, 2);
        drop_modalities(&mut more, &[0.6, 0.0], 1, 2).unwrap();
        let (low, high) = (lost(&a, 0), lost(&more, 0));
        assert!(low.iter().all(|s| high.contains(s)) && high.len() > low.len());
        // Another epoch: other rows.
        let mut other = rows(4000, 2);
        drop_modalities(&mut other, &[0.3, 0.0], 1, 3).unwrap();
        assert_ne!(lost(&other, 0), low);
        // Everything asked missing: each row keeps one modality.
        let mut all = rows(200, 3);
        drop_modalities(&mut all, &[1.0, 1.0, 1.0], 1, 0).unwrap();
        assert!(all
            .iter()
            .all(|r| r.zeroed.iter().filter(|&&z| !z).count() == 1));
        // A modality the plan already zeroed stays zeroed, and the row keeps another.
        let mut planned = vec![Row {
            sample: 0,
            zeroed: vec![true, false],
        }];
        drop_modalities(&mut planned, &[0.0, 1.0], 1, 0).unwrap();
        assert_eq!(planned[0].zeroed, vec![true, false]);
        assert!(drop_modalities(&mut rows(2, 2), &[1.5, 0.0], 1, 0).is_err());
        assert!(drop_modalities(&mut rows(2, 2), &[0.5], 1, 0).is_err());
    }
}
