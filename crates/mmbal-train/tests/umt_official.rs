//! UMT against BalanceBenchmark's implementation (GeWu-Lab/BalanceBenchmark at 4c1482f,
//! `UMT_trainer.py`; no code of the authors was found): the values in
//! tests/fixtures/umt_official.safetensors come from its own `training_step`, run by
//! tests/fixtures/gen_umt.py on given student and teacher features and a concat head (see that
//! script's docstring). `umt_loss` on the head's fused logits must give the same loss and the
//! same gradients for the student's features and the head: inside the distillation window (two
//! and three modalities) and outside it (cross-entropy only).

mod common;

use candle_core::{DType, Tensor};
use common::{case_features, check_case_grads, concat_head, fixture, rel, scalar};

#[test]
fn umt_loss_matches_balancebenchmark_training_step() {
    let f = fixture("umt_official");
    let scaling = scalar(&f, "meta.scaling");
    let window = scalar(&f, "meta.modulation_starts")..=scalar(&f, "meta.modulation_ends");
    for (case, m) in [("in", 2), ("out", 2), ("three", 3)] {
        let (head, vars) = concat_head(
            m,
            &f[&format!("{case}.weight")],
            &f[&format!("{case}.bias")],
        );
        let feats = case_features(&f, case, m);
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
        check_case_grads(&f, case, &grads, &feats, &vars);
    }
}
