//! Sample-level resampling (Wei et al., CVPR 2024): after `warmup` epochs of joint training,
//! every epoch ends with a Shapley valuation of every training sample, and the next epoch adds,
//! for each sample and each modality with contribution below 1, copies that keep only that
//! modality (`mmbal_resample::copies_for`). docs/methods/sample-level.md has the details.

use crate::valuation_pass::{plan_from_state, plan_state, valuation_pass, ValuationOptions};
use crate::{BalanceMethod, EpochCtx};
use anyhow::Result;
use candle_core::Tensor;
use mmbal_data::Row;
use std::collections::HashMap;

pub struct SampleLevel {
    opts: ValuationOptions,
    plan: Option<Vec<Row>>,
    diag: Vec<(String, f64)>,
}

impl BalanceMethod for SampleLevel {
    fn name(&self) -> &'static str {
        "sample-level"
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn epoch_plan(&mut self, _ctx: &EpochCtx) -> Result<Option<Vec<Row>>> {
        Ok(self.plan.clone())
    }

    fn on_epoch_end(&mut self, ctx: &EpochCtx) -> Result<()> {
        let rows = ctx.train_rows();
        let (val, mut diag) = valuation_pass(ctx, &rows, &self.opts)?;
        if ctx.epoch + 1 >= self.opts.warmup {
            let plan =
                mmbal_resample::sample_level_plan(&val.samples, &val.values, val.modalities)?;
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

/// Options: `warmup` (5), `route` (`features`), `benefit` (`size-if-correct`), `augment` (false).
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    Ok(Box::new(SampleLevel {
        opts: crate::parse_options("sample-level", options)?,
        plan: None,
        diag: Vec::new(),
    }))
}
