//! LFM against the official code (njustkmg/NeurIPS24-LFM at ad44fa0, `Crema_epoch.py`): the
//! values in tests/fixtures/lfm_official.safetensors come from its own `train_audio_video`,
//! `Alignment` and `getAlpha_Learnable_Fitted`, run by tests/fixtures/gen_lfm.py on the tiny
//! model (see that script's docstring for every key and the patch).
//!
//! Epochs 0, 1 and 60 of one SGD step each through `mmbal_train::train_step` (the sum head: the
//! reference's `cls_a`, `cls_v`): the schedule's weights, the loss, the gradients the optimizer
//! stepped with and every weight and running statistic after each step must equal the official
//! ones.

mod common;

use candle_core::{DType, Tensor};
use common::{av_model_from, batch, fixture, floats, meta, Report, TinyNames};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use mmbal_methods::{BalanceMethod, Grads, StepCtx, StepIndex};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;

const TOL: f32 = 1e-5;

/// Model name to the official AVClassifier's.
fn official(n: &str) -> String {
    for (ours, theirs) in [
        ("encoders.audio.", "audio_encoder.audio_net."),
        ("encoders.visual.", "video_encoder.video_net."),
        ("head.fc.0.", "cls_a."),
        ("head.fc.1.", "cls_v."),
    ] {
        if let Some(rest) = n.strip_prefix(ours) {
            return format!("{theirs}{rest}");
        }
    }
    panic!("unexpected parameter {n}")
}

fn model(f: &HashMap<String, Tensor>) -> MultimodalModel {
    let module = |m: &str| {
        if m == "audio" {
            "audio_encoder.audio_net"
        } else {
            "video_encoder.video_net"
        }
    };
    let model = av_model_from(FusionKind::Sum, TinyNames::ResNetSlots, |m, k| {
        f[&format!("init.{}.{k}", module(m))].clone()
    });
    for (n, v) in model.named_params() {
        if n.starts_with("head.") {
            v.set(&f[&format!("init.{}", official(&n))]).unwrap();
        }
    }
    model
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
fn lfm_three_epochs_match_official_train_audio_video() {
    let f = fixture("lfm_official");
    let model = model(&f);
    let mut rec = Recorder {
        inner: mmbal_methods::build_method("lfm", &toml::Table::new()).unwrap(),
        grads: HashMap::new(),
    };
    let mut sgd = Sgd::new(
        model.params(),
        meta(&f, "meta.lr"),
        meta(&f, "meta.momentum"),
        meta(&f, "meta.weight_decay"),
    );
    let mut report = Report::default();
    for (step, e) in floats(&f, "meta.epochs").into_iter().enumerate() {
        let e = e as usize;
        let p = format!("lfm.e{e}");
        let alpha = mmbal_methods::lfm_alpha(e);
        let want = floats(&f, &format!("{p}.alpha"));
        report.scalar("alpha", &format!("{p}.alpha[0]"), alpha[0], want[0], TOL);
        report.scalar("alpha", &format!("{p}.alpha[1]"), alpha[1], want[1], TOL);
        let (inputs, labels) = batch(&f, &format!("e{e}"));
        let keep = Tensor::ones((10, 2), DType::F32, labels.device()).unwrap();
        let batch = StepInputs {
            inputs: &inputs,
            labels: &labels,
            keep: &keep,
            rows: &[],
        };
        let at = StepIndex {
            epoch: e,
            step,
            batch: 0,
            batches: 1,
        };
        let (loss, out) = train_step(&model, &mut rec, &mut sgd, batch, at).unwrap();
        report.scalar(
            "loss",
            &format!("{p}.loss"),
            loss,
            floats(&f, &format!("{p}.loss"))[0],
            TOL,
        );
        let align = mmbal_methods::lfm_alignment(&out.unimodal_logits)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let want_align = floats(&f, &format!("{p}.loss_align"))[0];
        report.scalar(
            "alignment",
            &format!("{p}.loss_align"),
            align,
            want_align,
            1e-4,
        );
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
        for (n, v) in model.named_params() {
            let key = format!("{p}.after.{}", official(&n));
            report.tensor("weights after step", &key, v.as_tensor(), &f[&key], TOL);
        }
        for (n, t) in model.buffers().unwrap() {
            let key = format!("{p}.after.{}", official(&n));
            report.tensor("running stats after step", &key, &t, &f[&key], TOL);
        }
    }
    report.finish("lfm");
}
