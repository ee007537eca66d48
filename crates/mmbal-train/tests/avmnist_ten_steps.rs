//! Ten joint-training steps of the AV-MNIST model (configs/avmnist.toml: two SmallCnn(1, width 8)
//! encoders, concat head, Adam lr 0.005) against PyTorch 2.11 (`avmnist.*` in
//! tests/fixtures/models.safetensors, made by tests/fixtures/gen_models.py): from the same initial
//! weights, on ten fixed batches of 8 shaped as the recipes emit them (fbank (1, 64, 40) with
//! zero-padded frames, MNIST (1, 28, 28) with a constant background), each step's loss and every
//! weight and running statistic after the tenth step.
//!
//! The zero padding and the constant background make many max-pool windows hold tied maxima after
//! ReLU; with candle's own max-pool backward (which scales a window's gradient by the share of
//! maxima in it) the trajectory leaves PyTorch's at the first step.
//!
//! A convolution bias followed by training-mode BatchNorm has a zero gradient in exact arithmetic;
//! in float (in both frameworks) it is rounding noise of about 1e-9, which Adam's normalisation
//! turns into steps of up to lr. Those biases follow each framework's noise and are not compared;
//! neither is the part of each running mean they feed: the test compares
//! `running_mean - sum_k 0.1 * 0.9^(10 - k) * b_k` (b_k the conv bias used at step k), which both
//! sides compute from their own biases.

use candle_core::{safetensors, DType, Device, Tensor};
use mmbal_encoders::{Encoder, ModelVars, SmallCnn};
use mmbal_fusion::{FusionHead, FusionKind, LinearInit, MultimodalModel};
use mmbal_methods::{Joint, StepIndex};
use mmbal_train::optim::{Adam, OptimizerConfig};
use mmbal_train::{train_step, StepInputs, TrainConfig};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

const STEPS: usize = 10;
const LR: f64 = 0.005;

fn fixture() -> HashMap<String, Tensor> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/models.safetensors");
    safetensors::load(&path, &Device::Cpu).unwrap()
}

/// `max |got - want| / max |want|`, asserted to be at most `tol`.
fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) -> f32 {
    assert_eq!(got.dims(), want.dims(), "{name}");
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    assert!(
        d <= tol * scale,
        "{name}: max difference {d:e} = {:e} of max |want| {scale:e} (tolerance {tol:e})",
        d / scale
    );
    d / scale
}

/// The fixture mirrors configs/avmnist.toml: shapes, encoders, head and optimizer.
#[test]
fn fixture_matches_the_avmnist_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cfg = TrainConfig::load(&root.join("configs/avmnist.toml")).unwrap();
    let f = fixture();
    for (m, key) in [("audio", "audio"), ("image", "image")] {
        let want = cfg.data.recipes[m].input_shape();
        assert_eq!(
            &f[&format!("avmnist.batch0.{key}")].dims()[1..],
            want.as_slice(),
            "{m}"
        );
        let enc = &cfg.model.encoders[m];
        assert_eq!(enc.kind, "small-cnn", "{m}");
        assert_eq!(enc.options["in_channels"].as_integer(), Some(1), "{m}");
        assert_eq!(enc.options["width"].as_integer(), Some(8), "{m}");
    }
    assert_eq!(cfg.model.fusion, FusionKind::Concat);
    assert_eq!(
        cfg.optimizer,
        OptimizerConfig::Adam {
            lr: LR,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
        }
    );
}

#[test]
fn ten_adam_steps_match_pytorch() {
    let f = fixture();
    let dev = Device::Cpu;
    let vars = ModelVars::new();
    let encoders: Vec<Box<dyn Encoder>> = vec![
        Box::new(SmallCnn::new(1, 8, vars.seeded(0, &dev).pp("encoders.audio")).unwrap()),
        Box::new(SmallCnn::new(1, 8, vars.seeded(1, &dev).pp("encoders.image")).unwrap()),
    ];
    let head = FusionHead::new(
        FusionKind::Concat,
        &[32, 32],
        10,
        LinearInit::Pytorch,
        vars.seeded(0, &dev).pp("head"),
    )
    .unwrap();
    let model = MultimodalModel::from_parts(
        vec!["audio".into(), "image".into()],
        encoders,
        head,
        vars,
        &dev,
    )
    .unwrap();

    // Initial weights and running statistics by name; the fixture names exactly these.
    let mut names = BTreeSet::new();
    for (n, v) in model.named_params() {
        v.set(&f[&format!("avmnist.init.{n}")]).unwrap();
        names.insert(n);
    }
    for (n, _) in model.buffers().unwrap() {
        model
            .set_buffer(&n, f[&format!("avmnist.init.{n}")].clone())
            .unwrap();
        names.insert(n);
    }
    let fixture_names: BTreeSet<String> = f
        .keys()
        .filter_map(|k| k.strip_prefix("avmnist.init."))
        .map(String::from)
        .collect();
    assert_eq!(names, fixture_names);

    let conv_bias = |n: &str| n.contains(".conv") && n.ends_with(".bias");
    // `encoders.<m>.bn<i>.running_mean` -> sum_k 0.1 * 0.9^(10 - k) * conv<i>.bias at step k.
    let mut trace: HashMap<String, Tensor> = HashMap::new();
    let want_loss = f["avmnist.loss"].to_vec1::<f32>().unwrap();
    let mut adam = Adam::new(model.params(), LR, 0.0);
    let keep = Tensor::ones((8, 2), DType::F32, &dev).unwrap();
    let mut worst_loss = 0f64;
    for k in 0..STEPS {
        for (n, v) in model
            .named_params()
            .into_iter()
            .filter(|(n, _)| conv_bias(n))
        {
            let key = n.replace(".conv", ".bn").replace(".bias", ".running_mean");
            let before = trace
                .remove(&key)
                .unwrap_or_else(|| v.as_tensor().zeros_like().unwrap());
            let t = ((before * 0.9).unwrap() + (v.as_tensor().detach() * 0.1).unwrap()).unwrap();
            trace.insert(key, t);
        }
        let inputs = [
            f[&format!("avmnist.batch{k}.audio")].clone(),
            f[&format!("avmnist.batch{k}.image")].clone(),
        ];
        let labels = f[&format!("avmnist.batch{k}.label")]
            .to_dtype(DType::U32)
            .unwrap();
        let at = StepIndex {
            epoch: 0,
            step: k,
            batch: k,
            batches: STEPS,
        };
        let (loss, _) = train_step(
            &model,
            &mut Joint,
            &mut adam,
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
        let want = want_loss[k] as f64;
        let rel = (loss - want).abs() / want.abs();
        eprintln!("step {}: loss {loss:.6} vs {want:.6} ({rel:.1e})", k + 1);
        assert!(rel <= 1e-4, "step {}: loss {loss} vs PyTorch {want}", k + 1);
        worst_loss = worst_loss.max(rel);
    }

    let mut worst = (0f32, String::new());
    let mut compared = 0;
    // Not compared (see the module comment); printed to show the size of the noise.
    let max_abs = |t: Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let (mut bias_noise, mut mean_noise) = (0f32, 0f32);
    for (n, v) in model.named_params() {
        if conv_bias(&n) {
            let d = (v.as_tensor() - &f[&format!("avmnist.after.{n}")]).unwrap();
            bias_noise = bias_noise.max(max_abs(d));
            continue;
        }
        let rel = assert_close(&n, v.as_tensor(), &f[&format!("avmnist.after.{n}")], 1e-4);
        compared += 1;
        if rel > worst.0 {
            worst = (rel, n);
        }
    }
    for (n, t) in model.buffers().unwrap() {
        let want = &f[&format!("avmnist.after.{n}")];
        let rel = match trace.get(&n) {
            Some(ours) => {
                mean_noise = mean_noise.max(max_abs((&t - want).unwrap()));
                let want_trace = &f[&format!("avmnist.bias_trace.{n}")];
                assert_close(
                    &format!("{n} minus its conv bias trace"),
                    &(t - ours).unwrap(),
                    &(want - want_trace).unwrap(),
                    1e-4,
                )
            }
            None => assert_close(&n, &t, want, 1e-4),
        };
        compared += 1;
        if rel > worst.0 {
            worst = (rel, n);
        }
    }
    assert_eq!(trace.len(), 6, "three conv-bias BatchNorms per encoder");
    eprintln!(
        "not compared: conv biases differ by up to {bias_noise:.1e}, raw running means by up to \
         {mean_noise:.1e}"
    );
    eprintln!(
        "losses within {worst_loss:.1e}; {compared} tensors after {STEPS} steps, worst {:.1e} ({})",
        worst.0, worst.1
    );
}
