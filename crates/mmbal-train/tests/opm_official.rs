//! OPM against the official code (GeWu-Lab/BML_TPAMI2024 at 4b3aa4f): the values in
//! tests/fixtures/opm_official.safetensors come from its own `train` and `Classifier.forward`,
//! run by tests/fixtures/gen_opm.py on the tiny model (see that script's docstring for every key
//! and for the two places the repository had to be patched to run).
//!
//! Four epochs of one batch: epoch 5 is the warm-up, 6 and 7 drop, 8 draws no drop. The official
//! random draws (whether to drop, the Bernoulli masks) are stored in the fixture and replayed
//! through mmbal's `opm_drop`; the scores, drop probabilities, the loss and logits on the kept
//! rows, the gradients and every weight and running statistic after each AdamW step must equal
//! the official ones.

mod common;

use candle_core::{Device, Tensor};
use common::{av_model_from, batch, fixture, floats, meta, Report, TinyNames};
use mmbal_fusion::{FusionKind, MultimodalModel};
use mmbal_train::optim::{Adam, Optimizer};
use std::collections::HashMap;

const TOL: f32 = 1e-5;

/// Model name to the official Classifier's (`encoders.audio.conv1.weight` ->
/// `encoder_1.conv1.weight`, `head.fc.bias` -> `fusion_model.fxy.bias`).
fn official(n: &str) -> String {
    if let Some(rest) = n.strip_prefix("encoders.audio.") {
        format!("encoder_1.{rest}")
    } else if let Some(rest) = n.strip_prefix("encoders.visual.") {
        format!("encoder_2.{rest}")
    } else if let Some(rest) = n.strip_prefix("head.fc.") {
        format!("fusion_model.fxy.{rest}")
    } else {
        panic!("unexpected parameter {n}")
    }
}

fn model(f: &HashMap<String, Tensor>) -> MultimodalModel {
    let module = |m: &str| {
        if m == "audio" {
            "encoder_1"
        } else {
            "encoder_2"
        }
    };
    let model = av_model_from(FusionKind::Concat, TinyNames::ResNetSlots, |m, k| {
        f[&format!("init.{}.{k}", module(m))].clone()
    });
    for (n, v) in model.named_params() {
        if n.starts_with("head.") {
            v.set(&f[&format!("init.{}", official(&n))]).unwrap();
        }
    }
    model
}

#[test]
fn opm_replayed_draws_match_official_train() {
    let f = fixture("opm_official");
    let model = model(&f);
    let mut adam = Adam::adamw(
        model.params(),
        meta(&f, "meta.lr"),
        meta(&f, "meta.weight_decay"),
    );
    let (q_base, lam) = (meta(&f, "meta.q_base"), meta(&f, "meta.lam"));
    let mut report = Report::default();
    let mut dropped_any = false;
    for e in 5..=8 {
        let p = format!("opm.e{e}");
        let (inputs, labels) = batch(&f, &format!("e{e}"));
        let all_labels = labels.clone();
        let out = model.forward(&inputs, None, true).unwrap();
        let scores: Vec<f64> = out
            .unimodal_logits
            .iter()
            .map(|l| mmbal_methods::true_class_score(l, &labels).unwrap())
            .collect();
        let perf = floats(&f, &format!("{p}.performance"));
        for m in 0..2 {
            report.scalar(
                "score",
                &format!("{p}.performance[{m}]"),
                scores[m],
                perf[m],
                TOL,
            );
        }
        let exe = floats(&f, &format!("{p}.exe"))[0] == 1.0;
        let (logits, labels) = if e <= 5 {
            (out.fused_logits.clone(), labels)
        } else {
            let q = mmbal_methods::opm_drop_probabilities(&scores, q_base, lam);
            let want = floats(&f, &format!("{p}.q"));
            for m in 0..2 {
                report.scalar("q", &format!("{p}.q[{m}]"), q[m], want[m], TOL);
            }
            if exe {
                let mask: Vec<Vec<f32>> = f[&format!("{p}.mask")].to_vec2().unwrap();
                let keep: Vec<Vec<bool>> = mask
                    .iter()
                    .map(|r| r.iter().map(|&x| x == 1.0).collect())
                    .collect();
                dropped_any |= keep.iter().flatten().any(|k| !k);
                let drop = mmbal_methods::opm_drop(&out.features, &q, &keep).unwrap();
                let index = Tensor::new(drop.rows.as_slice(), &Device::Cpu).unwrap();
                let head = model.head.forward(&drop.features, None).unwrap();
                (head.fused, labels.index_select(&index, 0).unwrap())
            } else {
                (out.fused_logits.clone(), labels)
            }
        };
        report.tensor(
            "logits",
            &format!("{p}.out"),
            &logits,
            &f[&format!("{p}.out")],
            TOL,
        );
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        let want_loss = floats(&f, &format!("{p}.loss"))[0];
        report.scalar(
            "loss",
            &format!("{p}.loss"),
            loss.to_scalar::<f32>().unwrap() as f64,
            want_loss,
            TOL,
        );
        // Where the drop ran, the official backward also sends theta back as theta's gradient.
        let backward = if e > 5 && exe {
            let term =
                mmbal_methods::opm_theta_term(&model, &out.features, &all_labels, q_base, lam)
                    .unwrap();
            (&loss + term).unwrap()
        } else {
            loss
        };
        let store = backward.backward().unwrap();
        adam.step(&store).unwrap();
        // The gradients by name (the tensors the step read; the step does not change them).
        let grads: HashMap<String, Tensor> = model
            .named_params()
            .into_iter()
            .filter_map(|(n, v)| store.get(&v).map(|g| (n, g.clone())))
            .collect();
        common::check_step(&mut report, &f, &p, &model, &grads, official, (1e-4, TOL));
    }
    assert!(dropped_any, "the fixture drops some features");
    report.finish("opm");
}

/// The drop probabilities by hand: only a leading modality drops; three modalities compare each
/// with the mean of the others.
#[test]
fn opm_drop_probabilities_by_hand() {
    let q = mmbal_methods::opm_drop_probabilities(&[2.0, 1.0], 0.5, 0.5);
    assert!((q[0] - 0.5 * (1.0 + 0.5 * 1f64.tanh())).abs() < 1e-12);
    assert_eq!(q[1], 0.0);
    assert_eq!(
        mmbal_methods::opm_drop_probabilities(&[1.0, 1.0], 0.5, 0.5),
        vec![0.0, 0.0]
    );
    let q3 = mmbal_methods::opm_drop_probabilities(&[3.0, 1.0, 1.0], 0.5, 0.5);
    assert!(q3[0] > 0.5 && q3[1] == 0.0 && q3[2] == 0.0);
    // Clipped to 1.
    assert_eq!(
        mmbal_methods::opm_drop_probabilities(&[100.0, 1.0], 0.9, 2.0)[0],
        1.0
    );
    // A row that keeps no modality is removed; the kept features are scaled by 1 / (1 - theta).
    let dev = Device::Cpu;
    let a = Tensor::ones((3, 2), candle_core::DType::F32, &dev).unwrap();
    let b = Tensor::ones((3, 6), candle_core::DType::F32, &dev).unwrap();
    let keep = vec![vec![true, false, false], vec![true, true, false]];
    let d = mmbal_methods::opm_drop(&[a, b], &[0.5, 0.0], &keep).unwrap();
    assert_eq!(d.rows, vec![0, 1]);
    // theta = (2 * 0.5 + 6 * 0) / 8 = 0.125.
    let got: Vec<Vec<f32>> = d.features[0].to_vec2().unwrap();
    assert_eq!(got, vec![vec![1.0 / 0.875; 2], vec![0.0; 2]]);
}
