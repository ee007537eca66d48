//! Diagnosing & Re-learning against the official code (GeWu-Lab/Diagnosing_Relearning_ECCV2024
//! at 025085e): tests/fixtures/relearning_official.safetensors holds features, labels, the
//! purities and re-initialisation weights of its own `reinit_score` (sklearn's MinMaxScaler and
//! KMeans, its `purity_score`) and a stand-in model's parameters before and after its `reinit`,
//! made by tests/fixtures/gen_relearning.py.
//!
//! The clusters in the fixture are tight and well separated, so any k-means finds the partition
//! sklearn found; the purities must then be equal exactly, the weights to rounding, and the
//! blend to float32 rounding.

mod common;

use candle_core::{Tensor, Var};
use common::{fixture, floats, ints};
use mmbal_methods::{
    relearning_blend, relearning_kmeans, relearning_min_max_scale, relearning_purity,
    relearning_weight,
};

#[test]
fn purities_and_weights_match_official_reinit_score() {
    let f = fixture("relearning_official");
    let lambda = floats(&f, "meta.move_lambda")[0];
    let k = ints(&f, "meta.n_classes")[0] as usize;
    let labels = |split: &str| -> Vec<u32> {
        f[&format!("{split}_label")]
            .to_vec1::<i64>()
            .unwrap()
            .iter()
            .map(|&l| l as u32)
            .collect()
    };
    let mut purity = std::collections::HashMap::new();
    for split in ["train", "val"] {
        for m in ["audio", "visual"] {
            let x = f[&format!("{split}_{m}")].to_vec2::<f32>().unwrap();
            let clusters = relearning_kmeans(&relearning_min_max_scale(&x), k, 0, 1, 300).unwrap();
            let p = relearning_purity(&labels(split), &clusters);
            let want = floats(&f, &format!("purity.{split}_{m}"))[0];
            assert!(
                (p - want).abs() < 1e-12,
                "{split} {m}: purity {p}, official {want}"
            );
            purity.insert((split, m), p);
        }
    }
    for m in ["audio", "visual"] {
        let w = relearning_weight(purity[&("train", m)], purity[&("val", m)], lambda);
        let want = floats(&f, &format!("weight.{m}"))[0];
        assert!((w - want).abs() < 1e-12, "{m}: weight {w}, official {want}");
    }
}

#[test]
fn blend_matches_official_reinit() {
    let f = fixture("relearning_official");
    for (m, prefix) in [("audio", "audio_net"), ("visual", "visual_net")] {
        let w = floats(&f, &format!("weight.{m}"))[0];
        let names: Vec<String> = f
            .keys()
            .filter_map(|k| k.strip_prefix("current."))
            .filter(|k| k.starts_with(prefix))
            .map(String::from)
            .collect();
        assert!(!names.is_empty());
        let vars: Vec<Var> = names
            .iter()
            .map(|n| Var::from_tensor(&f[&format!("current.{n}")]).unwrap())
            .collect();
        let init: Vec<Tensor> = names
            .iter()
            .map(|n| f[&format!("init.{n}")].clone())
            .collect();
        relearning_blend(&vars, &init, w).unwrap();
        for (n, v) in names.iter().zip(&vars) {
            let want = &f[&format!("after.{n}")];
            let diff = common::max_abs_diff(v.as_tensor(), want);
            assert!(diff < 1e-6, "{n}: blend differs by {diff}");
        }
    }
    // The head is not touched by the official reinit.
    let before = &f["current.fusion.weight"];
    let after = &f["after.fusion.weight"];
    assert_eq!(
        before.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        after.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn constant_columns_scale_to_minus_one_and_purity_votes_by_majority() {
    // sklearn maps a constant column to the range's lower end.
    let x = vec![vec![3.0f32, 1.0], vec![3.0, 5.0], vec![3.0, 3.0]];
    let s = relearning_min_max_scale(&x);
    assert_eq!(s, vec![vec![-1.0, -1.0], vec![-1.0, 1.0], vec![-1.0, 0.0]]);
    // Cluster 0 holds labels {2, 2, 1}, cluster 1 {0, 1}: 2 + 1 of 5 won.
    assert_eq!(
        relearning_purity(&[2, 2, 1, 0, 1], &[0, 0, 0, 1, 1]),
        3.0 / 5.0
    );
}
