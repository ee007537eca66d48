//! MBSD against BalanceBenchmark's implementation (GeWu-Lab/BalanceBenchmark at 4c1482f,
//! `MBSD_trainer.py`; no code of the authors was found): the values in
//! tests/fixtures/mbsd_official.safetensors come from its own `training_step`, run by
//! tests/fixtures/gen_mbsd.py on given features and a concat head (see that script's docstring).
//! mmbal's loss (the cross-entropies plus `mbsd_terms` as the method composes them) must give the
//! same loss and the same gradients for the features and the head, for two modalities (the
//! logits' distance) and three (the probabilities').

mod common;

use candle_core::{DType, Tensor};
use common::{case_features, check_case_grads, concat_head, fixture, rel};

#[test]
fn mbsd_loss_matches_balancebenchmark_training_step() {
    let f = fixture("mbsd_official");
    for (case, m) in [("two", 2), ("three", 3)] {
        let (head, vars) = concat_head(
            m,
            &f[&format!("{case}.weight")],
            &f[&format!("{case}.bias")],
        );
        let feats = case_features(&f, case, m);
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
        check_case_grads(&f, case, &grads, &feats, &vars);
    }
}
