//! MBSD against BalanceBenchmark's implementation (GeWu-Lab/BalanceBenchmark at 4c1482f,
//! `MBSD_trainer.py`; no code of the authors was found): the values in
//! tests/fixtures/mbsd_official.safetensors come from its own `training_step`, run by
//! tests/fixtures/gen_mbsd.py on given features and a concat head (see that script's docstring).
//! mmbal's loss (the cross-entropies plus `mbsd_terms` as the method composes them) must give the
//! same loss and the same gradients for the features and the head, for two modalities (the
//! logits' distance) and three (the probabilities').

use candle_core::{DType, Device, Tensor, Var};
use mmbal_encoders::ModelVars;
use mmbal_fusion::{FusionHead, FusionKind, LinearInit};
use std::collections::HashMap;

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/mbsd_official.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn rel(got: &Tensor, want: &Tensor) -> f32 {
    let d = (got - want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let s = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-3);
    d / s
}

#[test]
fn mbsd_loss_matches_balancebenchmark_training_step() {
    let f = fixture();
    for (case, m) in [("two", 2), ("three", 3)] {
        let vars = ModelVars::new();
        let head = FusionHead::new(
            FusionKind::Concat,
            &vec![8; m],
            5,
            LinearInit::Pytorch,
            vars.seeded(0, &Device::Cpu),
        )
        .unwrap();
        vars.get("fc.weight")
            .unwrap()
            .set(&f[&format!("{case}.weight")])
            .unwrap();
        vars.get("fc.bias")
            .unwrap()
            .set(&f[&format!("{case}.bias")])
            .unwrap();
        let feats: Vec<Var> = (0..m)
            .map(|i| Var::from_tensor(&f[&format!("{case}.features.{i}")]).unwrap())
            .collect();
        let features: Vec<Tensor> = feats.iter().map(|v| v.as_tensor().clone()).collect();
        let labels = f[&format!("{case}.label")].to_dtype(DType::U32).unwrap();
        let out = head.forward(&features, None).unwrap();
        // The weights are not all zero: some row has a modality that is right.
        let right = out
            .unimodal
            .iter()
            .map(|u| {
                u.argmax(1)
                    .unwrap()
                    .eq(&labels)
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum::<f32>();
        assert!(right > 0.0, "{case}: no modality right anywhere");
        let mut loss = candle_nn::loss::cross_entropy(&out.fused, &labels).unwrap();
        for u in &out.unimodal {
            loss = (loss + candle_nn::loss::cross_entropy(u, &labels).unwrap()).unwrap();
        }
        let terms = mmbal_methods::mbsd_terms(&out.unimodal, &labels, m == 2).unwrap();
        let loss = (loss + terms).unwrap();
        let want = &f[&format!("{case}.loss")];
        assert!(
            rel(&loss.reshape(1).unwrap(), want) < 1e-5,
            "{case}: loss {loss} vs {want}"
        );
        let grads = loss.backward().unwrap();
        for (i, v) in feats.iter().enumerate() {
            let r = rel(
                grads.get(v).unwrap(),
                &f[&format!("{case}.grad.features.{i}")],
            );
            assert!(r < 1e-4, "{case}: feature {i} gradient {r:e}");
        }
        for name in ["weight", "bias"] {
            let v = vars.get(&format!("fc.{name}")).unwrap();
            let r = rel(grads.get(&v).unwrap(), &f[&format!("{case}.grad.{name}")]);
            assert!(r < 1e-4, "{case}: head {name} gradient {r:e}");
        }
    }
}
