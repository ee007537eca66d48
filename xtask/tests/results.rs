//! `cargo xtask results` on the embedded dataset: paired rows, the unimodal runs shared with
//! UMT's teachers, and a second call that reuses finished runs of the same config and retrains
//! those whose config changed.

mod common;

use common::{text, xtask};

#[test]
fn results_pairs_rows_and_reuses_only_identical_runs() {
    let dir = std::env::temp_dir().join(format!("mmbal-xtask-results-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = mmbal_train::TrainConfig {
        name: "syn".into(),
        epochs: 1,
        out_dir: dir.join("runs"),
        ..Default::default()
    };
    c.data.synthetic.per_class = 8;
    let config = dir.join("config.toml");
    std::fs::write(&config, c.to_toml()).unwrap();
    let out = dir.join("results.md");
    let call = |epochs: &str| {
        xtask(&[
            "results",
            "--config",
            config.to_str().unwrap(),
            "--seeds",
            "2",
            "--epochs",
            epochs,
            "--methods",
            "umt",
            "--unimodal",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = call("1");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    let md = std::fs::read_to_string(&out).unwrap();
    // Joint (the baseline, added), UMT, and the two modalities alone, two seeds each: UMT's
    // teachers are the unimodal runs, trained once.
    assert!(
        md.contains("8 runs trained by this call and 0 reused"),
        "{md}"
    );
    assert!(
        md.contains("| syn | joint |") && md.contains("| syn | umt |"),
        "{md}"
    );
    assert!(
        md.contains("| syn | unimodal: audio |") && md.contains("audio alone"),
        "{md}"
    );

    let umt = md.lines().find(|l| l.contains("| umt |")).unwrap();
    // Fused at the selected and the last epoch, and each branch.
    assert_eq!(umt.matches(" [").count(), 4, "{umt}");
    // The learning curves: one line per row, one column per epoch.
    assert!(md.contains("Learning curves"), "{md}");
    let joint_lines: Vec<&str> = md
        .lines()
        .filter(|l| l.starts_with("| syn | joint |"))
        .collect();
    assert_eq!(joint_lines.len(), 2, "{md}");
    assert_eq!(joint_lines[1].matches('|').count(), 4, "{md}");
    let teacher = dir.join("runs/results-syn-unimodal-s1-teacher-visual");
    assert!(teacher.join("requested-config.toml").is_file());
    let log_before = std::fs::read_to_string(teacher.join("metrics.jsonl")).unwrap();

    let o = call("1");
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(
        md.contains("0 runs trained by this call and 8 reused"),
        "{md}"
    );
    assert_eq!(
        std::fs::read_to_string(teacher.join("metrics.jsonl")).unwrap(),
        log_before,
        "a finished run is not touched"
    );

    // Another length is another config: every run is trained anew, and says it replaces one.
    let o = call("2");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("an earlier run of another config or length is replaced"),
        "{log}"
    );
    let md = std::fs::read_to_string(&out).unwrap();
    assert!(
        md.contains("8 runs trained by this call and 0 reused"),
        "{md}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
