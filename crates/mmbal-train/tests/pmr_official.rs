//! PMR against its official code (tests/fixtures/pmr_official.safetensors, made by
//! tests/fixtures/gen_pmr.py from fanyunfeng-bit/Modal-Imbalance-PMR's own `train_epoch` and
//! `calculate_prototype`): four epochs of two batches at alpha = 2 with the modulation window
//! [1, 2], so that epochs 0 and 3 are plain cross-entropy, and batches where each modality leads.
//! The official prototypes of each epoch are handed to the method (its checkpoint state), and every
//! step's loss and the weights after it are compared. The `paper.*` cases are the fixture script's
//! transcription of the paper's loss (no official code exists for it): alpha weights the prototype
//! cross-entropies only, mu times the clipped coefficient the entropy terms.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{assert_close, av_model, fixture, get, scalar};
use mmbal_fusion::{FusionKind, MultimodalModel};
use mmbal_methods::{build_method, BalanceMethod, StepIndex};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;

/// mmbal's parameter or buffer name to the official AVClassifier's state_dict name.
fn reference_name(n: &str) -> String {
    let n = n
        .replace("encoders.audio.", "audio_net.")
        .replace("encoders.visual.", "visual_net.")
        .replace("head.fc.", "fusion_module.fc_out.");
    let (prefix, rest) = n.split_once('.').unwrap();
    let rest = match rest.split_once('.') {
        Some(("0", r)) => format!("conv1.{r}"),
        Some(("1", r)) => format!("bn1.{r}"),
        Some(("4", r)) => format!("layer1.0.{r}"),
        Some(("5", r)) => format!("layer1.1.{r}"),
        _ => rest.to_string(),
    };
    format!("{prefix}.{rest}")
}

fn model(f: &HashMap<String, Tensor>) -> MultimodalModel {
    model_at(f, "init")
}

/// The tiny model with the weights and BatchNorm statistics stored under `prefix.`.
fn model_at(f: &HashMap<String, Tensor>, prefix: &str) -> MultimodalModel {
    let model = av_model(FusionKind::Concat, [1, 3]);
    for (n, v) in model.named_params() {
        v.set(&get(f, &format!("{prefix}.{}", reference_name(&n))))
            .unwrap();
    }
    for (n, _) in model.buffers().unwrap() {
        model
            .set_buffer(&n, get(f, &format!("{prefix}.{}", reference_name(&n))))
            .unwrap();
    }
    model
}

fn pmr(options: &str) -> Box<dyn BalanceMethod> {
    build_method("pmr", &toml::from_str(options).unwrap()).unwrap()
}

fn give_prototypes(method: &mut dyn BalanceMethod, audio: Tensor, visual: Tensor) {
    let state: HashMap<String, Tensor> = [
        ("prototypes.0".to_string(), audio),
        ("prototypes.1".to_string(), visual),
    ]
    .into();
    method.load_state(&state).unwrap();
}

fn step(
    model: &MultimodalModel,
    method: &mut dyn BalanceMethod,
    sgd: &mut Sgd,
    f: &HashMap<String, Tensor>,
    at: &str,
    epoch: usize,
) -> f64 {
    let inputs = [
        get(f, &format!("{at}.audio")),
        get(f, &format!("{at}.visual")),
    ];
    let labels = get(f, &format!("{at}.label")).to_dtype(DType::U32).unwrap();
    let keep = Tensor::ones((labels.dim(0).unwrap(), 2), DType::F32, &Device::Cpu).unwrap();
    let at = StepIndex {
        epoch,
        ..Default::default()
    };
    train_step(
        model,
        method,
        sgd,
        StepInputs {
            inputs: &inputs,
            labels: &labels,
            keep: &keep,
            rows: &[],
            frozen_encoders: &[],
        },
        at,
    )
    .unwrap()
    .0
}

fn check_weights(model: &MultimodalModel, f: &HashMap<String, Tensor>, prefix: &str) {
    for (n, v) in model.named_params() {
        let key = format!("{prefix}.{}", reference_name(&n));
        assert_close(&key, v.as_tensor(), &get(f, &key), 1e-4);
    }
    for (n, t) in model.buffers().unwrap() {
        let key = format!("{prefix}.{}", reference_name(&n));
        assert_close(&key, &t, &get(f, &key), 1e-4);
    }
}

const CODE: &str = "alpha = 2.0\nmodulation_starts = 1\nmodulation_ends = 2";

fn run_official(options: &str) {
    let f = fixture("pmr_official");
    let model = model(&f);
    let mut method = pmr(options);
    let mut sgd = Sgd::new(model.params(), 0.1, 0.9, 1e-4);
    for k in 0..8 {
        let epoch = k / 2;
        if k % 2 == 0 {
            // The prototypes the official run used in this epoch.
            give_prototypes(
                method.as_mut(),
                get(&f, &format!("proto.{epoch}.audio")),
                get(&f, &format!("proto.{epoch}.visual")),
            );
        }
        let at = format!("step.{k}");
        let loss = step(&model, method.as_mut(), &mut sgd, &f, &at, epoch);
        let want = scalar(&f, &format!("{at}.loss"));
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "{at} (epoch {epoch}): loss {loss}, official {want}"
        );
        check_weights(&model, &f, &format!("{at}.after"));
    }
}

#[test]
fn pmr_follows_the_official_code_over_the_window() {
    let f = fixture("pmr_official");
    // The fixture exercises what it exists for: both leads inside the window, plain CE outside.
    let leads: Vec<bool> = (0..8)
        .map(|k| scalar(&f, &format!("step.{k}.ratio_a_p")) > 1.0)
        .collect();
    assert!(leads[2] != leads[3] && leads[4] != leads[5]);
    for k in [0, 1, 6, 7] {
        assert_eq!(scalar(&f, &format!("step.{k}.in_window")), 0.0);
    }
    run_official(CODE);
}

#[test]
fn pmr_without_the_window_departs_from_the_official_code() {
    // Prototype terms in every epoch (mmbal's former behaviour) change epoch 0's steps.
    let always = "alpha = 2.0\nmodulation_starts = 0\nmodulation_ends = 100";
    assert!(std::panic::catch_unwind(|| run_official(always)).is_err());
}

fn run_paper(case: &str, options: &str) -> (f64, f64) {
    let f = fixture("pmr_official");
    let model = model(&f);
    let mut method = pmr(options);
    let mut sgd = Sgd::new(model.params(), 0.1, 0.9, 1e-4);
    give_prototypes(
        method.as_mut(),
        get(&f, "proto.0.audio"),
        get(&f, "proto.0.visual"),
    );
    let at = format!("paper.{case}");
    let loss = step(&model, method.as_mut(), &mut sgd, &f, &at, 0);
    check_weights(&model, &f, &format!("{at}.after"));
    (loss, scalar(&f, &format!("{at}.loss")))
}

const PAPER: &str = "variant = \"paper\"\nalpha = 2.0\nmu = 0.01";

#[test]
fn paper_variant_matches_the_papers_loss_for_either_lead() {
    for case in ["audio_leads", "visual_leads"] {
        let (loss, want) = run_paper(case, PAPER);
        assert!(
            (loss - want).abs() <= 1e-5 * want.abs(),
            "{case}: loss {loss}, paper {want}"
        );
    }
}

#[test]
fn entropy_weighted_by_alpha_departs_from_the_paper() {
    // alpha = 2 doubling the entropy term (mmbal's former weighting) equals mu = 0.02 here.
    for case in ["audio_leads", "visual_leads"] {
        let doubled = "variant = \"paper\"\nalpha = 2.0\nmu = 0.02";
        let (loss, want) =
            std::panic::catch_unwind(|| run_paper(case, doubled)).unwrap_or((f64::NAN, 0.0));
        assert!(
            loss.is_nan() || (loss - want).abs() > 1e-5 * want.abs(),
            "{case}: a doubled entropy term still matches"
        );
    }
}

#[test]
fn prototypes_follow_the_official_calculate_prototype() {
    // The official run computed every prototype set from one batch (`proto_input`) in eval mode:
    // before epoch 0 and after each epoch, with momentum 0.2 only from the set after epoch 1 on
    // (its `epoch <= 0` test). Recompute each set from the model as it was then.
    let f = fixture("pmr_official");
    let labels: Vec<u32> = get(&f, "proto_input.label")
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    let inputs = [get(&f, "proto_input.audio"), get(&f, "proto_input.visual")];
    let momentum = scalar(&f, "meta.proto_momentum") as f32;
    assert!(momentum > 0.0, "the fixture must exercise the momentum");
    for set in 0..5 {
        let (prefix, previous, mo) = match set {
            0 => ("init".to_string(), None, 0.0),
            s => (
                format!("step.{}.after", 2 * (s - 1) + 1),
                Some(s - 1),
                if s >= 2 { momentum } else { 0.0 },
            ),
        };
        let model = model_at(&f, &prefix);
        let out = model.forward(&inputs, None, false).unwrap();
        for (m, name) in ["audio", "visual"].iter().enumerate() {
            let prev = previous.map(|p| get(&f, &format!("proto.{p}.{name}")));
            let got =
                mmbal_methods::prototypes_from(&out.features[m], &labels, 5, prev.as_ref(), mo)
                    .unwrap();
            assert_close(
                &format!("proto.{set}.{name}"),
                &got,
                &get(&f, &format!("proto.{set}.{name}")),
                1e-5,
            );
        }
    }
}
