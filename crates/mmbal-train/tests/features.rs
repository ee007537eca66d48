//! Features and their t-SNE: three well-separated clusters of 16-D points stay apart in the
//! 2-D embedding (every point's nearest neighbour is of its cluster), exact and Barnes-Hut; the
//! same seed gives the same exact embedding; `export_features` writes the features, labels, embeddings and plots of a
//! trained run.

use candle_core::{Device, Tensor};
use mmbal_data::Split;
use mmbal_train::features::{export_features, tsne_2d, TsneOptions};
use mmbal_train::{Quiet, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};

#[test]
fn tsne_keeps_separated_clusters_apart() {
    // 60 points: the exact gradient; 600: Barnes-Hut.
    for per in [20, 200] {
        clusters_stay_apart(per);
    }
}

fn clusters_stay_apart(per: usize) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let d = 16;
    let mut values = Vec::new();
    let mut cluster = Vec::new();
    for c in 0..3 {
        for _ in 0..per {
            for j in 0..d {
                let centre = if j % 3 == c { 10.0 } else { 0.0 };
                values.push(centre + rng.random_range(-0.5f32..0.5));
            }
            cluster.push(c);
        }
    }
    let x = Tensor::from_vec(values, (3 * per, d), &Device::Cpu).unwrap();
    let o = TsneOptions {
        seed: 1,
        ..Default::default()
    };
    let e = tsne_2d(&x, o).unwrap();
    assert_eq!(e.len(), 3 * per);
    for (i, p) in e.iter().enumerate() {
        let nearest = (0..e.len())
            .filter(|&j| j != i)
            .min_by(|&a, &b| {
                let d = |q: &[f64; 2]| (q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2);
                d(&e[a]).total_cmp(&d(&e[b]))
            })
            .unwrap();
        assert_eq!(cluster[nearest], cluster[i], "{per} per cluster, point {i}");
    }
    // The exact gradient is reproducible; Barnes-Hut's parallel sums (bhtsne) are not bitwise.
    if 3 * per < 500 {
        assert_eq!(
            e,
            tsne_2d(&x, o).unwrap(),
            "the same seed, the same embedding"
        );
    }
    assert!(tsne_2d(&x.narrow(0, 0, 3).unwrap(), o).is_err());
}

#[test]
fn export_features_writes_npy_and_plots() {
    let out = std::env::temp_dir().join(format!("mmbal-features-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut c = TrainConfig {
        name: "f".into(),
        out_dir: out.clone(),
        epochs: 1,
        batch_size: 8,
        ..TrainConfig::default()
    };
    c.data.synthetic.classes = 3;
    c.data.synthetic.per_class = 20;
    let mut t = Trainer::from_config(c).unwrap();
    t.run(&mut Quiet).unwrap();
    let dir = out.join("features");
    let files = export_features(&t, Split::Test, &dir, Some(TsneOptions::default())).unwrap();
    for f in [
        "labels_test.npy",
        "features_test_audio.npy",
        "tsne_test_visual.npy",
        "tsne_test_audio.svg",
        "tsne_test_audio.png",
    ] {
        assert!(files.contains(&dir.join(f)), "{f}");
    }
    let (shape, _) = mmbal_data::npy::read_f32(&dir.join("tsne_test_audio.npy")).unwrap();
    let rows = t.dataset.rows(Split::Test).len();
    assert_eq!(shape, vec![rows, 2]);
    let (shape, _) = mmbal_data::npy::read_f32(&dir.join("features_test_visual.npy")).unwrap();
    assert_eq!(shape, vec![rows, t.model.encoder(1).out_dim()]);
    let _ = std::fs::remove_dir_all(out);
}
