//! InfoReg against the official code (GeWu-Lab/InfoReg_CVPR2025 at 939b2ed): the values in
//! tests/fixtures/inforeg_official.safetensors come from its own `train_epoch`, run by
//! tests/fixtures/gen_inforeg.py on the tiny model (see that script's docstring for every key and
//! for the places the repository had to be patched to run).
//!
//! Three epochs of two SGD steps through `mmbal_train::train_step`: the window value at each
//! epoch's start, the summed loss, the scores and the proximal strength given to the leading
//! modality (audio and visual both lead once), the gradients the optimizer stepped with (the
//! proximal term is non-zero from each epoch's second step), every weight and running statistic
//! after each step, and each epoch's Fisher traces must equal the official ones.

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
            ("head.fc.", "head."),
        ],
    )
}

#[test]
fn inforeg_three_epochs_match_official_train_epoch() {
    let f = fixture("inforeg_official");
    let model = common::reference_model(&f, FusionKind::Concat, official);
    let mut rec = common::GradRecorder::new(
        mmbal_methods::build_method("inforeg", &toml::Table::new()).unwrap(),
    );
    let mut sgd = Sgd::new(
        model.params(),
        meta(&f, "meta.lr"),
        meta(&f, "meta.momentum"),
        meta(&f, "meta.weight_decay"),
    );
    let dataset = common::empty_dataset();
    let mut report = Report::default();
    let mut proximal = [false; 2];
    let mut step = 0;
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
        let d: HashMap<String, f64> = rec.diagnostics().into_iter().collect();
        let k = floats(&f, &format!("inforeg.e{e}.k"))[0];
        report.scalar("k", &format!("inforeg.e{e}.k"), d["inforeg_k"], k, 1e-4);
        for s in 0..2 {
            let p = format!("inforeg.e{e}.b{s}");
            let (inputs, labels) = batch(&f, &format!("e{e}.b{s}"));
            let keep = Tensor::ones((10, 2), DType::F32, labels.device()).unwrap();
            let inputs_ = StepInputs {
                inputs: &inputs,
                labels: &labels,
                keep: &keep,
                rows: &[],
                frozen_encoders: &[],
            };
            let at = StepIndex {
                epoch: e,
                step,
                batch: s,
                batches: 2,
            };
            step += 1;
            let (loss, _) = train_step(&model, &mut rec, &mut sgd, inputs_, at).unwrap();
            report.scalar(
                "loss",
                &format!("{p}.loss"),
                loss,
                floats(&f, &format!("{p}.loss"))[0],
                TOL,
            );
            let beta = floats(&f, &format!("{p}.beta"));
            for (m, b) in beta.iter().enumerate() {
                proximal[m] |= *b > 0.0 && s > 0;
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
        rec.on_epoch_end(&ctx).unwrap();
        let d: HashMap<String, f64> = rec.diagnostics().into_iter().collect();
        let traces = floats(&f, &format!("inforeg.e{e}.trace"));
        for (m, name) in ["audio", "visual"].iter().enumerate() {
            report.scalar(
                "trace",
                &format!("inforeg.e{e}.trace[{name}]"),
                d[&format!("inforeg_trace_{name}")],
                traces[m],
                1e-4,
            );
        }
    }
    assert_eq!(
        proximal,
        [true, true],
        "both modalities get a non-zero proximal term"
    );
    report.finish("inforeg");
}

#[test]
fn inforeg_window_by_hand() {
    assert_eq!(mmbal_methods::inforeg_window(&[], 10), 1.0);
    // One trace: tr1 = t / 10, tr2 = 0.
    assert_eq!(mmbal_methods::inforeg_window(&[2.0], 10), 1.0);
    // Two: k = t1 / (t0 + t1).
    assert!((mmbal_methods::inforeg_window(&[3.0, 1.0], 10) - 0.25).abs() < 1e-12);
    // A falling trace closes the window.
    assert!(
        mmbal_methods::inforeg_window(
            &[5.0; 12].iter().chain(&[1.0]).copied().collect::<Vec<_>>(),
            10
        ) < 0.0
    );
}
