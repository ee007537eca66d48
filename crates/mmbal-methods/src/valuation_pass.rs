//! The epoch-end valuation pass shared by the resampling methods: value some training rows,
//! write the contributions of the epoch to `<run>/contributions/epoch_NNN.npy`, and keep the
//! numbers for the log.

use crate::EpochCtx;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use mmbal_data::Row;
use mmbal_valuation::{valuate, Benefit, MaskRoute, Valuation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Instant;

/// Options common to the valuation-driven methods.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValuationOptions {
    /// Epochs of plain joint training before resampling starts (the valuation of the last
    /// warm-up epoch drives the first resampled one).
    pub warmup: usize,
    /// `features` (zero the pooled feature, rerun the head) or `inputs` (zero the input, rerun
    /// the model).
    pub route: MaskRoute,
    /// `size-if-correct` (the paper), `correct`, or `true-class-prob`.
    pub benefit: Benefit,
    /// Value with training augmentation, as the reference code does (default: evaluation
    /// transforms, deterministic).
    pub augment: bool,
}

impl Default for ValuationOptions {
    fn default() -> Self {
        ValuationOptions {
            warmup: 5,
            route: MaskRoute::Features,
            benefit: Benefit::SizeIfCorrect,
            augment: false,
        }
    }
}

/// Values `rows` in eval mode, writes the epoch's file, and returns the valuation with the
/// log entries (mean contribution per modality, seconds, samples valued).
pub fn valuation_pass(
    ctx: &EpochCtx,
    rows: &[Row],
    opts: &ValuationOptions,
) -> Result<(Valuation, Vec<(String, f64)>)> {
    let started = Instant::now();
    let augment = opts.augment.then_some((ctx.seed, ctx.epoch as u64));
    let val = valuate(
        ctx.model,
        ctx.dataset,
        rows,
        ctx.batch_size,
        opts.route,
        opts.benefit,
        augment,
    )?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = ctx.out_dir {
        let dir = dir.join("contributions");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        val.write_npy(&dir.join(format!("epoch_{:03}.npy", ctx.epoch + 1)))?;
    }
    let mut diag: Vec<(String, f64)> = ctx
        .model
        .modalities
        .iter()
        .zip(val.means())
        .map(|(m, v)| (format!("contribution_{m}"), v))
        .collect();
    diag.push(("valuation_seconds".into(), seconds));
    diag.push(("valued_samples".into(), val.samples.len() as f64));
    Ok((val, diag))
}

/// A method's pending plan as checkpoint state: `plan`, a `(R, 1 + M)` tensor (sample index,
/// then 1 where zeroed); nothing when there is no plan.
pub fn plan_state(plan: Option<&[Row]>) -> Result<Vec<(String, Tensor)>> {
    let Some(plan) = plan.filter(|p| !p.is_empty()) else {
        return Ok(Vec::new());
    };
    let modalities = plan[0].zeroed.len();
    let data: Vec<f32> = plan
        .iter()
        .flat_map(|r| {
            std::iter::once(r.sample as f32).chain(r.zeroed.iter().map(|&z| z as u8 as f32))
        })
        .collect();
    let t = Tensor::from_vec(data, (plan.len(), 1 + modalities), &Device::Cpu)?;
    Ok(vec![("plan".into(), t)])
}

/// The plan stored by [`plan_state`], if any.
pub fn plan_from_state(state: &HashMap<String, Tensor>) -> Result<Option<Vec<Row>>> {
    let Some(t) = state.get("plan") else {
        return Ok(None);
    };
    let rows = t.to_vec2::<f32>()?;
    Ok(Some(
        rows.into_iter()
            .map(|r| Row {
                sample: r[0] as usize,
                zeroed: r[1..].iter().map(|&z| z != 0.0).collect(),
            })
            .collect(),
    ))
}
