//! MMCosine against the official code (GeWu-Lab/MMCosine_ICASSP23 at 00ba0a9): the values in
//! tests/fixtures/mmcosine_official.safetensors come from its own `main_CD.train_epoch` and
//! `valid`, run by tests/fixtures/gen_mmcosine.py on the tiny model (see that script's docstring
//! for every key and for the three places the repository had to be patched to run).
//!
//! Two steps with `lam = 0` (run `cos`) and with `lam = 0.5` (run `nce`), through
//! `mmbal_train::train_step` with mmbal's `Sgd`: the loss, the NCE term, the cosine logits, the
//! gradients (the head's bias gets none: the cosine logits do not use it) and every weight and
//! running statistic after each step must equal the official ones; then `valid`'s logits in
//! evaluation mode (the linear head as the prediction, cosine logits per modality).

mod common;

use candle_core::{DType, Device, Tensor};
use common::{batch, fixture, floats, meta, official_model, official_name, Report};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use mmbal_methods::{BalanceMethod, Grads, Prediction, StepCtx, StepIndex};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;

const TOL: f32 = 1e-5;

/// Keeps what the method computed in the step: its cosine logits, NCE term and the gradients.
struct Recorder {
    inner: Box<dyn BalanceMethod>,
    scaling: f64,
    logits: Vec<Tensor>,
    nce: f64,
    grads: HashMap<String, Tensor>,
}

impl BalanceMethod for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> anyhow::Result<Tensor> {
        self.logits = mmbal_methods::cosine_logits(ctx.model, &out.features, self.scaling)?;
        self.nce = mmbal_methods::nce_loss(&out.features[0], &out.features[1], ctx.labels, 0.1)?
            .to_scalar::<f32>()? as f64;
        self.inner.loss(ctx, out)
    }
    fn observe_gradients(
        &mut self,
        ctx: &StepCtx,
        _out: &ForwardOut,
        grads: &Grads,
    ) -> anyhow::Result<()> {
        self.grads.clear();
        for (n, v) in ctx.model.named_params() {
            if let Some(g) = grads.get(&v) {
                self.grads.insert(n, g.clone());
            }
        }
        Ok(())
    }
    fn predict(&self, model: &MultimodalModel, out: &ForwardOut) -> anyhow::Result<Prediction> {
        self.inner.predict(model, out)
    }
}

/// Runs the fixture's two steps of `run` (`cos` or `nce`) and compares them; returns the model.
fn run_and_check(f: &HashMap<String, Tensor>, run: &str, options: &str) -> MultimodalModel {
    let dev = Device::Cpu;
    let model = official_model(f, FusionKind::Concat);
    let opts: toml::Table = toml::from_str(options).unwrap();
    let mut rec = Recorder {
        inner: mmbal_methods::build_method("mmcosine", &opts).unwrap(),
        scaling: meta(f, "meta.scaling"),
        logits: Vec::new(),
        nce: 0.0,
        grads: HashMap::new(),
    };
    let mut sgd = Sgd::new(
        model.params(),
        meta(f, "meta.lr"),
        meta(f, "meta.momentum"),
        meta(f, "meta.weight_decay"),
    );
    let mut report = Report::default();
    for e in 0..2 {
        let (inputs, labels) = batch(f, &format!("e{e}"));
        let keep = Tensor::ones((labels.dim(0).unwrap(), 2), DType::F32, &dev).unwrap();
        let at = StepIndex {
            epoch: e,
            step: e,
            batch: 0,
            batches: 1,
        };
        let step = StepInputs {
            inputs: &inputs,
            labels: &labels,
            keep: &keep,
            rows: &[],
            frozen_encoders: &[],
        };
        let (loss, _) = train_step(&model, &mut rec, &mut sgd, step, at).unwrap();
        let p = format!("{run}.e{e}");
        let want = |k: &str| floats(f, &format!("{p}.{k}"))[0];
        report.scalar("loss", &format!("{p}.loss"), loss, want("loss"), TOL);
        report.scalar("nce", &format!("{p}.nce"), rec.nce, want("nce"), TOL);
        let sum = (&rec.logits[0] + &rec.logits[1]).unwrap();
        report.tensor(
            "logits",
            &format!("{p}.out"),
            &sum,
            &f[&format!("{p}.out")],
            TOL,
        );
        for (m, k) in ["out_a", "out_v"].iter().enumerate() {
            let key = format!("{p}.{k}");
            report.tensor("logits", &key, &rec.logits[m], &f[&key], TOL);
        }
        // The same gradients, and the same parameters without one (the head's bias).
        common::check_step(
            &mut report,
            f,
            &p,
            &model,
            &rec.grads,
            official_name,
            (1e-4, TOL),
        );
    }
    report.finish(&format!("mmcosine ({run})"));
    model
}

#[test]
fn mmcosine_two_steps_match_official_train_epoch() {
    let f = fixture("mmcosine_official");
    assert!(
        !f.contains_key("cos.e0.grad.fusion_module.fc_out.bias"),
        "the official head bias gets no gradient"
    );
    run_and_check(&f, "cos", "");
    let lam = meta(&f, "meta.lam_nce");
    run_and_check(&f, "nce", &format!("lam = {lam}"));
}

#[test]
fn mmcosine_evaluation_matches_official_valid() {
    let f = fixture("mmcosine_official");
    let model = run_and_check(&f, "cos", "");
    let (inputs, _) = batch(&f, "e0");
    let out = model.forward(&inputs, None, false).unwrap();
    let mut report = Report::default();
    for (evaluate, fused_key) in [("linear", "eval.out"), ("cosine", "")] {
        let opts: toml::Table = toml::from_str(&format!("evaluate = \"{evaluate}\"")).unwrap();
        let m = mmbal_methods::build_method("mmcosine", &opts).unwrap();
        let p = m.predict(&model, &out).unwrap();
        report.tensor("eval", "eval.out_a", &p.unimodal[0], &f["eval.out_a"], TOL);
        report.tensor("eval", "eval.out_v", &p.unimodal[1], &f["eval.out_v"], TOL);
        if fused_key.is_empty() {
            // The paper's prediction: the cosine sum of the official per-modality logits.
            let sum = (&f["eval.out_a"] + &f["eval.out_v"]).unwrap();
            report.tensor("eval", "cosine sum", &p.fused, &sum, TOL);
        } else {
            report.tensor("eval", fused_key, &p.fused, &f[fused_key], TOL);
        }
    }
    report.finish("mmcosine evaluation");
}
