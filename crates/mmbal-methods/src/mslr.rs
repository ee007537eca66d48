//! MSLR, modality-specific learning rates (Yao & Mihalcea, "Modality-specific Learning Rates for
//! Effective Multimodal Additive Late-fusion", Findings of ACL 2022): each modality's encoder
//! trains at its own rate. No code of the authors was found and only the paper's abstract could
//! be read; the two rules here are those of the only code found, a third-party `MSLRTrainer`:
//! `keep`, a fixed factor per modality, and `dynamic`, which every `period` epochs multiplies
//! each modality's factor by its val accuracy over the mean of its last `period` val accuracies.
//! The paper's third strategy ("smooth") is not implemented: its rule could not be read.
//! docs/methods/mslr.md has the details.

use crate::{BalanceMethod, EpochCtx, Requirements};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use mmbal_fusion::ParamGroup;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How the factors move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Strategy {
    /// The given factors for the whole run.
    Keep,
    /// Every `period` epochs, each factor times its modality's val accuracy over the mean of
    /// its last `period` val accuracies.
    Dynamic,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Per modality, the factor on the scheduled learning rate for its encoder (1 for each when
    /// absent; the third-party defaults are audio 1e-3 and visual 1e-2 against 1e-3 for the
    /// fusion, factors 1 and 10).
    factors: Option<Vec<f64>>,
    strategy: Strategy,
    /// Epochs between two updates of the dynamic rule, and the history it averages.
    period: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            factors: None,
            strategy: Strategy::Dynamic,
            period: 5,
        }
    }
}

struct Mslr {
    opts: Options,
    factors: Vec<f64>,
    /// Per modality, the val accuracies of the last `period` epochs.
    history: Vec<Vec<f64>>,
}

impl BalanceMethod for Mslr {
    fn name(&self) -> &'static str {
        "mslr"
    }

    fn requirements(&self) -> Requirements {
        let r = Requirements {
            val_split: self.opts.strategy == Strategy::Dynamic,
            ..Default::default()
        };
        match &self.opts.factors {
            Some(f) => r.modalities(f.len()),
            None => r,
        }
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// Each encoder at its factor (the head at the scheduled rate).
    fn lr_scales(&mut self, ctx: &EpochCtx) -> Result<Vec<(ParamGroup, f64)>> {
        let m_count = ctx.model.num_modalities();
        if self.factors.is_empty() {
            self.factors = match &self.opts.factors {
                Some(f) if f.len() == m_count => f.clone(),
                Some(f) => bail!("mslr: {} factors for {m_count} modalities", f.len()),
                None => vec![1.0; m_count],
            };
            self.history = vec![Vec::new(); m_count];
        }
        Ok(self
            .factors
            .iter()
            .enumerate()
            .map(|(m, &f)| (ParamGroup::Encoder(m), f))
            .collect())
    }

    /// The dynamic rule after every `period` completed epochs.
    fn after_validation(
        &mut self,
        ctx: &EpochCtx,
        _fused: f64,
        modality_acc: &[f64],
    ) -> Result<()> {
        if self.factors.len() != modality_acc.len() {
            bail!("mslr: lr_scales was not called before validation");
        }
        let period = self.opts.period;
        for (h, &a) in self.history.iter_mut().zip(modality_acc) {
            h.push(a);
            if h.len() > period {
                h.remove(0);
            }
        }
        if self.opts.strategy == Strategy::Dynamic && (ctx.epoch + 1).is_multiple_of(period) {
            for (f, h) in self.factors.iter_mut().zip(&self.history) {
                let mean = h.iter().sum::<f64>() / h.len() as f64;
                let now = *h.last().context("no val accuracy")?;
                if mean > 0.0 && now.is_finite() {
                    *f *= now / mean;
                }
            }
        }
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        self.factors
            .iter()
            .enumerate()
            .map(|(m, f)| (format!("mslr_factor_{m}"), *f))
            .collect()
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = vec![(
            "factors".to_string(),
            Tensor::new(self.factors.as_slice(), &Device::Cpu)?,
        )];
        for (m, h) in self.history.iter().enumerate() {
            out.push((
                format!("history.{m}"),
                Tensor::new(h.as_slice(), &Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(f) = state.get("factors") {
            self.factors = f.to_vec1::<f64>()?;
            self.history = (0..self.factors.len())
                .map(|m| match state.get(&format!("history.{m}")) {
                    Some(h) => Ok(h.to_vec1::<f64>()?),
                    None => Ok(Vec::new()),
                })
                .collect::<Result<_>>()?;
        }
        Ok(())
    }
}

/// Builds `mslr` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("mslr", options)?;
    if opts.period == 0 {
        bail!("mslr: period must be at least 1");
    }
    if let Some(f) = &opts.factors {
        if f.is_empty() || f.iter().any(|x| !x.is_finite() || *x < 0.0) {
            bail!("mslr: factors = {f:?} must be one non-negative factor per modality");
        }
    }
    Ok(Box::new(Mslr {
        opts,
        factors: Vec::new(),
        history: Vec::new(),
    }))
}
