//! Greedy, balanced multimodal learning by conditional learning speed (Wu et al., ICML 2022):
//! two branches with their own classifiers, MMTM blocks between encoder stages, and curation
//! steps that cut one branch off the other's information when its conditional learning speed
//! runs ahead. docs/methods/greedy.md has the details.

use crate::{BalanceMethod, EpochCtx, Grads, Prediction, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{Tensor, Var};
use mmbal_data::{Row, Split};
use mmbal_fusion::{
    linear_vars, ForwardOut, FusionKind, LinearInit, MeanRule, Mmtm, MmtmMixer, MultimodalModel,
    ParamGroup,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Encoder stages after which an MMTM block sits; default: every stage from 2 on (ResNet-18:
    /// 2, 3, 4 = after layer2..layer4; the small CNN: 2).
    mmtm_after: Option<Vec<usize>>,
    /// Curation window Q (steps), threshold epsilon on |d|, first epoch with curation (0-based:
    /// the reference counts epochs from 1 and unlocks at `epoch >= 2`, the second epoch).
    window: usize,
    epsilon: f64,
    start_epoch: usize,
    seed: u64,
    /// Measure the conditional utilisation rates on the val split after the last epoch.
    utilisation: bool,
    /// Which forwards update the MMTM running means: `all` (reference: training and evaluation,
    /// curated or not) or `training`.
    mmtm_mean_forwards: MeanForwards,
    /// Whose excitation each stream's running mean averages: `first-stream` (reference: both
    /// from stream 0's, the `running_avg_weight_skeleton` line of `balanced_mmtm.py`) or `own`.
    mmtm_mean_source: MeanSource,
    /// Evaluation passes run curated while a curation window is open (reference: true).
    curate_evaluation: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MeanForwards {
    All,
    Training,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MeanSource {
    FirstStream,
    Own,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mmtm_after: None,
            window: 5,
            epsilon: 0.01,
            start_epoch: 1,
            seed: 0,
            utilisation: true,
            mmtm_mean_forwards: MeanForwards::All,
            mmtm_mean_source: MeanSource::FirstStream,
            curate_evaluation: true,
        }
    }
}

impl Options {
    fn mean_rule(&self) -> MeanRule {
        MeanRule {
            every_forward: self.mmtm_mean_forwards == MeanForwards::All,
            own_stream: self.mmtm_mean_source == MeanSource::Own,
            curate_evaluation: self.curate_evaluation,
        }
    }
}

pub struct Greedy {
    opts: Options,
    blocks: Option<Arc<Vec<(usize, Mmtm)>>>,
    /// Accumulated speeds (the reference's `M_bypass_modal_m`, `M_main_modal_m`, Python floats):
    /// bypass (MMTM parameters feeding branch m) and main (branch m's own).
    bypass: [f64; 2],
    main: [f64; 2],
    /// Branch under curation and steps left.
    curating: Option<(usize, usize)>,
    curation_steps: usize,
    last_d: f64,
    /// After the last epoch: accuracies and conditional utilisation rates (see `Utilisation`).
    utilisation: Option<Utilisation>,
}

/// Greedy's conditional utilisation rates, measured by replacing one modality's MMTM squeeze
/// vectors with their training-set means, so that the other branch gets no sample-specific
/// information from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Utilisation {
    /// Accuracy of branch m, and of branch m with the other modality's squeeze replaced.
    pub acc: [f64; 2],
    /// Accuracy of branch m with the other modality's squeeze vectors replaced by their means.
    pub acc_without_other: [f64; 2],
}

impl Utilisation {
    /// `u(other | m) = (A_m - A_m without other) / A_m`: the share of branch m's accuracy that
    /// depends on the other modality (0 when branch m is never right).
    pub fn rate(&self, m: usize) -> f64 {
        if self.acc[m] > 0.0 {
            (self.acc[m] - self.acc_without_other[m]) / self.acc[m]
        } else {
            0.0
        }
    }

    /// `d_util = u(m1 | m0) - u(m0 | m1)`.
    pub fn d_util(&self) -> f64 {
        self.rate(0) - self.rate(1)
    }
}

fn accuracy(logits: &Tensor, labels: &[u32]) -> Result<f64> {
    let pred = logits.argmax(1)?.to_vec1::<u32>()?;
    let right = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    Ok(right as f64 / labels.len().max(1) as f64)
}

fn sum_sq(t: &Tensor) -> Result<f64> {
    Ok(t.sqr()?
        .sum_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?)
}

/// A parameter group's learning speed as the reference's `compute_BDR` measures it:
/// `sum ||grad||^2 / sum ||theta||^2` over the group's tensors (one ratio of sums, not a sum of
/// per-tensor ratios). A tensor without a gradient counts with a zero gradient.
fn group_speed(vars: &[Var], grads: &Grads) -> Result<f64> {
    let (mut g2, mut t2) = (0.0, 0.0);
    for v in vars {
        t2 += sum_sq(v.as_tensor())?;
        if let Some(g) = grads.get(v) {
            g2 += sum_sq(g)?;
        }
    }
    if t2 <= 0.0 {
        bail!("greedy: a parameter group has zero norm, its learning speed is undefined");
    }
    Ok(g2 / t2)
}

impl Greedy {
    /// Eval-mode accuracies of both branches on the val split, live and with the other
    /// modality's squeeze vectors (every block) replaced by their training-set means.
    fn measure_utilisation(&self, ctx: &EpochCtx) -> Result<Utilisation> {
        let Some(blocks) = &self.blocks else {
            bail!("greedy: prepare_model was not called");
        };
        let val = ctx.dataset.rows(Split::Val);
        // Measured on the model as it is, not on a curated one; the measurement's forwards must
        // not move the running means training goes on with (nor a resumed run's checkpoint).
        self.set_curation(None);
        let measured = ctx
            .model
            .keeping_buffers(|| self.measure_uncurated(ctx, blocks, &val));
        self.set_curation(self.curating.map(|(branch, _)| branch));
        measured
    }

    fn measure_uncurated(
        &self,
        ctx: &EpochCtx,
        blocks: &[(usize, Mmtm)],
        val: &[Row],
    ) -> Result<Utilisation> {
        for (_, b) in blocks.iter() {
            b.record_squeeze();
        }
        ctx.forward_all(&ctx.train_rows())?;
        let means = blocks
            .iter()
            .map(|(_, b)| b.squeeze_means())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let live = ctx.forward_all(val)?;
        let mut u = Utilisation {
            acc: [0.0; 2],
            acc_without_other: [0.0; 2],
        };
        for m in 0..2 {
            u.acc[m] = accuracy(&live.unimodal[m], &live.labels)?;
            let other = 1 - m;
            for ((_, b), mean) in blocks.iter().zip(&means) {
                b.replace_squeeze(Some((other, mean[other].clone())));
            }
            let cut = ctx.forward_all(val);
            for (_, b) in blocks.iter() {
                b.replace_squeeze(None);
            }
            let cut = cut?;
            u.acc_without_other[m] = accuracy(&cut.unimodal[m], &cut.labels)?;
        }
        Ok(u)
    }

    fn set_curation(&self, branch: Option<usize>) {
        if let Some(blocks) = &self.blocks {
            for (_, b) in blocks.iter() {
                b.set_curation(branch);
            }
        }
    }
}

impl BalanceMethod for Greedy {
    fn name(&self) -> &'static str {
        "greedy"
    }

    /// MMTM joins two streams, each branch with its own classifier; the utilisation rates are
    /// measured on val.
    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Sum),
            val_split: self.opts.utilisation,
            ..Default::default()
        }
        .modalities(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn prepare_model(&mut self, model: &mut MultimodalModel) -> Result<()> {
        let stages = model
            .encoder(0)
            .num_stages()
            .min(model.encoder(1).num_stages());
        let after = self
            .opts
            .mmtm_after
            .clone()
            .unwrap_or_else(|| (2..stages).collect());
        let mut blocks = Vec::new();
        for (k, &s) in after.iter().enumerate() {
            let (a, b) = (model.encoder(0), model.encoder(1));
            if s >= a.num_stages() || s >= b.num_stages() {
                bail!("greedy: no encoder stage {s} to put an MMTM block after");
            }
            let (ca, cb) = (a.stage_channels(s), b.stage_channels(s));
            if self.opts.mmtm_mean_source == MeanSource::FirstStream && ca != cb {
                bail!(
                    "greedy: the MMTM block after stage {s} joins {ca} and {cb} channels; the \
                     reference takes both curation means from stream 0's excitation, which needs \
                     equal channel counts: set mmtm_mean_source = \"own\" (or use encoders of \
                     equal widths)"
                );
            }
            let block = Mmtm::new(
                a.stage_channels(s),
                b.stage_channels(s),
                LinearInit::Pytorch,
                model
                    .mixer_builder(self.opts.seed + k as u64)
                    .pp(format!("stage{s}")),
            )?;
            block.set_mean_rule(self.opts.mean_rule());
            blocks.push((s, block));
        }
        let blocks = Arc::new(blocks);
        model.set_mixer(Box::new(MmtmMixer {
            blocks: blocks.clone(),
        }));
        self.blocks = Some(blocks);
        Ok(())
    }

    fn epoch_plan(&mut self, _ctx: &EpochCtx) -> Result<Option<Vec<Row>>> {
        self.curation_steps = 0;
        Ok(None)
    }

    /// Sum of the branches' cross-entropies.
    fn loss(&mut self, ctx: &StepCtx, out: &mmbal_fusion::ForwardOut) -> Result<Tensor> {
        let mut loss = candle_nn::loss::cross_entropy(&out.unimodal_logits[0], ctx.labels)?;
        loss = (loss + candle_nn::loss::cross_entropy(&out.unimodal_logits[1], ctx.labels)?)?;
        Ok(loss)
    }

    fn observe_gradients(
        &mut self,
        ctx: &StepCtx,
        _out: &mmbal_fusion::ForwardOut,
        grads: &Grads,
    ) -> Result<()> {
        // This step ran curated: count it down, no accumulation.
        if let Some((branch, left)) = self.curating {
            self.curation_steps += 1;
            self.curating = (left > 1).then_some((branch, left - 1));
            if self.curating.is_none() {
                self.set_curation(None);
            }
            return Ok(());
        }
        let Some(blocks) = &self.blocks else {
            bail!("greedy: prepare_model was not called");
        };
        for m in 0..2 {
            let mut bypass_vars = Vec::new();
            for (_, b) in blocks.iter() {
                bypass_vars.extend(linear_vars(&b.squeeze)?);
                bypass_vars.extend(linear_vars(&b.excite[m])?);
            }
            let mut main_vars = ctx.model.group(ParamGroup::Encoder(m))?;
            main_vars.extend(ctx.model.group(ParamGroup::HeadOf(m))?);
            self.bypass[m] += group_speed(&bypass_vars, grads)?;
            self.main[m] += group_speed(&main_vars, grads)?;
        }
        let s: Vec<f64> = (0..2)
            .map(|m| (self.bypass[m] / self.main[m].max(1e-300)).log10())
            .collect();
        self.last_d = s[0] - s[1];
        if ctx.epoch >= self.opts.start_epoch
            && self.last_d.abs() > self.opts.epsilon
            && self.opts.window > 0
        {
            let branch = if self.last_d > 0.0 { 0 } else { 1 };
            self.curating = Some((branch, self.opts.window));
            self.set_curation(Some(branch));
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, ctx: &EpochCtx) -> Result<()> {
        if self.opts.utilisation && ctx.epoch + 1 == ctx.epochs {
            self.utilisation = Some(self.measure_utilisation(ctx)?);
        }
        Ok(())
    }

    /// The mean of the two branches' logits.
    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        let u = &out.unimodal_logits;
        Ok(Prediction::fused_from(out, ((&u[0] + &u[1])? / 2.0)?))
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut out = vec![
            ("greedy_speed_gap_d".into(), self.last_d),
            ("greedy_bypass_speed_0".into(), self.bypass[0]),
            ("greedy_bypass_speed_1".into(), self.bypass[1]),
            ("greedy_main_speed_0".into(), self.main[0]),
            ("greedy_main_speed_1".into(), self.main[1]),
            ("greedy_curation_steps".into(), self.curation_steps as f64),
        ];
        if let Some(u) = &self.utilisation {
            out.extend([
                ("greedy_val_acc_0".into(), u.acc[0]),
                ("greedy_val_acc_1".into(), u.acc[1]),
                ("greedy_val_acc_0_without_1".into(), u.acc_without_other[0]),
                ("greedy_val_acc_1_without_0".into(), u.acc_without_other[1]),
                ("greedy_util_1_given_0".into(), u.rate(0)),
                ("greedy_util_0_given_1".into(), u.rate(1)),
                ("greedy_d_util".into(), u.d_util()),
            ]);
        }
        out
    }

    fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let (branch, left) = self
            .curating
            .map(|(b, l)| (b as f32, l as f32))
            .unwrap_or((-1.0, 0.0));
        let v = [self.bypass[0], self.bypass[1], self.main[0], self.main[1]];
        Ok(vec![
            // f64, so that a resumed run goes on with exactly these sums.
            ("speeds".into(), Tensor::new(&v, &candle_core::Device::Cpu)?),
            (
                "curation".into(),
                Tensor::new(&[branch, left], &candle_core::Device::Cpu)?,
            ),
        ])
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(t) = state.get("speeds") {
            let v = t.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
            (self.bypass, self.main) = ([v[0], v[1]], [v[2], v[3]]);
        }
        if let Some(t) = state.get("curation") {
            let v = t.to_vec1::<f32>()?;
            self.curating = (v[0] >= 0.0).then_some((v[0] as usize, v[1] as usize));
            self.set_curation(self.curating.map(|(b, _)| b));
        }
        Ok(())
    }
}

/// Options: `mmtm_after` (every stage from 2 on), `window` (5), `epsilon` (0.01), `start_epoch`
/// (1, 0-based: the second epoch, as the reference), `seed` (0), `utilisation` (true),
/// `mmtm_mean_forwards` (`all`), `mmtm_mean_source` (`first-stream`), `curate_evaluation` (true).
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    Ok(Box::new(Greedy {
        opts: crate::parse_options("greedy", options)?,
        blocks: None,
        bypass: [0.0; 2],
        main: [0.0; 2],
        curating: None,
        curation_steps: 0,
        last_d: 0.0,
        utilisation: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::Utilisation;

    #[test]
    fn utilisation_rates_by_hand() {
        // Branch 0 drops from 0.8 to 0.6 without modality 1: u(1|0) = 0.2 / 0.8 = 0.25.
        // Branch 1 loses nothing without modality 0: u(0|1) = 0; d_util = 0.25.
        let u = Utilisation {
            acc: [0.8, 0.5],
            acc_without_other: [0.6, 0.5],
        };
        assert!((u.rate(0) - 0.25).abs() < 1e-12);
        assert_eq!(u.rate(1), 0.0);
        assert!((u.d_util() - 0.25).abs() < 1e-12);
        // A branch that gains without the other modality has a negative rate; a branch that
        // is never right has rate 0.
        let u = Utilisation {
            acc: [0.4, 0.0],
            acc_without_other: [0.5, 0.1],
        };
        assert!((u.rate(0) + 0.25).abs() < 1e-12);
        assert_eq!(u.rate(1), 0.0);
    }
}
