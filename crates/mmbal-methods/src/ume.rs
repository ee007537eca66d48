//! UME, the uni-modal ensemble (Du et al., "On Uni-Modal Feature Learning in Supervised
//! Multi-Modal Learning", ICML 2023): each modality's model is trained alone (a run with
//! `[data] modalities = [..]`, the same teachers UMT uses), and the multimodal prediction is
//! the mean of their logits. No code of the authors was found (BalanceBenchmark has UMT but not
//! UME) and only the paper's abstract could be read; averaging the logits with equal weights is
//! the choice made here, said in docs/methods/ume.md.
//!
//! UME trains nothing. The trainer opens the teachers; their encoders are copied into the
//! student (whose encoders must be built as the teachers' were), which then runs them frozen, in
//! eval mode, and the teachers' heads give each modality's logits. An epoch therefore evaluates
//! the ensemble on train, val and test; one epoch is enough, and more repeat the same numbers.

use crate::{BalanceMethod, EpochCtx, Phase, Prediction, Requirements, StepCtx};
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use mmbal_fusion::{encoder_path, ForwardOut, FusionHead, MultimodalModel};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// Per modality, the checkpoint of its model trained alone (`runs/NAME/best.safetensors`
    /// of a run on that modality). Required.
    teachers: BTreeMap<String, String>,
}

struct Ume {
    opts: Options,
    /// Per student modality, its teacher's head (one modality in, logits out).
    heads: Vec<FusionHead>,
}

/// The ensemble's logits: the mean of the members' logits `(B, C)`.
pub fn ume_logits(members: &[Tensor]) -> Result<Tensor> {
    let Some(first) = members.first() else {
        bail!("ume: an ensemble without members");
    };
    let mut sum = first.clone();
    for l in &members[1..] {
        sum = (sum + l)?;
    }
    Ok((sum / members.len() as f64)?)
}

impl Ume {
    /// Each modality's logits from its teacher's head, on features `f` (detached: nothing
    /// trains).
    fn member_logits(&self, f: &[Tensor]) -> Result<Vec<Tensor>> {
        if self.heads.len() != f.len() {
            bail!("ume: the trainer handed over no teachers (set_teachers was not called)");
        }
        self.heads
            .iter()
            .zip(f)
            .map(|(h, x)| Ok(h.forward(&[x.detach()], None)?.fused))
            .collect()
    }
}

impl BalanceMethod for Ume {
    fn name(&self) -> &'static str {
        "ume"
    }

    fn requirements(&self) -> Requirements {
        Requirements::default()
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    fn prepare_model(&mut self, model: &mut MultimodalModel) -> Result<()> {
        crate::teachers::require_named("ume", &self.opts.teachers)?;
        if model.has_mixer() {
            bail!("ume: the student has a mixer between its encoders; UME's members are separate models");
        }
        Ok(())
    }

    fn teachers(&self) -> Vec<PathBuf> {
        self.opts.teachers.values().map(PathBuf::from).collect()
    }

    /// Each teacher must be a run on one of the student's modalities alone, with the student's
    /// encoder for it; its encoder's parameters and running statistics go into the student.
    fn set_teachers(
        &mut self,
        student: &MultimodalModel,
        teachers: Vec<MultimodalModel>,
    ) -> Result<()> {
        let members = crate::teachers::per_student_modality(
            "ume",
            "member",
            &self.opts.teachers,
            student,
            teachers,
        )?;
        let mut heads = Vec::new();
        for (m, t) in student.modalities.iter().zip(members) {
            let path = &self.opts.teachers[m];
            student
                .restore(&t.snapshot(&[encoder_path(m)])?)
                .with_context(|| {
                    format!("ume: the encoder of {path} does not fit the student's `{m}` encoder (build both from the same [model.encoders.{m}])")
                })?;
            heads.push(t.head);
        }
        self.heads = heads;
        Ok(())
    }

    /// Every encoder held, in eval mode.
    fn phase(&mut self, ctx: &EpochCtx) -> Result<Phase> {
        Ok(Phase {
            frozen_encoders: (0..ctx.model.num_modalities()).collect(),
            ..Phase::default()
        })
    }

    /// The ensemble's cross-entropy, without gradient: reported, nothing trains.
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let fused = ume_logits(&self.member_logits(&out.features)?)?;
        Ok(candle_nn::loss::cross_entropy(&fused, ctx.labels)?)
    }

    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        let unimodal = self.member_logits(&out.features)?;
        Ok(Prediction {
            fused: ume_logits(&unimodal)?,
            unimodal,
        })
    }
}

/// Builds `ume` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("ume", options)?;
    Ok(Box::new(Ume {
        opts,
        heads: Vec::new(),
    }))
}
