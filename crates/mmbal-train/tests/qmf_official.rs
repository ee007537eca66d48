//! QMF against the official code (QingyangZhang/QMF at fe6c4c6, text-image-classification): the
//! values in tests/fixtures/qmf_official.safetensors come from its own `model_forward`,
//! `rank_loss`, `History` and `MultimodalLateFusionClf.forward`, run by tests/fixtures/gen_qmf.py
//! on tiny stand-in classifiers (see that script's docstring for every key and the patch).
//!
//! Two epochs over 20 training samples in batches of 10 through `mmbal_train::train_step` with
//! Adam: the loss (cross-entropies plus the ranking losses), the fused prediction, the
//! confidences, the ranking losses (non-zero in every step), each modality's per-sample history,
//! the gradients and every weight and running statistic after each step must equal the official
//! ones.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{av_model_named, fixture, meta, Report, TinyNames};
use mmbal_data::{Dataset, Manifest, Row, Split};
use mmbal_dataset::manifest::Sample;
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use mmbal_methods::{BalanceMethod, EpochCtx, Grads, StepCtx, StepIndex};
use mmbal_train::optim::Adam;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;
use std::sync::Arc;

const TOL: f32 = 1e-5;

/// Model name to the official late-fusion classifier's.
fn official(n: &str) -> String {
    for (ours, theirs) in [
        ("encoders.audio.", "txtclf.enc."),
        ("encoders.visual.", "imgclf.enc."),
        ("head.fc.0.", "txtclf.fc."),
        ("head.fc.1.", "imgclf.fc."),
    ] {
        if let Some(rest) = n.strip_prefix(ours) {
            return format!("{theirs}{rest}");
        }
    }
    panic!("unexpected parameter {n}")
}

fn model(f: &HashMap<String, Tensor>) -> MultimodalModel {
    let model = av_model_named(FusionKind::Sum, TinyNames::Sequential, [1, 3]);
    for (n, v) in model.vars().named() {
        v.set(&f[&format!("init.{}", official(&n))]).unwrap();
    }
    model
}

/// A dataset of 20 training samples with no sources: the method only reads its rows.
fn twenty_train_samples() -> Arc<Dataset> {
    let samples = (0..20)
        .map(|i| Sample {
            id: format!("s{i}"),
            label: 0,
            split: Split::Train,
            sources: Vec::new(),
        })
        .collect();
    let manifest = Manifest {
        name: "twenty".into(),
        classes: vec!["c".into()],
        modalities: Vec::new(),
        samples,
        notes: Vec::new(),
    };
    Arc::new(Dataset::new(manifest, Vec::new()).unwrap())
}

/// Keeps the gradients the optimizer is handed.
struct Recorder {
    inner: Box<dyn BalanceMethod>,
    grads: HashMap<String, Tensor>,
}

impl BalanceMethod for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn epoch_plan(&mut self, ctx: &EpochCtx) -> anyhow::Result<Option<Vec<Row>>> {
        self.inner.epoch_plan(ctx)
    }
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> anyhow::Result<Tensor> {
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
    fn diagnostics(&self) -> Vec<(String, f64)> {
        self.inner.diagnostics()
    }
}

#[test]
fn qmf_two_epochs_match_official_model_forward() {
    let f = fixture("qmf_official");
    let model = model(&f);
    let mut rec = Recorder {
        inner: mmbal_methods::build_method("qmf", &toml::Table::new()).unwrap(),
        grads: HashMap::new(),
    };
    let mut adam = Adam::new(model.params(), meta(&f, "meta.lr"), 0.0);
    let dataset = twenty_train_samples();
    let mut report = Report::default();
    let mut step = 0;
    for e in 0..2 {
        let ctx = EpochCtx {
            epoch: e,
            epochs: 2,
            seed: 0,
            batch_size: 10,
            model: &model,
            dataset: &dataset,
            out_dir: None,
        };
        rec.epoch_plan(&ctx).unwrap();
        let mut rank_sum = [0.0f64; 2];
        for s in 0..2 {
            let p = format!("qmf.e{e}.b{s}");
            let order = f[&format!("order.e{e}.b{s}")].to_dtype(DType::U32).unwrap();
            let pick = |k: &str| f[k].index_select(&order, 0).unwrap();
            let inputs = [pick("input_audio"), pick("input_visual")];
            let labels = pick("label").to_dtype(DType::U32).unwrap();
            let rows: Vec<Row> = order
                .to_vec1::<u32>()
                .unwrap()
                .into_iter()
                .map(|i| Row::full(i as usize, 2))
                .collect();
            let keep = Tensor::ones((10, 2), DType::F32, &Device::Cpu).unwrap();
            let batch = StepInputs {
                inputs: &inputs,
                labels: &labels,
                keep: &keep,
                rows: &rows,
                frozen_encoders: &[],
            };
            let at = StepIndex {
                epoch: e,
                step,
                batch: s,
                batches: 2,
            };
            step += 1;
            let (loss, out) = train_step(&model, &mut rec, &mut adam, batch, at).unwrap();
            report.scalar(
                "loss",
                &format!("{p}.loss"),
                loss,
                common::scalar(&f, &format!("{p}.loss")),
                TOL,
            );
            let conf = mmbal_methods::qmf_confidences(&out.unimodal_logits, 10.0).unwrap();
            let want_conf: Vec<Vec<f32>> = f[&format!("{p}.conf")].to_vec2().unwrap();
            for (m, c) in conf.iter().enumerate() {
                let want = Tensor::new(want_conf[m].as_slice(), &Device::Cpu).unwrap();
                report.tensor("confidence", &format!("{p}.conf[{m}]"), c, &want, TOL);
            }
            let fused = mmbal_methods::qmf_fuse(&out.unimodal_logits, &conf).unwrap();
            report.tensor(
                "prediction",
                &format!("{p}.out"),
                &fused,
                &f[&format!("{p}.out")],
                TOL,
            );
            // The diagnostics are the epoch's mean ranking loss so far.
            let d: HashMap<String, f64> = rec.diagnostics().into_iter().collect();
            let rank: Vec<f32> = f[&format!("{p}.rank")].to_vec1().unwrap();
            for (m, name) in ["audio", "visual"].iter().enumerate() {
                assert!(rank[m] > 0.0, "{p}: the official ranking loss is not zero");
                rank_sum[m] += rank[m] as f64;
                let got = d[&format!("qmf_rank_loss_{name}")];
                report.scalar(
                    "rank loss",
                    &format!("{p}.rank[{m}]"),
                    got,
                    rank_sum[m] / (s + 1) as f64,
                    1e-4,
                );
            }
            for (n, _) in model.named_params() {
                let key = format!("{p}.grad.{}", official(&n));
                match (rec.grads.get(&n), f.get(&key)) {
                    (Some(g), Some(want)) => report.tensor("grad", &key, g, want, 1e-4),
                    (None, None) => {}
                    (got, want) => report.failures.push(format!(
                        "{key}: mmbal has a gradient: {}, the official code: {}",
                        got.is_some(),
                        want.is_some()
                    )),
                }
            }
            let state: HashMap<String, Tensor> = rec.inner.state().unwrap().into_iter().collect();
            let want_hist: Vec<Vec<f32>> = f[&format!("{p}.history")].to_vec2().unwrap();
            for m in 0..2 {
                let got = state[&format!("history.{m}")].to_dtype(DType::F32).unwrap();
                let want = Tensor::new(want_hist[m].as_slice(), &Device::Cpu).unwrap();
                report.tensor("history", &format!("{p}.history[{m}]"), &got, &want, TOL);
            }
            for (n, v) in model.named_params() {
                let key = format!("{p}.after.{}", official(&n));
                report.tensor("weights after step", &key, v.as_tensor(), &f[&key], 1e-4);
            }
            for (n, t) in model.buffers().unwrap() {
                let key = format!("{p}.after.{}", official(&n));
                report.tensor("running stats after step", &key, &t, &f[&key], TOL);
            }
        }
    }
    report.finish("qmf");
}
