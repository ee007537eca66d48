//! CML against BalanceBenchmark's audio-visual implementation (GeWu-Lab/BalanceBenchmark at
//! 4c1482f, `CML_trainer.py`; the authors released multi-view code only): the values in
//! tests/fixtures/cml_official.safetensors come from its own `training_step` and `conf_loss`, run
//! by tests/fixtures/gen_cml.py on given features and a concat head (see that script's docstring
//! for the keys and the patch). mmbal's `cml_loss` with the `balancebenchmark` rule must give the
//! same loss and the same gradients for the features and the head, for two modalities in both
//! removal orders and for three. The authors' rule is checked by hand.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{case_features, check_case_grads, concat_head, fixture, rel};
use mmbal_methods::{cml_loss, ConfidenceRule};

#[test]
fn cml_loss_matches_balancebenchmark_training_step() {
    let f = fixture("cml_official");
    let lam = f["meta.lam"].to_vec1::<f32>().unwrap()[0] as f64;
    for (case, m) in [("two_va", 2), ("two_av", 2), ("three", 3)] {
        let (head, vars) = concat_head(
            m,
            &f[&format!("{case}.weight")],
            &f[&format!("{case}.bias")],
        );
        let feats = case_features(&f, case, m);
        let features: Vec<Tensor> = feats.iter().map(|v| v.as_tensor().clone()).collect();
        let labels = f[&format!("{case}.label")].to_dtype(DType::U32).unwrap();
        let order: Vec<usize> = f[&format!("{case}.order")]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as usize)
            .collect();
        let loss = cml_loss(
            &head,
            &features,
            &labels,
            &order,
            lam,
            ConfidenceRule::Balancebenchmark,
        )
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

/// The authors' rule by hand: one modality of two, a head whose reduced prediction gains
/// confidence on one row and loses it on another, and a row excused because the reduced
/// prediction is right where the full one is wrong.
#[test]
fn cml_authors_rule_by_hand() {
    let dev = Device::Cpu;
    // Two classes; features of width 8 with only the first entry used; fc: class 0 reads a, class
    // 1 reads v (weight 1 each), bias 0.
    let mut w = vec![0f32; 2 * 16];
    w[0] = 1.0; // class 0 <- a[0]
    w[16 + 8] = 1.0; // class 1 <- v[0]
    let (head, _) = concat_head(
        2,
        &Tensor::from_vec(w, (2, 16), &dev).unwrap(),
        &Tensor::zeros(2, DType::F32, &dev).unwrap(),
    );
    let row = |a: f32, v: f32| {
        let mut x = vec![0f32; 16];
        x[0] = a;
        x[8] = v;
        x
    };
    // Rows (a, v, label): removing v (order [v, a]? no: the end is popped; order [0, 1] removes 1 = v).
    let rows = [(1.0f32, 0.5f32, 0u32), (0.2, 1.0, 1), (0.3, 0.6, 0)];
    let data: Vec<f32> = rows.iter().flat_map(|&(a, v, _)| row(a, v)).collect();
    let x = Tensor::from_vec(data, (3, 16), &dev).unwrap();
    let features = vec![x.narrow(1, 0, 8).unwrap(), x.narrow(1, 8, 8).unwrap()];
    let labels = Tensor::new(&[0u32, 1, 0], &dev).unwrap();
    let loss = cml_loss(
        &head,
        &features,
        &labels,
        &[0, 1],
        1.0,
        ConfidenceRule::Authors,
    )
    .unwrap();
    // By hand: full logits (a, v), reduced (a, 0).
    let sm = |l0: f64, l1: f64| {
        let (e0, e1) = (l0.exp(), l1.exp());
        (e0 / (e0 + e1), e1 / (e0 + e1))
    };
    let mut ce = 0.0;
    let mut reg = 0.0;
    for &(a, v, y) in &rows {
        let (a, v) = (a as f64, v as f64);
        let full = sm(a, v);
        let red = sm(a, 0.0);
        let pick = |p: (f64, f64)| if y == 0 { p.0 } else { p.1 };
        ce += -pick(full).ln() - pick(red).ln();
        let conf_full = full.0.max(full.1);
        let conf_red = red.0.max(red.1);
        let pred_full = if full.0 >= full.1 { 0 } else { 1 };
        let pred_red = if red.0 >= red.1 { 0 } else { 1 };
        let excused = pred_red == y && pred_full != y;
        if !excused {
            reg += (conf_red - conf_full).max(0.0);
        }
    }
    let want = ce / 3.0 / 2.0 + reg;
    let got = loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    // Row 3 (a 0.3, v 0.6, label 0) is excused: the reduced prediction (class 0) is right, the
    // full one (class 1) wrong; without the excuse the regulariser is larger.
    let bb = cml_loss(
        &head,
        &features,
        &labels,
        &[0, 1],
        1.0,
        ConfidenceRule::Balancebenchmark,
    )
    .unwrap();
    assert!(bb.to_scalar::<f32>().unwrap() as f64 != got);
}
