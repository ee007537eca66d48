//! ReconBoost (Hua, Xu, Bao, Yang, Huang, "ReconBoost: Boosting Can Achieve Modality
//! Reconcilement", ICML 2024), after the authors' code (huacong/ReconBoost at 14ab57a, `train.py`
//! and `models/dynamic_net.py`). Training runs in stages; stage `s` picks modality
//! `k = s mod M` (the model's order: audio then visual, as the reference's fixed schedule) and
//! has two phases, each with a fresh optimizer:
//!
//! * boosting (`epochs_per_stage` epochs): only `k`'s encoder and the shared head train, on
//!   `(-w1 + w2 q_y) / C * log p_y`, where `p = softmax(H(f_k))` and `q` is the softmax of the
//!   other ensemble members' output `beta * sum_j H(f_j)`, without gradient (q_y = 1 while the
//!   ensemble has no other member: the reference's scalar `c0`); for two modalities after stage
//!   0, the loss reported adds `alpha` times the GA term, the mean squared error between the two
//!   modalities' softmaxes, which the reference computes on detached tensors: it has no gradient;
//! * correction (`correct_epochs` epochs): the ensemble, `beta * sum_m H(f_m)` over the
//!   modalities picked so far, trains on its cross-entropy: their encoders, the head and `beta`.
//!
//! `H` is one MLP head shared by every modality (`feature -> hidden -> classes`, ReLU), owned by
//! the method, and `beta` the learned boost rate (starting at 1); the prediction is the
//! ensemble's. Encoders not yet picked run in eval mode and take no step (the reference does not
//! run them). The reference's learning rates (0.01 for both phases, x0.1 every 30 stages on
//! CREMA-D) are the config's optimizer and schedule here. docs/methods/reconboost.md has the
//! details and the differences.

use crate::{BalanceMethod, EpochCtx, Phase, Prediction, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{Module, Tensor, Var, D};
use candle_nn::{Init, Linear};
use mmbal_encoders::ModelVars;
use mmbal_fusion::{linear, ForwardOut, LinearInit, MultimodalModel};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Epochs of a stage's boosting phase (the reference's `epochs_per_stage`).
    epochs_per_stage: usize,
    /// Epochs of a stage's correction phase (the reference's `correct_epoch`).
    correct_epochs: usize,
    /// `w1` and `w2` of the boosting loss (the reference's `weight1`, `weight2`).
    weight1: f64,
    weight2: f64,
    /// Weight of the GA term in the loss reported (no gradient; the reference's `alpha`).
    alpha: f64,
    /// Hidden width of the shared head (the reference: 256).
    hidden: usize,
    /// Initial boost rate `beta` (the reference's `boost_rate`).
    boost_rate: f64,
    /// Seed of the shared head's initial weights.
    seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            epochs_per_stage: 4,
            correct_epochs: 4,
            weight1: 5.0,
            weight2: 1.0,
            alpha: 0.5,
            hidden: 256,
            boost_rate: 1.0,
            seed: 0,
        }
    }
}

/// Where an epoch is in the stage schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stage {
    /// 0-based stage.
    stage: usize,
    /// Boosting (true) or correction.
    boosting: bool,
    /// The stage's modality.
    active: usize,
    /// Modalities picked so far, this stage's included: `0..members` (the ensemble).
    members: usize,
}

/// The shared head `H`: `Linear(D, hidden) -> ReLU -> Linear(hidden, C)`.
pub struct SharedMlp {
    fc1: Linear,
    fc2: Linear,
}

impl SharedMlp {
    /// From its two layers (`fc1`: feature to hidden, `fc2`: hidden to classes).
    pub fn new(fc1: Linear, fc2: Linear) -> SharedMlp {
        SharedMlp { fc1, fc2 }
    }
}

impl Module for SharedMlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)
    }
}

/// The boosting loss of the active modality's logits `own` `(B, C)`, with the other ensemble
/// members' output `others` (`beta * sum_j H(f_j)`, detached here; `None` while there is none):
/// the batch mean of `(-w1 + w2 q_y) / C * log softmax(own)_y`.
pub fn reconboost_boost_loss(
    own: &Tensor,
    others: Option<&Tensor>,
    labels: &Tensor,
    weight1: f64,
    weight2: f64,
) -> Result<Tensor> {
    let classes = own.dim(1)? as f64;
    let idx = labels.unsqueeze(1)?;
    let log_p = candle_nn::ops::log_softmax(own, D::Minus1)?
        .gather(&idx, 1)?
        .squeeze(1)?;
    let coef = match others {
        None => (log_p.ones_like()? * (weight2 - weight1))?,
        Some(o) => {
            let q = candle_nn::ops::softmax(&o.detach(), D::Minus1)?
                .gather(&idx, 1)?
                .squeeze(1)?;
            ((q * weight2)? - weight1)?
        }
    };
    Ok(((coef * log_p)? / classes)?.mean_all()?)
}

/// The GA term: the mean squared error between the softmaxes of two modalities' logits, both
/// detached (as the reference computes it; it adds to the loss reported, not to the gradient).
pub fn reconboost_ga(own: &Tensor, other: &Tensor) -> Result<Tensor> {
    let p = candle_nn::ops::softmax(&own.detach(), D::Minus1)?;
    let q = candle_nn::ops::softmax(&other.detach(), D::Minus1)?;
    Ok((p - q)?.sqr()?.mean_all()?)
}

/// The ensemble's output `beta * sum_m logits_m`.
pub fn reconboost_ensemble(logits: &[Tensor], beta: &Tensor) -> Result<Tensor> {
    let Some(first) = logits.first() else {
        bail!("reconboost: an ensemble without members");
    };
    let mut sum = first.clone();
    for l in &logits[1..] {
        sum = (sum + l)?;
    }
    Ok(sum.broadcast_mul(beta)?)
}

struct ReconBoost {
    opts: Options,
    vars: ModelVars,
    head: Option<SharedMlp>,
    beta: Option<Var>,
    /// The current epoch's place in the schedule (set by `phase`; restored from the checkpoint
    /// for a model opened to evaluate).
    at: Option<Stage>,
    /// GA terms of the epoch's steps, for the diagnostics.
    ga: Vec<f64>,
}

impl ReconBoost {
    fn stage_of(&self, epoch: usize, modalities: usize) -> Stage {
        let o = &self.opts;
        let len = o.epochs_per_stage + o.correct_epochs;
        let stage = epoch / len;
        Stage {
            stage,
            boosting: epoch % len < o.epochs_per_stage,
            active: stage % modalities,
            members: (stage + 1).min(modalities),
        }
    }

    fn parts(&self) -> Result<(&SharedMlp, &Var)> {
        match (&self.head, &self.beta) {
            (Some(h), Some(b)) => Ok((h, b)),
            _ => bail!("reconboost: prepare_model was not called"),
        }
    }
}

impl BalanceMethod for ReconBoost {
    fn name(&self) -> &'static str {
        "reconboost"
    }

    fn requirements(&self) -> Requirements {
        Requirements::default().at_least(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// The shared head (every modality's features must have one width) and `beta`.
    fn prepare_model(&mut self, model: &mut MultimodalModel) -> Result<()> {
        let dims: Vec<usize> = (0..model.num_modalities())
            .map(|m| model.encoder(m).out_dim())
            .collect();
        if dims.iter().any(|&d| d != dims[0]) {
            bail!("reconboost: the shared head needs features of one width, got {dims:?}");
        }
        let vb = self.vars.seeded(self.opts.seed, model.device());
        let c = model.head.classes();
        let fc1 = linear(
            dims[0],
            self.opts.hidden,
            LinearInit::Pytorch,
            vb.pp("head.fc1"),
        )?;
        let fc2 = linear(self.opts.hidden, c, LinearInit::Pytorch, vb.pp("head.fc2"))?;
        self.head = Some(SharedMlp::new(fc1, fc2));
        let beta = vb.get_with_hints(1, "boost_rate", Init::Const(self.opts.boost_rate))?;
        self.beta = Some(Var::from_tensor(&beta)?);
        Ok(())
    }

    fn params(&self) -> Vec<(String, Var)> {
        self.vars.named()
    }

    /// A fresh optimizer at each phase's first epoch; the modalities not yet picked are held.
    fn phase(&mut self, ctx: &EpochCtx) -> Result<Phase> {
        let m_count = ctx.model.num_modalities();
        let at = self.stage_of(ctx.epoch, m_count);
        let len = self.opts.epochs_per_stage + self.opts.correct_epochs;
        let offset = ctx.epoch % len;
        self.at = Some(at);
        self.ga.clear();
        Ok(Phase {
            frozen_encoders: (at.members..m_count).collect(),
            fresh_optimizer: offset == 0 || offset == self.opts.epochs_per_stage,
            ..Phase::default()
        })
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let Some(at) = self.at else {
            bail!("reconboost: the trainer did not ask for the phase");
        };
        let (head, beta) = self.parts()?;
        let f = &out.features;
        if !at.boosting {
            let logits: Vec<Tensor> = f[..at.members]
                .iter()
                .map(|x| head.forward(x))
                .collect::<candle_core::Result<_>>()?;
            let fused = reconboost_ensemble(&logits, beta.as_tensor())?;
            return Ok(candle_nn::loss::cross_entropy(&fused, ctx.labels)?);
        }
        let own = head.forward(&f[at.active])?;
        let others: Vec<Tensor> = (0..at.members.min(at.stage))
            .filter(|&j| j != at.active)
            .map(|j| head.forward(&f[j]))
            .collect::<candle_core::Result<_>>()?;
        let join = if others.is_empty() {
            None
        } else {
            Some(reconboost_ensemble(&others, beta.as_tensor())?.detach())
        };
        let boost = reconboost_boost_loss(
            &own,
            join.as_ref(),
            ctx.labels,
            self.opts.weight1,
            self.opts.weight2,
        )?;
        // The reference's GA term: two modalities, after the first stage; the other modality's
        // logits against the active one's.
        if f.len() == 2 && at.stage > 0 {
            let other = head.forward(&f[1 - at.active])?;
            let ga = reconboost_ga(&own, &other)?;
            self.ga
                .push(ga.to_dtype(candle_core::DType::F64)?.to_scalar()?);
            return Ok((boost + (ga * self.opts.alpha)?)?);
        }
        Ok(boost)
    }

    /// The ensemble of the modalities picked so far; each modality's logits are `H(f_m)`.
    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        let (head, beta) = self.parts()?;
        let members = self.at.map_or(out.features.len(), |a| a.members);
        let unimodal: Vec<Tensor> = out
            .features
            .iter()
            .map(|x| head.forward(x))
            .collect::<candle_core::Result<_>>()?;
        let fused = reconboost_ensemble(&unimodal[..members], beta.as_tensor())?;
        Ok(Prediction { fused, unimodal })
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        if let Some(at) = self.at {
            out.push(("reconboost_stage".into(), at.stage as f64));
            out.push(("reconboost_active".into(), at.active as f64));
            out.push((
                "reconboost_boosting".into(),
                f64::from(u8::from(at.boosting)),
            ));
            out.push(("reconboost_members".into(), at.members as f64));
        }
        if !self.ga.is_empty() {
            let mean = self.ga.iter().sum::<f64>() / self.ga.len() as f64;
            out.push(("reconboost_ga".into(), mean));
        }
        if let Some(b) = &self.beta {
            if let Ok(v) = b.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>()) {
                out.push(("reconboost_boost_rate".into(), v[0] as f64));
            }
        }
        out
    }

    /// The schedule position, so that a model opened to evaluate predicts with its ensemble.
    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        Ok(match self.at {
            Some(a) => vec![(
                "stage".into(),
                Tensor::new(
                    &[
                        a.stage as f64,
                        f64::from(u8::from(a.boosting)),
                        a.active as f64,
                        a.members as f64,
                    ],
                    &candle_core::Device::Cpu,
                )?,
            )],
            None => Vec::new(),
        })
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = state.get("stage") {
            let v = t.to_vec1::<f64>()?;
            if v.len() != 4 {
                bail!(
                    "reconboost: checkpoint state `stage` has {} values, not 4",
                    v.len()
                );
            }
            self.at = Some(Stage {
                stage: v[0] as usize,
                boosting: v[1] != 0.0,
                active: v[2] as usize,
                members: v[3] as usize,
            });
        }
        Ok(())
    }
}

/// Builds `reconboost` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("reconboost", options)?;
    if opts.epochs_per_stage == 0 {
        bail!("reconboost: epochs_per_stage must be at least 1");
    }
    if opts.hidden == 0 {
        bail!("reconboost: hidden must be at least 1");
    }
    for (k, v) in [
        ("weight1", opts.weight1),
        ("weight2", opts.weight2),
        ("alpha", opts.alpha),
        ("boost_rate", opts.boost_rate),
    ] {
        if !v.is_finite() {
            bail!("reconboost: {k} = {v} must be finite");
        }
    }
    Ok(Box::new(ReconBoost {
        opts,
        vars: ModelVars::new(),
        head: None,
        beta: None,
        at: None,
        ga: Vec::new(),
    }))
}
