//! G-Blending (Wang, Tran, Feiszli, CVPR 2020): one classifier per modality and one fused
//! classifier, the loss a weighted sum of their cross-entropies, the weights from each head's
//! overfitting-to-generalisation ratio measured on the validation split. docs/methods/gblending.md
//! has the details.

use crate::{BalanceMethod, EpochCtx, Requirements, StepCtx};
use anyhow::Result;
use candle_core::{Tensor, Var};
use mmbal_data::{batches, Row, Split};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Weights estimated once, from the initial model.
    Offline,
    /// Weights re-estimated at the start of every super-epoch.
    Online,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    mode: Mode,
    /// Epochs each head is trained for when its ratio is estimated (the super-epoch length).
    estimate_epochs: usize,
    /// SGD used for the estimates (the field's testbed by default).
    lr: f64,
    momentum: f64,
    weight_decay: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Offline,
            estimate_epochs: 1,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 1e-4,
        }
    }
}

/// Blend weights from each head's generalisation gain `g[k]` (val loss drop) and overfitting
/// change `o[k]` (change of val loss minus train loss): `w_k = max(g_k, 0) / o_k^2`, normalised
/// to sum 1; uniform when no head generalised.
pub fn blend_weights(g: &[f64], o: &[f64]) -> Vec<f64> {
    let raw: Vec<f64> = g
        .iter()
        .zip(o)
        .map(|(&g, &o)| g.max(0.0) / (o * o).max(1e-12))
        .collect();
    let total: f64 = raw.iter().sum();
    if total > 0.0 && total.is_finite() {
        raw.iter().map(|w| w / total).collect()
    } else {
        vec![1.0 / g.len().max(1) as f64; g.len()]
    }
}

/// One head's generalisation gain and overfitting change from its mean losses before (`0`) and
/// after (`1`) training it alone: `G = val0 - val1` (positive when val loss fell) and
/// `O = (val1 - train1) - (val0 - train0)` (positive when the train/val gap widened).
pub fn gain_and_overfitting(train0: f64, val0: f64, train1: f64, val1: f64) -> (f64, f64) {
    (val0 - val1, (val1 - train1) - (val0 - train0))
}

pub struct GBlending {
    opts: Options,
    /// Weights of the unimodal heads (modality order), then the fused head.
    weights: Option<Vec<f64>>,
    estimates: usize,
    names: Vec<String>,
}

/// Mean cross-entropy of every head (modalities, then fused) over `rows`, eval mode.
fn head_losses(ctx: &EpochCtx, rows: &[Row]) -> Result<Vec<f64>> {
    let c = ctx.forward_all(rows)?;
    let labels = Tensor::new(c.labels.as_slice(), &candle_core::Device::Cpu)?;
    let mut out = Vec::new();
    for l in c.unimodal.iter().chain(std::iter::once(&c.fused)) {
        out.push(candle_nn::loss::cross_entropy(l, &labels)?.to_scalar::<f32>()? as f64);
    }
    Ok(out)
}

/// A copy of every parameter and buffer, to train a head and put the model back.
struct Snapshot {
    params: Vec<(Var, Tensor)>,
    buffers: Vec<(String, Tensor)>,
}

fn snapshot(model: &MultimodalModel) -> Result<Snapshot> {
    let params = model
        .params()
        .into_iter()
        .map(|v| {
            let t = v.as_tensor().copy()?;
            Ok((v, t))
        })
        .collect::<Result<_>>()?;
    // `buffers` returns copies already.
    let buffers = model.buffers()?;
    Ok(Snapshot { params, buffers })
}

fn restore(model: &MultimodalModel, snap: &Snapshot) -> Result<()> {
    for (v, t) in &snap.params {
        v.set(t)?;
    }
    for (n, t) in &snap.buffers {
        model.set_buffer(n, t.clone())?;
    }
    Ok(())
}

impl GBlending {
    /// Trains each head alone for `estimate_epochs` from the current weights (then puts the model
    /// back) and turns its losses before and after into blend weights.
    fn estimate(&mut self, ctx: &EpochCtx) -> Result<()> {
        let model = ctx.model;
        let train = ctx.train_rows();
        let val = ctx.dataset.rows(Split::Val);
        let heads = model.num_modalities() + 1;
        let (train0, val0) = (head_losses(ctx, &train)?, head_losses(ctx, &val)?);
        let snap = snapshot(model)?;
        let vars = model.params();
        let (mut g, mut o) = (Vec::new(), Vec::new());
        for k in 0..heads {
            let mut momentum: Vec<Option<Tensor>> = vec![None; vars.len()];
            for e in 0..self.opts.estimate_epochs {
                let key = (
                    ctx.seed ^ 0x6B1E_0000 ^ (k as u64) << 20,
                    (ctx.epoch + e) as u64,
                );
                let mut rows = train.clone();
                mmbal_data::shuffle_rows(&mut rows, key.0, key.1);
                for batch in batches(ctx.dataset.clone(), rows, ctx.batch_size, Some(key), 2) {
                    let batch = batch?;
                    let dev = model.device();
                    let inputs: Vec<Tensor> = batch
                        .inputs
                        .iter()
                        .map(|x| x.to_device(dev))
                        .collect::<candle_core::Result<_>>()?;
                    let labels = batch.labels.to_device(dev)?;
                    let out = model.forward(&inputs, None, true)?;
                    let logits = if k < heads - 1 {
                        &out.unimodal_logits[k]
                    } else {
                        &out.fused_logits
                    };
                    let grads = candle_nn::loss::cross_entropy(logits, &labels)?.backward()?;
                    for (v, buf) in vars.iter().zip(momentum.iter_mut()) {
                        let Some(grad) = grads.get(v) else { continue };
                        let value = v.as_tensor().detach();
                        let grad = (grad.detach() + (&value * self.opts.weight_decay)?)?;
                        let b = match buf.take() {
                            None => grad,
                            Some(b) => ((b * self.opts.momentum)? + grad)?,
                        };
                        v.set(&(value - (&b * self.opts.lr)?)?)?;
                        *buf = Some(b);
                    }
                }
            }
            let (train1, val1) = (head_losses(ctx, &train)?, head_losses(ctx, &val)?);
            let (gk, ok) = gain_and_overfitting(train0[k], val0[k], train1[k], val1[k]);
            g.push(gk);
            o.push(ok);
            restore(model, &snap)?;
        }
        // Rounded to f32: checkpoints hold f32, and a resumed run must train with the same weights.
        self.weights = Some(
            blend_weights(&g, &o)
                .into_iter()
                .map(|w| w as f32 as f64)
                .collect(),
        );
        self.estimates += 1;
        Ok(())
    }
}

impl BalanceMethod for GBlending {
    fn name(&self) -> &'static str {
        "g-blending"
    }

    /// One head per modality and a fused one; the weights are estimated on val.
    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Blend),
            val_split: true,
            ..Default::default()
        }
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn epoch_plan(&mut self, ctx: &EpochCtx) -> Result<Option<Vec<Row>>> {
        self.names = ctx.model.modalities.clone();
        let due = match self.opts.mode {
            Mode::Offline => self.weights.is_none(),
            Mode::Online => {
                self.weights.is_none() || ctx.epoch.is_multiple_of(self.opts.estimate_epochs.max(1))
            }
        };
        if due {
            self.estimate(ctx)?;
        }
        Ok(None)
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let m = out.unimodal_logits.len();
        let w = self
            .weights
            .clone()
            .unwrap_or_else(|| vec![1.0 / (m + 1) as f64; m + 1]);
        let mut loss = (candle_nn::loss::cross_entropy(&out.fused_logits, ctx.labels)? * w[m])?;
        for (k, l) in out.unimodal_logits.iter().enumerate() {
            loss = (loss + (candle_nn::loss::cross_entropy(l, ctx.labels)? * w[k])?)?;
        }
        Ok(loss)
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut out = vec![("gblend_estimates".to_string(), self.estimates as f64)];
        if let Some(w) = &self.weights {
            for (name, v) in self
                .names
                .iter()
                .chain(std::iter::once(&"fused".to_string()))
                .zip(w)
            {
                out.push((format!("gblend_weight_{name}"), *v));
            }
        }
        out
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let dev = candle_core::Device::Cpu;
        let mut s = vec![(
            "estimates".to_string(),
            Tensor::new(&[self.estimates as f32], &dev)?,
        )];
        if let Some(w) = &self.weights {
            let w: Vec<f32> = w.iter().map(|&x| x as f32).collect();
            s.push(("weights".into(), Tensor::new(w.as_slice(), &dev)?));
        }
        Ok(s)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = state.get("estimates") {
            self.estimates = t.to_vec1::<f32>()?[0] as usize;
        }
        if let Some(t) = state.get("weights") {
            self.weights = Some(t.to_vec1::<f32>()?.into_iter().map(|x| x as f64).collect());
        }
        Ok(())
    }
}

/// Options: `mode` (`offline` | `online`), `estimate_epochs` (1), `lr` (1e-3), `momentum` (0.9),
/// `weight_decay` (1e-4).
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    Ok(Box::new(GBlending {
        opts: crate::parse_options("g-blending", options)?,
        weights: None,
        estimates: 0,
        names: Vec::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::{blend_weights, gain_and_overfitting};

    #[test]
    fn gain_and_overfitting_signs() {
        // Train loss 1.0 -> 0.5, val 1.0 -> 0.9: val improved (G = 0.1 > 0) while the gap
        // widened from 0 to 0.4 (O = 0.4 > 0).
        let (g, o) = gain_and_overfitting(1.0, 1.0, 0.5, 0.9);
        assert!(
            (g - 0.1).abs() < 1e-12 && (o - 0.4).abs() < 1e-12,
            "{g} {o}"
        );
        // Val got worse (G < 0) and the gap narrowed (O < 0): train 0.5 -> 0.6, val 0.9 -> 0.95.
        let (g, o) = gain_and_overfitting(0.5, 0.9, 0.6, 0.95);
        assert!(g < 0.0 && o < 0.0, "{g} {o}");
    }

    #[test]
    fn weights_from_given_losses() {
        // w = g / o^2: 0.2 / 0.01 = 20, 0.1 / 0.0025 = 40, 0.4 / 0.04 = 10 -> 2/7, 4/7, 1/7.
        let w = blend_weights(&[0.2, 0.1, 0.4], &[0.1, 0.05, 0.2]);
        for (a, b) in w.iter().zip([2.0 / 7.0, 4.0 / 7.0, 1.0 / 7.0]) {
            assert!((a - b).abs() < 1e-12, "{w:?}");
        }
        // A head whose val loss rose gets no weight; none generalising gives uniform weights.
        assert_eq!(blend_weights(&[-0.1, 0.2], &[0.1, 0.1]), vec![0.0, 1.0]);
        assert_eq!(blend_weights(&[-0.1, 0.0], &[0.1, 0.1]), vec![0.5, 0.5]);
    }
}
