//! The trainer end to end on the generated synthetic dataset: a run stopped after epoch 1 and
//! resumed from its checkpoint ends exactly where an uninterrupted run does; configs reject
//! unknown keys; selection uses val.

mod common;

use common::{assert_checkpoints_equal, max_abs_diff};
use mmbal_train::checkpoint::Checkpoint;
use mmbal_train::optim::OptimizerConfig;
use mmbal_train::{Quiet, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmbal-trainer-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small(out: &std::path::Path, name: &str, optimizer: OptimizerConfig) -> TrainConfig {
    let mut c = TrainConfig {
        name: name.into(),
        out_dir: out.to_path_buf(),
        epochs: 2,
        batch_size: 4,
        optimizer,
        ..TrainConfig::default()
    };
    c.data.synthetic.classes = 3;
    c.data.synthetic.per_class = 10;
    c
}

/// The run's `last.safetensors`.
fn last_checkpoint(c: &TrainConfig) -> Checkpoint {
    Checkpoint::load(&c.run_dir().join("last.safetensors")).unwrap()
}

fn set_method(c: &mut TrainConfig, name: &str) {
    c.method.name = name.into();
    match name {
        "sample-level" | "modality-level" => {
            c.method
                .options
                .insert("warmup".into(), toml::Value::Integer(1));
        }
        // Curation from the first epoch, MMTM after the small CNNs' stages 1 and 2.
        "greedy" => {
            c.model.fusion = mmbal_fusion::FusionKind::Sum;
            let t: toml::Table = toml::from_str("start_epoch = 0\nmmtm_after = [1, 2]").unwrap();
            c.method.options = t;
        }
        "mla" => c.model.fusion = mmbal_fusion::FusionKind::Shared,
        "qmf" | "lfm" => c.model.fusion = mmbal_fusion::FusionKind::Sum,
        "g-blending" | "mmpareto" => c.model.fusion = mmbal_fusion::FusionKind::Blend,
        // Short stages: two boosting epochs and one correction; a small shared head.
        "reconboost" => {
            c.method.options =
                toml::from_str("epochs_per_stage = 2\ncorrect_epochs = 1\nhidden = 16").unwrap();
        }
        // Stage 1 (contrastive from its first epoch) for one epoch, then stage 2.
        "di-mml" => {
            c.model.fusion = mmbal_fusion::FusionKind::Blend;
            c.method.options = toml::from_str("stage1_epochs = 1\ncontrast_start = 0").unwrap();
        }
        // Stops a branch after one epoch without a new best.
        "mses" => {
            c.model.fusion = mmbal_fusion::FusionKind::Blend;
            c.method.options = toml::from_str("patience = 1").unwrap();
        }
        // A diagnosis after epoch 1, so the re-initialisation happens as epoch 2 (the third)
        // starts.
        "relearning" => {
            let t: toml::Table = toml::from_str("reinit_epoch = 1\nreinit_num = 1").unwrap();
            c.method.options = t;
            c.epochs = c.epochs.max(3);
        }
        // One teacher (UME: member) per modality: a one-epoch run of this config on that
        // modality alone.
        "umt" | "ume" => {
            let mut t = c.clone();
            t.epochs = 1;
            let teachers = mmbal_train::train_teachers(&t).unwrap();
            c.method
                .options
                .insert("teachers".into(), toml::Value::Table(teachers));
        }
        // Drops from the second epoch (the reference's warm-up is 6 epochs).
        "opm" => {
            c.method
                .options
                .insert("start_epoch".into(), toml::Value::Integer(1));
        }
        _ => {}
    }
}

/// Records without the wall-clock fields, and without Greedy's end-of-training utilisation
/// except in the last record (a run stopped early measures it at its own last epoch).
fn comparable(log: &str) -> Vec<serde_json::Value> {
    let n = log.lines().count();
    log.lines()
        .enumerate()
        .map(|(i, l)| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("train_seconds");
            o.remove("train_samples_per_s");
            o.remove("peak_memory_mib");
            if let Some(m) = o.get_mut("method").and_then(|m| m.as_object_mut()) {
                m.remove("valuation_seconds");
                if i + 1 < n {
                    m.retain(|k, _| {
                        !k.starts_with("greedy_util")
                            && !k.starts_with("greedy_val_acc")
                            && k != "greedy_d_util"
                    });
                }
            }
            v
        })
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let out = tmp("resume");
    let adam = OptimizerConfig::Adam {
        lr: 3e-3,
        weight_decay: 1e-4,
        betas: [0.9, 0.999],
        eps: 1e-8,
    };
    for (tag, opt, method) in [
        ("sgd", OptimizerConfig::default(), "joint"),
        ("adam", adam.clone(), "joint"),
        // The plan made at the end of epoch 1 must survive the checkpoint.
        ("sample-level", adam.clone(), "sample-level"),
        ("modality-level", adam.clone(), "modality-level"),
        ("ogm-ge", adam.clone(), "ogm-ge"),
        ("pmr", adam.clone(), "pmr"),
        ("greedy", adam.clone(), "greedy"),
        ("mla", adam.clone(), "mla"),
        ("g-blending", adam.clone(), "g-blending"),
        ("mmcosine", adam.clone(), "mmcosine"),
        ("opm", adam.clone(), "opm"),
        ("mmpareto", adam.clone(), "mmpareto"),
        ("inforeg", adam.clone(), "inforeg"),
        ("qmf", adam.clone(), "qmf"),
        ("lfm", adam.clone(), "lfm"),
        ("cml", adam.clone(), "cml"),
        ("mbsd", adam.clone(), "mbsd"),
        ("amco", adam.clone(), "amco"),
        ("agm", adam.clone(), "agm"),
        ("mslr", adam.clone(), "mslr"),
        ("mses", adam.clone(), "mses"),
        ("reconboost", adam.clone(), "reconboost"),
        ("ume", adam.clone(), "ume"),
        // Split at the stage boundary.
        ("di-mml", adam.clone(), "di-mml"),
        ("umt", adam, "umt"),
    ] {
        let mut whole = small(&out, &format!("{tag}-whole"), opt.clone());
        set_method(&mut whole, method);
        let mut t = Trainer::from_config(whole.clone()).unwrap();
        let summary = t.run(&mut Quiet).unwrap();
        assert_eq!(summary.last.as_ref().unwrap().epoch, 2);

        let mut first = small(&out, &format!("{tag}-split"), opt);
        set_method(&mut first, method);
        first.epochs = 1;
        Trainer::from_config(first.clone())
            .unwrap()
            .run(&mut Quiet)
            .unwrap();
        let ck = first.run_dir().join("last.safetensors");
        let mut resumed = Trainer::resume(&ck, Some(2), None).unwrap();
        assert_eq!(resumed.epochs_done(), 1);
        resumed.run(&mut Quiet).unwrap();

        let a = Checkpoint::load(&whole.run_dir().join("last.safetensors")).unwrap();
        let b = Checkpoint::load(&first.run_dir().join("last.safetensors")).unwrap();
        // UME trains nothing, so it has no optimizer state.
        assert_eq!(
            a.tensors.keys().any(|k| k.starts_with("optim.")),
            method != "ume",
            "{tag}"
        );
        assert_checkpoints_equal(&a, &b, None, &format!("{tag}, after resume"));
        let la = std::fs::read_to_string(whole.run_dir().join("metrics.jsonl")).unwrap();
        let lb = std::fs::read_to_string(first.run_dir().join("metrics.jsonl")).unwrap();
        assert_eq!(
            comparable(&la),
            comparable(&lb),
            "{tag}: metrics differ after resume"
        );
        assert_eq!(a.meta["epochs_done"], "2");
        if method == "sample-level" {
            // Epoch 2 trained on the resampled plan: more rows than the 18 samples
            // (deterministic for this seed).
            let rows = comparable(&la)[1]["train"]["samples"].as_u64().unwrap();
            assert!(rows > 18, "{tag}: epoch 2 had {rows} rows");
        }
        if method.ends_with("-level") {
            assert!(a.tensors.contains_key("method.plan"), "{tag}");
        }
        if method == "greedy" {
            // The conditional utilisation rates are measured after the last epoch only.
            let log = comparable(&la);
            assert!(log[0]["method"].get("greedy_d_util").is_none());
            let m = &log[1]["method"];
            let (u10, u01) = (
                m["greedy_util_1_given_0"].as_f64().unwrap(),
                m["greedy_util_0_given_1"].as_f64().unwrap(),
            );
            assert!(u10 <= 1.0 && u01 <= 1.0, "{m}");
            assert_eq!(m["greedy_d_util"].as_f64().unwrap(), u10 - u01);
            let acc0 = m["greedy_val_acc_0"].as_f64().unwrap();
            let cut0 = m["greedy_val_acc_0_without_1"].as_f64().unwrap();
            if acc0 > 0.0 {
                assert!((u10 - (acc0 - cut0) / acc0).abs() < 1e-12, "{m}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn run_writes_logs_and_selects_on_val() {
    let out = tmp("select");
    let mut cfg = small(&out, "select", OptimizerConfig::default());
    cfg.epochs = 3;
    let mut t = Trainer::from_config(cfg.clone()).unwrap();
    let summary = t.run(&mut Quiet).unwrap();
    let dir = cfg.run_dir();
    for f in [
        "config.toml",
        "metrics.jsonl",
        "summary.json",
        "best.safetensors",
        "last.safetensors",
    ] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let log = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    // The best epoch is the first with the highest val accuracy, whatever test says.
    let val: Vec<f64> = records
        .iter()
        .map(|r| r["val"]["acc"].as_f64().unwrap())
        .collect();
    let best = val.iter().cloned().fold(f64::MIN, f64::max);
    let first_best = val.iter().position(|v| *v == best).unwrap() + 1;
    assert_eq!(summary.best.as_ref().unwrap().epoch, first_best);
    let r = &records[0];
    assert_eq!(r["val"]["samples"], 6);
    assert_eq!(r["test"]["samples"], 6);
    assert_eq!(r["train"]["samples"], 18);
    assert!(r["train"]["modality_acc"]["audio"].is_number());
    assert!(r["val"]["macro_f1"].is_number());
    // Imbalance and memory per epoch; parameters and compute in the summary.
    let (a, v) = (
        r["val"]["modality_acc"]["audio"].as_f64().unwrap(),
        r["val"]["modality_acc"]["visual"].as_f64().unwrap(),
    );
    assert_eq!(
        r["imbalance"]["unimodal_gap"].as_f64().unwrap(),
        (a - v).abs()
    );
    assert!(
        r["imbalance"].get("contribution_ratio").is_none(),
        "not tracked"
    );
    assert!(r["peak_memory_mib"].as_f64().unwrap() > 0.0);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let cost = &s["cost"];
    let params: usize = t.model.params().iter().map(|p| p.elem_count()).sum();
    let counted: u64 = cost["params"]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, params);
    assert!(cost["macs_per_sample"]["encoders.audio"].as_u64().unwrap() > 0);
    assert_eq!(
        cost["macs_per_sample"]["head"].as_u64().unwrap(),
        t.model.head.macs()
    );
    // The saved config reads back to the same config.
    let saved = TrainConfig::load(&dir.join("config.toml")).unwrap();
    assert_eq!(saved, cfg);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn configs_reject_unknown_keys_and_name_the_file() {
    let file = std::path::Path::new("bad.toml");
    let err = TrainConfig::from_toml("epochs = 3\nepoch = 4\n", file).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("bad.toml") && msg.contains("epoch"), "{msg}");
    let err =
        TrainConfig::from_toml("[model]\nfusion = \"concat\"\nfussion = 1\n", file).unwrap_err();
    assert!(format!("{err:#}").contains("fussion"));
    let err = TrainConfig::from_toml(
        "[data.recipes.audio]\nkind = \"audio\"\nsample_rate = 8000\nframes = 10\nfront_end = { kind = \"fbank\", num_mel_bin = 40 }\n",
        file,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("num_mel_bin"), "{err:#}");
    // Every field has a default; the defaults round-trip through TOML.
    let d = TrainConfig::default();
    assert_eq!(TrainConfig::from_toml("", file).unwrap(), d);
    assert_eq!(TrainConfig::from_toml(&d.to_toml(), file).unwrap(), d);
    // Method options travel with the method name.
    let c = TrainConfig::from_toml("[method]\nname = \"joint\"\nalpha = 0.5\n", file).unwrap();
    assert_eq!(c.method.options["alpha"].as_float(), Some(0.5));
    let out = tmp("method");
    let mut bad = small(&out, "m", OptimizerConfig::default());
    bad.method = c.method.clone();
    let err = Trainer::from_config(bad.clone()).err().unwrap();
    assert!(format!("{err:#}").contains("takes no options"), "{err:#}");
    bad.method.name = "magic".into();
    bad.method.options.clear();
    let err = Trainer::from_config(bad.clone()).err().unwrap();
    assert!(format!("{err:#}").contains("known: joint"), "{err:#}");
    // A recipe for a modality the dataset does not have.
    let mut extra = small(&out, "x", OptimizerConfig::default());
    let r = extra.data.recipes["audio"].clone();
    extra.data.recipes.insert("sound".into(), r);
    let err = Trainer::from_config(extra).err().unwrap();
    assert!(
        format!("{err:#}").contains("no modality `sound`"),
        "{err:#}"
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn input_masking_runs_the_whole_model() {
    use candle_core::Tensor;
    use mmbal_data::Split;
    use mmbal_valuation::{value_batch, values_from_logits, Benefit, MaskRoute};
    let out = tmp("routes");
    let cfg = small(&out, "routes", OptimizerConfig::default());
    let mut t = Trainer::from_config(TrainConfig { epochs: 1, ..cfg }).unwrap();
    t.run(&mut Quiet).unwrap(); // trained BatchNorm statistics: a zero input is not a zero feature
    let rows = t.dataset.rows(Split::Train);
    let batch = t.dataset.batch(&rows[..8], None).unwrap();
    let labels = batch.labels.to_vec1::<u32>().unwrap();
    let x = &batch.inputs;
    // By hand: each coalition is a full forward pass with the other inputs set to zero.
    let zero = |m: usize| x[m].zeros_like().unwrap();
    let coalitions: [Vec<Tensor>; 3] = [
        vec![x[0].clone(), zero(1)],
        vec![zero(0), x[1].clone()],
        vec![x[0].clone(), x[1].clone()],
    ];
    let mut logits = vec![Vec::new()];
    for inputs in &coalitions {
        let l = t.model.forward(inputs, None, false).unwrap().fused_logits;
        logits.push(l.to_vec2::<f32>().unwrap());
    }
    let want = values_from_logits(&logits, &labels, 2, Benefit::SizeIfCorrect).unwrap();
    let got = value_batch(
        &t.model,
        x,
        &labels,
        MaskRoute::Inputs,
        Benefit::SizeIfCorrect,
    )
    .unwrap();
    assert_eq!(got, want);
    // The feature route differs on single-modality coalitions but not on the full one.
    let f = t.model.encode(x, false).unwrap();
    let keep = Tensor::new(&[[1f32, 0.]], &candle_core::Device::Cpu)
        .unwrap()
        .broadcast_as((8, 2))
        .unwrap();
    let by_feature = t
        .model
        .head
        .forward(&f, Some(&keep.contiguous().unwrap()))
        .unwrap()
        .fused;
    let d = (by_feature - Tensor::new(logits[1].clone(), &candle_core::Device::Cpu).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d > 1e-4, "routes agree on the audio-only coalition ({d})");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn methods_train_with_three_modalities_where_defined() {
    let out = tmp("three");
    // Every registered method; the third modality is a WAV like audio: same recipe and encoder.
    for method in mmbal_methods::METHODS.iter().map(|(n, _)| *n) {
        let mut c = small(&out, method, OptimizerConfig::default());
        c.data.synthetic.modalities = 3;
        let hum = c.data.recipes["audio"].clone();
        c.data.recipes.insert("hum".into(), hum);
        let enc = c.model.encoders["audio"].clone();
        c.model.encoders.insert("hum".into(), enc);
        c.monitor_score_ratio = true;
        set_method(&mut c, method);
        if method == "inforeg" {
            // One proximal strength per modality: the default pair is refused for three.
            let err = Trainer::from_config(c.clone()).err().expect("refused");
            assert!(format!("{err:#}").contains("modalities"), "{err:#}");
            let beta = toml::Value::try_from(vec![0.95, 0.1, 0.1]).unwrap();
            c.method.options.insert("beta".into(), beta);
        }
        let t = Trainer::from_config(c);
        // Defined for two modalities only: refused up front, naming the requirement.
        if method == "greedy" || method == "agm" || method == "di-mml" {
            let err = t.err().expect("refuses three modalities");
            assert!(
                format!("{err:#}").contains("exactly 2 modalities"),
                "{err:#}"
            );
            continue;
        }
        let mut t = t.unwrap();
        assert_eq!(t.model.num_modalities(), 3);
        let summary = t.run(&mut Quiet).unwrap();
        let last = summary.last.unwrap();
        assert_eq!(last.score_ratio.len(), 3, "{method}");
        assert_eq!(last.train.modality_acc.len(), 3, "{method}");
        if method.ends_with("-level") {
            let npy = out.join(format!("{method}/contributions/epoch_002.npy"));
            let (shape, _) = mmbal_data::npy::read_f32(&npy).unwrap();
            assert_eq!(shape[1], 3, "{method}");
        }
    }
    let _ = std::fs::remove_dir_all(out);
}

/// Re-learning diagnoses after epoch 1 and re-initialises as epoch 2 starts: the third epoch's
/// record carries each modality's purities and alpha, and the encoders (not the head) moved
/// toward their initial weights; a run stopped after epoch 2 and resumed equals the whole run,
/// bitwise.
#[test]
fn relearning_reinitialises_between_epochs_and_resumes_across_it() {
    let out = tmp("relearning");
    let config = |name: &str, epochs: usize| {
        let mut c = small(&out, name, OptimizerConfig::default());
        set_method(&mut c, "relearning");
        c.epochs = epochs;
        c
    };
    let whole = config("whole", 3);
    let mut t = Trainer::from_config(whole.clone()).unwrap();
    t.run(&mut Quiet).unwrap();
    let log = std::fs::read_to_string(whole.run_dir().join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 3);
    let method = |r: &serde_json::Value, k: &str| r["method"].get(k).and_then(|v| v.as_f64());
    assert_eq!(
        method(&records[1], "relearning_alpha_0"),
        None,
        "no diagnosis before epoch 2"
    );
    for m in 0..2 {
        let a = method(&records[2], &format!("relearning_alpha_{m}")).expect("alpha");
        let pt = method(&records[2], &format!("relearning_purity_train_{m}")).unwrap();
        let pv = method(&records[2], &format!("relearning_purity_val_{m}")).unwrap();
        assert!(
            (0.0..=1.0).contains(&pt) && (0.0..=1.0).contains(&pv),
            "{pt} {pv}"
        );
        assert!(
            (a - (3.0 * (pt - pv).abs()).tanh()).abs() < 1e-12,
            "alpha {a}"
        );
    }

    let first = config("split", 2);
    Trainer::from_config(first.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let mut resumed =
        Trainer::resume(&first.run_dir().join("last.safetensors"), Some(3), None).unwrap();
    resumed.run(&mut Quiet).unwrap();
    let a = Checkpoint::load(&whole.run_dir().join("last.safetensors")).unwrap();
    let b = Checkpoint::load(&first.run_dir().join("last.safetensors")).unwrap();
    assert_checkpoints_equal(&a, &b, None, "relearning, resumed");
    let split_log = std::fs::read_to_string(first.run_dir().join("metrics.jsonl")).unwrap();
    assert_eq!(comparable(&log), comparable(&split_log));
    let _ = std::fs::remove_dir_all(out);
}

/// The soft re-initialisation moves every encoder parameter, and nothing else, to
/// `alpha * initial + (1 - alpha) * current`.
#[test]
fn relearning_blend_moves_encoders_toward_their_initial_weights() {
    let out = tmp("relearning-blend");
    let c = small(&out, "blend", OptimizerConfig::default());
    let t = Trainer::from_config(c).unwrap();
    let enc = t.model.group(mmbal_fusion::ParamGroup::Encoder(0)).unwrap();
    let initial: Vec<candle_core::Tensor> =
        enc.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
    for v in &enc {
        v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
    }
    mmbal_methods::relearning_blend(&enc, &initial, 0.25).unwrap();
    for (v, t0) in enc.iter().zip(&initial) {
        // 0.25 * t0 + 0.75 * (t0 + 1) = t0 + 0.75
        let d = max_abs_diff(v.as_tensor(), &(t0 + 0.75).unwrap());
        assert!(d < 1e-6, "{d}");
    }
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn committed_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    let paths = std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("paper")).unwrap())
        .map(|e| e.unwrap().path());
    for path in paths {
        if path.extension().and_then(|e| e.to_str()) == Some("toml") {
            let c = TrainConfig::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
            assert!(mmbal_methods::METHODS
                .iter()
                .any(|(m, _)| *m == c.method.name));
            n += 1;
        }
    }
    assert!(n >= 7, "{n} configs");
}

/// An epoch record with the given val and test accuracies (everything else plain).
fn record(epoch: usize, val: f64, test: f64) -> mmbal_train::EpochRecord {
    let split = |acc: f64| {
        serde_json::json!({"samples": 6, "loss": 1.0, "acc": acc, "macro_f1": acc,
            "modality_acc": {}})
    };
    serde_json::from_value(serde_json::json!({
        "epoch": epoch, "lr": 0.1, "train": split(0.5), "val": split(val), "test": split(test),
        "method": {}, "score_ratio": {}, "contributions": {}, "train_seconds": 1.0,
        "train_samples_per_s": 1.0
    }))
    .unwrap()
}

#[test]
fn selection_follows_val_never_test() {
    use mmbal_train::Selection;
    // Epoch 2 is best on test, epoch 3 on val (epoch 4 ties it and comes later).
    let records = [
        record(1, 0.40, 0.40),
        record(2, 0.50, 0.90),
        record(3, 0.70, 0.60),
        record(4, 0.70, 0.80),
    ];
    let pick = |sel: Selection| {
        let mut best: Option<&mmbal_train::EpochRecord> = None;
        for r in &records {
            if sel.prefers(r, best) {
                best = Some(r);
            }
        }
        best.unwrap().epoch
    };
    assert_eq!(pick(Selection::Val), 3);
    assert_eq!(pick(Selection::Last), 4);
}

#[test]
fn no_val_split_is_an_error_unless_the_last_epoch_is_selected() {
    let out = tmp("noval");
    let data = out.join("data");
    mmbal_data::datasets::generate_synthetic(&data, 3, 10, 0, 2).unwrap();
    let split = std::fs::read_to_string(data.join("split.csv")).unwrap();
    std::fs::write(data.join("split.csv"), split.replace(",val", ",train")).unwrap();
    let mut cfg = small(&out, "noval", OptimizerConfig::default());
    cfg.data.synthetic.dir = Some(data);
    cfg.epochs = 2;
    let err = Trainer::from_config(cfg.clone()).err().expect("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no val split") && msg.contains("select = \"last\""),
        "{msg}"
    );
    // Refused before the input cache was built.
    assert!(cfg.data.cache);
    assert!(
        !cfg.run_dir().join("inputs.mmbc").exists(),
        "the cache was built before the refusal"
    );
    cfg.select = mmbal_train::Selection::Last;
    let summary = Trainer::from_config(cfg.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    assert_eq!(summary.best.as_ref().unwrap().epoch, 2);
    let written = std::fs::read_to_string(cfg.run_dir().join("summary.json")).unwrap();
    assert!(written.contains("\"selection\": \"last\""), "{written}");
}

#[test]
fn g_blending_estimation_puts_the_model_back_bit_for_bit() {
    let out = tmp("gblend-restore");
    let mut cfg = small(&out, "gblend", OptimizerConfig::default());
    set_method(&mut cfg, "g-blending");
    let mut t = Trainer::from_config(cfg).unwrap();
    let values = |m: &mmbal_fusion::MultimodalModel| -> Vec<(String, Vec<f32>)> {
        let mut v: Vec<(String, Vec<f32>)> = m
            .named_params()
            .into_iter()
            .map(|(n, p)| (n, p.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        v.extend(
            m.buffers()
                .unwrap()
                .into_iter()
                .map(|(n, b)| (n, b.flatten_all().unwrap().to_vec1().unwrap())),
        );
        v
    };
    let before = values(&t.model);
    let ctx = mmbal_methods::EpochCtx {
        epoch: 0,
        epochs: 2,
        seed: t.config.seed,
        batch_size: t.config.batch_size,
        model: &t.model,
        dataset: &t.dataset,
        out_dir: None,
    };
    // Offline mode estimates the weights at the start of epoch 0: each head is trained alone
    // (weights and BatchNorm statistics move), then the model is put back.
    t.method.epoch_plan(&ctx).unwrap();
    let weights: Vec<f64> = t
        .method
        .diagnostics()
        .into_iter()
        .filter(|(k, _)| k.starts_with("gblend_weight"))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(weights.len(), 3, "{:?}", t.method.diagnostics());
    assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-6);
    let after = values(&t.model);
    assert_eq!(before.len(), after.len());
    for ((n, a), (_, b)) in before.iter().zip(&after) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n} changed by the estimation"
        );
    }
}

#[test]
fn a_non_finite_loss_stops_the_run_and_writes_no_checkpoint() {
    let out = tmp("nan");
    let cfg = small(
        &out,
        "nan",
        OptimizerConfig::Sgd {
            lr: 1e30,
            momentum: 0.0,
            weight_decay: 0.0,
        },
    );
    let err = Trainer::from_config(cfg.clone())
        .unwrap()
        .run(&mut Quiet)
        .expect_err("a run with lr 1e30 must stop");
    let msg = format!("{err:#}");
    assert!(msg.contains("epoch 1, batch "), "{msg}");
    assert!(
        msg.contains("the loss is") || msg.contains("is not finite"),
        "{msg}"
    );
    assert!(msg.contains("nothing was saved"), "{msg}");
    for f in ["last.safetensors", "best.safetensors", "summary.json"] {
        assert!(!cfg.run_dir().join(f).exists(), "{f} was written");
    }
}

#[test]
fn one_training_per_run_folder_and_no_silent_overwrite() {
    let out = tmp("lock");
    let mut cfg = small(&out, "locked", OptimizerConfig::default());
    cfg.epochs = 1;
    let mut first = Trainer::from_config(cfg.clone()).unwrap();
    // A second training of the same run while the first holds it.
    let err = Trainer::from_config(cfg.clone()).err().expect("refused");
    assert!(
        format!("{err:#}").contains("another training is writing this run folder"),
        "{err:#}"
    );
    first.run(&mut Quiet).unwrap();
    drop(first);
    // Done: a fresh run of the same name is refused, its results untouched...
    let log = std::fs::read_to_string(cfg.run_dir().join("metrics.jsonl")).unwrap();
    let err = Trainer::from_config(cfg.clone())
        .unwrap()
        .run(&mut Quiet)
        .expect_err("refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("holds the results of an earlier run") && msg.contains("--overwrite"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read_to_string(cfg.run_dir().join("metrics.jsonl")).unwrap(),
        log
    );
    // ... unless replacing it was asked for.
    let mut again = Trainer::from_config(cfg.clone()).unwrap();
    again.set_overwrite(true);
    again.run(&mut Quiet).unwrap();
}

#[test]
fn summary_names_the_epochs_of_the_checkpoints_beside_it() {
    let out = tmp("summary");
    let mut cfg = small(&out, "summary", OptimizerConfig::default());
    cfg.epochs = 3;
    let summary = Trainer::from_config(cfg.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let dir = cfg.run_dir();
    let written: mmbal_train::RunSummary =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let epochs = |f: &str| -> usize {
        Checkpoint::load(&dir.join(f))
            .unwrap()
            .meta("epochs_done")
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(written.best.unwrap().epoch, epochs("best.safetensors"));
    assert_eq!(written.last.unwrap().epoch, epochs("last.safetensors"));
    assert_eq!(summary.last.unwrap().epoch, 3);
    assert!(!dir.join("best.safetensors.tmp").exists());
}

#[test]
fn config_values_that_would_fail_late_are_errors_naming_the_key() {
    let out = tmp("validate");
    let base = small(&out, "validate", OptimizerConfig::default());
    let err = |c: TrainConfig| format!("{:#}", Trainer::from_config(c).err().expect("refused"));
    let mut c = base.clone();
    c.batch_size = 0;
    assert!(err(c).contains("batch_size = 0"));
    let mut c = base.clone();
    c.epochs = 0;
    assert!(err(c).contains("epochs = 0"));
    for bad in [-1.0, 0.0, f64::NAN] {
        let mut c = base.clone();
        c.optimizer = OptimizerConfig::Sgd {
            lr: bad,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        assert!(err(c).contains("[optimizer] lr ="), "lr {bad}");
    }
    for name in ["", "a/b", "..", "/tmp/x", "a\\b"] {
        let mut c = base.clone();
        c.name = name.into();
        assert!(
            err(c).contains("a run name is one folder name"),
            "name `{name}`"
        );
    }
    let mut c = base.clone();
    c.model.encoders.insert(
        "audio".into(),
        mmbal_fusion::EncoderSpec::from(mmbal_fusion::SmallCnnOptions {
            in_channels: 1,
            width: 0,
            bn_init: Default::default(),
        }),
    );
    let msg = err(c);
    assert!(
        msg.contains("[model.encoders.audio]") && msg.contains("width = 0"),
        "{msg}"
    );
    // Encoders are built by kind: an unknown kind names the known ones, and an unknown option
    // names itself.
    let mut c = base.clone();
    c.model.encoders.get_mut("audio").unwrap().kind = "vit".into();
    let msg = err(c);
    assert!(
        msg.contains("unknown encoder kind `vit`; known: resnet18, small-cnn"),
        "{msg}"
    );
    let mut c = base.clone();
    let audio = c.model.encoders.get_mut("audio").unwrap();
    audio
        .options
        .insert("widht".into(), toml::Value::Integer(4));
    let msg = err(c);
    assert!(
        msg.contains("widht") && msg.contains("[model.encoders.audio]"),
        "{msg}"
    );
    let mut c = base.clone();
    c.model.encoders.insert(
        "visual".into(),
        mmbal_fusion::EncoderSpec::from(mmbal_fusion::Resnet18Options {
            in_channels: 3,
            width: 0.125,
            pretrained: None,
            bn_init: Default::default(),
        }),
    );
    let msg = err(c);
    assert!(
        msg.contains("modality `visual`") && msg.contains("in_channels = 3"),
        "{msg}"
    );
}

#[test]
fn a_checkpoint_can_be_evaluated_while_its_run_trains() {
    let out = tmp("open");
    let mut cfg = small(&out, "open", OptimizerConfig::default());
    cfg.epochs = 1;
    Trainer::from_config(cfg.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let last = cfg.run_dir().join("last.safetensors");
    // The run goes on (holding its folder) while its best checkpoint is evaluated.
    let _training = Trainer::resume(&last, Some(2), None).unwrap();
    let mut eval = Trainer::open(&cfg.run_dir().join("best.safetensors"), None).unwrap();
    assert!(eval.evaluate(mmbal_data::Split::Val).unwrap().is_some());
    let err = eval.run(&mut Quiet).expect_err("opened to evaluate");
    assert!(format!("{err:#}").contains("not to train"), "{err:#}");
}

#[test]
fn greedy_with_unequal_channels_is_refused_before_training() {
    let out = tmp("greedy-widths");
    let mut cfg = small(&out, "greedy-widths", OptimizerConfig::default());
    set_method(&mut cfg, "greedy");
    cfg.model.encoders.insert(
        "visual".into(),
        mmbal_fusion::EncoderSpec::from(mmbal_fusion::SmallCnnOptions {
            in_channels: 1,
            width: 4,
            bn_init: Default::default(),
        }),
    );
    let err = format!("{:#}", Trainer::from_config(cfg).err().expect("refused"));
    assert!(err.contains("mmtm_mean_source = \"own\""), "{err}");
}

#[test]
fn contribution_tracking_leaves_greedys_training_unchanged() {
    // Its valuation forwards would feed the MMTM running means; the trainer restores them.
    let out = tmp("greedy-track");
    let mut runs = Vec::new();
    for track in [false, true] {
        let mut cfg = small(
            &out,
            &format!("greedy-track-{track}"),
            OptimizerConfig::default(),
        );
        set_method(&mut cfg, "greedy");
        cfg.track_contributions = track;
        Trainer::from_config(cfg.clone())
            .unwrap()
            .run(&mut Quiet)
            .unwrap();
        runs.push(Checkpoint::load(&cfg.run_dir().join("last.safetensors")).unwrap());
    }
    assert_checkpoints_equal(&runs[0], &runs[1], None, "contributions tracked");
}

#[test]
fn a_methods_requirements_are_checked_before_anything_is_written() {
    let out = tmp("requirements");
    // Greedy on the default concat head.
    let mut cfg = small(&out, "requirements", OptimizerConfig::default());
    cfg.method.name = "greedy".into();
    assert!(cfg.data.cache);
    let err = format!(
        "{:#}",
        Trainer::from_config(cfg.clone()).err().expect("refused")
    );
    assert!(
        err.contains("set [model] fusion = \"sum\" (the config has \"concat\")"),
        "{err}"
    );
    // Refused before the input cache was built.
    assert!(!cfg.run_dir().join("inputs.mmbc").exists());
    // G-Blending estimates on val; without val rows it is refused up front, not at its
    // first estimate.
    let data = out.join("data");
    mmbal_data::datasets::generate_synthetic(&data, 3, 10, 0, 2).unwrap();
    let split = std::fs::read_to_string(data.join("split.csv")).unwrap();
    std::fs::write(data.join("split.csv"), split.replace(",val", ",train")).unwrap();
    let mut cfg = small(&out, "requirements-val", OptimizerConfig::default());
    cfg.data.synthetic.dir = Some(data);
    cfg.select = mmbal_train::Selection::Last;
    set_method(&mut cfg, "g-blending");
    let err = format!(
        "{:#}",
        Trainer::from_config(cfg.clone()).err().expect("refused")
    );
    assert!(
        err.contains("`g-blending` estimates on the val split"),
        "{err}"
    );
    assert!(!cfg.run_dir().join("metrics.jsonl").exists());
}

#[test]
fn a_run_saves_every_option_of_its_method_and_resumes_from_them() {
    let out = tmp("options");
    let mut cfg = small(&out, "options", OptimizerConfig::default());
    cfg.epochs = 1;
    cfg.method.name = "ogm".into();
    cfg.method.options = toml::from_str("alpha = 0.5").unwrap();
    Trainer::from_config(cfg.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let saved = TrainConfig::load(&cfg.run_dir().join("config.toml")).unwrap();
    let o = &saved.method.options;
    assert_eq!(o["alpha"].as_float(), Some(0.5));
    assert_eq!(o["end_epoch"].as_integer(), Some(50));
    // `ogm` takes no `ge` option: a saved one would make the run impossible to resume.
    assert!(!o.contains_key("ge"), "{o:?}");
    let summary = Trainer::resume(&cfg.run_dir().join("last.safetensors"), Some(2), None)
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let last = summary.last.as_ref().unwrap();
    assert_eq!(last.epoch, 2);
    // The score-ratio monitor is opt-in: off, the log has no such field.
    assert!(last.score_ratio.is_empty());
    let log = std::fs::read_to_string(cfg.run_dir().join("metrics.jsonl")).unwrap();
    assert!(!log.contains("score_ratio"), "{log}");
}

/// Joint training with the visual encoder's learning rate at 0 and the audio encoder's at 2.
struct SlowVisual;

impl mmbal_methods::BalanceMethod for SlowVisual {
    fn name(&self) -> &'static str {
        "slow-visual"
    }
    fn lr_scales(
        &mut self,
        _ctx: &mmbal_methods::EpochCtx,
    ) -> anyhow::Result<Vec<(mmbal_fusion::ParamGroup, f64)>> {
        use mmbal_fusion::ParamGroup;
        Ok(vec![
            (ParamGroup::Encoder(1), 0.0),
            (ParamGroup::Encoder(0), 2.0),
        ])
    }
}

#[test]
fn a_method_sets_learning_rates_per_parameter_group() {
    mmbal_methods::register("slow-visual", |_| Ok(Box::new(SlowVisual))).unwrap();
    let out = tmp("lr-scales");
    let mut cfg = small(&out, "lr-scales", OptimizerConfig::default());
    cfg.epochs = 1;
    cfg.method.name = "slow-visual".into();
    // A method that does not list its options keeps the table it was given.
    cfg.method.options = toml::from_str("note = \"kept\"").unwrap();
    let mut t = Trainer::from_config(cfg.clone()).unwrap();
    let values = |t: &Trainer| -> Vec<(String, Vec<f32>)> {
        t.model
            .named_params()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
            .collect()
    };
    let before = values(&t);
    t.run(&mut Quiet).unwrap();
    let after = values(&t);
    let (mut visual, mut audio, mut head) = (0, 0, 0);
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        if name.starts_with("encoders.visual.") {
            assert_eq!(a, b, "{name} moved at learning-rate factor 0");
            visual += 1;
        } else if a != b {
            if name.starts_with("encoders.audio.") {
                audio += 1;
            } else {
                head += 1;
            }
        }
    }
    assert!(
        visual > 0 && audio > 0 && head > 0,
        "{visual} {audio} {head}"
    );
    let saved = TrainConfig::load(&cfg.run_dir().join("config.toml")).unwrap();
    assert_eq!(saved.method.options["note"].as_str(), Some("kept"));
}

/// Joint training that records what a step sees: its rows and inputs.
#[derive(Default)]
struct RowRecorder {
    seen: Vec<usize>,
    inputs: usize,
}

impl mmbal_methods::BalanceMethod for RowRecorder {
    fn name(&self) -> &'static str {
        "row-recorder"
    }
    fn loss(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
    ) -> anyhow::Result<candle_core::Tensor> {
        assert_eq!(ctx.rows.len(), ctx.labels.dim(0)?);
        self.seen.extend(ctx.rows.iter().map(|r| r.sample));
        self.inputs = ctx.inputs.len();
        Ok(candle_nn::loss::cross_entropy(
            &out.fused_logits,
            ctx.labels,
        )?)
    }
    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut distinct = self.seen.clone();
        distinct.sort();
        distinct.dedup();
        vec![
            ("rows".into(), self.seen.len() as f64),
            ("distinct".into(), distinct.len() as f64),
            ("inputs".into(), self.inputs as f64),
        ]
    }
}

#[test]
fn a_step_sees_its_rows_and_inputs() {
    mmbal_methods::register("row-recorder", |_| Ok(Box::<RowRecorder>::default())).unwrap();
    let out = tmp("rows");
    let mut cfg = small(&out, "rows", OptimizerConfig::default());
    cfg.epochs = 1;
    cfg.method.name = "row-recorder".into();
    let mut t = Trainer::from_config(cfg).unwrap();
    let train = t.dataset.rows(mmbal_data::Split::Train).len() as f64;
    let last = t.run(&mut Quiet).unwrap().last.unwrap();
    // Every training sample once, identified by its manifest index.
    assert_eq!(last.method["rows"], train);
    assert_eq!(last.method["distinct"], train);
    assert_eq!(last.method["inputs"], 2.0);
}

/// Joint training with the backward pass run by the method (`step_gradients`); with `empty`,
/// it returns no gradients at all.
struct OwnBackward {
    empty: bool,
}

impl mmbal_methods::BalanceMethod for OwnBackward {
    fn name(&self) -> &'static str {
        "own-backward"
    }
    fn step_gradients(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
    ) -> anyhow::Result<Option<(candle_core::Tensor, mmbal_methods::Grads)>> {
        let loss = candle_nn::loss::cross_entropy(&out.fused_logits, ctx.labels)?;
        let mut grads = mmbal_methods::Grads {
            store: loss.backward()?,
        };
        if self.empty {
            for v in ctx.model.params() {
                grads.remove(&v);
            }
        }
        Ok(Some((loss, grads)))
    }
}

#[test]
fn a_method_may_compute_the_gradients_itself() {
    mmbal_methods::register("own-backward", |o| {
        Ok(Box::new(OwnBackward {
            empty: o.get("empty").and_then(|v| v.as_bool()).unwrap_or(false),
        }))
    })
    .unwrap();
    let out = tmp("own-backward");
    let run = |name: &str, method: &str, empty: bool| {
        let mut cfg = small(&out, name, OptimizerConfig::default());
        cfg.epochs = 1;
        cfg.method.name = method.into();
        if empty {
            cfg.method.options = toml::from_str("empty = true").unwrap();
        }
        let mut t = Trainer::from_config(cfg).unwrap();
        let before: Vec<Vec<f32>> = t
            .model
            .params()
            .iter()
            .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        t.run(&mut Quiet).unwrap();
        let after: Vec<Vec<f32>> = t
            .model
            .params()
            .iter()
            .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (before, after)
    };
    // The same backward, run by the method: bitwise joint training.
    let (_, joint) = run("joint", "joint", false);
    let (_, own) = run("own", "own-backward", false);
    assert!(
        joint == own,
        "a method's own backward differs from the trainer's"
    );
    // The gradients it returns are the ones stepped: none, no change.
    let (before, after) = run("empty", "own-backward", true);
    assert!(before == after);
}

/// Joint training of the fused logits divided by a learned temperature the method owns.
struct LearnedTemperature {
    t: candle_core::Var,
}

impl mmbal_methods::BalanceMethod for LearnedTemperature {
    fn name(&self) -> &'static str {
        "learned-temperature"
    }
    fn params(&self) -> Vec<(String, candle_core::Var)> {
        vec![("temperature".into(), self.t.clone())]
    }
    fn loss(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
    ) -> anyhow::Result<candle_core::Tensor> {
        let logits = out.fused_logits.broadcast_div(self.t.as_tensor())?;
        Ok(candle_nn::loss::cross_entropy(&logits, ctx.labels)?)
    }
}

#[test]
fn a_methods_own_parameters_train_and_resume() {
    mmbal_methods::register("learned-temperature", |_| {
        Ok(Box::new(LearnedTemperature {
            t: candle_core::Var::new(&[1.0f32], &candle_core::Device::Cpu)?,
        }))
    })
    .unwrap();
    let out = tmp("method-params");
    let cfg = |name: &str, epochs| {
        let mut c = small(&out, name, OptimizerConfig::default());
        c.epochs = epochs;
        c.method.name = "learned-temperature".into();
        c
    };
    let whole = cfg("whole", 2);
    Trainer::from_config(whole.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let first = cfg("first", 1);
    Trainer::from_config(first.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let t1 = Checkpoint::load(&first.run_dir().join("last.safetensors")).unwrap();
    let after_one = t1.section("method_param")["temperature"]
        .to_vec1::<f32>()
        .unwrap()[0];
    assert_ne!(after_one, 1.0, "the temperature was trained");
    Trainer::resume(&first.run_dir().join("last.safetensors"), Some(2), None)
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let a = Checkpoint::load(&whole.run_dir().join("last.safetensors")).unwrap();
    let b = Checkpoint::load(&first.run_dir().join("last.safetensors")).unwrap();
    for section in ["method_param", "model"] {
        let (sa, sb) = (a.section(section), b.section(section));
        assert_eq!(sa.len(), sb.len(), "{section}");
        for (k, v) in &sa {
            let w = &sb[k];
            assert_eq!(
                v.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{section}.{k} differs after resume"
            );
        }
    }
}

/// `[data] modalities` trains on part of the card: one modality is unimodal training (the model
/// has one encoder, the log one modality), with the other modality's recipe and encoder left in
/// the config; an unknown name is refused naming the card's modalities.
#[test]
fn a_subset_of_the_modalities_trains_alone() {
    let out = tmp("subset");
    let mut c = small(&out, "unimodal", OptimizerConfig::default());
    c.data.modalities = Some(vec!["visual".into()]);
    let mut t = Trainer::from_config(c.clone()).unwrap();
    assert_eq!(t.model.modalities, vec!["visual".to_string()]);
    let summary = t.run(&mut Quiet).unwrap();
    let last = summary.last.unwrap();
    let names: Vec<&String> = last.train.modality_acc.keys().collect();
    assert_eq!(names, vec!["visual"]);
    // Only the kept modality's parameters exist.
    assert!(t
        .model
        .named_params()
        .iter()
        .all(|(n, _)| !n.starts_with("encoders.audio.")));
    let mut alone = c.clone();
    alone.name = "alone-ratio".into();
    alone.monitor_score_ratio = true;
    let err = format!("{:#}", Trainer::from_config(alone).err().expect("refused"));
    assert!(err.contains("monitor_score_ratio"), "{err}");
    let mut bad = small(&out, "unknown", OptimizerConfig::default());
    bad.data.modalities = Some(vec!["lips".into()]);
    let err = format!("{:#}", Trainer::from_config(bad).err().expect("refused"));
    assert!(err.contains("lips") && err.contains("audio"), "{err}");
    let _ = std::fs::remove_dir_all(out);
}

/// Linear probes select on val: with the same seed, more epochs can only find an equal or
/// better val accuracy (the first epochs are the same); the classes of every probe are the
/// model's, and each modality gets its own.
#[test]
fn linear_probes_select_on_val() {
    let out = tmp("probe");
    let c = small(&out, "probe", OptimizerConfig::default());
    let mut t = Trainer::from_config(c).unwrap();
    t.run(&mut Quiet).unwrap();
    let run = |epochs| {
        let opts = mmbal_train::probe::ProbeOptions {
            epochs,
            batch_size: 4,
            ..Default::default()
        };
        mmbal_train::probe::linear_probe(&t.model, &t.dataset, &opts).unwrap()
    };
    let (one, many) = (run(1), run(6));
    assert_eq!(one.len(), 2);
    for r in &many {
        // The first epoch with the highest val accuracy.
        let max = r.val_curve.iter().copied().fold(f64::MIN, f64::max);
        let first = r.val_curve.iter().position(|&v| v == max).unwrap() + 1;
        assert_eq!((r.best_epoch, r.val_acc), (first, max), "{r:?}");
        assert_eq!(r.val_curve.len(), 6);
    }
    assert_eq!(one[0].modality, "audio");
    for (a, b) in one.iter().zip(&many) {
        assert_eq!(a.best_epoch, 1);
        assert!(b.val_acc >= a.val_acc, "{a:?} {b:?}");
        assert!((1..=6).contains(&b.best_epoch));
    }
    let again = run(6);
    for (a, b) in many.iter().zip(&again) {
        assert_eq!(
            (a.best_epoch, a.val_acc, a.test_acc),
            (b.best_epoch, b.val_acc, b.test_acc)
        );
    }
    // Tracked every epoch: the record holds what the probe (its defaults, the run's seed) gives
    // on that epoch's model.
    let mut c = small(&out, "probe-tracked", OptimizerConfig::default());
    c.epochs = 1;
    c.track_linear_probe = true;
    let mut t = Trainer::from_config(c.clone()).unwrap();
    t.run(&mut Quiet).unwrap();
    let log = std::fs::read_to_string(c.run_dir().join("metrics.jsonl")).unwrap();
    let r: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let opts = mmbal_train::probe::ProbeOptions {
        seed: c.seed,
        ..Default::default()
    };
    for p in mmbal_train::probe::linear_probe(&t.model, &t.dataset, &opts).unwrap() {
        let logged = &r["linear_probe"][&p.modality];
        assert_eq!(logged["val_acc"].as_f64(), Some(p.val_acc), "{r}");
        assert_eq!(logged["test_acc"].as_f64(), Some(p.test_acc), "{r}");
    }
    let _ = std::fs::remove_dir_all(out);
}

/// MSLR's dynamic rule through the trainer: after every `period` epochs each encoder's factor is
/// multiplied by its modality's val accuracy over the mean of its last `period` ones; the trainer
/// hands the method the same per-modality val accuracies it logs.
#[test]
fn mslr_factors_follow_the_logged_val_accuracies() {
    let out = tmp("mslr");
    let adam = OptimizerConfig::Adam {
        lr: 3e-3,
        weight_decay: 0.0,
        betas: [0.9, 0.999],
        eps: 1e-8,
    };
    let mut c = small(&out, "mslr", adam);
    // Enough val samples that the per-modality accuracies move between epochs.
    c.data.synthetic.per_class = 40;
    c.batch_size = 16;
    c.epochs = 6;
    c.method.name = "mslr".into();
    c.method.options = toml::from_str("factors = [1.0, 10.0]\nperiod = 2").unwrap();
    let mut t = Trainer::from_config(c.clone()).unwrap();
    t.run(&mut Quiet).unwrap();
    let log = std::fs::read_to_string(c.run_dir().join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 6);
    let mut moved = false;
    for (m, name, start) in [(0, "audio", 1.0), (1, "visual", 10.0)] {
        let acc = |r: &serde_json::Value| r["val"]["modality_acc"][name].as_f64().unwrap();
        let mut want = start;
        for (e, r) in recs.iter().enumerate() {
            if (e + 1) % 2 == 0 {
                let mean = (acc(&recs[e - 1]) + acc(r)) / 2.0;
                if mean > 0.0 {
                    want *= acc(r) / mean;
                }
            }
            let got = r["method"][format!("mslr_factor_{m}")].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-12,
                "{name}, epoch {}: {got} vs {want}",
                e + 1
            );
            moved |= got != start;
        }
    }
    assert!(moved, "the val accuracies changed, so a factor moved");
    let _ = std::fs::remove_dir_all(out);
}

/// MSES (patience 1): a branch whose own val accuracy stops improving is put back to its best
/// epoch and frozen, encoder running statistics included, so at the end of the run it equals
/// the branch of a run stopped at that best epoch; the other parts go on training. A run split
/// just before the restore and resumed equals the whole run, bitwise.
#[test]
fn mses_stops_each_branch_at_its_best_epoch_and_resumes_across_the_stop() {
    let out = tmp("mses");
    let config = |name: &str, epochs: usize| {
        let mut c = small(&out, name, OptimizerConfig::default());
        set_method(&mut c, "mses");
        c.epochs = epochs;
        c
    };
    let epochs = 6;
    let whole = config("whole", epochs);
    Trainer::from_config(whole.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let log = std::fs::read_to_string(whole.run_dir().join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = &records[epochs - 1]["method"];
    let mut stopped = Vec::new();
    for (m, name) in ["audio", "visual"].iter().enumerate() {
        // 1-based first frozen epoch, 0 when the branch never stopped.
        let from = last[format!("mses_stopped_from_{m}")].as_f64().unwrap() as usize;
        if from == 0 || from > epochs {
            continue;
        }
        // Its best: the first epoch with the highest own val accuracy before the stop.
        let acc: Vec<f64> = records[..from - 1]
            .iter()
            .map(|r| r["val"]["modality_acc"][name].as_f64().unwrap())
            .collect();
        let top = acc.iter().cloned().fold(f64::MIN, f64::max);
        let best = acc.iter().position(|&a| a == top).unwrap() + 1;
        assert_eq!(
            from,
            best + 2,
            "{name}: patience 1 stops the epoch after the first one without a new best"
        );
        stopped.push((m, *name, from, best));
    }
    assert!(
        !stopped.is_empty(),
        "no branch stopped: the test checks nothing"
    );
    let whole_ck = last_checkpoint(&whole);
    for &(m, name, _, best) in &stopped {
        let until = config(&format!("until-{name}"), best);
        Trainer::from_config(until.clone())
            .unwrap()
            .run(&mut Quiet)
            .unwrap();
        // Parameters and running statistics of the encoder, and its own classifier.
        let branch = |k: &str| {
            let k = k
                .strip_prefix("model.")
                .or_else(|| k.strip_prefix("buffer."))
                .unwrap_or("");
            k.starts_with(&format!("encoders.{name}.")) || k.starts_with(&format!("head.fc.{m}."))
        };
        assert_checkpoints_equal(&whole_ck, &last_checkpoint(&until), Some(&branch), name);
    }
    // The fused classifier kept training after the stops.
    let first_stop = stopped.iter().map(|s| s.2).min().unwrap();
    let before = config("before-stop", first_stop - 1);
    Trainer::from_config(before.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let fc = "model.head.fc.weight";
    assert!(
        max_abs_diff(&whole_ck.tensors[fc], &last_checkpoint(&before).tensors[fc]) > 0.0,
        "the fused classifier stopped too"
    );
    // Resumed from the checkpoint taken just before the first restore.
    let mut resumed = Trainer::resume(
        &before.run_dir().join("last.safetensors"),
        Some(epochs),
        None,
    )
    .unwrap();
    resumed.run(&mut Quiet).unwrap();
    assert_checkpoints_equal(&whole_ck, &last_checkpoint(&before), None, "resumed");
    let split_log = std::fs::read_to_string(before.run_dir().join("metrics.jsonl")).unwrap();
    assert_eq!(comparable(&log), comparable(&split_log));
    let _ = std::fs::remove_dir_all(out);
}

/// A copy of a run folder's files in `to` whose `last.safetensors` has no optimizer state.
fn copy_without_optimizer_state(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    let ck = Checkpoint::load(&from.join("last.safetensors")).unwrap();
    let tensors: Vec<(String, candle_core::Tensor)> = ck
        .tensors
        .into_iter()
        .filter(|(k, _)| !k.starts_with("optim."))
        .collect();
    let path = to.join("last.safetensors");
    mmbal_train::checkpoint::save(&path, tensors, ck.meta).unwrap();
    path
}

/// ReconBoost with two boosting epochs and one correction epoch per stage, over five epochs
/// (audio boosting, audio boosting, correction of {audio}, visual boosting, visual boosting):
/// each phase trains only its parts, the visual encoder is held (eval mode, running statistics
/// included) until it is picked, the model's own fusion head never trains, each phase starts a
/// fresh optimizer (a checkpoint without optimizer state resumes to the same run at a phase
/// start and not in the middle of one), and a run stopped in the middle of the second stage
/// resumes to the whole run, bitwise.
#[test]
fn reconboost_trains_in_stages_with_fresh_optimizers_and_resumes_mid_stage() {
    let out = tmp("reconboost");
    let config = |name: &str, epochs: usize| {
        let mut c = small(&out, name, OptimizerConfig::default());
        set_method(&mut c, "reconboost");
        c.epochs = epochs;
        c
    };
    let whole = config("whole", 5);
    let initial = Trainer::from_config(whole.clone()).unwrap();
    let init: std::collections::HashMap<String, candle_core::Tensor> = initial
        .model
        .named_params()
        .into_iter()
        .map(|(n, v)| (format!("model.{n}"), v.as_tensor().copy().unwrap()))
        .chain(
            initial
                .model
                .buffers()
                .unwrap()
                .into_iter()
                .map(|(n, t)| (format!("buffer.{n}"), t)),
        )
        .collect();
    drop(initial);
    Trainer::from_config(whole.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let after: Vec<Checkpoint> = (1..=4)
        .map(|e| {
            let c = config(&format!("e{e}"), e);
            Trainer::from_config(c.clone())
                .unwrap()
                .run(&mut Quiet)
                .unwrap();
            last_checkpoint(&c)
        })
        .collect();
    let last = last_checkpoint(&whole);
    let same = |a: &candle_core::Tensor, b: &candle_core::Tensor| max_abs_diff(a, b) == 0.0;
    // Whether every tensor whose name starts with `prefix` is the same in both.
    let part_same = |a: &std::collections::HashMap<String, candle_core::Tensor>,
                     b: &std::collections::HashMap<String, candle_core::Tensor>,
                     prefix: &str| {
        let keys: Vec<&String> = a.keys().filter(|k| k.starts_with(prefix)).collect();
        assert!(!keys.is_empty(), "nothing under {prefix}");
        keys.iter().all(|k| same(&a[*k], &b[*k]))
    };
    let beta = |c: &Checkpoint| c.tensors["method_param.boost_rate"].clone();
    let enc = |m: &str| format!("model.encoders.{m}.");
    let stats = |m: &str| format!("buffer.encoders.{m}.");
    // Stage 0: the visual encoder is held, parameters and running statistics.
    for c in &after[..3] {
        assert!(part_same(&c.tensors, &init, &enc("visual")));
        assert!(part_same(&c.tensors, &init, &stats("visual")));
    }
    assert!(!part_same(&after[0].tensors, &init, &enc("audio")));
    // Boosting leaves the boost rate; the correction trains it.
    assert_eq!(beta(&after[1]).to_vec1::<f32>().unwrap(), vec![1.0]);
    assert_ne!(beta(&after[2]).to_vec1::<f32>().unwrap(), vec![1.0]);
    // Stage 1 boosts visual: audio's parameters and the boost rate stay.
    assert!(part_same(
        &after[3].tensors,
        &after[2].tensors,
        &enc("audio")
    ));
    assert!(same(&beta(&after[3]), &beta(&after[2])));
    assert!(!part_same(
        &after[3].tensors,
        &after[2].tensors,
        &enc("visual")
    ));
    // The model's own fusion head is never trained: the method's shared head predicts.
    assert!(part_same(&last.tensors, &init, "model.head."));
    let log = std::fs::read_to_string(whole.run_dir().join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let column = |k: &str| -> Vec<f64> {
        recs.iter()
            .map(|r| r["method"][k].as_f64().unwrap())
            .collect()
    };
    assert_eq!(column("reconboost_stage"), [0.0, 0.0, 0.0, 1.0, 1.0]);
    assert_eq!(column("reconboost_active"), [0.0, 0.0, 0.0, 1.0, 1.0]);
    assert_eq!(column("reconboost_boosting"), [1.0, 1.0, 0.0, 1.0, 1.0]);
    assert_eq!(column("reconboost_members"), [1.0, 1.0, 1.0, 2.0, 2.0]);

    // Stopped in the middle of stage 1's boosting, resumed: the whole run.
    let mut resumed = Trainer::resume(
        &config("e4", 4).run_dir().join("last.safetensors"),
        Some(5),
        None,
    )
    .unwrap();
    resumed.run(&mut Quiet).unwrap();
    assert_checkpoints_equal(
        &last,
        &last_checkpoint(&config("e4", 4)),
        None,
        "resumed mid-stage",
    );
    // Without optimizer state: the same run from a phase start (epoch 4 starts afresh), not
    // from the middle of a phase (epoch 5 goes on with epoch 4's momentum).
    let model_only = |k: &str| k.starts_with("model.") || k.starts_with("method_param.");
    // (The e4 folder went on to epoch 5 above: epoch 4's checkpoint comes from a fresh run.)
    let again = config("e4-again", 4);
    Trainer::from_config(again.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    for (from, src, equal) in [
        (3, config("e3", 3).run_dir(), true),
        (4, again.run_dir(), false),
    ] {
        let ck = copy_without_optimizer_state(&src, &out.join(format!("bare{from}")));
        let mut t = Trainer::resume(&ck, Some(5), None).unwrap();
        t.run(&mut Quiet).unwrap();
        let b = Checkpoint::load(&ck).unwrap();
        let all_same = last
            .tensors
            .iter()
            .filter(|(k, _)| model_only(k))
            .all(|(k, t)| same(t, &b.tensors[k]));
        assert_eq!(
            all_same, equal,
            "resumed without optimizer state from epoch {from}"
        );
    }
    let _ = std::fs::remove_dir_all(out);
}

/// UME: the ensemble's numbers are its members': each modality's val accuracy is its member
/// run's (at that run's best epoch), the fused val accuracy that of the mean of the members'
/// val logits, and the student's encoders are the members', untouched by the epoch.
#[test]
fn ume_predicts_with_its_members_and_trains_nothing() {
    use mmbal_train::metrics::{accuracy, argmax};
    let out = tmp("ume");
    let mut c = small(&out, "ume", OptimizerConfig::default());
    set_method(&mut c, "ume");
    c.epochs = 1;
    Trainer::from_config(c.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let log = std::fs::read_to_string(c.run_dir().join("metrics.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let ume = last_checkpoint(&c);
    let mut logits = Vec::new();
    let mut labels = Vec::new();
    for (m, path) in c.method.options["teachers"].as_table().unwrap() {
        let path = PathBuf::from(path.as_str().unwrap());
        let t = Trainer::open(&path, None).unwrap();
        let rows = t.dataset.rows(mmbal_data::Split::Val);
        let col =
            mmbal_methods::collect_outputs(&t.model, &t.dataset, &rows, c.batch_size).unwrap();
        let acc = accuracy(&argmax(&col.fused).unwrap(), &col.labels);
        assert_eq!(rec["val"]["modality_acc"][m].as_f64().unwrap(), acc, "{m}");
        logits.push(col.fused);
        labels = col.labels;
        let member = Checkpoint::load(&path).unwrap();
        let encoder = |k: &str| {
            k.starts_with(&format!("model.encoders.{m}."))
                || k.starts_with(&format!("buffer.encoders.{m}."))
        };
        assert_checkpoints_equal(&member, &ume, Some(&encoder), m);
    }
    let mean = mmbal_methods::ume_logits(&logits).unwrap();
    let acc = accuracy(&argmax(&mean).unwrap(), &labels);
    assert_eq!(rec["val"]["acc"].as_f64().unwrap(), acc);
    let _ = std::fs::remove_dir_all(out);
}

/// DI-MML with two stage-1 epochs (the contrastive term from the second) and one stage-2 epoch,
/// under a halving step schedule: stage 2 holds the encoders (parameters and running
/// statistics), the modalities' own classifiers and the shared one, trains the fused classifier
/// alone, and restarts the schedule (the reference's new optimizer and scheduler).
#[test]
fn dimml_stage_two_trains_the_fused_classifier_alone() {
    let out = tmp("dimml");
    let config = |name: &str, epochs: usize| {
        let mut c = small(&out, name, OptimizerConfig::default());
        set_method(&mut c, "di-mml");
        c.method.options = toml::from_str("stage1_epochs = 2\ncontrast_start = 1").unwrap();
        c.schedule = mmbal_train::schedule::Schedule::Step {
            step_size: 1,
            gamma: 0.5,
        };
        c.epochs = epochs;
        c
    };
    let (whole, stage1) = (config("whole", 3), config("stage1", 2));
    for c in [&whole, &stage1] {
        Trainer::from_config(c.clone())
            .unwrap()
            .run(&mut Quiet)
            .unwrap();
    }
    let (a, b) = (last_checkpoint(&whole), last_checkpoint(&stage1));
    let moved = |k: &str| max_abs_diff(&a.tensors[k], &b.tensors[k]) > 0.0;
    let mut fused = 0;
    for k in a.tensors.keys() {
        let held = k.starts_with("model.encoders.")
            || k.starts_with("buffer.encoders.")
            || k.starts_with("model.head.fc.0.")
            || k.starts_with("model.head.fc.1.")
            || k.starts_with("method_param.shared.");
        if held {
            assert!(!moved(k), "{k} moved in stage 2");
        } else if k == "model.head.fc.weight" || k == "model.head.fc.bias" {
            assert!(moved(k), "{k} did not move in stage 2");
            fused += 1;
        }
    }
    assert_eq!(fused, 2);
    let log = std::fs::read_to_string(whole.run_dir().join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let lr: Vec<f64> = recs.iter().map(|r| r["lr"].as_f64().unwrap()).collect();
    assert_eq!(lr, [1e-3, 5e-4, 1e-3], "stage 2 restarts the schedule");
    let stage: Vec<f64> = recs
        .iter()
        .map(|r| r["method"]["dimml_stage"].as_f64().unwrap())
        .collect();
    assert_eq!(stage, [1.0, 1.0, 2.0]);
    assert!(recs[0]["method"].get("dimml_dims_0").is_none());
    assert!(recs[1]["method"]["dimml_dims_0"].as_f64().is_some());
    let _ = std::fs::remove_dir_all(out);
}

/// Per-epoch train losses and the last epoch's val accuracy of a run of `c`.
fn losses_and_val(c: &TrainConfig) -> (Vec<f64>, f64, Vec<mmbal_train::EpochRecord>) {
    let mut t = Trainer::from_config(c.clone()).unwrap();
    t.run(&mut Quiet).unwrap();
    let log = mmbal_train::read_log(&c.run_dir().join("metrics.jsonl")).unwrap();
    let losses = log.iter().map(|r| r.train.loss).collect();
    let val = log.last().unwrap().val.as_ref().unwrap().acc;
    (losses, val, log)
}

#[test]
fn bf16_mixed_precision_follows_fp32_and_resumes_its_loss_scale() {
    let out = tmp("bf16");
    let sgd = OptimizerConfig::Sgd {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    let mut fp32 = small(&out, "fp32", sgd.clone());
    fp32.epochs = 4;
    fp32.data.synthetic.per_class = 20;
    let mut bf16 = fp32.clone();
    bf16.name = "bf16".into();
    bf16.precision = mmbal_train::Precision::Bf16;
    let (l32, v32, _) = losses_and_val(&fp32);
    let (l16, v16, log16) = losses_and_val(&bf16);
    eprintln!("fp32 losses {l32:?} val {v32}; bf16 losses {l16:?} val {v16}");
    // The encoders did run in bf16: the curves are close, not the same bits.
    assert_ne!(l32, l16, "bf16 gave fp32's losses bit for bit");
    for (e, (a, b)) in l32.iter().zip(&l16).enumerate() {
        assert!(
            (a - b).abs() <= 0.05 * a.abs().max(0.1),
            "epoch {}: fp32 loss {a}, bf16 loss {b}",
            e + 1
        );
    }
    assert!(l16.last() < l16.first(), "bf16 did not learn: {l16:?}");
    assert!(
        (v32 - v16).abs() <= 0.1,
        "val accuracy fp32 {v32}, bf16 {v16}"
    );
    for r in &log16 {
        let s = r.loss_scale.expect("a bf16 epoch records its loss scale");
        assert_eq!(s.scale, 65536.0, "epoch {}", r.epoch);
        assert_eq!(s.skipped_steps, 0, "epoch {}", r.epoch);
    }
    // 36 good steps in a row (4 epochs of 9 batches), none skipped: kept for a resume.
    let ck = last_checkpoint(&bf16);
    assert_eq!(ck.meta("loss_scale").unwrap(), "65536 36 0 2000");
    let mut resumed =
        Trainer::resume(&bf16.run_dir().join("last.safetensors"), Some(5), None).unwrap();
    assert_eq!(resumed.loss_scaler().unwrap().to_meta(), "65536 36 0 2000");
}

#[test]
fn bf16_skips_steps_whose_gradients_overflow_and_lowers_the_scale() {
    let out = tmp("bf16-skip");
    let mut c = small(
        &out,
        "skip",
        OptimizerConfig::Sgd {
            lr: 0.05,
            momentum: 0.0,
            weight_decay: 0.0,
        },
    );
    c.epochs = 1;
    c.precision = mmbal_train::Precision::Bf16;
    let mut t = Trainer::from_config(c).unwrap();
    // A scale beyond f32's range: every gradient overflows (this small model's true gradients
    // are below 1, so no representable scale makes them overflow). 1e39 and 5e38 overflow,
    // 2.5e38 fits.
    let start = 1e39;
    *t.loss_scaler().unwrap() = mmbal_train::loss_scale::LossScaler::new(start, 2000);
    let record = t.run_epoch(0, &mut Quiet).unwrap();
    let s = record.loss_scale.unwrap();
    assert_eq!(s.skipped_steps, 2, "steps skipped from scale {start}");
    assert_eq!(s.scale, start / 4.0);
    assert!(record.train.loss.is_finite());
    for (name, v) in t.model.named_params() {
        let ok = common::max_abs(v.as_tensor()).is_finite();
        assert!(ok, "{name} is not finite after the skipped steps");
    }
}

#[test]
fn bf16_leaves_the_scale_to_the_backward_passes_it_scaled() {
    // MMPareto computes its gradients itself, unscaled: its steps neither grow nor lower the
    // scale.
    let out = tmp("bf16-own");
    let mut c = small(&out, "mmpareto", OptimizerConfig::default());
    c.epochs = 1;
    c.precision = mmbal_train::Precision::Bf16;
    set_method(&mut c, "mmpareto");
    let mut t = Trainer::from_config(c).unwrap();
    t.run(&mut Quiet).unwrap();
    assert_eq!(t.loss_scaler().unwrap().to_meta(), "65536 0 0 2000");
}
