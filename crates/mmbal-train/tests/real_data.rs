//! Short joint-training runs on real data from the shared folder (MMBAL_SHARED_DATA), with the
//! committed example configs.

use mmbal_train::{Quiet, SplitMetrics, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn shared() -> Option<PathBuf> {
    // A relative path is taken from the workspace root, where the README's command runs.
    // Under CI a missing folder fails the test instead of skipping it.
    let dir =
        mmbal_data::datasets::shared_data_dir(&workspace()).unwrap_or_else(|e| panic!("{e:#}"));
    if dir.is_none() {
        eprintln!("MMBAL_SHARED_DATA is not set or not a folder: real-data training not run");
    }
    dir
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmbal-train-real-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn show(name: &str, m: &SplitMetrics) -> String {
    format!(
        "{name}: acc {:.3}, per modality {:?}",
        m.acc, m.modality_acc
    )
}

#[test]
fn avmnist_joint_training_learns_both_modalities() {
    let Some(shared) = shared() else { return };
    let mut cfg = TrainConfig::load(&workspace().join("configs/avmnist.toml")).unwrap();
    let out = tmp("avmnist");
    cfg.out_dir = out.clone();
    cfg.epochs = 4;
    cfg.data.card = Some(workspace().join("datasets/avmnist"));
    cfg.data.root = Some(shared.to_string_lossy().into_owned());
    let mut t = Trainer::from_config(cfg).unwrap();
    let summary = t.run(&mut Quiet).unwrap();
    let best = summary.best.unwrap();
    let val = best.val.as_ref().unwrap();
    let test = best.test.as_ref().unwrap();
    eprintln!(
        "AV-MNIST best epoch {}: {}; {}",
        best.epoch,
        show("val", val),
        show("test", test)
    );
    // Chance is 0.1. Val speakers are held out from training.
    assert!(val.acc > 0.5, "{}", show("val", val));
    assert!(val.modality_acc["image"] > 0.4, "{}", show("val", val));
    assert!(val.modality_acc["audio"] > 0.2, "{}", show("val", val));
    assert!(test.acc > 0.4, "{}", show("test", test));
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn grid_joint_training_is_clearly_above_chance_with_audio() {
    let Some(shared) = shared() else { return };
    let out = tmp("grid");
    let data = out.join("data");
    let opts = mmbal_preprocess::preprocess::PreprocessRecipe {
        fps: 25.0,
        ..Default::default()
    };
    let report =
        mmbal_preprocess::preprocess::preprocess_folder(&shared.join("grid-s1"), &data, &opts)
            .unwrap();
    assert_eq!(
        (report.done.len(), report.failed.len()),
        (200, 0),
        "{:?}",
        report.failed
    );
    let mut cfg = TrainConfig::load(&workspace().join("configs/grid.toml")).unwrap();
    cfg.out_dir = out.clone();
    cfg.epochs = 8;
    cfg.data.card = Some(workspace().join("datasets/grid-s1"));
    cfg.data.root = Some(data.to_string_lossy().into_owned());
    let mut t = Trainer::from_config(cfg).unwrap();
    let summary = t.run(&mut Quiet).unwrap();
    let best = summary.best.unwrap();
    let last = summary.last.unwrap();
    let (val, test) = (best.val.as_ref().unwrap(), last.test.as_ref().unwrap());
    eprintln!(
        "GRID best epoch {}: {}; last epoch {}: {}",
        best.epoch,
        show("val", val),
        last.epoch,
        show("test", test)
    );
    // Ten classes (chance 0.1), 30 clips per evaluation split, 140 for training.
    assert!(val.acc >= 0.25, "{}", show("val", val));
    assert!(test.modality_acc["audio"] >= 0.25, "{}", show("test", test));
    // Speech carries the digit far more clearly than lips: audio contributes more.
    let rows = t.dataset.rows(mmbal_data::Split::Train);
    let v = mmbal_valuation::valuate(
        &t.model,
        &t.dataset,
        &rows,
        16,
        mmbal_valuation::MaskRoute::Features,
        mmbal_valuation::Benefit::SizeIfCorrect,
        None,
    )
    .unwrap();
    let means = v.means();
    eprintln!(
        "GRID mean contributions after {} epochs: audio {:.3}, visual {:.3}",
        last.epoch, means[0], means[1]
    );
    assert!(
        means[0] > means[1],
        "audio {:.3} <= visual {:.3}",
        means[0],
        means[1]
    );
    let _ = std::fs::remove_dir_all(out);
}
