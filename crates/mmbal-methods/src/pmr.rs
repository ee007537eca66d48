//! PMR, prototypical modal rebalance (Fan et al., CVPR 2023): class prototypes of each modality's
//! feature, prototype logits `-||z_m - c_m,k||`, and a prototype cross-entropy (PCE) on the weaker
//! modality, weighted by how far it lags. docs/methods/pmr.md has the details.

use crate::{BalanceMethod, EpochCtx, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use mmbal_data::Row;
use mmbal_fusion::ForwardOut;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Variant {
    /// Clipped coefficients and the entropy regulariser (the paper).
    Paper,
    /// The released code's hard switch: `alpha * PCE` on the weaker modality only (default).
    Code,
}

/// Which transforms serve the prototype pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ProtoTransforms {
    /// The training transforms (the reference iterates its training loader), model in eval mode.
    Train,
    /// Deterministic evaluation transforms.
    Eval,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    variant: Variant,
    alpha: f64,
    /// The prototype terms apply in epochs `modulation_starts..=modulation_ends` (0-based, both
    /// ends included, as the reference's `modulation_starts <= epoch <= modulation_ends`);
    /// outside it the loss is plain cross-entropy.
    modulation_starts: usize,
    modulation_ends: usize,
    /// Weight of the entropy regulariser on the dominant modality (paper variant).
    mu: f64,
    /// The regulariser applies in epochs `0..entropy_epochs`.
    entropy_epochs: usize,
    /// Part of the training batches used for prototypes: the first `max(1, floor(batches *
    /// proto_ratio))` batches of a shuffled pass (the reference's `len(loader) // 10`, at least
    /// one), before epoch 0 and after every epoch.
    proto_ratio: f64,
    proto_transforms: ProtoTransforms,
    /// `c = (1 - momentum) new + momentum old`, from the prototypes computed after the second
    /// epoch on (the reference's `epoch <= 0` test leaves the first two sets without momentum).
    momentum: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            variant: Variant::Code,
            alpha: 1.0,
            modulation_starts: 0,
            modulation_ends: 100,
            mu: 0.01,
            entropy_epochs: 10,
            proto_ratio: 0.1,
            proto_transforms: ProtoTransforms::Train,
            momentum: 0.0,
        }
    }
}

/// Seed stream of the prototype passes' training transforms (apart from the epochs' streams).
const PROTO_STREAM: u64 = 0x5052_4f54_4f00_0000;

pub struct Pmr {
    opts: Options,
    /// Per modality `(K, D)` on the model's device.
    prototypes: Option<Vec<Tensor>>,
    log: crate::ratio::RatioLog,
}

/// Prototype logits `-||z - c_k||`: `(B, D)` features and `(K, D)` prototypes to `(B, K)`.
pub fn prototype_logits(z: &Tensor, protos: &Tensor) -> candle_core::Result<Tensor> {
    let diff = z.unsqueeze(1)?.broadcast_sub(&protos.unsqueeze(0)?)?;
    diff.sqr()?.sum(2)?.sqrt()?.neg()
}

/// PCE coefficients and ratios from the per-modality scores (summed true-class softmax of the
/// prototype logits). `rho_m` = score over the mean score of the others (two modalities: the
/// paper's `rho` and `1 / rho`). Paper: `alpha * clip(1 / rho_m - 1, 0, 1)`; code: `alpha` for
/// modalities with `rho_m < 1`, else 0.
fn coefficients(scores: &[f64], alpha: f64, variant: Variant) -> (Vec<f64>, Vec<f64>) {
    let rho = crate::ratios_against_others(scores);
    let coeff = rho
        .iter()
        .map(|&r| match variant {
            Variant::Paper => alpha * (1.0 / r - 1.0).clamp(0.0, 1.0),
            Variant::Code => {
                if r < 1.0 {
                    alpha
                } else {
                    0.0
                }
            }
        })
        .collect();
    (coeff, rho)
}

/// Class prototypes `(K, D)` from features `(N, D)` and their labels: each class's mean feature,
/// blended as `(1 - momentum) mean + momentum previous` when `previous` prototypes are given. A
/// class with no sample keeps its previous prototype (zero when there is none).
pub fn prototypes_from(
    features: &Tensor,
    labels: &[u32],
    classes: usize,
    previous: Option<&Tensor>,
    momentum: f32,
) -> Result<Tensor> {
    let f = features.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let d = features.dim(1)?;
    let mut sums = vec![0f32; classes * d];
    let mut counts = vec![0usize; classes];
    for (row, &y) in f.iter().zip(labels) {
        let y = y as usize;
        if y >= classes {
            bail!("PMR: label {y} outside the {classes} classes");
        }
        counts[y] += 1;
        for (j, v) in row.iter().enumerate() {
            sums[y * d + j] += v;
        }
    }
    let old = previous
        .map(|p| {
            p.to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .to_vec2::<f32>()
        })
        .transpose()?;
    let mut proto = Vec::with_capacity(classes * d);
    for k in 0..classes {
        for j in 0..d {
            let prev = old.as_ref().map(|o| o[k][j]).unwrap_or(0.0);
            proto.push(if counts[k] == 0 {
                prev
            } else {
                let mean = sums[k * d + j] / counts[k] as f32;
                (1.0 - momentum) * mean + momentum * prev
            });
        }
    }
    Ok(Tensor::from_vec(proto, (classes, d), &Device::Cpu)?)
}

impl Pmr {
    /// Prototypes from a part of the training set. `pass` numbers the calls as the reference's
    /// `epoch` argument does: 0 before training and after epoch 0, then the finished epoch; the
    /// momentum applies from `pass >= 1` on. `stream` picks the shuffle and the augmentation.
    fn update_prototypes(&mut self, ctx: &EpochCtx, pass: usize, stream: u64) -> Result<()> {
        let mut rows = ctx.train_rows();
        let mut rng =
            ChaCha8Rng::seed_from_u64(ctx.seed ^ (stream + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
        rows.shuffle(&mut rng);
        let bs = ctx.batch_size.max(1);
        let batches = rows.len().div_ceil(bs);
        let used = ((batches as f64 * self.opts.proto_ratio).floor() as usize).max(1);
        rows.truncate((used * bs).min(rows.len()));
        let c = match self.opts.proto_transforms {
            ProtoTransforms::Train => ctx.forward_all_augmented(&rows, PROTO_STREAM + stream)?,
            ProtoTransforms::Eval => ctx.forward_all(&rows)?,
        };
        let momentum = if pass >= 1 {
            self.opts.momentum as f32
        } else {
            0.0
        };
        let classes = ctx.dataset.manifest.classes.len();
        let dev = ctx.model.device();
        let mut new = Vec::new();
        for (m, feats) in c.features.iter().enumerate() {
            let previous = self.prototypes.as_ref().map(|p| &p[m]);
            new.push(
                prototypes_from(feats, &c.labels, classes, previous, momentum)?.to_device(dev)?,
            );
        }
        self.prototypes = Some(new);
        Ok(())
    }
}

impl BalanceMethod for Pmr {
    fn name(&self) -> &'static str {
        "pmr"
    }

    fn requirements(&self) -> Requirements {
        Requirements::default().at_least(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn epoch_plan(&mut self, ctx: &EpochCtx) -> Result<Option<Vec<Row>>> {
        self.log.reset(&ctx.model.modalities);
        if self.prototypes.is_none() {
            self.update_prototypes(ctx, 0, 0)?; // before epoch 0
        }
        Ok(None)
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let Some(protos) = &self.prototypes else {
            bail!("PMR: prototypes are computed at the start of training (epoch_plan) or restored from a checkpoint");
        };
        let m = out.features.len();
        let labels = ctx.labels;
        let mut logits = Vec::with_capacity(m);
        let mut scores = Vec::with_capacity(m);
        for (z, c) in out.features.iter().zip(protos) {
            let l = prototype_logits(z, c)?;
            scores.push(crate::true_class_score(&l, labels)?);
            logits.push(l);
        }
        let in_window =
            (self.opts.modulation_starts..=self.opts.modulation_ends).contains(&ctx.epoch);
        let (mut coeff, rho) = coefficients(&scores, self.opts.alpha, self.opts.variant);
        if !in_window {
            coeff.iter_mut().for_each(|k| *k = 0.0);
        }
        self.log.add(&coeff, &rho);
        let mut loss = candle_nn::loss::cross_entropy(&out.fused_logits, labels)?;
        for (l, &k) in logits.iter().zip(&coeff) {
            if k != 0.0 {
                loss = (loss + (candle_nn::loss::cross_entropy(l, labels)? * k)?)?;
            }
        }
        if self.opts.variant == Variant::Paper
            && in_window
            && self.opts.mu != 0.0
            && ctx.epoch < self.opts.entropy_epochs
        {
            // Entropy of each dominant modality's prototype prediction (batch mean), maximised
            // with weight `mu * clip(rho - 1, 0, 1)`: the paper's final loss weights the entropy
            // terms by mu times the clipped coefficient, without alpha.
            for (l, &r) in logits.iter().zip(&rho) {
                let weight = (r - 1.0).clamp(0.0, 1.0);
                if weight > 0.0 {
                    let logp = candle_nn::ops::log_softmax(l, 1)?;
                    let entropy = (logp.exp()? * &logp)?.sum(1)?.mean_all()?.neg()?;
                    loss = (loss - (entropy * (self.opts.mu * weight))?)?;
                }
            }
        }
        Ok(loss)
    }

    fn on_epoch_end(&mut self, ctx: &EpochCtx) -> Result<()> {
        // A fresh draw each time (stream = passes so far), as the reference's shuffled loader.
        self.update_prototypes(ctx, ctx.epoch, ctx.epoch as u64 + 1)
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        self.log.diagnostics("pmr")
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(self
            .prototypes
            .iter()
            .flatten()
            .enumerate()
            .map(|(m, p)| (format!("prototypes.{m}"), p.clone()))
            .collect())
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut protos = Vec::new();
        while let Some(p) = state.get(&format!("prototypes.{}", protos.len())) {
            protos.push(p.clone());
        }
        self.prototypes = (!protos.is_empty()).then_some(protos);
        Ok(())
    }
}

/// Options: `variant` (`code` | `paper`), `alpha` (1.0), `modulation_starts` (0),
/// `modulation_ends` (100), `mu` (0.01), `entropy_epochs` (10), `proto_ratio` (0.1),
/// `proto_transforms` (`train` | `eval`), `momentum` (0.0).
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("pmr", options)?;
    if !(opts.proto_ratio > 0.0 && opts.proto_ratio <= 1.0) {
        bail!(
            "pmr: proto_ratio must be in (0, 1], got {}",
            opts.proto_ratio
        );
    }
    Ok(Box::new(Pmr {
        opts,
        prototypes: None,
        log: Default::default(),
    }))
}
