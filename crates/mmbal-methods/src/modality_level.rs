//! Modality-level resampling (Wei et al., CVPR 2024): every epoch ends with a Shapley valuation
//! of a random part Z of the training set (`part_ratio`); after `warmup` epochs the next epoch
//! adds `floor(d N)` copies of the modality with the lower mean contribution, other modalities
//! zeroed (`mmbal_resample::modality_level_plan`). docs/methods/modality-level.md has the details.

use crate::valuation_pass::{plan_from_state, plan_state, valuation_pass, ValuationOptions};
use crate::{BalanceMethod, EpochCtx};
use anyhow::{bail, Result};
use candle_core::Tensor;
use mmbal_data::Row;
use mmbal_valuation::{Benefit, MaskRoute};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The options of `sample-level` (spelled out: serde cannot flatten and reject unknown keys at
/// once) plus `part_ratio` and `alpha`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    warmup: usize,
    route: MaskRoute,
    benefit: Benefit,
    augment: bool,
    /// The part of the training set valued each epoch.
    part_ratio: f64,
    /// Scales the number of copies.
    alpha: f64,
}

impl Default for Options {
    fn default() -> Self {
        let v = ValuationOptions::default();
        Options {
            warmup: v.warmup,
            route: v.route,
            benefit: v.benefit,
            augment: v.augment,
            part_ratio: 0.2,
            alpha: 1.0,
        }
    }
}

impl Options {
    fn valuation(&self) -> ValuationOptions {
        ValuationOptions {
            warmup: self.warmup,
            route: self.route,
            benefit: self.benefit,
            augment: self.augment,
        }
    }
}

pub struct ModalityLevel {
    opts: Options,
    plan: Option<Vec<Row>>,
    diag: Vec<(String, f64)>,
}

impl BalanceMethod for ModalityLevel {
    fn name(&self) -> &'static str {
        "modality-level"
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn epoch_plan(&mut self, _ctx: &EpochCtx) -> Result<Option<Vec<Row>>> {
        Ok(self.plan.clone())
    }

    fn on_epoch_end(&mut self, ctx: &EpochCtx) -> Result<()> {
        let train: Vec<usize> = ctx.train_rows().iter().map(|r| r.sample).collect();
        let z = mmbal_resample::subset_for_valuation(
            &train,
            self.opts.part_ratio,
            ctx.seed,
            ctx.epoch as u64,
        );
        let m = ctx.model.num_modalities();
        let rows: Vec<Row> = z.iter().map(|&s| Row::full(s, m)).collect();
        let (val, mut diag) = valuation_pass(ctx, &rows, &self.opts.valuation())?;
        if ctx.epoch + 1 >= self.opts.warmup {
            let means = val.means();
            let plan = mmbal_resample::modality_level_plan(
                &train,
                &means,
                self.opts.alpha,
                ctx.seed,
                ctx.epoch as u64,
            );
            diag.push(("next_epoch_rows".into(), plan.len() as f64));
            self.plan = Some(plan);
        }
        self.diag = diag;
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        self.diag.clone()
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        plan_state(self.plan.as_deref())
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.plan = plan_from_state(state)?;
        Ok(())
    }
}

/// Options: those of `sample-level` plus `part_ratio` (0.2) and `alpha` (1.0).
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("modality-level", options)?;
    if !(opts.part_ratio > 0.0 && opts.part_ratio <= 1.0) {
        bail!(
            "modality-level: part_ratio must be in (0, 1], got {}",
            opts.part_ratio
        );
    }
    Ok(Box::new(ModalityLevel {
        opts,
        plan: None,
        diag: Vec::new(),
    }))
}
