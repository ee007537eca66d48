//! UMT against BalanceBenchmark's implementation (GeWu-Lab/BalanceBenchmark at 4c1482f,
//! `UMT_trainer.py`; no code of the authors was found): the values in
//! tests/fixtures/umt_official.safetensors come from its own `training_step`, run by
//! tests/fixtures/gen_umt.py on given student and teacher features and a concat head (see that
//! script's docstring). `umt_loss` on the head's fused logits must give the same loss and the
//! same gradients for the student's features and the head: inside the distillation window (two
//! and three modalities) and outside it (cross-entropy only).

use candle_core::{DType, Device, Tensor, Var};
use mmbal_encoders::ModelVars;
use mmbal_fusion::{FusionHead, FusionKind, LinearInit};
use std::collections::HashMap;

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/umt_official.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

fn rel(got: &Tensor, want: &Tensor) -> f32 {
    let d = (got - want).unwrap().abs().unwrap().max_all().unwrap();
    let s = want.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-3)
}

fn scalar(f: &HashMap<String, Tensor>, k: &str) -> f64 {
    f[k].to_vec1::<f32>().unwrap()[0] as f64
}

#[test]
fn umt_loss_matches_balancebenchmark_training_step() {
    let f = fixture();
    let scaling = scalar(&f, "meta.scaling");
    let window = scalar(&f, "meta.modulation_starts")..=scalar(&f, "meta.modulation_ends");
    for (case, m) in [("in", 2), ("out", 2), ("three", 3)] {
        let vars = ModelVars::new();
        let head = FusionHead::new(
            FusionKind::Concat,
            &vec![8; m],
            5,
            LinearInit::Pytorch,
            vars.seeded(0, &Device::Cpu),
        )
        .unwrap();
        for name in ["weight", "bias"] {
            vars.get(&format!("fc.{name}"))
                .unwrap()
                .set(&f[&format!("{case}.{name}")])
                .unwrap();
        }
        let feats: Vec<Var> = (0..m)
            .map(|i| Var::from_tensor(&f[&format!("{case}.features.{i}")]).unwrap())
            .collect();
        let student: Vec<Tensor> = feats.iter().map(|v| v.as_tensor().clone()).collect();
        let teacher: Vec<Tensor> = (0..m)
            .map(|i| f[&format!("{case}.teacher.{i}")].clone())
            .collect();
        let labels = f[&format!("{case}.label")].to_dtype(DType::U32).unwrap();
        let out = head.forward(&student, None).unwrap();
        let distil = window.contains(&scalar(&f, &format!("{case}.epoch")));
        assert_eq!(distil, case != "out");
        let loss =
            mmbal_methods::umt_loss(&out.fused, &labels, &student, &teacher, scaling, distil)
                .unwrap();
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
