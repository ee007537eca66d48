//! DI-MML against the authors' code (fanyunfeng-bit/DI-MML at 83b9b7a): the values in
//! tests/fixtures/dimml_official.safetensors come from `main_CFT.py`'s own `get_indices` and
//! `train_epoch`, `SupConLoss`, and `main_CFT_stage2.py`'s prediction statements, run by
//! tests/fixtures/gen_dimml.py (see that script's docstring). The dimensions picked, the first
//! stage's loss with its gradients (features, own classifiers, shared classifier), the
//! contrastive term with an empty side, and the confidence-weighted prediction must match.

mod common;

use candle_core::{DType, Module, Tensor, Var};
use candle_nn::Linear;
use common::{fixture, ints, rel, scalar};
use mmbal_methods::{dimml_contrast, dimml_fuse, dimml_top_dimensions};
use std::collections::HashMap;

fn usizes(f: &HashMap<String, Tensor>, k: &str) -> Vec<usize> {
    ints(f, k).into_iter().map(|i| i as usize).collect()
}

fn labels(f: &HashMap<String, Tensor>, k: &str) -> Tensor {
    f[k].to_dtype(DType::U32).unwrap()
}

#[test]
fn dimensions_are_the_references() {
    let f = fixture("dimml_official");
    let y: Vec<u32> = labels(&f, "idx.label").to_vec1().unwrap();
    let top0 = dimml_top_dimensions(&f["idx.features.0"], &y, 6).unwrap();
    let top1 = dimml_top_dimensions(&f["idx.features.1"], &y, 6).unwrap();
    let only = |a: &[usize], b: &[usize]| -> Vec<usize> {
        a.iter().copied().filter(|j| !b.contains(j)).collect()
    };
    let (want0, want1) = (usizes(&f, "idx.audio_only"), usizes(&f, "idx.image_only"));
    assert!(!want0.is_empty() && !want1.is_empty());
    assert_eq!(only(&top0, &top1), want0);
    assert_eq!(only(&top1, &top0), want1);
}

#[test]
fn first_stage_loss_and_gradients_are_the_references() {
    let f = fixture("dimml_official");
    let feats: Vec<Var> = (0..2)
        .map(|i| Var::from_tensor(&f[&format!("step.features.{i}")]).unwrap())
        .collect();
    let layer = |p: &str| -> (Linear, Var, Var) {
        let w = Var::from_tensor(&f[&format!("{p}.weight")]).unwrap();
        let b = Var::from_tensor(&f[&format!("{p}.bias")]).unwrap();
        (
            Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone())),
            w,
            b,
        )
    };
    let own = [layer("step.own.0"), layer("step.own.1")];
    let shared = layer("step.shared");
    let y = labels(&f, "step.label");
    let weight = scalar(&f, "meta.weight");
    let ce = |l: &Tensor| candle_nn::loss::cross_entropy(l, &y).unwrap();
    // The method's stage-1 loss, as `DiMml::loss` composes it.
    let mut loss = (ce(&own[0].0.forward(feats[0].as_tensor()).unwrap())
        + ce(&own[1].0.forward(feats[1].as_tensor()).unwrap()))
    .unwrap();
    for x in &feats {
        let align = ce(&shared.0.forward(x.as_tensor()).unwrap());
        loss = (loss + (align * weight).unwrap()).unwrap();
    }
    let c = dimml_contrast(
        feats[0].as_tensor(),
        feats[1].as_tensor(),
        &usizes(&f, "step.audio_only"),
        &usizes(&f, "step.image_only"),
        scalar(&f, "meta.temperature"),
    )
    .unwrap();
    assert!(rel(&c.reshape(1).unwrap(), &f["step.loss_c"]) < 1e-5, "{c}");
    let loss = (loss + c).unwrap();
    assert!(
        rel(&loss.reshape(1).unwrap(), &f["step.loss"]) < 1e-5,
        "{loss}"
    );
    let g = loss.backward().unwrap();
    let check = |v: &Var, k: &str| {
        let r = rel(g.get(v).unwrap(), &f[k]);
        assert!(r < 1e-4, "{k}: {r:e}");
    };
    for (i, x) in feats.iter().enumerate() {
        check(x, &format!("step.grad.features.{i}"));
        check(&own[i].1, &format!("step.grad.own.{i}.weight"));
        check(&own[i].2, &format!("step.grad.own.{i}.bias"));
    }
    check(&shared.1, "step.grad.shared.weight");
    check(&shared.2, "step.grad.shared.bias");
}

#[test]
fn contrast_with_an_empty_side_is_the_references() {
    let f = fixture("dimml_official");
    let (a, v) = (
        Var::from_tensor(&f["con.a"]).unwrap(),
        Var::from_tensor(&f["con.v"]).unwrap(),
    );
    let loss = dimml_contrast(
        a.as_tensor(),
        v.as_tensor(),
        &usizes(&f, "con.audio_only"),
        &usizes(&f, "con.image_only"),
        1.0,
    )
    .unwrap();
    assert!(
        rel(&loss.reshape(1).unwrap(), &f["con.loss"]) < 1e-5,
        "{loss}"
    );
    let g = loss.backward().unwrap();
    // The empty side pulls nothing: the reference's gradient of `a` is all zeros.
    assert!(g.get(&a).is_none());
    assert_eq!(common::max_abs(&f["con.grad.a"]), 0.0);
    assert!(rel(g.get(&v).unwrap(), &f["con.grad.v"]) < 1e-4);
}

#[test]
fn prediction_is_the_references_weighted_sum() {
    let f = fixture("dimml_official");
    let logits: Vec<Tensor> = (1..=3).map(|k| f[&format!("fuse.{k}")].clone()).collect();
    for (t, key) in [(1.0, "fuse.out.t1"), (0.5, "fuse.out.t0.5")] {
        let got = dimml_fuse(&logits, t).unwrap();
        assert!(rel(&got, &f[key]) < 1e-5, "temperature {t}");
    }
}
