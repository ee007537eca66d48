//! Evaluation with modalities missing: a split at given missing rates
//! ([`evaluate_missing`]), robustness curves (each modality missing from 0% to 100% of the
//! rows, the others present: [`robustness`]) and the accuracy with every non-empty subset of
//! the modalities present ([`subset_metrics`]). A missing modality is zeroed as in training
//! (`[data] missing`): at the features, and at the inputs too when the model has a mixer.
//!
//! The rows that lose a modality are drawn from the run's seed and a stream no training epoch
//! uses (`mmbal_data::drop_modalities`, epoch key `u64::MAX`), one draw per row and modality,
//! so they are the same on every call and nested: a row missing a modality at one rate misses
//! it at every higher rate.

use crate::run_log::SplitMetrics;
use crate::Trainer;
use anyhow::{bail, Result};
use mmbal_data::{drop_modalities, Split};
use serde::Serialize;

/// The epoch key of the evaluation's draws (training epochs count from 0).
const EVAL_DRAWS: u64 = u64::MAX;

/// Metrics of `split` with each modality missing from `rates[m]` of the rows (model order).
pub fn evaluate_missing(trainer: &Trainer, split: Split, rates: &[f64]) -> Result<SplitMetrics> {
    let m = trainer.model.num_modalities();
    if rates.len() != m {
        bail!("{} missing rates for {m} modalities", rates.len());
    }
    let mut rows = trainer.split_rows(split)?;
    drop_modalities(&mut rows, rates, trainer.config.seed, EVAL_DRAWS)?;
    trainer.evaluate_rows(&rows)
}

/// One point of a robustness curve.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RatePoint {
    /// The share of rows missing the modality.
    pub rate: f64,
    /// Accuracy of the method's prediction.
    pub acc: f64,
    /// Macro-averaged F1.
    pub macro_f1: f64,
}

/// Accuracy as one modality goes missing.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Curve {
    /// The modality that goes missing.
    pub modality: String,
    /// At rates `0, 1/steps, ..., 1`.
    pub points: Vec<RatePoint>,
}

/// For each modality, `split`'s metrics with it missing from `0, 1/steps, ..., 1` of the rows
/// and every other modality present.
pub fn robustness(trainer: &Trainer, split: Split, steps: usize) -> Result<Vec<Curve>> {
    if steps == 0 {
        bail!("a robustness curve needs at least one step");
    }
    let m_count = trainer.model.num_modalities();
    let mut curves = Vec::with_capacity(m_count);
    for m in 0..m_count {
        let mut points = Vec::with_capacity(steps + 1);
        for k in 0..=steps {
            let rate = k as f64 / steps as f64;
            let mut rates = vec![0.0; m_count];
            rates[m] = rate;
            let s = evaluate_missing(trainer, split, &rates)?;
            points.push(RatePoint {
                rate,
                acc: s.acc,
                macro_f1: s.macro_f1,
            });
        }
        curves.push(Curve {
            modality: trainer.model.modalities[m].clone(),
            points,
        });
    }
    Ok(curves)
}

/// Metrics with one subset of the modalities present.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SubsetMetrics {
    /// The modalities present (the others zeroed in every row).
    pub present: Vec<String>,
    /// Accuracy of the method's prediction.
    pub acc: f64,
    /// Macro-averaged F1.
    pub macro_f1: f64,
}

/// `split`'s metrics for every non-empty subset of the modalities present (`2^M - 1` of them,
/// the full set last), the others zeroed in every row.
pub fn subset_metrics(trainer: &Trainer, split: Split) -> Result<Vec<SubsetMetrics>> {
    let names = &trainer.model.modalities;
    let m_count = names.len();
    if m_count > 12 {
        bail!(
            "{m_count} modalities make {} subsets; at most 12 modalities",
            (1u64 << m_count) - 1
        );
    }
    let base = trainer.split_rows(split)?;
    let mut out = Vec::new();
    for mask in 1..(1usize << m_count) {
        let present: Vec<bool> = (0..m_count).map(|m| mask & (1 << m) != 0).collect();
        let rows: Vec<_> = base
            .iter()
            .map(|r| {
                let mut r = r.clone();
                for (z, &p) in r.zeroed.iter_mut().zip(&present) {
                    *z |= !p;
                }
                r
            })
            .collect();
        let s = trainer.evaluate_rows(&rows)?;
        out.push(SubsetMetrics {
            present: (0..m_count)
                .filter(|&m| present[m])
                .map(|m| names[m].clone())
                .collect(),
            acc: s.acc,
            macro_f1: s.macro_f1,
        });
    }
    Ok(out)
}

/// The curves of one or more runs as a Markdown table: one row per run and modality, one
/// column per rate (accuracy in percent).
pub fn curves_table(runs: &[(String, Vec<Curve>)]) -> String {
    let Some(first) = runs.iter().flat_map(|(_, c)| c.first()).next() else {
        return String::new();
    };
    let rates: Vec<f64> = first.points.iter().map(|p| p.rate).collect();
    let mut t = String::from("| run | missing |");
    for r in &rates {
        t += &format!(" {:.0}% |", r * 100.0);
    }
    t += "\n|---|---|";
    t += &"---|".repeat(rates.len());
    t += "\n";
    for (run, curves) in runs {
        for c in curves {
            t += &format!("| {run} | {} |", c.modality);
            for p in &c.points {
                t += &format!(" {:.1} |", p.acc * 100.0);
            }
            t += "\n";
        }
    }
    t
}
