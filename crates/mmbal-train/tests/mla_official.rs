//! MLA against the official code (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-
//! Adaptation at ab6c184): the values in tests/fixtures/mla_official.safetensors come from its own
//! `main.train_epoch` (gs_flag path), `utils.GSPlugin.before_update` and `main.valid`, run by
//! tests/fixtures/gen_mla.py on a tiny model in the official `AVClassifier` / `ResNet` slots (see
//! that script's docstring for every key).
//!
//! One epoch of three batches; per batch one forward, an audio turn then a visual turn through the
//! shared head, each with its own backward and SGD step. `mla.*` is what the official code runs:
//! its projection never fires (utils/utils.py:32 compares the name with "module.weight", but the
//! nn.Linear it is given names its weight "weight"), so it is compared with mmbal's
//! `project = false`. `mla_proj.*` is the official before_update with the name check matched; it
//! is compared with mmbal's `project = true`. Evaluation: the official `valid` with fixed
//! (0.55 / 0.45) and `--dynamic` fusion.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{batch, fixture, max_abs, meta, official_model, official_name, Report};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use mmbal_methods::{BalanceMethod, Grads, StepCtx, StepIndex, StepPlan};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;

const BATCHES: usize = 3;
const MODS: [&str; 2] = ["audio", "visual"];
/// Relative tolerance (difference / max |official value|).
const TOL: f32 = 1e-5;
/// Gradients: relative tolerance.
const GTOL: f32 = 1e-4;

fn fixtures() -> HashMap<String, Tensor> {
    fixture("mla_official")
}

/// What one turn of mmbal did.
#[derive(Default)]
struct Turn {
    loss: f64,
    logits: Option<Tensor>,
    raw: HashMap<String, Tensor>,
    used: HashMap<String, Tensor>,
    projector: Option<Tensor>,
    /// Parameters and running statistics after the turn's optimizer step.
    after: HashMap<String, Tensor>,
}

/// Wraps mmbal's `mla`, recording every turn.
struct Recorder {
    inner: Box<dyn BalanceMethod>,
    turns: Vec<Turn>,
}

fn snapshot(model: &MultimodalModel) -> HashMap<String, Tensor> {
    let mut s: HashMap<String, Tensor> = model
        .named_params()
        .into_iter()
        .map(|(n, v)| (official_name(&n), v.as_tensor().copy().unwrap()))
        .collect();
    for (n, t) in model.buffers().unwrap() {
        s.insert(official_name(&n), t.copy().unwrap());
    }
    s
}

impl BalanceMethod for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn step_plan(&self) -> StepPlan {
        self.inner.step_plan()
    }
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> anyhow::Result<Tensor> {
        // The previous turn's step is done: its weights are the model's now.
        if let Some(t) = self.turns.last_mut() {
            if t.after.is_empty() {
                t.after = snapshot(ctx.model);
            }
        }
        let m = ctx.turn.expect("mla runs per modality");
        let loss = self.inner.loss(ctx, out)?;
        let logits = ctx.model.head.forward(&out.features, None)?.unimodal[m].detach();
        self.turns.push(Turn {
            loss: loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            logits: Some(logits),
            ..Turn::default()
        });
        Ok(loss)
    }
    fn edit_gradients(
        &mut self,
        ctx: &StepCtx,
        out: &ForwardOut,
        grads: &mut Grads,
    ) -> anyhow::Result<()> {
        let mut raw = HashMap::new();
        for (n, v) in ctx.model.named_params() {
            if let Some(g) = grads.get(&v) {
                raw.insert(official_name(&n), g.clone());
            }
        }
        self.inner.edit_gradients(ctx, out, grads)?;
        let mut used = HashMap::new();
        for (n, v) in ctx.model.named_params() {
            if let Some(g) = grads.get(&v) {
                used.insert(official_name(&n), g.clone());
            }
        }
        let state: HashMap<String, Tensor> = self.inner.state()?.into_iter().collect();
        let t = self.turns.last_mut().unwrap();
        t.raw = raw;
        t.used = used;
        t.projector = state.get("projector").cloned();
        Ok(())
    }
    fn predict(
        &self,
        model: &MultimodalModel,
        out: &ForwardOut,
    ) -> anyhow::Result<mmbal_methods::Prediction> {
        self.inner.predict(model, out)
    }
}

/// Runs mmbal's `mla` with `options` over the fixture's three batches (one epoch).
fn run(f: &HashMap<String, Tensor>, options: &str) -> (MultimodalModel, Recorder) {
    let dev = Device::Cpu;
    let mut model = official_model(f, FusionKind::Shared);
    let opts: toml::Table = toml::from_str(options).unwrap();
    let mut inner = mmbal_methods::build_method("mla", &opts).unwrap();
    inner.prepare_model(&mut model).unwrap();
    let mut rec = Recorder {
        inner,
        turns: Vec::new(),
    };
    let mut sgd = Sgd::new(
        model.params(),
        meta(f, "meta.lr"),
        meta(f, "meta.momentum"),
        meta(f, "meta.weight_decay"),
    );
    let batches = meta(f, "meta.batches") as usize;
    assert_eq!(batches, BATCHES);
    for b in 0..batches {
        let (inputs, labels) = batch(f, &format!("b{b}"));
        let keep = Tensor::ones((labels.dim(0).unwrap(), 2), DType::F32, &dev).unwrap();
        let at = StepIndex {
            epoch: 0,
            step: b,
            batch: b,
            batches,
        };
        train_step(
            &model,
            &mut rec,
            &mut sgd,
            StepInputs {
                inputs: &inputs,
                labels: &labels,
                keep: &keep,
                rows: &[],
                frozen_encoders: &[],
            },
            at,
        )
        .unwrap();
        // The batch's last turn: taken now, before the next batch's forward moves the running
        // statistics.
        rec.turns.last_mut().unwrap().after = snapshot(&model);
    }
    (model, rec)
}

/// Compares every turn of `rec` with the official run `r` (`mla` or `mla_proj`).
fn compare_turns(f: &HashMap<String, Tensor>, r: &str, rec: &Recorder, report: &mut Report) {
    assert_eq!(rec.turns.len(), 2 * BATCHES, "two turns per batch");
    for (i, t) in rec.turns.iter().enumerate() {
        let p = format!("{r}.b{}.{}", i / 2, MODS[i % 2]);
        report.scalar(
            "loss",
            &format!("{p}.loss"),
            t.loss,
            meta(f, &format!("{p}.loss")),
            TOL,
        );
        report.tensor(
            "logits",
            &format!("{p}.logits"),
            t.logits.as_ref().unwrap(),
            &f[&format!("{p}.logits")],
            TOL,
        );
        // The parameters that got a gradient: the turn's encoder and the head, nothing else.
        let mut official: Vec<String> = f
            .keys()
            .filter_map(|k| k.strip_prefix(&format!("{p}.grad.")).map(String::from))
            .collect();
        official.sort();
        let mut ours: Vec<String> = t.raw.keys().cloned().collect();
        ours.sort();
        if ours != official {
            report.failures.push(format!(
                "{p}: gradients for {ours:?}, official {official:?}"
            ));
        }
        for (k, g) in &t.raw {
            if let Some(want) = f.get(&format!("{p}.grad.{k}")) {
                report.tensor("raw grad", &format!("{p}.grad.{k}"), g, want, GTOL);
            }
        }
        for k in ["fusion_module.fc_out.weight", "fusion_module.fc_out.bias"] {
            report.tensor(
                "used head grad",
                &format!("{p}.used.{k}"),
                &t.used[k],
                &f[&format!("{p}.used.{k}")],
                GTOL,
            );
        }
        let official_p = &f[&format!("{p}.P")];
        let eye = Tensor::eye(8, DType::F32, &Device::Cpu).unwrap();
        report.tensor(
            "projector",
            &format!("{p}.P"),
            t.projector.as_ref().unwrap_or(&eye),
            official_p,
            TOL,
        );
        for (k, v) in &t.after {
            report.tensor(
                "after step",
                &format!("{p}.after.{k}"),
                v,
                &f[&format!("{p}.after.{k}")],
                TOL,
            );
        }
    }
}

#[test]
fn fixture_is_what_the_official_code_runs() {
    let f = fixtures();
    let eye = Tensor::eye(8, DType::F32, &Device::Cpu).unwrap();
    for b in 0..BATCHES {
        for m in MODS {
            // The official projection never fires: P stays I, the head gradient is untouched.
            let p = format!("mla.b{b}.{m}");
            let d = (&f[&format!("{p}.P")] - &eye).unwrap();
            assert_eq!(max_abs(&d), 0.0, "{p}.P");
            let w = "fusion_module.fc_out.weight";
            let d = (&f[&format!("{p}.used.{w}")] - &f[&format!("{p}.grad.{w}")]).unwrap();
            assert_eq!(max_abs(&d), 0.0);
        }
    }
    // With the name check matched it projects from the second turn on.
    let moved = |k: &str| max_abs(&(&f[k] - &eye).unwrap());
    assert_eq!(moved("mla_proj.b0.audio.P"), 0.0);
    assert!(moved("mla_proj.b0.visual.P") > 0.1);
}

/// What the official code runs (no projection) against mmbal's `project = false`.
#[test]
fn mla_turns_match_official_train_epoch() {
    let f = fixtures();
    let (_, rec) = run(&f, "project = false");
    let mut report = Report::default();
    compare_turns(&f, "mla", &rec, &mut report);
    report.finish("mla (project = false) vs official train_epoch");
}

/// The projection as the official `GSPlugin.before_update` computes it (name check matched)
/// against mmbal's `project = true` (the default).
// The official projector never runs (utils/utils.py:32 checks the name "module.weight"; main.py
// hands it an nn.Linear whose weight is "weight"), and forced to run it divides element-wise by
// the matrix `alpha + k r` (utils/utils.py:36) where the paper divides by the scalar
// `alpha + r k`. mmbal follows the paper (the documented intent, docs/methods/mla.md; tested
// against a transcription in tiny_av.rs). Kept to show the official forced run.
#[test]
#[ignore = "the official projector never runs; its forced run departs from the paper's formula"]
fn mla_projection_matches_official_before_update() {
    let f = fixtures();
    let (_, rec) = run(&f, "project = true");
    let mut report = Report::default();
    compare_turns(&f, "mla_proj", &rec, &mut report);
    report.finish("mla (project = true) vs official before_update");
}

fn eval_outputs(f: &HashMap<String, Tensor>, model: &MultimodalModel) -> ForwardOut {
    let (inputs, _) = batch(f, &format!("b{BATCHES}"));
    model.forward(&inputs, None, false).unwrap()
}

/// Fixed fusion after the epoch: the official `valid` without `--dynamic`.
#[test]
fn mla_fixed_inference_matches_official_valid() {
    let f = fixtures();
    let (mut model, _) = run(&f, "project = false");
    let out = eval_outputs(&f, &model);
    let mut report = Report::default();
    report.tensor(
        "eval logits",
        "mla.eval.out_a",
        &out.unimodal_logits[0],
        &f["mla.eval.out_a"],
        TOL,
    );
    report.tensor(
        "eval logits",
        "mla.eval.out_v",
        &out.unimodal_logits[1],
        &f["mla.eval.out_v"],
        TOL,
    );
    let opts: toml::Table = toml::from_str("inference = \"fixed\"").unwrap();
    let mut m = mmbal_methods::build_method("mla", &opts).unwrap();
    m.prepare_model(&mut model).unwrap();
    let fixed = m.predict(&model, &out).unwrap().fused;
    report.tensor(
        "fixed fusion",
        "mla.eval.fixed",
        &fixed,
        &f["mla.eval.fixed"],
        TOL,
    );
    report.finish("mla fixed inference vs official valid");
}

/// Entropy-weighted fusion after the epoch: the official `valid --dynamic`
/// (`calculate_gating_weights`: one weight pair per batch).
#[test]
fn mla_dynamic_inference_matches_official_valid() {
    let f = fixtures();
    let (mut model, _) = run(&f, "project = false");
    let out = eval_outputs(&f, &model);
    let opts: toml::Table = toml::from_str("inference = \"dynamic\"").unwrap();
    let mut m = mmbal_methods::build_method("mla", &opts).unwrap();
    m.prepare_model(&mut model).unwrap();
    let mut report = Report::default();
    let dynamic = m.predict(&model, &out).unwrap().fused;
    report.tensor(
        "dynamic fusion",
        "mla.eval.dynamic",
        &dynamic,
        &f["mla.eval.dynamic"],
        TOL,
    );
    // The weights: the official pair applies to every sample of the batch.
    let w = mmbal_methods::batch_entropy_weights(&out.unimodal_logits).unwrap();
    let want = f["mla.eval.dynamic_weights"]
        .reshape((1, 2))
        .unwrap()
        .broadcast_as(w.dims())
        .unwrap()
        .contiguous()
        .unwrap();
    report.tensor(
        "dynamic weights",
        "mla.eval.dynamic_weights",
        &w,
        &want,
        TOL,
    );
    report.finish("mla dynamic inference vs official valid --dynamic");
}
