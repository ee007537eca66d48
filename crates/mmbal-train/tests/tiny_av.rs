//! A tiny audio-visual model against PyTorch 2.11 (tests/fixtures/tiny_av.safetensors):
//! one joint-training step (`joint.*`: logits, loss, raw gradients, and weights and BatchNorm
//! running statistics after SGD(lr 0.1, momentum 0.9, weight decay 1e-4)) and the Shapley
//! valuation of a batch (`shapley.*`).

use candle_core::{DType, Device, Tensor};
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use mmbal_methods::{BalanceMethod, Grads, Joint, StepCtx, StepIndex};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use mmbal_valuation::{value_batch, Benefit, MaskRoute};
use std::collections::HashMap;
use std::sync::Mutex;

mod common;
use common::{assert_close, av_model_from, fixture, TinyNames};

fn fixtures() -> HashMap<String, Tensor> {
    fixture("tiny_av")
}

/// The fixture's model with its initial encoder weights (`init.<modality>.<name>`).
fn fixture_model(f: &HashMap<String, Tensor>, kind: FusionKind) -> MultimodalModel {
    av_model_from(kind, TinyNames::Sequential, |m, k| {
        f[&format!("init.{m}.{k}")].clone()
    })
}

/// Joint training that also keeps the raw gradients it was handed.
struct Recording {
    inner: Joint,
    grads: Mutex<HashMap<String, Tensor>>,
}

impl BalanceMethod for Recording {
    fn name(&self) -> &'static str {
        "recording-joint"
    }
    fn edit_gradients(
        &mut self,
        ctx: &StepCtx,
        out: &ForwardOut,
        grads: &mut Grads,
    ) -> anyhow::Result<()> {
        for (n, v) in ctx.model.named_params() {
            if let Some(g) = grads.get(&v) {
                self.grads.lock().unwrap().insert(n, g.clone());
            }
        }
        self.inner.edit_gradients(ctx, out, grads)
    }
}

/// Model name (`encoders.audio.0.weight`, `head.fc.weight`) to fixture name (`audio.0.weight`,
/// `head.weight`).
fn fixture_name(n: &str) -> String {
    n.replace("encoders.", "").replace("head.fc.", "head.")
}

/// The fixture's model with its initial weights.
fn tiny_model(f: &HashMap<String, Tensor>) -> MultimodalModel {
    let model = fixture_model(f, FusionKind::Concat);
    for (n, v) in model.vars().named_under("head") {
        v.set(&f[&format!("init.head.{}", n.trim_start_matches("fc."))])
            .unwrap();
    }
    model
}

#[test]
fn shapley_valuation_matches_pytorch() {
    let f = fixtures();
    let model = tiny_model(&f);
    let dev = Device::Cpu;
    let inputs = [f["input_audio"].clone(), f["input_visual"].clone()];
    let labels: Vec<u32> = f["shapley.label"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1()
        .unwrap();
    // The three coalitions through the feature-masking route.
    let features = model.encode(&inputs, false).unwrap();
    for (keep, name) in [
        ([1f32, 1.], "full"),
        ([1., 0.], "audio_only"),
        ([0., 1.], "visual_only"),
    ] {
        let keep = Tensor::new(&keep, &dev).unwrap().reshape((1, 2)).unwrap();
        let keep = keep.broadcast_as((10, 2)).unwrap().contiguous().unwrap();
        let logits = model.head.forward(&features, Some(&keep)).unwrap().fused;
        assert_close(name, &logits, &f[&format!("shapley.logits_{name}")], 1e-5);
    }
    let phi = value_batch(
        &model,
        &inputs,
        &labels,
        MaskRoute::Features,
        Benefit::SizeIfCorrect,
    )
    .unwrap();
    let want = f["shapley.phi"]
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(
        want.iter().any(|v| *v != 0.0),
        "fixture values are all zero"
    );
    assert_eq!(phi, want);
    // Valuation runs in eval mode: the running statistics are untouched.
    for (n, t) in model.buffers().unwrap() {
        assert_close(&n, &t, &f[&format!("init.{}", fixture_name(&n))], 0.0);
    }
}

#[test]
fn joint_step_matches_pytorch() {
    let f = fixtures();
    let dev = Device::Cpu;
    let model = tiny_model(&f);
    let labels = f["label"].to_dtype(DType::U32).unwrap();
    let keep = Tensor::ones((10, 2), DType::F32, &dev).unwrap();
    let inputs = [f["input_audio"].clone(), f["input_visual"].clone()];
    let mut method = Recording {
        inner: Joint,
        grads: Mutex::new(HashMap::new()),
    };
    let mut sgd = Sgd::new(model.params(), 0.1, 0.9, 1e-4);
    let (loss, out) = train_step(
        &model,
        &mut method,
        &mut sgd,
        StepInputs {
            inputs: &inputs,
            labels: &labels,
            keep: &keep,
            rows: &[],
            frozen_encoders: &[],
        },
        StepIndex::default(),
    )
    .unwrap();

    let want_loss = f["joint.loss"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    assert!(
        (loss as f32 - want_loss).abs() < 1e-5,
        "loss {loss} vs {want_loss}"
    );
    assert_close("logits", &out.fused_logits, &f["joint.logits"], 1e-5);
    assert_close(
        "logits_audio",
        &out.unimodal_logits[0],
        &f["joint.logits_audio"],
        1e-5,
    );
    assert_close(
        "logits_visual",
        &out.unimodal_logits[1],
        &f["joint.logits_visual"],
        1e-5,
    );
    let grads = method.grads.lock().unwrap();
    assert_eq!(grads.len(), 14);
    for (n, v) in model.named_params() {
        let fx = fixture_name(&n);
        assert_close(
            &format!("grad {n}"),
            &grads[&n],
            &f[&format!("joint.grad.{fx}")],
            1e-4,
        );
        assert_close(
            &format!("after {n}"),
            v.as_tensor(),
            &f[&format!("joint.after.{fx}")],
            1e-5,
        );
    }
    for (n, t) in model.buffers().unwrap() {
        let fx = fixture_name(&n);
        assert_close(
            &format!("after {n}"),
            &t,
            &f[&format!("joint.after.{fx}")],
            1e-5,
        );
    }
}

#[test]
fn ogm_step_matches_pytorch() {
    let f = fixtures();
    let dev = Device::Cpu;
    let model = tiny_model(&f);
    let labels = f["label"].to_dtype(DType::U32).unwrap();
    let keep = Tensor::ones((10, 2), DType::F32, &dev).unwrap();
    let inputs = [f["input_audio"].clone(), f["input_visual"].clone()];
    // Scores and coefficients from the split head's logits of the first forward.
    let score = |name: &str| {
        let p = candle_nn::ops::softmax_last_dim(&f[name]).unwrap();
        let l = labels.unsqueeze(1).unwrap();
        p.gather(&l, 1)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let (sa, sv) = (score("joint.logits_audio"), score("joint.logits_visual"));
    let want = |k: &str| f[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((sa as f32 - want("ogm.score_audio")[0]).abs() < 1e-5);
    assert!((sv as f32 - want("ogm.score_visual")[0]).abs() < 1e-5);
    let (coeff, _) = mmbal_methods::ogm_coefficients(&[sa, sv], 0.8);
    let wc = want("ogm.coeff");
    assert!(
        (coeff[0] as f32 - wc[0]).abs() < 1e-5 && (coeff[1] as f32 - wc[1]).abs() < 1e-5,
        "{coeff:?} vs {wc:?}"
    );
    assert!(
        wc.iter().any(|c| *c < 1.0),
        "the fixture modulates one modality"
    );
    // One SGD step with OGM (no noise): only the conv kernels of the dominant modality change
    // differently from the joint step.
    let opts: toml::Table = toml::from_str("alpha = 0.8").unwrap();
    let mut method = mmbal_methods::build_method("ogm", &opts).unwrap();
    let mut sgd = Sgd::new(model.params(), 0.1, 0.9, 1e-4);
    train_step(
        &model,
        method.as_mut(),
        &mut sgd,
        StepInputs {
            inputs: &inputs,
            labels: &labels,
            keep: &keep,
            rows: &[],
            frozen_encoders: &[],
        },
        StepIndex::default(),
    )
    .unwrap();
    for (n, v) in model.named_params() {
        let fx = fixture_name(&n);
        assert_close(
            &format!("after {n}"),
            v.as_tensor(),
            &f[&format!("ogm.after.{fx}")],
            1e-5,
        );
    }
}

#[test]
fn ogm_coefficients_and_ge_noise() {
    use mmbal_methods::ogm_coefficients;
    // Two modalities, audio dominant: rho_a = 3, k_a = 1 - tanh(0.8 * 3), visual untouched.
    let (k, rho) = ogm_coefficients(&[6.0, 2.0], 0.8);
    assert!((rho[0] - 3.0).abs() < 1e-12 && (rho[1] - 1.0 / 3.0).abs() < 1e-12);
    assert!((k[0] - (1.0 - (2.4f64).tanh())).abs() < 1e-12 && k[1] == 1.0);
    // A tie modulates audio with rho = 1 (the reference's else branch).
    let (k, _) = ogm_coefficients(&[2.0, 2.0], 0.8);
    assert!((k[0] - (1.0 - 0.8f64.tanh())).abs() < 1e-12 && k[1] == 1.0);
    // Three modalities: each against the mean of the others.
    let (k, rho) = ogm_coefficients(&[4.0, 2.0, 2.0], 0.5);
    assert!((rho[0] - 2.0).abs() < 1e-12 && (rho[1] - 2.0 / 3.0).abs() < 1e-12);
    assert!((k[0] - (1.0 - 1f64.tanh())).abs() < 1e-12 && k[1] == 1.0 && k[2] == 1.0);
}

#[test]
fn ogm_ge_noise_follows_each_gradient_std_and_spares_bn_and_head() {
    let f = fixtures();
    let dev = Device::Cpu;
    let model = tiny_model(&f);
    let labels = f["label"].to_dtype(DType::U32).unwrap();
    let keep = Tensor::ones((10, 2), DType::F32, &dev).unwrap();
    let inputs = [f["input_audio"].clone(), f["input_visual"].clone()];
    let out = model.forward(&inputs, Some(&keep), true).unwrap();
    let loss = candle_nn::loss::cross_entropy(&out.fused_logits, &labels).unwrap();
    let mut grads = Grads {
        store: loss.backward().unwrap(),
    };
    let before: Vec<(String, Tensor)> = model
        .named_params()
        .into_iter()
        .map(|(n, v)| (n, grads.get(&v).unwrap().clone()))
        .collect();
    let mut method = mmbal_methods::build_method("ogm-ge", &toml::Table::new()).unwrap();
    let ctx = StepCtx {
        epoch: 0,
        step: 0,
        batch: 0,
        batches: 1,
        model: &model,
        labels: &labels,
        keep: &keep,
        inputs: &[],
        rows: &[],
        turn: None,
    };
    method.edit_gradients(&ctx, &out, &mut grads).unwrap();
    let coeff: Vec<f32> = f["ogm.coeff"].to_vec1().unwrap();
    for ((n, v), (_, g0)) in model.named_params().iter().zip(&before) {
        let g1 = grads.get(v).unwrap();
        if v.rank() != 4 {
            assert_close(&format!("untouched {n}"), g1, g0, 0.0);
            continue;
        }
        let k = if n.contains("audio") {
            coeff[0]
        } else {
            coeff[1]
        } as f64;
        let noise = (g1 - (g0 * k).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let g = g0.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let sd = |x: &[f32]| {
            let m = x.iter().map(|v| *v as f64).sum::<f64>() / x.len() as f64;
            (x.iter().map(|v| (*v as f64 - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
        };
        let ratio = sd(&noise) / (sd(&g) + 1e-8);
        // 36 to 288 draws per tensor: the sample std is within 35% of the true one.
        assert!(
            (0.65..1.35).contains(&ratio),
            "{n}: noise std / grad std = {ratio}"
        );
    }
}

#[test]
fn pmr_steps_match_pytorch() {
    let f = fixtures();
    let dev = Device::Cpu;
    let labels = f["label"].to_dtype(DType::U32).unwrap();
    let ys: Vec<u32> = labels.to_vec1().unwrap();
    let keep = Tensor::ones((10, 2), DType::F32, &dev).unwrap();
    let inputs = [f["input_audio"].clone(), f["input_visual"].clone()];
    for variant in ["code", "paper"] {
        let model = tiny_model(&f);
        // Prototypes: per-class means of this batch's eval-mode features, by hand.
        let feats = model.encode(&inputs, false).unwrap();
        let mut state = HashMap::new();
        for (m, name) in ["audio", "visual"].iter().enumerate() {
            let rows = feats[m].to_vec2::<f32>().unwrap();
            let mut proto = vec![vec![0f32; 8]; 5];
            for (r, &y) in rows.iter().zip(&ys) {
                for j in 0..8 {
                    proto[y as usize][j] += r[j] / 2.0; // two samples per class
                }
            }
            let proto = Tensor::new(proto, &dev).unwrap();
            assert_close(
                &format!("prototypes {name}"),
                &proto,
                &f[&format!("pmr.proto_{name}")],
                1e-5,
            );
            state.insert(format!("prototypes.{m}"), proto);
        }
        let opts: toml::Table =
            toml::from_str(&format!("variant = \"{variant}\"\nalpha = 1.0\nmu = 0.01")).unwrap();
        let mut method = mmbal_methods::build_method("pmr", &opts).unwrap();
        method.load_state(&state).unwrap();
        let rho = f[&format!("pmr.{variant}.rho")].to_vec1::<f32>().unwrap()[0];
        assert!(rho > 1.0, "the fixture's audio leads");
        let mut sgd = Sgd::new(model.params(), 0.1, 0.9, 1e-4);
        let (loss, out) = train_step(
            &model,
            method.as_mut(),
            &mut sgd,
            StepInputs {
                inputs: &inputs,
                labels: &labels,
                keep: &keep,
                rows: &[],
                frozen_encoders: &[],
            },
            StepIndex::default(),
        )
        .unwrap();
        let want_loss = f[&format!("pmr.{variant}.loss")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(
            (loss as f32 - want_loss).abs() < 1e-5,
            "{variant}: loss {loss} vs {want_loss}"
        );
        let pl = mmbal_methods::prototype_logits(&out.features[0], &state["prototypes.0"]).unwrap();
        assert_close(
            &format!("{variant} proto logits"),
            &pl,
            &f[&format!("pmr.{variant}.logits_proto_audio")],
            1e-5,
        );
        for (n, v) in model.named_params() {
            let fx = fixture_name(&n);
            assert_close(
                &format!("{variant} after {n}"),
                v.as_tensor(),
                &f[&format!("pmr.{variant}.after.{fx}")],
                1e-5,
            );
        }
    }
}

/// A method wrapper that records the head weight gradient before and after the inner method's
/// edits, per backward pass.
struct HeadGrads {
    inner: Box<dyn BalanceMethod>,
    seen: Vec<(Tensor, Tensor)>,
}

impl BalanceMethod for HeadGrads {
    fn name(&self) -> &'static str {
        "head-grads"
    }
    fn step_plan(&self) -> mmbal_methods::StepPlan {
        self.inner.step_plan()
    }
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> anyhow::Result<Tensor> {
        self.inner.loss(ctx, out)
    }
    fn edit_gradients(
        &mut self,
        ctx: &StepCtx,
        out: &ForwardOut,
        grads: &mut Grads,
    ) -> anyhow::Result<()> {
        let w = ctx.model.vars().get("head.fc.weight").unwrap();
        let raw = grads.get(&w).unwrap().clone();
        self.inner.edit_gradients(ctx, out, grads)?;
        self.seen.push((raw, grads.get(&w).unwrap().clone()));
        Ok(())
    }
}

#[test]
fn mla_steps_match_pytorch() {
    let f = fixtures();
    let dev = Device::Cpu;
    let mut model = fixture_model(&f, FusionKind::Shared);
    for (n, v) in model.vars().named_under("head") {
        v.set(&f[&format!("mla.head_init.{}", n.trim_start_matches("fc."))])
            .unwrap();
    }
    let labels = f["label"].to_dtype(DType::U32).unwrap();
    let keep = Tensor::ones((10, 2), DType::F32, &dev).unwrap();
    let inputs = [f["input_audio"].clone(), f["input_visual"].clone()];
    // The per-sample entropy weighting, which the transcribed values describe.
    let per_sample: toml::Table = toml::from_str("inference = \"dynamic-per-sample\"").unwrap();
    let mut mla = mmbal_methods::build_method("mla", &per_sample).unwrap();
    mla.prepare_model(&mut model).unwrap();
    let mut method = HeadGrads {
        inner: mla,
        seen: Vec::new(),
    };
    let mut sgd = Sgd::new(model.params(), 0.1, 0.9, 1e-4);
    let at = StepIndex {
        epoch: 0,
        step: 0,
        batch: 0,
        batches: 10,
    };
    let (loss, _) = train_step(
        &model,
        &mut method,
        &mut sgd,
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
    let scalar = |k: &str| f[k].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    let want = scalar("mla.audio.loss") + scalar("mla.visual.loss");
    assert!(
        (loss as f32 - want).abs() < 1e-5,
        "summed loss {loss} vs {want}"
    );
    assert_eq!(method.seen.len(), 2);
    for (k, name) in ["audio", "visual"].iter().enumerate() {
        assert_close(
            &format!("{name} raw head grad"),
            &method.seen[k].0,
            &f[&format!("mla.{name}.head_grad_raw")],
            1e-4,
        );
        assert_close(
            &format!("{name} used head grad"),
            &method.seen[k].1,
            &f[&format!("mla.{name}.head_grad_used")],
            1e-4,
        );
    }
    let state: HashMap<String, Tensor> = method.inner.state().unwrap().into_iter().collect();
    assert_close(
        "P after both steps",
        &state["projector"],
        &f["mla.visual.P"],
        1e-5,
    );
    assert_close(
        "head after both steps",
        model.vars().get("head.fc.weight").unwrap().as_tensor(),
        &f["mla.visual.head_after.weight"],
        1e-5,
    );
    // Inference after both steps, eval-mode BatchNorm: fixed 0.55 / 0.45 and per-sample entropy weights.
    let out = model.forward(&inputs, None, false).unwrap();
    let fixed: toml::Table = toml::from_str("inference = \"fixed\"").unwrap();
    let mut m = mmbal_methods::build_method("mla", &fixed).unwrap();
    m.prepare_model(&mut model).unwrap();
    assert_close(
        "fixed fusion",
        &m.predict(&model, &out).unwrap().fused,
        &f["mla.eval.fixed"],
        1e-5,
    );
    let w = mmbal_methods::entropy_weights(&out.unimodal_logits).unwrap();
    assert_close("dynamic weights", &w, &f["mla.eval.dynamic_weights"], 1e-5);
    let dynamic = method.inner.predict(&model, &out).unwrap().fused;
    assert_close("dynamic fusion", &dynamic, &f["mla.eval.dynamic"], 1e-5);
}
