//! The `mmbal` binary end to end on small generated data.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mmbal(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mmbal"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmbal-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const TINY: &str =
    "name = \"tiny\"\nepochs = 1\nbatch_size = 4\n[data.synthetic]\nclasses = 3\nper_class = 10\n";

#[test]
fn train_then_eval_then_resume() {
    let dir = tmp("train");
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let o = mmbal(&dir, &["train", "--config", "tiny.toml", "--quiet"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("epoch   1"), "{out}");
    assert!(out.contains("audio") && out.contains("visual"), "{out}");
    assert!(dir.join("runs/tiny/metrics.jsonl").is_file());
    assert!(dir.join("runs/tiny/accuracy.svg").is_file());
    let method_svg = std::fs::read_to_string(dir.join("runs/tiny/method.svg")).unwrap();
    assert!(
        method_svg.contains("score ratio audio"),
        "every run plots the OGM score ratio"
    );
    assert!(
        !dir.join("runs/tiny/contributions.svg").exists(),
        "joint logs no contributions"
    );
    let o = mmbal(
        &dir,
        &[
            "eval",
            "--checkpoint",
            "runs/tiny/best.safetensors",
            "--split",
            "val",
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let json_start = out.find('{').unwrap();
    let m: serde_json::Value = serde_json::from_str(&out[json_start..]).unwrap();
    assert_eq!(m["samples"], 6);
    assert!(m["acc"].as_f64().unwrap() >= 0.0);
    // Missing modalities: every row without audio is the visual-only subset; curves on disk.
    let eval = |args: &[&str]| {
        let mut all = vec![
            "eval",
            "--checkpoint",
            "runs/tiny/best.safetensors",
            "--split",
            "val",
        ];
        all.extend_from_slice(args);
        let o = mmbal(&dir, &all);
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        out
    };
    let out = eval(&["--missing", "audio=1", "--subsets"]);
    let v: serde_json::Value =
        serde_json::from_str(&out[..out.find("\n| present").unwrap()]).unwrap();
    let subsets = v["subsets"].as_array().unwrap();
    assert_eq!(subsets.len(), 3);
    assert_eq!(subsets[1]["present"], serde_json::json!(["visual"]));
    assert_eq!(v["metrics"]["acc"], subsets[1]["acc"]);
    assert_eq!(subsets[2]["acc"], m["acc"]);
    let out = eval(&["--robustness", "--out", "rob"]);
    assert!(out.contains("| tiny | audio |"), "{out}");
    for f in [
        "robustness.json",
        "robustness.md",
        "robustness.svg",
        "robustness.png",
    ] {
        assert!(dir.join("rob").join(f).is_file(), "{f}");
    }
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rob/robustness.json")).unwrap()).unwrap();
    let points = r[0]["curves"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 11);
    assert_eq!(points[0]["acc"], m["acc"]);
    let o = mmbal(
        &dir,
        &[
            "eval",
            "--checkpoint",
            "runs/tiny/best.safetensors",
            "--missing",
            "video=0.5",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("no modality `video`"),
        "{}",
        text(&o)
    );
    // Features and their t-SNE, into the run folder.
    let o = mmbal(
        &dir,
        &[
            "features",
            "--checkpoint",
            "runs/tiny/best.safetensors",
            "--split",
            "test",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    for f in [
        "labels_test.npy",
        "features_test_audio.npy",
        "tsne_test_visual.svg",
    ] {
        assert!(dir.join("runs/tiny/features").join(f).is_file(), "{f}");
    }
    // Linear probes of the checkpoint: one per modality, deterministic.
    let probe = |dir: &Path| {
        let o = mmbal(
            dir,
            &[
                "probe",
                "--checkpoint",
                "runs/tiny/best.safetensors",
                "--epochs",
                "5",
            ],
        );
        let out = text(&o);
        assert!(o.status.success(), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out[out.find('[').unwrap()..]).unwrap();
        v
    };
    let p = probe(&dir);
    assert_eq!(p.as_array().unwrap().len(), 2);
    for r in p.as_array().unwrap() {
        let e = r["best_epoch"].as_u64().unwrap();
        assert!((1..=5).contains(&e), "{r}");
        assert!(
            (0.0..=1.0).contains(&r["test_acc"].as_f64().unwrap()),
            "{r}"
        );
    }
    assert_eq!(p, probe(&dir), "the probe is deterministic");
    let o = mmbal(
        &dir,
        &[
            "train",
            "--resume",
            "runs/tiny/last.safetensors",
            "--epochs",
            "2",
            "--quiet",
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("epoch   2") && !out.contains("epoch   1 "),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn config_prints_defaults_and_rejects_unknown_keys() {
    let dir = tmp("config");
    let o = mmbal(&dir, &["config"]);
    assert!(o.status.success());
    let printed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(printed.contains("[method]") && printed.contains("name = \"joint\""));
    // A method's options are shown resolved: the one given and every default.
    std::fs::write(
        dir.join("pmr.toml"),
        "[method]\nname = \"pmr\"\nalpha = 2.0\n",
    )
    .unwrap();
    let o = mmbal(&dir, &["config", "--config", "pmr.toml"]);
    let printed = text(&o);
    assert!(o.status.success(), "{printed}");
    for line in ["alpha = 2.0", "variant = \"code\"", "proto_ratio = 0.1"] {
        assert!(printed.contains(line), "no `{line}` in:\n{printed}");
    }
    std::fs::write(dir.join("bad.toml"), "epochs = 1\nlearning_rate = 0.1\n").unwrap();
    let o = mmbal(&dir, &["train", "--config", "bad.toml"]);
    let out = text(&o);
    assert!(!o.status.success());
    assert!(
        out.contains("bad.toml") && out.contains("learning_rate"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn data_doctor_lists_every_bad_file() {
    let dir = tmp("doctor");
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let o = mmbal(&dir, &["data", "doctor", "--config", "tiny.toml"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("every file decodes"), "{out}");
    assert!(out.contains("train: 18 samples"), "{out}");
    // Break three files: a corrupt JPEG, a truncated WAV, a missing frame folder.
    let data = dir.join("runs/synthetic-data-c3-n10-s7");
    std::fs::write(data.join("visual/c0_001/frame_00002.jpg"), b"not a jpeg").unwrap();
    let wav = data.join("audio/c1_002.wav");
    let bytes = std::fs::read(&wav).unwrap();
    std::fs::write(&wav, &bytes[..30]).unwrap();
    std::fs::remove_dir_all(data.join("visual/c2_003")).unwrap();
    let o = mmbal(&dir, &["data", "doctor", "--config", "tiny.toml"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    for bad in ["c0_001/frame_00002.jpg", "c1_002.wav", "c2_003"] {
        assert!(out.contains(bad), "doctor does not name {bad}:\n{out}");
    }
    assert!(out.contains("3 problem(s)"), "{out}");
    // A malformed split line names the file and line.
    let split = data.join("split.csv");
    let mut s = std::fs::read_to_string(&split).unwrap();
    s.push_str("c9_000,class9\n");
    std::fs::write(&split, s).unwrap();
    let o = mmbal(&dir, &["data", "doctor", "--config", "tiny.toml"]);
    let out = text(&o);
    assert!(!o.status.success());
    assert!(out.contains("split.csv:32"), "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn each_resampling_method_runs_two_epochs_and_valuate_writes_npy() {
    let dir = tmp("methods");
    for method in ["sample-level", "modality-level"] {
        let cfg = TINY
            .replace("name = \"tiny\"", &format!("name = \"{method}\""))
            .replace("epochs = 1", "epochs = 2");
        let cfg = format!("{cfg}[method]\nname = \"{method}\"\nwarmup = 1\n");
        std::fs::write(dir.join(format!("{method}.toml")), cfg).unwrap();
        let o = mmbal(
            &dir,
            &["train", "--config", &format!("{method}.toml"), "--quiet"],
        );
        let out = text(&o);
        assert!(o.status.success(), "{method}: {out}");
        assert!(
            out.contains("epoch   2") && out.contains("contribution_audio"),
            "{method}: {out}"
        );
        for e in ["epoch_001.npy", "epoch_002.npy", "epoch_002.samples.npy"] {
            assert!(
                dir.join(format!("runs/{method}/contributions/{e}"))
                    .is_file(),
                "{method}: {e}"
            );
        }
        let log =
            std::fs::read_to_string(dir.join(format!("runs/{method}/metrics.jsonl"))).unwrap();
        let second: serde_json::Value = serde_json::from_str(log.lines().nth(1).unwrap()).unwrap();
        assert!(second["method"]["contribution_visual"].is_number(), "{log}");
        // Sample-level values all 18 training samples; modality-level only round(0.2 * 18).
        let valued = if method == "sample-level" { 18 } else { 4 };
        assert_eq!(
            second["method"]["valued_samples"], valued as f64,
            "{method}"
        );
        for plot in [
            "accuracy.svg",
            "contributions.svg",
            "contributions_hist.svg",
        ] {
            let svg = std::fs::read_to_string(dir.join(format!("runs/{method}/{plot}"))).unwrap();
            assert!(
                svg.starts_with("<svg") && svg.contains("audio") && svg.contains("visual"),
                "{plot}"
            );
        }
    }
    let o = mmbal(
        &dir,
        &[
            "valuate",
            "--checkpoint",
            "runs/sample-level/best.safetensors",
            "--split",
            "val",
            "--route",
            "inputs",
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(report["samples"], 6);
    assert!(report["mean_contribution"]["audio"].is_number());
    assert!(dir.join("runs/sample-level/valuation_val.npy").is_file());
    let o = mmbal(
        &dir,
        &[
            "valuate",
            "--checkpoint",
            "runs/sample-level/best.safetensors",
            "--route",
            "pixels",
        ],
    );
    assert!(!o.status.success() && text(&o).contains("possible values: features, inputs"));
    let _ = std::fs::remove_dir_all(dir);
}

/// The shared data folder; under CI its absence fails the test instead of skipping it.
fn shared_data(root: &Path) -> Option<PathBuf> {
    mmbal_data::datasets::shared_data_dir(root).unwrap_or_else(|e| panic!("{e:#}"))
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Every registered method trains two epochs on real GRID clips through the command line:
/// `mmbal preprocess`, then `mmbal train` with configs/grid.toml and the method's settings.
#[test]
fn every_method_trains_two_epochs_on_grid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = shared_data(&root) else {
        eprintln!("MMBAL_SHARED_DATA is not set: GRID runs of every method not made");
        return;
    };
    if !shared.join("grid-s1").is_dir() {
        assert!(!under_ci(), "{}/grid-s1 is missing", shared.display());
        eprintln!(
            "{}/grid-s1 is missing: GRID runs of every method not made",
            shared.display()
        );
        return;
    }
    let dir = tmp("grid-methods");
    let grid = shared.join("grid-s1");
    let o = mmbal(
        &dir,
        &[
            "preprocess",
            "--input",
            grid.to_str().unwrap(),
            "--output",
            "data",
            "--fps",
            "25",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let base = std::fs::read_to_string(root.join("configs/grid.toml")).unwrap();
    let card = root.join("datasets/grid-s1");
    let base = base
        .replace("epochs = 10", "epochs = 2")
        .replace(
            "card = \"datasets/grid-s1\"",
            &format!("card = \"{}\"\ncache_path = \"grid.mmbc\"", card.display()),
        )
        .replace("root = \"data/grid-s1\"", "root = \"data\"");
    train_every_method(&dir, &base);
    let _ = std::fs::remove_dir_all(dir);
}

/// Every registered method trains two epochs on AV-MNIST (FSDD spoken digits paired with MNIST
/// images from the shared data) through the command line, configs/avmnist.toml with one input
/// cache for all the runs.
#[test]
fn every_method_trains_two_epochs_on_avmnist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = shared_data(&root) else {
        eprintln!("MMBAL_SHARED_DATA is not set: AV-MNIST runs of every method not made");
        return;
    };
    for part in ["fsdd", "mnist"] {
        if !shared.join(part).is_dir() {
            assert!(!under_ci(), "{}/{part} is missing", shared.display());
            eprintln!(
                "{}/{part} is missing: AV-MNIST runs not made",
                shared.display()
            );
            return;
        }
    }
    let dir = tmp("avmnist-methods");
    let base = std::fs::read_to_string(root.join("configs/avmnist.toml")).unwrap();
    let card = root.join("datasets/avmnist");
    let base = base.replace("epochs = 12", "epochs = 2").replace(
        "card = \"datasets/avmnist\"",
        &format!(
            "card = \"{}\"\ncache_path = \"avmnist.mmbc\"",
            card.display()
        ),
    );
    assert!(base.contains("epochs = 2") && base.contains("avmnist.mmbc"));
    train_every_method(&dir, &base);
    let _ = std::fs::remove_dir_all(dir);
}

/// `mmbal preprocess --recipe ks-fbank --labels` on real GRID clips makes a Kinetics-Sounds
/// layout; `mmbal data doctor` examines it and `mmbal train` runs one epoch on it.
#[test]
fn preprocess_to_kinetics_sounds_layout_then_doctor_and_train() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Some(shared) = shared_data(&root) else {
        eprintln!("MMBAL_SHARED_DATA is not set: preprocess-then-train on GRID not run");
        return;
    };
    let dir = tmp("ks-layout");
    let videos = dir.join("videos");
    std::fs::create_dir_all(&videos).unwrap();
    let clips = [
        ("bbaf2n", "two", "train"),
        ("bbwg2p", "two", "train"),
        ("bgin2p", "two", "train"),
        ("bris2n", "two", "test"),
        ("bbaf3s", "three", "train"),
        ("bbwg3a", "three", "train"),
        ("bgin3a", "three", "train"),
        ("bris3s", "three", "test"),
    ];
    let mut labels = String::from("# id,label,split\n");
    for (id, label, split) in clips {
        let from = shared.join(format!("grid-s1/{id}.mpg"));
        assert!(from.is_file(), "{} missing", from.display());
        std::os::unix::fs::symlink(&from, videos.join(format!("{id}.mpg"))).unwrap();
        labels.push_str(&format!("{id},{label},{split}\n"));
    }
    std::fs::write(dir.join("labels.csv"), labels).unwrap();
    let o = mmbal(
        &dir,
        &[
            "preprocess",
            "--recipe",
            "ks-fbank",
            "--input",
            "videos",
            "--output",
            "ks",
            "--labels",
            "labels.csv",
        ],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("8 video(s) preprocessed"), "{out}");
    let train_list = std::fs::read_to_string(dir.join("ks/train.txt")).unwrap();
    assert_eq!(train_list.lines().count(), 6);
    assert!(train_list.lines().all(|l| l.split(',').count() == 3));
    let recipe = std::fs::read_to_string(dir.join("ks/recipe.toml")).unwrap();
    assert!(recipe.contains("name = \"ks-fbank\""), "{recipe}");

    let card = root.join("datasets/kinetics-sounds");
    let cfg = format!(
        r#"name = "ks"
epochs = 1
batch_size = 4
[data]
card = "{}"
root = "ks"
[data.recipes.audio]
kind = "audio"
sample_rate = 16000
remove_mean = true
frames = 1024
norm_mean = -4.503877
norm_std = 10.282552
front_end = {{ kind = "fbank", num_mel_bins = 128 }}
[data.recipes.visual]
kind = "frames"
count = 3
height = 32
width = 32
[model.encoders.audio]
kind = "small-cnn"
in_channels = 1
width = 4
[model.encoders.visual]
kind = "small-cnn"
in_channels = 3
width = 4
"#,
        card.display()
    );
    std::fs::write(dir.join("ks.toml"), cfg).unwrap();
    // Kinetics-Sounds has no val list: loading refuses until the explicit step writes one.
    let o = mmbal(&dir, &["data", "doctor", "--config", "ks.toml"]);
    let out = text(&o);
    assert!(
        !o.status.success() && out.contains("mmbal data carve-val"),
        "{out}"
    );
    let o = mmbal(&dir, &["data", "carve-val", "--config", "ks.toml"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("carved a val split") && out.contains("val.txt"),
        "{out}"
    );
    let o = mmbal(&dir, &["data", "carve-val", "--config", "ks.toml"]);
    assert!(text(&o).contains("nothing written"), "{}", text(&o));
    let o = mmbal(&dir, &["data", "doctor", "--config", "ks.toml"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("[1024, 128] x8"), "{out}");
    assert!(out.contains("every file decodes"), "{out}");
    // The doctor names a recipe that does not match the stored spectrograms.
    let wrong = std::fs::read_to_string(dir.join("ks.toml"))
        .unwrap()
        .replace("num_mel_bins = 128", "num_mel_bins = 64");
    std::fs::write(dir.join("wrong.toml"), wrong).unwrap();
    let o = mmbal(&dir, &["data", "doctor", "--config", "wrong.toml"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("made by recipe ks-fbank"), "{out}");

    let o = mmbal(&dir, &["train", "--config", "ks.toml", "--quiet"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let made = std::fs::read_to_string(dir.join("runs/ks/data-recipe.toml")).unwrap();
    assert!(
        made.contains("ks-fbank"),
        "the run names how its data was made: {made}"
    );
    let log = std::fs::read_to_string(dir.join("runs/ks/metrics.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(rec["train"]["samples"].as_u64(), Some(4), "{rec}");
    assert_eq!(rec["val"]["samples"].as_u64(), Some(2), "{rec}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `--resume` goes on in the checkpoint's own folder whatever the working directory, refuses
/// `--name`, and a fresh run of an existing name is refused unless `--overwrite` is given.
#[test]
fn resume_writes_into_the_checkpoints_folder_and_runs_are_not_overwritten() {
    let dir = tmp("resume-elsewhere");
    let elsewhere = tmp("resume-cwd");
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let o = mmbal(&dir, &["train", "--config", "tiny.toml", "--quiet"]);
    assert!(o.status.success(), "{}", text(&o));
    let ck = dir.join("runs/tiny/last.safetensors");
    let ck = ck.to_str().unwrap();
    let o = mmbal(
        &elsewhere,
        &["train", "--resume", ck, "--epochs", "2", "--quiet"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        !elsewhere.join("runs").exists(),
        "nothing written elsewhere"
    );
    let log = std::fs::read_to_string(dir.join("runs/tiny/metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    let o = mmbal(&elsewhere, &["train", "--resume", ck, "--name", "other"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("--name"), "{}", text(&o));
    let o = mmbal(&dir, &["train", "--config", "tiny.toml", "--quiet"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("holds the results of an earlier run"),
        "{}",
        text(&o)
    );
    let o = mmbal(
        &dir,
        &["train", "--config", "tiny.toml", "--quiet", "--overwrite"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let log = std::fs::read_to_string(dir.join("runs/tiny/metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 1, "the earlier run was replaced");
}

/// `--threads` is recorded in the run's config (and given to candle and rayon).
#[test]
fn threads_flag_is_recorded_in_the_run_config() {
    let dir = tmp("threads");
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let o = mmbal(
        &dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--threads",
            "1",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(dir.join("runs/tiny/config.toml")).unwrap();
    assert!(cfg.contains("threads = 1"), "{cfg}");
}

#[test]
fn set_overrides_any_config_field_and_rejects_unknown_keys() {
    let dir = tmp("set");
    std::fs::write(dir.join("tiny.toml"), TINY).unwrap();
    let o = mmbal(
        &dir,
        &[
            "train",
            "--config",
            "tiny.toml",
            "--set",
            "seed=5",
            "--set",
            "data.synthetic.per_class=6",
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let cfg = std::fs::read_to_string(dir.join("runs/tiny/config.toml")).unwrap();
    assert!(
        cfg.contains("seed = 5") && cfg.contains("per_class = 6"),
        "{cfg}"
    );
    let o = mmbal(
        &dir,
        &["train", "--config", "tiny.toml", "--set", "epochz=3"],
    );
    assert!(
        !o.status.success() && text(&o).contains("epochz"),
        "{}",
        text(&o)
    );
    let o = mmbal(&dir, &["train", "--set", "optimiser.lr=0.1"]);
    assert!(
        !o.status.success() && text(&o).contains("the config has no table `optimiser`"),
        "{}",
        text(&o)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Each registered method's head and options for a two-epoch run (the resampling methods with
/// one warm-up epoch, OPM dropping from the second, Greedy curating from the first).
const METHOD_SETTINGS: [(&str, &str, &str); 26] = [
    ("joint", "concat", ""),
    ("sample-level", "concat", "warmup = 1\n"),
    ("modality-level", "concat", "warmup = 1\n"),
    ("ogm-ge", "concat", ""),
    ("ogm", "concat", ""),
    ("pmr", "concat", ""),
    ("mla", "shared", ""),
    ("greedy", "sum", "start_epoch = 0\n"),
    ("g-blending", "blend", ""),
    ("mmcosine", "concat", ""),
    ("opm", "concat", "start_epoch = 1\n"),
    ("mmpareto", "blend", ""),
    ("inforeg", "concat", ""),
    ("qmf", "sum", ""),
    ("lfm", "sum", ""),
    ("cml", "concat", ""),
    ("mbsd", "concat", ""),
    ("amco", "concat", ""),
    ("agm", "concat", ""),
    ("mslr", "concat", "period = 1\n"),
    // Two epochs: the diagnosis (after epoch 1) would act as a third starts; trainer.rs tests it.
    ("relearning", "concat", "reinit_epoch = 1\n"),
    // Its teachers (one-modality runs of joint's config) are trained first, in the loop.
    ("umt", "concat", ""),
    ("mses", "blend", "patience = 1\n"),
    // One-epoch phases: boosting audio, then the correction.
    (
        "reconboost",
        "concat",
        "epochs_per_stage = 1\ncorrect_epochs = 1\nhidden = 16\n",
    ),
    // The same one-modality runs as UMT's teachers.
    ("ume", "concat", ""),
    // Stage 1 with the contrastive term for one epoch, then stage 2.
    ("di-mml", "blend", "stage1_epochs = 1\ncontrast_start = 0\n"),
];

/// UMT's and UME's `teachers` option after training them (once per `dir`): for each modality
/// of the `joint` run already in `dir`, its config on that modality alone through `mmbal train
/// --set`.
fn umt_teachers(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("runs/joint/metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let mut lines = String::from("[method.teachers]\n");
    for m in first["train"]["modality_acc"].as_object().unwrap().keys() {
        let name = format!("teacher-{m}");
        lines += &format!("{m} = \"runs/{name}/best.safetensors\"\n");
        if dir.join(format!("runs/{name}/best.safetensors")).is_file() {
            continue;
        }
        let o = mmbal(
            dir,
            &[
                "train",
                "--config",
                "joint.toml",
                "--name",
                &name,
                "--set",
                &format!("data.modalities=[\"{m}\"]"),
                "--set",
                "monitor_score_ratio=false",
                // The shared cache holds every modality's inputs; a one-modality run keeps its own.
                "--set",
                &format!("data.cache_path=\"{name}.mmbc\""),
                "--quiet",
            ],
        );
        assert!(o.status.success(), "teacher {m}: {}", text(&o));
    }
    lines
}

/// Trains every registered method for the config text `base` (its `name` line replaced by the
/// method's name) through `mmbal train`, in `dir`, and checks each log: two epochs, finite score
/// ratios for every modality.
fn train_every_method(dir: &Path, base: &str) {
    assert_eq!(
        METHOD_SETTINGS.len(),
        mmbal_methods::METHODS.len(),
        "a method is missing here"
    );
    let name_line = base
        .lines()
        .find(|l| l.starts_with("name = "))
        .expect("a name line")
        .to_string();
    for (method, fusion, options) in METHOD_SETTINGS {
        let options = if method == "umt" || method == "ume" {
            umt_teachers(dir)
        } else {
            options.to_string()
        };
        let cfg = base.replace(&name_line, &format!("name = \"{method}\""));
        // The score-ratio monitor on: every method's log carries it.
        let cfg = format!(
            "monitor_score_ratio = true\n{cfg}\n[model]\nfusion = \"{fusion}\"\n\n[method]\nname = \"{method}\"\n{options}"
        );
        std::fs::write(dir.join(format!("{method}.toml")), cfg).unwrap();
        let o = mmbal(
            dir,
            &["train", "--config", &format!("{method}.toml"), "--quiet"],
        );
        let out = text(&o);
        assert!(o.status.success(), "{method}: {out}");
        let log =
            std::fs::read_to_string(dir.join(format!("runs/{method}/metrics.jsonl"))).unwrap();
        assert_eq!(log.lines().count(), 2, "{method}");
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        let ratios = last["score_ratio"].as_object().expect("score ratios");
        assert!(
            ratios.values().all(|v| v.as_f64().unwrap().is_finite()),
            "{method}: {log}"
        );
    }
}
