//! `cargo xtask reproduce table1` on the embedded dataset: a two-method, one-seed matrix runs,
//! a rerun does no work, and a killed matrix resumes.

mod common;

use common::{text, xtask};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmbal-xtask-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Joint and OGM-GE, one seed, on the embedded dataset.
fn matrix_args<'a>(out: &'a Path, epochs: &'a str) -> [&'a str; 12] {
    [
        "reproduce",
        "table1",
        "--datasets",
        "synthetic",
        "--methods",
        "joint,ogm-ge",
        "--seeds",
        "1",
        "--epochs",
        epochs,
        "--out",
        out.to_str().unwrap(),
    ]
}

fn matrix(out: &Path, epochs: &str) -> Output {
    xtask(&matrix_args(out, epochs))
}

#[test]
fn matrix_runs_then_reruns_without_work() {
    let out = tmp("matrix");
    let o = matrix(&out, "2");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("2 run(s) trained now"), "{log}");
    for f in [
        "table1.md",
        "table1.csv",
        "table1-synthetic-gain.svg",
        "table1-synthetic-gain.png",
        "table1-synthetic-contributions.svg",
        "table1-synthetic-contributions.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let run = out.join("table1/quick/synthetic/ogm-ge-s0");
    for f in [
        "config.toml",
        "provenance.json",
        "metrics.jsonl",
        "summary.json",
    ] {
        assert!(run.join(f).is_file(), "{f} missing in the run folder");
    }
    let prov: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("provenance.json")).unwrap())
            .unwrap();
    assert_eq!(prov["seed"], 0);
    assert!(prov["git_revision"].as_str().unwrap().len() >= 7, "{prov}");
    let md = std::fs::read_to_string(out.join("table1.md")).unwrap();
    assert!(
        md.contains("| ogm-ge |") && md.contains("reported elsewhere"),
        "{md}"
    );
    let csv = std::fs::read_to_string(out.join("table1.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let row: Vec<&str> = csv.lines().nth(2).unwrap().split(',').collect();
    assert_eq!(&row[..3], &["synthetic", "ogm-ge", "1"]);
    assert!(
        row[15].contains("audio=") && row[15].contains("visual="),
        "contributions: {csv}"
    );
    // One seed: no interval for the paired gain.
    assert_eq!((row[12], row[13]), ("", ""), "{csv}");
    assert_eq!((row[18], row[19]), ("", ""), "{csv}");
    assert!(md.contains("paired gain [95% CI]"), "{md}");
    let log_before = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();

    let o = matrix(&out, "2");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("0 run(s) trained now"), "{log}");
    assert_eq!(
        std::fs::read_to_string(run.join("metrics.jsonl")).unwrap(),
        log_before,
        "a finished run is not touched"
    );

    // A folder made with another config is not reused (nor extended): it is trained anew.
    let request = run.join("requested-config.toml");
    let text_before = std::fs::read_to_string(&request).unwrap();
    std::fs::write(&request, text_before.replace("seed = 0", "seed = 7")).unwrap();
    let o = matrix(&out, "2");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("made with another config"), "{log}");
    assert!(log.contains("1 run(s) trained now"), "{log}");
    assert_eq!(std::fs::read_to_string(&request).unwrap(), text_before);
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn killed_matrix_resumes() {
    let out = tmp("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(matrix_args(&out, "3"))
        .env_remove("MMBAL_SHARED_DATA")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once the first run has a checkpoint, before the matrix is done.
    let first = out.join("table1/quick/synthetic/joint-s0/last.safetensors");
    let started = std::time::Instant::now();
    while !first.is_file() {
        assert!(
            started.elapsed().as_secs() < 300,
            "no checkpoint after 300 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !out.join("table1.md").exists(),
        "killed before the matrix finished"
    );

    let o = matrix(&out, "3");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("resuming"), "{log}");
    for method in ["joint", "ogm-ge"] {
        let m = std::fs::read_to_string(
            out.join(format!("table1/quick/synthetic/{method}-s0/metrics.jsonl")),
        )
        .unwrap();
        let epochs: Vec<u64> = m
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            epochs,
            vec![1, 2, 3],
            "{method}: one record per epoch after the resume"
        );
    }
    assert!(out.join("table1.md").is_file());
    let _ = std::fs::remove_dir_all(out);
}
