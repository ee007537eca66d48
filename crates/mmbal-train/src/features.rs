//! Each modality's pooled features of a split, for the pictures the field argues with (the
//! valuation paper's Fig. 5): written as `.npy` with the labels, embedded in 2-D by t-SNE
//! (`linfa-tsne`, Barnes-Hut, seeded) and plotted by class.

use crate::Trainer;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use linfa::traits::Transformer;
use mmbal_data::Split;
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use std::path::{Path, PathBuf};

/// How t-SNE runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TsneOptions {
    /// Seed of the initial embedding.
    pub seed: u64,
    /// Perplexity (30, scikit-learn's default), lowered to `(N - 1) / 3` for small sets.
    pub perplexity: f64,
    /// Gradient iterations.
    pub iterations: usize,
    /// Barnes-Hut's angle (0: exact t-SNE; small sets and sets with identical rows are exact
    /// whatever it says).
    pub theta: f64,
}

impl Default for TsneOptions {
    fn default() -> Self {
        TsneOptions {
            seed: 0,
            perplexity: 30.0,
            iterations: 1000,
            theta: 0.5,
        }
    }
}

/// Below this many points t-SNE takes the exact gradient (cheap there, and no approximation).
const EXACT_BELOW: usize = 500;

/// A 2-D t-SNE embedding of the rows of `features` `(N, D)`: Barnes-Hut at `theta`, or the
/// exact gradient for fewer than 500 points or when some rows are identical. The exact
/// embedding is the same for the same seed; Barnes-Hut's (bhtsne sums in parallel) varies in
/// its last digits from run to run.
pub fn tsne_2d(features: &Tensor, o: TsneOptions) -> Result<Vec<[f64; 2]>> {
    let (n, d) = features.dims2()?;
    if n < 4 {
        bail!("t-SNE needs at least 4 samples, got {n}");
    }
    let values = features
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    // Barnes-Hut's space-partitioning tree splits forever on identical points (bhtsne
    // overflows its stack): sets with repeated rows, and small ones, take the exact gradient.
    let mut rows: Vec<&[f64]> = values.chunks(d.max(1)).collect();
    rows.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let repeated = rows.windows(2).any(|w| w[0] == w[1]);
    let theta = if repeated || n < EXACT_BELOW {
        0.0
    } else {
        o.theta
    };
    let data = ndarray::Array2::from_shape_vec((n, d), values)?;
    let perplexity = o.perplexity.min((n - 1) as f64 / 3.0);
    let embedding =
        linfa_tsne::TSneParams::embedding_size_with_rng(2, Xoshiro256Plus::seed_from_u64(o.seed))
            .perplexity(perplexity)
            .approx_threshold(theta)
            .max_iter(o.iterations)
            .transform(data)
            .map_err(|e| anyhow::anyhow!("t-SNE: {e}"))?;
    Ok(embedding.rows().into_iter().map(|r| [r[0], r[1]]).collect())
}

/// Writes into `out`, for `split`: `labels_<split>.npy` (N,) and per modality
/// `features_<split>_<modality>.npy` (N, D), `tsne_<split>_<modality>.npy` (N, 2) and
/// `tsne_<split>_<modality>.svg`/`.png`. The features are the pooled features of an eval-mode
/// forward with every modality present (after any mixer). Returns the files written.
pub fn export_features(
    trainer: &Trainer,
    split: Split,
    out: &Path,
    tsne: Option<TsneOptions>,
) -> Result<Vec<PathBuf>> {
    let rows = trainer.split_rows(split)?;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let c = mmbal_methods::collect_outputs(
        &trainer.model,
        &trainer.dataset,
        &rows,
        trainer.config.batch_size.max(1),
    )?;
    let name = format!("{split:?}").to_lowercase();
    let mut written = Vec::new();
    let labels_path = out.join(format!("labels_{name}.npy"));
    let labels: Vec<i64> = c.labels.iter().map(|&l| i64::from(l)).collect();
    mmbal_data::npy::write_i64(&labels_path, &[labels.len()], &labels)?;
    written.push(labels_path);
    let classes = &trainer.dataset.manifest.classes;
    for (m, modality) in trainer.model.modalities.iter().enumerate() {
        let f = &c.features[m];
        let (n, d) = f.dims2()?;
        let p = out.join(format!("features_{name}_{modality}.npy"));
        let flat = f.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        mmbal_data::npy::write_f32(&p, &[n, d], &flat)?;
        written.push(p);
        let Some(o) = tsne else { continue };
        let e = tsne_2d(f, o).with_context(|| format!("t-SNE of the {modality} features"))?;
        let p = out.join(format!("tsne_{name}_{modality}.npy"));
        let flat: Vec<f32> = e.iter().flat_map(|r| [r[0] as f32, r[1] as f32]).collect();
        mmbal_data::npy::write_f32(&p, &[n, 2], &flat)?;
        written.push(p);
        let points: Vec<(f64, f64, usize)> = e
            .iter()
            .zip(&c.labels)
            .map(|(r, &l)| (r[0], r[1], l as usize))
            .collect();
        written.extend(crate::plots::scatter_figure(
            &out.join(format!("tsne_{name}_{modality}")),
            &format!("t-SNE of the {modality} features ({name})"),
            &points,
            classes,
        )?);
    }
    Ok(written)
}
