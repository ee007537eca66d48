//! `cargo xtask bench epoch` on the embedded dataset: one JSON line whose epoch covers the
//! training split, from a packed cache opened with and without its sources checked; the
//! unchecked mode is refused for a config without a cache.

mod common;

use common::{text, xtask};

#[test]
fn bench_epoch_times_the_whole_training_split_from_the_cache() {
    let dir = std::env::temp_dir().join(format!("mmbal-xtask-epoch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = mmbal_train::TrainConfig {
        name: "syn".into(),
        epochs: 1,
        batch_size: 8,
        out_dir: dir.join("runs"),
        ..Default::default()
    };
    c.data.synthetic.per_class = 8;
    c.data.cache = false;
    let plain = dir.join("plain.toml");
    std::fs::write(&plain, c.to_toml()).unwrap();
    c.data.cache = true;
    c.data.cache_path = Some(dir.join("inputs.mmbc"));
    let cached = dir.join("cached.toml");
    std::fs::write(&cached, c.to_toml()).unwrap();

    let run = |config: &std::path::Path, unchecked: bool| {
        let mut args = vec!["bench", "epoch", "--config", config.to_str().unwrap()];
        if unchecked {
            args.push("--unchecked-cache-sources");
        }
        xtask(&args)
    };
    let o = run(&plain, true);
    assert!(!o.status.success());
    assert!(text(&o).contains("[data] cache = true"), "{}", text(&o));

    let train_rows = {
        let t = mmbal_train::Trainer::from_config(c.clone()).unwrap();
        t.split_rows(mmbal_data::Split::Train).unwrap().len()
    };
    for unchecked in [false, true] {
        let o = run(&cached, unchecked);
        let log = text(&o);
        assert!(o.status.success(), "{log}");
        let line = log
            .lines()
            .find(|l| l.contains("\"bench\":\"epoch\""))
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["epoch_samples"], train_rows, "{line}");
        assert_eq!(v["batches"], train_rows.div_ceil(8), "{line}");
        assert_eq!(v["cache_sources_checked"], !unchecked, "{line}");
        for k in [
            "epoch_samples_per_s",
            "held_batch_samples_per_s",
            "loader_alone_samples_per_s",
        ] {
            assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {line}");
        }
    }
}
