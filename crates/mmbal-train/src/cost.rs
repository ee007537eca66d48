//! What a run costs and how imbalanced it is: parameters per part and multiply-accumulates per
//! sample (in the summary, once per run), peak memory and the imbalance measures (in every
//! epoch's record).

use crate::run_log::SplitMetrics;
use crate::Trainer;
use anyhow::{Context, Result};
use candle_core::Device;
use mmbal_data::{batches, Split};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Parameters and compute of a run's model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Trainable parameters per part: `encoders.<modality>`, `head`, `mixer` (when the model
    /// has one) and `method` (the method's own parameters).
    pub params: BTreeMap<String, usize>,
    /// Multiply-accumulates for one sample: each encoder's convolutions
    /// (`encoders.<modality>`, counted while it runs on one training sample in eval mode) and
    /// the head's linear layers (`head`); the convention of ResNet-18's "1.8 GFLOPs" at
    /// 224x224. Batch norm, activations, pooling, a mixer and the method's own layers are not
    /// counted.
    pub macs_per_sample: BTreeMap<String, u64>,
    /// The sum of `macs_per_sample`.
    pub total_macs_per_sample: u64,
}

/// The cost of `trainer`'s model, from one training sample's inputs.
pub fn run_cost(trainer: &Trainer) -> Result<Cost> {
    let model = &trainer.model;
    let mut params: BTreeMap<String, usize> = model.param_counts().into_iter().collect();
    let own: usize = trainer
        .method
        .params()
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    params.insert("method".into(), own);
    let row = trainer
        .dataset
        .rows(Split::Train)
        .into_iter()
        .next()
        .context("no training sample to count the compute on")?;
    let batch = batches(trainer.dataset.clone(), vec![row], 1, None, 0)
        .next()
        .context("no batch")??;
    let inputs = batch
        .inputs
        .iter()
        .map(|x| x.to_device(model.device()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut macs: BTreeMap<String, u64> = model
        .modalities
        .iter()
        .map(|m| mmbal_fusion::encoder_path(m))
        .zip(model.encoder_macs(&inputs)?)
        .collect();
    macs.insert("head".into(), model.head.macs());
    Ok(Cost {
        params,
        total_macs_per_sample: macs.values().sum(),
        macs_per_sample: macs,
    })
}

/// Peak memory in MiB: on the CPU the process's peak resident set (Linux's `VmHWM`, everything
/// the process holds, input cache included); on CUDA the device memory pool's peak. `None`
/// where it cannot be read.
pub fn peak_memory_mib(device: &Device) -> Option<f64> {
    if device.is_cuda() {
        return mmbal_ops::cuda_peak_memory(device, false)
            .ok()
            .flatten()
            .map(|b| b as f64 / 1048576.0);
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// How unequally the modalities are learned in one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Imbalance {
    /// The highest minus the lowest per-modality accuracy (each modality's own logits), on
    /// val, or on the training batches when there is no val split.
    pub unimodal_gap: f64,
    /// The largest over the smallest mean Shapley contribution of the modalities, when
    /// contributions are tracked and the smallest is positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contribution_ratio: Option<f64>,
}

/// The imbalance of an epoch from its metrics and contributions.
pub fn imbalance(
    train: &SplitMetrics,
    val: Option<&SplitMetrics>,
    contributions: &BTreeMap<String, f64>,
) -> Option<Imbalance> {
    let accs = &val.unwrap_or(train).modality_acc;
    if accs.len() < 2 {
        return None;
    }
    let hi = accs.values().cloned().fold(f64::MIN, f64::max);
    let lo = accs.values().cloned().fold(f64::MAX, f64::min);
    let contribution_ratio = if contributions.len() >= 2 {
        let c_hi = contributions.values().cloned().fold(f64::MIN, f64::max);
        let c_lo = contributions.values().cloned().fold(f64::MAX, f64::min);
        (c_lo > 0.0).then(|| c_hi / c_lo)
    } else {
        None
    };
    Some(Imbalance {
        unimodal_gap: hi - lo,
        contribution_ratio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(accs: &[(&str, f64)]) -> SplitMetrics {
        SplitMetrics {
            samples: 10,
            loss: 1.0,
            acc: 0.5,
            macro_f1: 0.5,
            modality_acc: accs.iter().map(|(m, a)| (m.to_string(), *a)).collect(),
        }
    }

    #[test]
    fn imbalance_is_the_gap_on_val_and_the_contribution_ratio() {
        let train = metrics(&[("audio", 0.9), ("visual", 0.1)]);
        let val = metrics(&[("audio", 0.7), ("visual", 0.2), ("text", 0.4)]);
        let c: BTreeMap<String, f64> = [("audio".to_string(), 0.6), ("visual".to_string(), 0.2)]
            .into_iter()
            .collect();
        let i = imbalance(&train, Some(&val), &c).unwrap();
        assert!((i.unimodal_gap - 0.5).abs() < 1e-12);
        assert!((i.contribution_ratio.unwrap() - 3.0).abs() < 1e-12);
        // No val: the training batches; a non-positive contribution: no ratio.
        let c: BTreeMap<String, f64> = [("audio".to_string(), 0.6), ("visual".to_string(), -0.1)]
            .into_iter()
            .collect();
        let i = imbalance(&train, None, &c).unwrap();
        assert!((i.unimodal_gap - 0.8).abs() < 1e-12);
        assert_eq!(i.contribution_ratio, None);
        assert!(imbalance(&metrics(&[("audio", 0.9)]), None, &BTreeMap::new()).is_none());
    }
}
