//! AGM against the official code (lihong2303/AGM_ICCV2023 at 5a65542): the values in
//! tests/fixtures/agm_official.safetensors come from its own `train` (methods "AGM") and
//! `GradMod.forward`, run by tests/fixtures/gen_agm.py on the tiny model (see that script's
//! docstring for every key).
//!
//! The reference's 1-based epochs 1, 2, 3 (mmbal's 0, 1, 2) of one SGD step each, the window
//! ending after the second, so the third keeps the last coefficients (the hooks stay registered);
//! the clip runs in the second and third steps. Through `mmbal_train::train_step`: the loss, the
//! coefficients and the running means of the scores (the method's diagnostics), the gradients the
//! optimizer stepped with and every weight and running statistic after each step must equal the
//! official ones.

mod common;

use candle_core::{DType, Tensor};
use common::{batch, fixture, floats, meta, official_model, official_name, Report};
use mmbal_fusion::FusionKind;
use mmbal_methods::{BalanceMethod, StepIndex};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;

const TOL: f32 = 1e-5;

#[test]
fn agm_three_epochs_match_official_train() {
    let f = fixture("agm_official");
    let model = official_model(&f, FusionKind::Concat);
    let opts: toml::Table = toml::from_str(&format!(
        "alpha = {}\nstart_epoch = 0\nend_epoch = 1",
        meta(&f, "meta.alpha")
    ))
    .unwrap();
    let mut rec = common::GradRecorder::new(mmbal_methods::build_method("agm", &opts).unwrap());
    let mut sgd = Sgd::new(
        model.params(),
        meta(&f, "meta.lr"),
        meta(&f, "meta.momentum"),
        meta(&f, "meta.weight_decay"),
    );
    let mut report = Report::default();
    let mut clipped = Vec::new();
    for (step, e) in [1usize, 2, 3].into_iter().enumerate() {
        let p = format!("agm.e{e}");
        let (inputs, labels) = batch(&f, &format!("e{e}"));
        let keep = Tensor::ones((10, 2), DType::F32, labels.device()).unwrap();
        let b = StepInputs {
            inputs: &inputs,
            labels: &labels,
            keep: &keep,
            rows: &[],
            frozen_encoders: &[],
        };
        let at = StepIndex {
            epoch: e - 1,
            step,
            batch: 0,
            batches: 1,
        };
        let (loss, _) = train_step(&model, &mut rec, &mut sgd, b, at).unwrap();
        report.scalar(
            "loss",
            &format!("{p}.loss"),
            loss,
            floats(&f, &format!("{p}.loss"))[0],
            TOL,
        );
        let d: HashMap<String, f64> = rec.diagnostics().into_iter().collect();
        let coeff = floats(&f, &format!("{p}.coeff"));
        let means = floats(&f, &format!("{p}.train_score"));
        for m in 0..2 {
            report.scalar(
                "coefficient",
                &format!("{p}.coeff[{m}]"),
                d[&format!("agm_scale_{m}")],
                coeff[m],
                1e-4,
            );
            report.scalar(
                "score mean",
                &format!("{p}.train_score[{m}]"),
                d[&format!("agm_score_mean_{m}")],
                means[m],
                1e-4,
            );
        }
        clipped.push(floats(&f, &format!("{p}.clipped"))[0] == 1.0);
        common::check_step(
            &mut report,
            &f,
            &p,
            &model,
            &rec.grads,
            official_name,
            (1e-4, TOL),
        );
    }
    assert_eq!(
        clipped,
        vec![false, true, true],
        "the fixture clips in steps 2 and 3"
    );
    report.finish("agm");
}

#[test]
fn agm_coefficients_by_hand() {
    // Equal scores and means: ratio 1 = target 1, coefficients exp(0) = 1.
    assert_eq!(
        mmbal_methods::agm_coefficients([1.0, 1.0], [0.0, 0.0], 1.0),
        [1.0, 1.0]
    );
    // Modality 0 with the lower loss now than on average: its ratio exceeds its target.
    let c = mmbal_methods::agm_coefficients([0.5, 1.0], [1.0, 1.0], 1.0);
    assert!(c[0] < 1.0 && c[1] > 1.0, "{c:?}");
    assert!((c[0] - (1f64 - 0.5f64.exp()).exp()).abs() < 1e-12);
}
