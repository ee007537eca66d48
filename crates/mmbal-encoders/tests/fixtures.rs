//! BatchNorm2d against PyTorch 2.11 reference values (tests/fixtures/batchnorm.safetensors).

use candle_core::{safetensors, Device, Tensor, Var};
use std::collections::HashMap;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../tests/fixtures/{name}.safetensors"));
    safetensors::load(&path, &Device::Cpu).unwrap()
}

/// Gradients of `sum(y * upstream)`, as the fixtures' backward passes were made.
fn backward_against(y: &Tensor, upstream: &Tensor) -> candle_core::backprop::GradStore {
    (y * upstream)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / scale)
        .fold(0.0, f32::max)
}

#[test]
fn batch_norm_train_and_eval_match_pytorch() {
    let f = fixture("batchnorm");
    let vars = mmbal_encoders::ModelVars::new();
    let bn = mmbal_encoders::BatchNorm2d::new(3, vars.seeded(0, &Device::Cpu)).unwrap();
    bn.weight.set(&f["weight"]).unwrap();
    bn.bias.set(&f["bias"]).unwrap();
    let x = Var::from_tensor(&f["x"]).unwrap();
    let y = bn.forward(x.as_tensor(), true).unwrap();
    assert!(max_rel_diff(&y, &f["y_train"]) < 1e-5);
    let g = backward_against(&y, &f["upstream"]);
    assert!(max_rel_diff(g.get(&x).unwrap(), &f["dx"]) < 1e-4);
    assert!(max_rel_diff(g.get(&bn.weight).unwrap(), &f["dweight"]) < 1e-5);
    assert!(max_rel_diff(g.get(&bn.bias).unwrap(), &f["dbias"]) < 1e-5);
    let (rm, rv) = bn.running_stats().unwrap();
    assert!(max_rel_diff(&rm, &f["running_mean"]) < 1e-6);
    assert!(
        max_rel_diff(&rv, &f["running_var"]) < 1e-6,
        "running variance must use the unbiased batch variance"
    );
    let y_eval = bn.forward(x.as_tensor(), false).unwrap();
    assert!(max_rel_diff(&y_eval, &f["y_eval"]) < 1e-5);
    assert!(
        max_rel_diff(&y_eval, &f["y_train"]) > 1e-3,
        "eval mode must differ from train mode"
    );
}

/// candle-nn's own `BatchNorm` on the same fixture: it too normalises with the biased batch
/// variance and moves the running variance with the unbiased one, so PyTorch's semantics do not
/// decide between the two. `BatchNorm2d` stays mmbal's for speed: its CPU path is one fused
/// kernel with a hand-written backward (`mmbal_ops::batch_norm_train`), where candle-nn's is a
/// dozen element-wise ops under autograd. This test keeps the check honest if candle-nn changes.
#[test]
fn candle_nn_batch_norm_has_pytorchs_running_statistics_too() {
    let f = fixture("batchnorm");
    let dev = Device::Cpu;
    let tensors = HashMap::from([
        ("weight".to_string(), f["weight"].clone()),
        ("bias".to_string(), f["bias"].clone()),
        (
            "running_mean".to_string(),
            Tensor::zeros(3, candle_core::DType::F32, &dev).unwrap(),
        ),
        (
            "running_var".to_string(),
            Tensor::ones(3, candle_core::DType::F32, &dev).unwrap(),
        ),
    ]);
    let vb = candle_nn::VarBuilder::from_tensors(tensors, candle_core::DType::F32, &dev);
    let bn = candle_nn::batch_norm(3, candle_nn::BatchNormConfig::default(), vb).unwrap();
    let y = bn.forward_train(&f["x"]).unwrap();
    assert!(max_rel_diff(&y, &f["y_train"]) < 1e-5);
    assert!(max_rel_diff(bn.running_mean(), &f["running_mean"]) < 1e-6);
    assert!(max_rel_diff(bn.running_var(), &f["running_var"]) < 1e-6);
}
