//! Diagnosing & Re-learning (Wei, Li, Feng, Hu, "Diagnosing and Re-learning for Balanced
//! Multimodal Learning", ECCV 2024; GeWu-Lab/Diagnosing_Relearning_ECCV2024 at 025085e,
//! `code/ours.py`). Joint training with cross-entropy; after every `reinit_epoch`-th epoch (the
//! reference: 0-based epochs 20, 40, 60, at most `reinit_num` times) each modality's
//! uni-modal representation is diagnosed and its encoder softly re-initialised:
//!
//! * pooled features of the train split (training transforms, as the reference reads its
//!   training loader, in eval mode) and of the val split, each column min-max scaled to
//!   [-1, 1] per split (sklearn's `MinMaxScaler`);
//! * k-means with k = classes (k-means++, one run, as sklearn's default; `linfa-clustering`,
//!   seeded), the purity of the clusters by majority vote;
//! * `alpha_m = tanh(move_lambda * |purity_train - purity_val|)`;
//! * every parameter of encoder m moves to `alpha_m * theta_init + (1 - alpha_m) * theta`
//!   (not the head, the running statistics or the optimizer state).
//!
//! The reference re-initialises after the epoch's evaluation; here it happens at the start of
//! the next epoch (`epoch_plan`), on the same weights, so that the epoch's val and test numbers
//! and its checkpoint are those of one model and a resume repeats the re-initialisation. The
//! reference selects its model on the test set; mmbal on val. The initial weights are the
//! model's when the run was built (its seed, its pretrained files), built again identically on
//! resume. docs/methods/relearning.md has the details.

use crate::{BalanceMethod, EpochCtx, Requirements};
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use linfa::prelude::*;
use linfa_clustering::{KMeans, KMeansInit};
use mmbal_data::{Row, Split};
use mmbal_fusion::{MultimodalModel, ParamGroup};
use rand_xoshiro::rand_core::SeedableRng;
use rand_xoshiro::Xoshiro256Plus;
use serde::{Deserialize, Serialize};

/// The stream of the training transforms the train features are served with (no training
/// epoch draws from it).
const FEATURE_STREAM: u64 = 0x5245_4c45_4152_4e00;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Epochs between diagnoses: after 0-based epochs `reinit_epoch`, `2 reinit_epoch`, ...
    reinit_epoch: usize,
    /// Most re-initialisations in a run.
    reinit_num: usize,
    /// `lambda` in `tanh(lambda * purity gap)`.
    move_lambda: f64,
    /// The k-means generator's seed (sklearn's `random_state=0`).
    kmeans_seed: u64,
    /// k-means runs from different seeds, the best kept (sklearn's `n_init`, "auto" = 1 for
    /// k-means++).
    kmeans_runs: usize,
    /// k-means iteration limit (sklearn's `max_iter`).
    kmeans_max_iterations: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            reinit_epoch: 20,
            reinit_num: 3,
            move_lambda: 3.0,
            kmeans_seed: 0,
            kmeans_runs: 1,
            kmeans_max_iterations: 300,
        }
    }
}

struct Relearning {
    opts: Options,
    /// Per modality, copies of the encoder's parameters as the run was built.
    initial: Vec<Vec<Tensor>>,
    /// The last diagnosis: per modality (train purity, val purity, alpha).
    last: Vec<(f64, f64, f64)>,
}

/// Each column of `x` (rows of equal length) scaled to [-1, 1] over the rows, as sklearn's
/// `MinMaxScaler(feature_range=(-1, 1))`: a constant column maps to -1.
pub fn relearning_min_max_scale(x: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let d = x.first().map_or(0, |r| r.len());
    let mut lo = vec![f64::INFINITY; d];
    let mut hi = vec![f64::NEG_INFINITY; d];
    for r in x {
        for (j, &v) in r.iter().enumerate() {
            lo[j] = lo[j].min(v as f64);
            hi[j] = hi[j].max(v as f64);
        }
    }
    x.iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(j, &v)| {
                    // sklearn's `_handle_zeros_in_scale`: a zero range counts as 1.
                    let range = if hi[j] - lo[j] == 0.0 {
                        1.0
                    } else {
                        hi[j] - lo[j]
                    };
                    (v as f64 - lo[j]) / range * 2.0 - 1.0
                })
                .collect()
        })
        .collect()
}

/// The purity of a clustering: every cluster votes for its most frequent label (the smallest on
/// a tie, as `np.argmax`), and the purity is the fraction of samples whose label won.
pub fn relearning_purity(labels: &[u32], clusters: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let mut counts: std::collections::BTreeMap<usize, std::collections::BTreeMap<u32, usize>> =
        Default::default();
    for (&l, &c) in labels.iter().zip(clusters) {
        *counts.entry(c).or_default().entry(l).or_default() += 1;
    }
    let won: usize = counts
        .values()
        .map(|h| h.values().max().copied().unwrap_or(0))
        .sum();
    won as f64 / labels.len() as f64
}

/// k-means++ (`runs` runs, the lowest inertia kept) of the rows of `x` into `k` clusters.
pub fn relearning_kmeans(
    x: &[Vec<f64>],
    k: usize,
    seed: u64,
    runs: usize,
    max_iterations: u64,
) -> Result<Vec<usize>> {
    let n = x.len();
    if n < k {
        bail!("relearning: {n} samples cannot form {k} clusters");
    }
    let d = x.first().map_or(0, |r| r.len());
    let data = ndarray::Array2::from_shape_vec((n, d), x.iter().flatten().copied().collect())
        .context("relearning: ragged feature rows")?;
    let dataset = DatasetBase::from(data.clone());
    let model = KMeans::params_with_rng(k, Xoshiro256Plus::seed_from_u64(seed))
        .init_method(KMeansInit::KMeansPlusPlus)
        .n_runs(runs.max(1))
        .max_n_iterations(max_iterations)
        .tolerance(1e-4)
        .fit(&dataset)
        .map_err(|e| anyhow::anyhow!("relearning: k-means: {e}"))?;
    let labels: ndarray::Array1<usize> = model.predict(&data);
    Ok(labels.to_vec())
}

/// `tanh(lambda * |purity_train - purity_val|)`.
pub fn relearning_weight(purity_train: f64, purity_val: f64, lambda: f64) -> f64 {
    (lambda * (purity_train - purity_val).abs()).tanh()
}

/// `alpha * initial + (1 - alpha) * current` into each variable.
pub fn relearning_blend(vars: &[Var], initial: &[Tensor], alpha: f64) -> Result<()> {
    if vars.len() != initial.len() {
        bail!(
            "relearning: {} parameters, {} initial values",
            vars.len(),
            initial.len()
        );
    }
    for (v, t0) in vars.iter().zip(initial) {
        let now = v.as_tensor().detach();
        let t0 = t0.to_device(now.device())?;
        v.set(&((t0 * alpha)? + (now * (1.0 - alpha))?)?)?;
    }
    Ok(())
}

fn rows_of(t: &Tensor) -> Result<Vec<Vec<f32>>> {
    Ok(t.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?)
}

impl Relearning {
    /// The purities and alpha of each modality from the model as it is.
    fn diagnose(&self, ctx: &EpochCtx) -> Result<Vec<(f64, f64, f64)>> {
        let m = ctx.model.num_modalities();
        let train_rows: Vec<Row> = ctx.dataset.rows(Split::Train);
        let val_rows: Vec<Row> = ctx.dataset.rows(Split::Val);
        let train = ctx.forward_all_augmented(&train_rows, FEATURE_STREAM + ctx.epoch as u64)?;
        let val = ctx.forward_all(&val_rows)?;
        let k = ctx.model.head.classes();
        let o = &self.opts;
        (0..m)
            .map(|i| {
                let pt = relearning_purity(
                    &train.labels,
                    &relearning_kmeans(
                        &relearning_min_max_scale(&rows_of(&train.features[i])?),
                        k,
                        o.kmeans_seed,
                        o.kmeans_runs,
                        o.kmeans_max_iterations,
                    )?,
                );
                let pv = relearning_purity(
                    &val.labels,
                    &relearning_kmeans(
                        &relearning_min_max_scale(&rows_of(&val.features[i])?),
                        k,
                        o.kmeans_seed,
                        o.kmeans_runs,
                        o.kmeans_max_iterations,
                    )?,
                );
                Ok((pt, pv, relearning_weight(pt, pv, o.move_lambda)))
            })
            .collect()
    }

    fn snapshot(model: &MultimodalModel) -> Result<Vec<Vec<Tensor>>> {
        (0..model.num_modalities())
            .map(|m| -> Result<Vec<Tensor>> {
                model
                    .group(ParamGroup::Encoder(m))?
                    .iter()
                    .map(|v| Ok(v.as_tensor().detach().copy()?))
                    .collect()
            })
            .collect()
    }
}

impl BalanceMethod for Relearning {
    fn name(&self) -> &'static str {
        "relearning"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            val_split: true,
            ..Default::default()
        }
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn prepare_model(&mut self, model: &mut MultimodalModel) -> Result<()> {
        self.initial = Self::snapshot(model)?;
        Ok(())
    }

    /// At the start of epoch `e + 1` after a diagnosis epoch `e` (a multiple of `reinit_epoch`,
    /// not 0, at most `reinit_num` of them): diagnose and re-initialise.
    fn epoch_plan(&mut self, ctx: &EpochCtx) -> Result<Option<Vec<Row>>> {
        let Some(done) = ctx.epoch.checked_sub(1) else {
            return Ok(None);
        };
        let r = self.opts.reinit_epoch;
        if done == 0 || !done.is_multiple_of(r) || done / r > self.opts.reinit_num {
            return Ok(None);
        }
        if self.initial.len() != ctx.model.num_modalities() {
            bail!("relearning: prepare_model was not called");
        }
        let found = self.diagnose(ctx)?;
        for (m, &(_, _, alpha)) in found.iter().enumerate() {
            relearning_blend(
                &ctx.model.group(ParamGroup::Encoder(m))?,
                &self.initial[m],
                alpha,
            )?;
        }
        self.last = found;
        Ok(None)
    }

    /// The last diagnosis, so that a resumed run reports the same diagnostics.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let flat: Vec<f64> = self.last.iter().flat_map(|&(a, b, c)| [a, b, c]).collect();
        Ok(vec![(
            "last_diagnosis".into(),
            Tensor::from_vec(flat, (self.last.len(), 3), &candle_core::Device::Cpu)?,
        )])
    }

    fn load_state(&mut self, state: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = state.get("last_diagnosis") {
            self.last = t
                .to_vec2::<f64>()?
                .into_iter()
                .map(|r| (r[0], r[1], r[2]))
                .collect();
        }
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (m, (pt, pv, a)) in self.last.iter().enumerate() {
            out.push((format!("relearning_purity_train_{m}"), *pt));
            out.push((format!("relearning_purity_val_{m}"), *pv));
            out.push((format!("relearning_alpha_{m}"), *a));
        }
        out
    }
}

/// Builds `relearning` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("relearning", options)?;
    if opts.reinit_epoch == 0 {
        bail!("relearning: reinit_epoch must be at least 1");
    }
    if !(opts.move_lambda.is_finite() && opts.move_lambda >= 0.0) {
        bail!(
            "relearning: move_lambda = {} must be finite and not negative",
            opts.move_lambda
        );
    }
    Ok(Box::new(Relearning {
        opts,
        initial: Vec::new(),
        last: Vec::new(),
    }))
}
