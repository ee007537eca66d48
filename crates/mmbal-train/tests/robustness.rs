//! Missing modalities on the synthetic set, where the audio carries the label and the visual
//! only weakly: training with `[data] missing` zeroes the asked share of the rows (resumed
//! bitwise); the robustness curve of the audio falls monotonically as it goes missing, the
//! visual's stays near the full accuracy; per-subset accuracy and the 0% points agree with the
//! plain evaluation.

mod common;

use mmbal_data::Split;
use mmbal_train::checkpoint::Checkpoint;
use mmbal_train::optim::OptimizerConfig;
use mmbal_train::robustness::{evaluate_missing, robustness, subset_metrics};
use mmbal_train::{Quiet, TrainConfig, Trainer};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmbal-robust-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn config(out: &std::path::Path, name: &str, epochs: usize) -> TrainConfig {
    let mut c = TrainConfig {
        name: name.into(),
        out_dir: out.to_path_buf(),
        epochs,
        batch_size: 16,
        optimizer: OptimizerConfig::Adam {
            lr: 3e-3,
            weight_decay: 0.0,
            betas: [0.9, 0.999],
            eps: 1e-8,
        },
        ..TrainConfig::default()
    };
    c.data.synthetic.classes = 4;
    c.data.synthetic.per_class = 40;
    c
}

/// Joint training that records, per modality, the share of training rows it saw zeroed.
#[derive(Default)]
struct ZeroCounter {
    rows: usize,
    zeroed: [usize; 2],
    empty: usize,
}

impl mmbal_methods::BalanceMethod for ZeroCounter {
    fn name(&self) -> &'static str {
        "zero-counter"
    }
    fn loss(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
    ) -> anyhow::Result<candle_core::Tensor> {
        for r in ctx.rows {
            self.rows += 1;
            for m in 0..2 {
                self.zeroed[m] += usize::from(r.zeroed[m]);
            }
            self.empty += usize::from(r.zeroed.iter().all(|&z| z));
        }
        Ok(candle_nn::loss::cross_entropy(
            &out.fused_logits,
            ctx.labels,
        )?)
    }
    fn diagnostics(&self) -> Vec<(String, f64)> {
        let n = self.rows.max(1) as f64;
        vec![
            ("zeroed_audio".into(), self.zeroed[0] as f64 / n),
            ("zeroed_visual".into(), self.zeroed[1] as f64 / n),
            ("empty".into(), self.empty as f64),
        ]
    }
    /// Counts start afresh with each epoch.
    fn epoch_plan(
        &mut self,
        _ctx: &mmbal_methods::EpochCtx,
    ) -> anyhow::Result<Option<Vec<mmbal_data::Row>>> {
        *self = ZeroCounter::default();
        Ok(None)
    }
}

#[test]
fn training_with_missing_modalities_zeroes_the_asked_share_and_resumes() {
    mmbal_methods::register("zero-counter", |_| Ok(Box::<ZeroCounter>::default())).unwrap();
    let out = tmp("train");
    let with_missing = |name: &str, epochs: usize| {
        let mut c = config(&out, name, epochs);
        c.method.name = "zero-counter".into();
        c.data.missing.insert("audio".into(), 0.5);
        c
    };
    let whole = with_missing("whole", 2);
    Trainer::from_config(whole.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let log = std::fs::read_to_string(whole.run_dir().join("metrics.jsonl")).unwrap();
    for line in log.lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let audio = r["method"]["zeroed_audio"].as_f64().unwrap();
        assert!((audio - 0.5).abs() < 0.15, "{audio}");
        assert_eq!(r["method"]["zeroed_visual"].as_f64(), Some(0.0));
        assert_eq!(r["method"]["empty"].as_f64(), Some(0.0));
    }
    // Resumed after epoch 1: the same second epoch, bitwise.
    let first = with_missing("split", 1);
    Trainer::from_config(first.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    Trainer::resume(&first.run_dir().join("last.safetensors"), Some(2), None)
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let a = Checkpoint::load(&whole.run_dir().join("last.safetensors")).unwrap();
    let b = Checkpoint::load(&first.run_dir().join("last.safetensors")).unwrap();
    common::assert_checkpoints_equal(&a, &b, None, "resumed");
    // A modality the run does not have, or a rate above 1, is refused before training.
    let mut bad = config(&out, "bad", 1);
    bad.data.missing.insert("video".into(), 0.2);
    let err = Trainer::from_config(bad).err().expect("refused");
    assert!(format!("{err:#}").contains("`video`"), "{err:#}");
    let mut bad = config(&out, "bad2", 1);
    bad.data.missing.insert("audio".into(), 1.5);
    let err = Trainer::from_config(bad).err().expect("refused");
    assert!(format!("{err:#}").contains("between 0 and 1"), "{err:#}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn robustness_curves_fall_as_the_informative_modality_goes_missing() {
    let out = tmp("curves");
    let c = config(&out, "joint", 6);
    let mut t = Trainer::from_config(c).unwrap();
    t.run(&mut Quiet).unwrap();
    let full = t.evaluate(Split::Test).unwrap().unwrap();
    assert!(
        full.acc > 0.6,
        "the joint model learned too little: {}",
        full.acc
    );
    let curves = robustness(&t, Split::Test, 10).unwrap();
    assert_eq!(curves.len(), 2);
    let (audio, visual) = (&curves[0], &curves[1]);
    assert_eq!(audio.modality, "audio");
    assert_eq!(audio.points.len(), 11);
    for c in &curves {
        assert_eq!(
            c.points[0].acc, full.acc,
            "{}: 0% missing is the plain evaluation",
            c.modality
        );
    }
    let acc: Vec<f64> = audio.points.iter().map(|p| p.acc).collect();
    assert!(
        acc.windows(2).all(|w| w[1] <= w[0]),
        "audio missing: accuracy not monotone: {acc:?}"
    );
    assert!(acc[10] < acc[0] - 0.3, "{acc:?}");
    let v_end = visual.points[10].acc;
    assert!(
        v_end > acc[10],
        "the weak visual matters less: {v_end} vs {acc:?}"
    );
    // The same rows on every call.
    let again = evaluate_missing(&t, Split::Test, &[0.5, 0.0]).unwrap();
    assert_eq!(again.acc, audio.points[5].acc);
    // Every subset: audio alone, visual alone, both (the plain evaluation).
    let subsets = subset_metrics(&t, Split::Test).unwrap();
    let names: Vec<Vec<String>> = subsets.iter().map(|s| s.present.clone()).collect();
    assert_eq!(
        names,
        vec![
            vec!["audio".to_string()],
            vec!["visual".to_string()],
            vec!["audio".to_string(), "visual".to_string()]
        ]
    );
    assert_eq!(subsets[2].acc, full.acc);
    // Visual alone is every row missing the audio.
    assert_eq!(subsets[1].acc, acc[10]);
    let _ = std::fs::remove_dir_all(out);
}
