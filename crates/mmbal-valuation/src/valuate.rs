//! Valuation of a trained [`MultimodalModel`] over dataset rows: eval mode, no gradients, every
//! non-empty modality subset predicted once per batch.

use crate::shapley::{shapley_values, Benefit};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use mmbal_data::{batches, Dataset, Row};
use mmbal_fusion::MultimodalModel;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// How a modality is removed from a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MaskRoute {
    /// Zero its pooled feature and rerun only the fusion head; the encoders run once per batch
    /// (the reference; exact for late fusion).
    #[default]
    Features,
    /// Zero its input and run the whole model per subset (needed when modalities meet before
    /// the head, e.g. MMTM).
    Inputs,
}

/// Per-sample contributions: `values[k * modalities + m]` is modality m's Shapley value for
/// the k-th valued sample, whose manifest index is `samples[k]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Valuation {
    /// Manifest index of each valued sample, in valuation order.
    pub samples: Vec<usize>,
    /// Modalities per sample (the row length of `values`).
    pub modalities: usize,
    /// Shapley values, sample-major: `values[k * modalities + m]`.
    pub values: Vec<f32>,
}

impl Valuation {
    /// Modality `m`'s value for the `k`-th valued sample.
    pub fn value(&self, k: usize, m: usize) -> f32 {
        self.values[k * self.modalities + m]
    }

    /// Mean contribution of each modality over the valued samples.
    pub fn means(&self) -> Vec<f64> {
        let n = self.samples.len().max(1) as f64;
        (0..self.modalities)
            .map(|m| {
                (0..self.samples.len())
                    .map(|k| self.value(k, m) as f64)
                    .sum::<f64>()
                    / n
            })
            .collect()
    }

    /// Writes the values as a float32 `.npy` array `(samples, modalities)` and the manifest
    /// indices as an int64 `.npy` vector beside it (`<stem>.samples.npy`).
    pub fn write_npy(&self, path: &Path) -> Result<()> {
        mmbal_data::npy::write_f32(path, &[self.samples.len(), self.modalities], &self.values)?;
        let ids: Vec<i64> = self.samples.iter().map(|&s| s as i64).collect();
        mmbal_data::npy::write_i64(&path.with_extension("samples.npy"), &[ids.len()], &ids)
    }
}

/// Shapley values of `m` modalities for a batch, from the logits of every subset:
/// `logits[mask]` is `(B, C)` for `mask` in `1..2^m` (`logits[0]` is unused).
pub fn values_from_logits(
    logits: &[Vec<Vec<f32>>],
    labels: &[u32],
    m: usize,
    benefit: Benefit,
) -> Result<Vec<f32>> {
    if logits.len() != 1 << m {
        bail!("expected logits for all {} subsets", 1 << m);
    }
    let mut out = Vec::with_capacity(labels.len() * m);
    let mut v = vec![0.0; 1 << m];
    for (b, &label) in labels.iter().enumerate() {
        for mask in 1..1usize << m {
            v[mask] = benefit.of(&logits[mask][b], label as usize, mask.count_ones() as usize);
        }
        out.extend(shapley_values(&v, m)?.into_iter().map(|x| x as f32));
    }
    Ok(out)
}

/// `(B, M)` keep mask of subset `mask` (1 = present).
fn keep_of(mask: usize, b: usize, m: usize, dev: &Device) -> Result<Tensor> {
    let row: Vec<f32> = (0..m).map(|i| ((mask >> i) & 1) as f32).collect();
    Ok(Tensor::new(row.as_slice(), dev)?
        .reshape((1, m))?
        .broadcast_as((b, m))?
        .contiguous()?)
}

/// Shapley values of one batch already on the model's device: `(B * M)` values, row-major.
pub fn value_batch(
    model: &MultimodalModel,
    inputs: &[Tensor],
    labels: &[u32],
    route: MaskRoute,
    benefit: Benefit,
) -> Result<Vec<f32>> {
    let m = model.num_modalities();
    let b = labels.len();
    let dev = model.device().clone();
    let features = match route {
        MaskRoute::Features => Some(model.encode(inputs, false)?),
        MaskRoute::Inputs => None,
    };
    // Every subset's logits stay on the device and come to the host in one copy (on a GPU one
    // synchronisation per batch instead of one per subset).
    let mut outs = Vec::with_capacity((1 << m) - 1);
    for mask in 1..(1usize << m) {
        let keep = keep_of(mask, b, m, &dev)?;
        let out = match &features {
            Some(f) => model.head.forward(f, Some(&keep))?.fused,
            None => {
                let masked = MultimodalModel::mask_inputs(inputs, &keep)?;
                model.forward(&masked, None, false)?.fused_logits
            }
        };
        outs.push(out.detach().to_dtype(DType::F32)?);
    }
    let all = Tensor::cat(&outs, 0)?
        .to_device(&Device::Cpu)?
        .to_vec2::<f32>()?;
    let mut logits = vec![Vec::new(); 1 << m];
    for (mask, rows) in all.chunks(b.max(1)).enumerate() {
        logits[mask + 1] = rows.to_vec();
    }
    values_from_logits(&logits, labels, m, benefit)
}

/// Values every row (each row's own zero mask is ignored: a sample is valued with all its
/// modalities). `augment`: `Some((seed, epoch))` uses training augmentation as the reference
/// does; `None` (the default) the deterministic evaluation transforms.
pub fn valuate(
    model: &MultimodalModel,
    dataset: &Arc<Dataset>,
    rows: &[Row],
    batch_size: usize,
    route: MaskRoute,
    benefit: Benefit,
    augment: Option<(u64, u64)>,
) -> Result<Valuation> {
    let m = model.num_modalities();
    let dev = model.device().clone();
    let plain: Vec<Row> = rows.iter().map(|r| Row::full(r.sample, m)).collect();
    let mut values = Vec::with_capacity(rows.len() * m);
    let progress =
        mmbal_data::progress::task("valuing modalities", rows.len().div_ceil(batch_size.max(1)));
    for batch in batches(dataset.clone(), plain, batch_size, augment, 2) {
        let batch = batch?;
        let inputs: Vec<Tensor> = batch
            .inputs
            .iter()
            .map(|x| x.to_device(&dev))
            .collect::<candle_core::Result<_>>()?;
        let labels = batch.labels.to_vec1::<u32>()?;
        values.extend(value_batch(model, &inputs, &labels, route, benefit)?);
        progress.advance(1);
    }
    Ok(Valuation {
        samples: rows.iter().map(|r| r.sample).collect(),
        modalities: m,
        values,
    })
}
