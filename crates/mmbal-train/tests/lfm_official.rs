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
use common::{batch, fixture, floats, meta, Report};
use mmbal_fusion::FusionKind;
use mmbal_methods::StepIndex;
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};

const TOL: f32 = 1e-5;

/// Model name to the official AVClassifier's.
fn official(n: &str) -> String {
    common::renamed(
        n,
        &[
            ("encoders.audio.", "audio_encoder.audio_net."),
            ("encoders.visual.", "video_encoder.video_net."),
            ("head.fc.0.", "cls_a."),
            ("head.fc.1.", "cls_v."),
        ],
    )
}

#[test]
fn lfm_three_epochs_match_official_train_audio_video() {
    let f = fixture("lfm_official");
    let model = common::reference_model(&f, FusionKind::Sum, official);
    let mut rec =
        common::GradRecorder::new(mmbal_methods::build_method("lfm", &toml::Table::new()).unwrap());
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
            frozen_encoders: &[],
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
        common::check_step(
            &mut report,
            &f,
            &p,
            &model,
            &rec.grads,
            official,
            (1e-4, TOL),
        );
    }
    report.finish("lfm");
}
