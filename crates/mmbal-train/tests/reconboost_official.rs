//! ReconBoost against the authors' code (huacong/ReconBoost at 14ab57a): the values in
//! tests/fixtures/reconboost_official.safetensors come from `models/dynamic_net.py`'s `Head` and
//! `DynamicNet` and from `train.py`'s own loss statements, run by tests/fixtures/gen_reconboost.py
//! on given pooled features (see that script's docstring). The shared head `H` built from the
//! fixture's weights, with `reconboost_boost_loss`, `reconboost_ga` and `reconboost_ensemble`,
//! must give the same losses and the same gradients for the features, the head and the boost
//! rate: the first stage (no other ensemble member), a later stage (one other member, GA term
//! in the value only), three modalities (two other members) and the correction phase.

mod common;

use candle_core::{DType, Module, Tensor, Var};
use candle_nn::Linear;
use common::{fixture, rel, scalar};
use mmbal_methods::{reconboost_boost_loss, reconboost_ensemble, reconboost_ga, SharedMlp};
use std::collections::HashMap;

const HEAD: [&str; 4] = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"];

/// The shared head from the fixture, with its four variables in `HEAD` order.
fn head(f: &HashMap<String, Tensor>) -> (SharedMlp, Vec<Var>) {
    let vars: Vec<Var> = HEAD
        .iter()
        .map(|n| Var::from_tensor(&f[&format!("head.{n}")]).unwrap())
        .collect();
    let lin = |w: &Var, b: &Var| Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
    (
        SharedMlp::new(lin(&vars[0], &vars[1]), lin(&vars[2], &vars[3])),
        vars,
    )
}

fn check(
    f: &HashMap<String, Tensor>,
    case: &str,
    loss: &Tensor,
    feats: &[Var],
    head_vars: &[Var],
) -> candle_core::backprop::GradStore {
    let want = &f[&format!("{case}.loss")];
    let r = rel(&loss.reshape(1).unwrap(), want);
    assert!(r < 1e-5, "{case}: loss {loss} vs {want}");
    let grads = loss.backward().unwrap();
    for (i, v) in feats.iter().enumerate() {
        let want = &f[&format!("{case}.grad.features.{i}")];
        let got = match grads.get(v) {
            Some(g) => g.clone(),
            None => v.as_tensor().zeros_like().unwrap(),
        };
        let r = rel(&got, want);
        assert!(r < 1e-4, "{case}: feature {i} gradient {r:e}");
    }
    for (n, v) in HEAD.iter().zip(head_vars) {
        let r = rel(grads.get(v).unwrap(), &f[&format!("{case}.grad.head.{n}")]);
        assert!(r < 1e-4, "{case}: head {n} gradient {r:e}");
    }
    grads
}

#[test]
fn reconboost_losses_match_the_authors_code() {
    let f = fixture("reconboost_official");
    let (w1, w2, alpha) = (
        scalar(&f, "meta.weight1"),
        scalar(&f, "meta.weight2"),
        scalar(&f, "meta.alpha"),
    );
    // Boosting: (case, modalities, active, other ensemble members, GA term).
    for (case, m_count, active, others, ga) in [
        ("stage0", 2, 0, vec![], false),
        ("stage1", 2, 1, vec![0], true),
        ("three", 3, 0, vec![1, 2], false),
    ] {
        let (h, head_vars) = head(&f);
        let feats = common::case_features(&f, case, m_count);
        let labels = f[&format!("{case}.label")].to_dtype(DType::U32).unwrap();
        let beta = &f[&format!("{case}.boost_rate")];
        let own = h.forward(feats[active].as_tensor()).unwrap();
        let logits: Vec<Tensor> = others
            .iter()
            .map(|&j: &usize| h.forward(feats[j].as_tensor()).unwrap())
            .collect();
        let join = (!logits.is_empty()).then(|| reconboost_ensemble(&logits, beta).unwrap());
        let boost = reconboost_boost_loss(&own, join.as_ref(), &labels, w1, w2).unwrap();
        let want = &f[&format!("{case}.boosting_loss")];
        assert!(
            rel(&boost.reshape(1).unwrap(), want) < 1e-5,
            "{case}: boosting loss {boost} vs {want}"
        );
        let loss = if ga {
            let other = h.forward(feats[others[0]].as_tensor()).unwrap();
            let g = reconboost_ga(&own, &other).unwrap();
            let want = &f[&format!("{case}.ga_loss")];
            assert!(
                rel(&g.reshape(1).unwrap(), want) < 1e-5,
                "{case}: GA {g} vs {want}"
            );
            (boost + (g * alpha).unwrap()).unwrap()
        } else {
            boost
        };
        check(&f, case, &loss, &feats, &head_vars);
    }
    // Correction: the ensemble of both modalities, with the boost rate's gradient.
    let (h, head_vars) = head(&f);
    let feats = common::case_features(&f, "correct", 2);
    let labels = f["correct.label"].to_dtype(DType::U32).unwrap();
    let beta = Var::from_tensor(&f["correct.boost_rate"]).unwrap();
    let logits: Vec<Tensor> = feats
        .iter()
        .map(|x| h.forward(x.as_tensor()).unwrap())
        .collect();
    let fused = reconboost_ensemble(&logits, beta.as_tensor()).unwrap();
    let loss = candle_nn::loss::cross_entropy(&fused, &labels).unwrap();
    let grads = check(&f, "correct", &loss, &feats, &head_vars);
    let r = rel(grads.get(&beta).unwrap(), &f["correct.grad.boost_rate"]);
    assert!(r < 1e-4, "boost rate gradient {r:e}");
}
