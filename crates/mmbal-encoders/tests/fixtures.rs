//! Stride-2 convolutions of mixed parity against PyTorch 2.11 reference values
//! (tests/fixtures/conv2d_stride2.safetensors).

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
fn stride2_forward_and_backward_match_pytorch() {
    let f = fixture("conv2d_stride2");
    for (tag, stride, padding) in [("odd_even", 2, 1), ("cremad_stem", 2, 3)] {
        let x = Var::from_tensor(&f[&format!("{tag}_x")]).unwrap();
        let w = Var::from_tensor(&f[&format!("{tag}_w")]).unwrap();
        let y = mmbal_encoders::conv2d(x.as_tensor(), w.as_tensor(), stride, padding).unwrap();
        assert!(
            max_rel_diff(&y, &f[&format!("{tag}_y")]) < 1e-5,
            "{tag}: forward"
        );
        let loss = (y * &f[&format!("{tag}_upstream")])
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        let dx = max_rel_diff(g.get(&x).unwrap(), &f[&format!("{tag}_dx")]);
        let dw = max_rel_diff(g.get(&w).unwrap(), &f[&format!("{tag}_dw")]);
        assert!(dx < 1e-5 && dw < 1e-5, "{tag}: dx {dx}, dw {dw}");
    }
}

#[test]
fn candle_own_backward_still_fails_on_mixed_parity() {
    // If candle fixes its conv2d backward, this test says so and the workaround can go.
    let x = Var::ones((1, 1, 9, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Var::ones((1, 1, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = x.as_tensor().conv2d(w.as_tensor(), 1, 2, 1, 1).unwrap();
    assert!(
        y.sum_all().unwrap().backward().is_err(),
        "candle's conv2d backward now handles mixed parity"
    );
}

#[test]
fn stem_max_pool_matches_pytorch() {
    let f = fixture("maxpool_3x3_s2_p1");
    let x = Var::from_tensor(&f["x"]).unwrap();
    let y = mmbal_encoders::max_pool2d(x.as_tensor(), 3, 2, 1).unwrap();
    assert_eq!(y.dims(), &[2, 3, 4, 3]);
    assert!(max_rel_diff(&y, &f["y"]) < 1e-7);
    let g = backward_against(&y, &f["upstream"]);
    assert!(max_rel_diff(g.get(&x).unwrap(), &f["dx"]) < 1e-6);
}

#[test]
fn max_pool_ties_send_the_gradient_to_the_first_maximum() {
    // All-equal input: every window's gradient goes to its first (top-left) element, as in PyTorch.
    let x = Var::ones((1, 1, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let y = mmbal_encoders::max_pool2d(x.as_tensor(), 2, 2, 0).unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let dx = g
        .get(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        dx,
        vec![1., 0., 1., 0., 0., 0., 0., 0., 1., 0., 1., 0., 0., 0., 0., 0.]
    );
}

#[test]
fn batch_norm_train_and_eval_match_pytorch() {
    let f = fixture("batchnorm");
    let bn = mmbal_encoders::BatchNorm2d::new(3, &Device::Cpu).unwrap();
    bn.weight.set(&f["weight"]).unwrap();
    bn.bias.set(&f["bias"]).unwrap();
    let x = Var::from_tensor(&f["x"]).unwrap();
    let y = bn.forward(x.as_tensor(), true).unwrap();
    assert!(max_rel_diff(&y, &f["y_train"]) < 1e-5);
    let g = backward_against(&y, &f["upstream"]);
    assert!(max_rel_diff(g.get(&x).unwrap(), &f["dx"]) < 1e-4);
    assert!(max_rel_diff(g.get(&bn.weight).unwrap(), &f["dweight"]) < 1e-5);
    assert!(max_rel_diff(g.get(&bn.bias).unwrap(), &f["dbias"]) < 1e-5);
    let (rm, rv) = bn.running_stats();
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
