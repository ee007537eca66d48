//! Linear probes: how good each modality's features are after (multimodal) training, the direct
//! measure of under-training. The encoders of a trained model are frozen; each modality's pooled
//! features are computed once in evaluation mode; a new linear classifier per modality is fitted
//! on the training split's features with SGD and selected on val; its test accuracy is reported.
//! The settings default to ReconBoost's `uni_eval.py` and BalanceBenchmark's LinearProbe
//! (SGD, lr 0.01, momentum 0.9, weight decay 1e-4).

use crate::metrics::{accuracy, argmax};
use crate::optim::{Optimizer, Sgd};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use mmbal_data::{Dataset, Split};
use mmbal_encoders::ModelVars;
use mmbal_fusion::{linear, LinearInit, MultimodalModel};
use mmbal_methods::collect_outputs;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::sync::Arc;

/// How a probe is fitted.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Passes over the training features.
    pub epochs: usize,
    /// SGD's learning rate, momentum and weight decay.
    pub lr: f64,
    /// SGD's momentum.
    pub momentum: f64,
    /// SGD's weight decay.
    pub weight_decay: f64,
    /// Rows per step.
    pub batch_size: usize,
    /// Seed of the classifiers' initial weights and of the shuffles.
    pub seed: u64,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            epochs: 100,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            batch_size: 64,
            seed: 0,
        }
    }
}

/// One modality's probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// The modality.
    pub modality: String,
    /// The epoch (1-based) with the best val accuracy (the first of equals).
    pub best_epoch: usize,
    /// Val accuracy there.
    pub val_acc: f64,
    /// Test accuracy there.
    pub test_acc: f64,
    /// Val accuracy after every epoch.
    pub val_curve: Vec<f64>,
}

/// Fits and selects a linear probe on each modality's frozen features of `model`.
pub fn linear_probe(
    model: &MultimodalModel,
    dataset: &Arc<Dataset>,
    opts: &ProbeOptions,
) -> Result<Vec<ProbeResult>> {
    if opts.epochs == 0 || opts.batch_size == 0 {
        bail!("a probe needs at least one epoch and one row per step");
    }
    let features = |split: Split| -> Result<(Vec<Tensor>, Vec<u32>)> {
        let rows = dataset.rows(split);
        if rows.is_empty() {
            bail!("the dataset has no {split:?} split to probe with");
        }
        let c = collect_outputs(model, dataset, &rows, opts.batch_size)?;
        Ok((c.features.iter().map(|f| f.detach()).collect(), c.labels))
    };
    let (train, train_labels) = features(Split::Train)?;
    let (val, val_labels) = features(Split::Val)?;
    let (test, test_labels) = features(Split::Test)?;
    let classes = model.head.classes();
    let dev = model.device().clone();
    let mut out = Vec::new();
    for (m, name) in model.modalities.iter().enumerate() {
        let vars = ModelVars::new();
        let d = train[m].dim(1)?;
        let seed = opts.seed.wrapping_add(m as u64);
        let clf = linear(
            d,
            classes,
            LinearInit::Pytorch,
            vars.seeded(seed, &dev).pp("probe"),
        )?;
        let params: Vec<_> = vars.named().into_iter().map(|(_, v)| v).collect();
        let mut sgd = Sgd::new(params, opts.lr, opts.momentum, opts.weight_decay);
        let labels = Tensor::new(train_labels.as_slice(), &dev)?;
        let x = train[m].to_device(&dev)?;
        let n = train_labels.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_0000_0000_0000);
        let mut best: Option<ProbeResult> = None;
        let mut curve = Vec::with_capacity(opts.epochs);
        let eval = |f: &Tensor, y: &[u32]| -> Result<f64> {
            let logits = candle_core::Module::forward(&clf, &f.to_device(&dev)?)?;
            Ok(accuracy(&argmax(&logits)?, y))
        };
        for epoch in 1..=opts.epochs {
            order.shuffle(&mut rng);
            for chunk in order.chunks(opts.batch_size) {
                let idx = Tensor::new(chunk, &dev)?;
                let xb = x.index_select(&idx, 0)?;
                let yb = labels.index_select(&idx, 0)?;
                let logits = candle_core::Module::forward(&clf, &xb)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
                let value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                if !value.is_finite() {
                    bail!("probe of `{name}`, epoch {epoch}: the loss is {value}");
                }
                sgd.step(&loss.backward()?)?;
            }
            let val_acc = eval(&val[m], &val_labels)?;
            curve.push(val_acc);
            if best.as_ref().is_none_or(|b| val_acc > b.val_acc) {
                best = Some(ProbeResult {
                    modality: name.clone(),
                    best_epoch: epoch,
                    val_acc,
                    test_acc: eval(&test[m], &test_labels)?,
                    val_curve: Vec::new(),
                });
            }
        }
        let mut best = best.context("no probe epoch ran")?;
        best.val_curve = curve;
        out.push(best);
    }
    Ok(out)
}
