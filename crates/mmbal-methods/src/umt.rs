//! UMT, uni-modal teachers (Du et al., "On Uni-Modal Feature Learning in Supervised Multi-Modal
//! Learning", ICML 2023), as BalanceBenchmark implements it (`balancemm/trainer/UMT_trainer.py`,
//! GeWu-Lab/BalanceBenchmark at 4c1482f; no code of the authors was found): each modality has a
//! teacher, a model trained on that modality alone (a run with `[data] modalities = [..]`), and
//! the multimodal student trains from scratch on the cross-entropy of its fused output plus, in
//! epochs `modulation_starts..=modulation_ends`, `scaling` times the mean squared error between
//! each teacher's pooled features and the student's, the teachers' computed without gradients.
//!
//! The trainer opens the teachers (`teachers`, one checkpoint per modality) with their own runs'
//! configs, on the student's device, outside every optimizer. They run in eval mode (running
//! BatchNorm statistics); BalanceBenchmark calls them in whatever mode they were loaded in
//! (train mode, batch statistics), which lets the teachers' running statistics drift with the
//! student's batches. docs/methods/umt.md has the details.

use crate::{BalanceMethod, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::Tensor;
use mmbal_fusion::{ForwardOut, MultimodalModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Per modality, the checkpoint of its teacher (`runs/NAME/best.safetensors` of a run on
    /// that modality alone). Required.
    teachers: BTreeMap<String, String>,
    /// The weight of the feature-distillation terms (BalanceBenchmark's default 10).
    scaling: f64,
    /// The distillation runs in 0-based epochs `modulation_starts..=modulation_ends`.
    modulation_starts: usize,
    modulation_ends: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            teachers: BTreeMap::new(),
            scaling: 10.0,
            modulation_starts: 0,
            modulation_ends: 80,
        }
    }
}

struct Umt {
    opts: Options,
    /// Per student modality, its teacher's model.
    teachers: Vec<MultimodalModel>,
}

/// BalanceBenchmark's training loss: `CE(fused, y) + scaling * sum_m MSE(teacher_m, student_m)`
/// when `distil` (the epoch is inside the window), the cross-entropy alone otherwise. `student`
/// and `teacher` are pooled features `(B, D_m)`, in the same modality order; the teachers' are
/// detached here.
pub fn umt_loss(
    fused: &Tensor,
    labels: &Tensor,
    student: &[Tensor],
    teacher: &[Tensor],
    scaling: f64,
    distil: bool,
) -> Result<Tensor> {
    let mut loss = candle_nn::loss::cross_entropy(fused, labels)?;
    if !distil {
        return Ok(loss);
    }
    if student.len() != teacher.len() {
        bail!(
            "umt: {} student features, {} teachers",
            student.len(),
            teacher.len()
        );
    }
    for (m, (s, t)) in student.iter().zip(teacher).enumerate() {
        if s.dims() != t.dims() {
            bail!(
                "umt: modality {m}: the student's features are {:?}, its teacher's {:?} (the \
                 teacher's encoder must give features of the student's width)",
                s.dims(),
                t.dims()
            );
        }
        let mse = (s - t.detach())?.sqr()?.mean_all()?;
        loss = (loss + (mse * scaling)?)?;
    }
    Ok(loss)
}

impl BalanceMethod for Umt {
    fn name(&self) -> &'static str {
        "umt"
    }

    fn requirements(&self) -> Requirements {
        Requirements::default()
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// A run needs its teachers (checked here, when the trainer prepares the model, so that
    /// the method can be built and its options listed without them).
    fn prepare_model(&mut self, _model: &mut MultimodalModel) -> Result<()> {
        crate::teachers::require_named("umt", &self.opts.teachers)
    }

    fn teachers(&self) -> Vec<PathBuf> {
        self.opts.teachers.values().map(PathBuf::from).collect()
    }

    /// Each teacher must be a run on one of the student's modalities alone; every student
    /// modality needs one.
    fn set_teachers(
        &mut self,
        student: &MultimodalModel,
        teachers: Vec<MultimodalModel>,
    ) -> Result<()> {
        self.teachers = crate::teachers::per_student_modality(
            "umt",
            "teacher",
            &self.opts.teachers,
            student,
            teachers,
        )?;
        Ok(())
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let o = &self.opts;
        let distil = (o.modulation_starts..=o.modulation_ends).contains(&ctx.epoch);
        if !distil {
            return umt_loss(&out.fused_logits, ctx.labels, &[], &[], o.scaling, false);
        }
        if self.teachers.len() != out.features.len() {
            bail!("umt: the trainer handed over no teachers (set_teachers was not called)");
        }
        let teacher: Vec<Tensor> = self
            .teachers
            .iter()
            .zip(ctx.inputs)
            .map(|(t, x)| -> Result<Tensor> {
                Ok(t.encode(std::slice::from_ref(x), false)?.remove(0).detach())
            })
            .collect::<Result<_>>()?;
        umt_loss(
            &out.fused_logits,
            ctx.labels,
            &out.features,
            &teacher,
            o.scaling,
            true,
        )
    }
}

/// Builds `umt` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("umt", options)?;
    if !(opts.scaling.is_finite() && opts.scaling >= 0.0) {
        bail!(
            "umt: scaling = {} must be finite and not negative",
            opts.scaling
        );
    }
    Ok(Box::new(Umt {
        opts,
        teachers: Vec::new(),
    }))
}
