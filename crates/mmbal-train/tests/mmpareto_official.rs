//! MMPareto against the official code (GeWu-Lab/MMPareto_ICML2024 at a339db3): the values in
//! tests/fixtures/mmpareto_official.safetensors come from its own `train_epoch`, run by
//! tests/fixtures/gen_mmpareto.py on the tiny model (see that script's docstring for every key).
//!
//! Three SGD steps of mmbal's `mmpareto` through `mmbal_train::train_step` (the blend head: a
//! concat classifier and one per modality, the reference's `head`, `head_audio`, `head_video`):
//! epoch 0 has a negative audio cosine (the min-norm weights), the others positive ones (equal
//! weights). Losses, cosines and weights (the method's diagnostics), the gradients the optimizer
//! stepped with, and every weight and running statistic after each step must equal the official
//! ones.

mod common;

use candle_core::{DType, Tensor};
use common::{batch, fixture, floats, meta, Report};
use mmbal_fusion::FusionKind;
use mmbal_methods::{BalanceMethod, EpochCtx, StepIndex};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;

const TOL: f32 = 1e-5;

/// Model name to the official AVClassifier's.
fn official(n: &str) -> String {
    common::renamed(
        n,
        &[
            ("encoders.audio.", "audio_net."),
            ("encoders.visual.", "visual_net."),
            ("head.fc.0.", "head_audio."),
            ("head.fc.1.", "head_video."),
            ("head.fc.", "head."),
        ],
    )
}

#[test]
fn mmpareto_three_steps_match_official_train_epoch() {
    let f = fixture("mmpareto_official");
    let model = common::reference_model(&f, FusionKind::Blend, official);
    let opts: toml::Table = toml::from_str(&format!("gamma = {}", meta(&f, "meta.gamma"))).unwrap();
    let mut rec =
        common::GradRecorder::new(mmbal_methods::build_method("mmpareto", &opts).unwrap());
    let mut sgd = Sgd::new(
        model.params(),
        meta(&f, "meta.lr"),
        meta(&f, "meta.momentum"),
        meta(&f, "meta.weight_decay"),
    );
    let dataset = common::empty_dataset();
    let mut report = Report::default();
    let mut min_norm_seen = false;
    for e in 0..3 {
        let ctx = EpochCtx {
            epoch: e,
            epochs: 3,
            seed: 0,
            batch_size: 10,
            model: &model,
            dataset: &dataset,
            out_dir: None,
        };
        rec.epoch_plan(&ctx).unwrap();
        let (inputs, labels) = batch(&f, &format!("e{e}"));
        let keep = Tensor::ones((10, 2), DType::F32, labels.device()).unwrap();
        let step = StepInputs {
            inputs: &inputs,
            labels: &labels,
            keep: &keep,
            rows: &[],
            frozen_encoders: &[],
        };
        let at = StepIndex {
            epoch: e,
            step: e,
            batch: 0,
            batches: 1,
        };
        let (loss, _) = train_step(&model, &mut rec, &mut sgd, step, at).unwrap();
        let p = format!("pareto.e{e}");
        report.scalar(
            "loss",
            &format!("{p}.loss"),
            loss,
            floats(&f, &format!("{p}.loss"))[0],
            TOL,
        );
        let d: HashMap<String, f64> = rec.diagnostics().into_iter().collect();
        let cos = floats(&f, &format!("{p}.cos"));
        for (i, m) in ["audio", "visual"].iter().enumerate() {
            let k = floats(&f, &format!("{p}.k_{m}"));
            min_norm_seen |= cos[i] < 0.0;
            report.scalar(
                "cos",
                &format!("{p}.cos[{m}]"),
                d[&format!("mmpareto_cos_{m}")],
                cos[i],
                1e-4,
            );
            report.scalar(
                "k",
                &format!("{p}.k_{m}"),
                d[&format!("mmpareto_k_{m}")],
                k[0],
                1e-4,
            );
        }
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
    assert!(min_norm_seen, "the fixture has a negative cosine");
    report.finish("mmpareto");
}

#[test]
fn min_norm_weight_by_hand() {
    // x1 = (1, 0), x2 = (0, 1): the midpoint.
    assert!((mmbal_methods::min_norm_weight(1.0, 0.0, 1.0) - 0.5).abs() < 1e-12);
    // x1 = (2, 0), x2 = (0, 1): c = 1 / 5 (|c x1 + (1 - c) x2|^2 = 4c^2 + (1 - c)^2 is least there).
    assert!((mmbal_methods::min_norm_weight(4.0, 0.0, 1.0) - 0.2).abs() < 1e-12);
    // The ends, as the reference clips them.
    assert_eq!(mmbal_methods::min_norm_weight(1.0, 1.0, 4.0), 0.999);
    assert_eq!(mmbal_methods::min_norm_weight(4.0, 1.0, 1.0), 0.001);
}
