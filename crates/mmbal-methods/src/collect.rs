//! Eval-mode passes over a list of rows, gathered on the CPU.

use anyhow::Result;
use candle_core::{Device, Tensor};
use mmbal_data::{batches, Dataset, Row};
use mmbal_fusion::MultimodalModel;
use std::sync::Arc;

/// Outputs of an eval-mode pass, in row order, on the CPU.
pub struct Collected {
    /// The rows' labels.
    pub labels: Vec<u32>,
    /// `(N, C)`.
    pub fused: Tensor,
    /// Per modality `(N, C)`.
    pub unimodal: Vec<Tensor>,
    /// Per modality `(N, D_m)`.
    pub features: Vec<Tensor>,
}

/// Runs the model in eval mode over `rows` (deterministic transforms; each row's zeroed
/// modalities masked at the features, and at the inputs when the model has a mixer), without
/// building a graph for gradients.
pub fn collect_outputs(
    model: &MultimodalModel,
    dataset: &Arc<Dataset>,
    rows: &[Row],
    batch_size: usize,
) -> Result<Collected> {
    collect_outputs_with(model, dataset, rows, batch_size, None)
}

/// [`collect_outputs`] with a choice of transforms: `augment = Some((seed, stream))` serves each
/// row with its training transforms (crops, flips, frame picks) drawn from that stream, as a
/// reference that evaluates the model on its training loader does; the model still runs in eval
/// mode.
pub fn collect_outputs_with(
    model: &MultimodalModel,
    dataset: &Arc<Dataset>,
    rows: &[Row],
    batch_size: usize,
    augment: Option<(u64, u64)>,
) -> Result<Collected> {
    let dev = model.device().clone();
    let m = model.num_modalities();
    let mut labels = Vec::with_capacity(rows.len());
    let (mut fused, mut unimodal, mut features) =
        (Vec::new(), vec![Vec::new(); m], vec![Vec::new(); m]);
    let progress = mmbal_data::progress::task("evaluating", rows.len().div_ceil(batch_size.max(1)));
    for batch in batches(dataset.clone(), rows.to_vec(), batch_size, augment, 2) {
        progress.advance(1);
        let batch = batch?;
        let inputs: Vec<Tensor> = batch
            .inputs
            .iter()
            .map(|x| x.to_device(&dev))
            .collect::<candle_core::Result<_>>()?;
        let keep = batch.keep.to_device(&dev)?;
        // Zeroed modalities of a model that mixes them inside its encoders are zeroed at the
        // inputs too (as in training).
        let inputs = if model.has_mixer() && batch.rows.iter().any(|r| r.zeroed.contains(&true)) {
            MultimodalModel::mask_inputs(&inputs, &keep)?
        } else {
            inputs
        };
        let out = model.forward(&inputs, Some(&keep), false)?;
        labels.extend(batch.labels.to_vec1::<u32>()?);
        fused.push(out.fused_logits.detach().to_device(&Device::Cpu)?);
        for k in 0..m {
            unimodal[k].push(out.unimodal_logits[k].detach().to_device(&Device::Cpu)?);
            features[k].push(out.features[k].detach().to_device(&Device::Cpu)?);
        }
    }
    if labels.is_empty() {
        anyhow::bail!("no rows to evaluate");
    }
    Ok(Collected {
        labels,
        fused: Tensor::cat(&fused, 0)?,
        unimodal: unimodal
            .iter()
            .map(|v| Tensor::cat(v, 0))
            .collect::<candle_core::Result<_>>()?,
        features: features
            .iter()
            .map(|v| Tensor::cat(v, 0))
            .collect::<candle_core::Result<_>>()?,
    })
}
