//! TensorBoard event records against TensorBoard's own writer: the bytes of
//! tests/fixtures/tensorboard_events.bin were written by TensorBoard 2.18's `RecordWriter` with
//! its `Event` protos and PyTorch's `add_scalar` summaries (tests/fixtures/gen_tensorboard.py);
//! the same records from `mmbal_train::tensorboard` must be the same bytes. A run writes an
//! event file next to its metrics.jsonl, one scalar per logged number per epoch.

use mmbal_train::tensorboard::{file_version_record, scalar_record};
use std::path::Path;

#[test]
fn event_records_are_tensorboards_bytes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let want = std::fs::read(dir.join("tensorboard_events.bin")).unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tensorboard_events.json")).unwrap())
            .unwrap();
    let mut got = file_version_record(spec["file_wall_time"].as_f64().unwrap());
    for r in spec["records"].as_array().unwrap() {
        got.extend(scalar_record(
            r["tag"].as_str().unwrap(),
            r["step"].as_i64().unwrap(),
            r["value"].as_f64().unwrap() as f32,
            r["wall_time"].as_f64().unwrap(),
        ));
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let x = b[*i];
        *i += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// The scalar events of an event file: `(step, tag, value)` (the file-version event skipped).
fn read_scalars(path: &Path) -> Vec<(i64, String, f32)> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
        let data = &bytes[at + 12..at + 12 + len];
        at += 16 + len;
        let (mut i, mut step) = (9, 0i64); // wall time: 0x09 + 8 bytes
        if data[i] == 0x10 {
            i += 1;
            step = varint(data, &mut i) as i64;
        }
        if data[i] != 0x2a {
            continue; // the file-version event
        }
        i += 1;
        let _summary_len = varint(data, &mut i);
        assert_eq!(data[i], 0x0a);
        i += 1;
        let _value_len = varint(data, &mut i);
        assert_eq!(data[i], 0x0a);
        i += 1;
        let tag_len = varint(data, &mut i) as usize;
        let tag = String::from_utf8(data[i..i + tag_len].to_vec()).unwrap();
        i += tag_len;
        assert_eq!(data[i], 0x15);
        let v = f32::from_le_bytes(data[i + 1..i + 5].try_into().unwrap());
        out.push((step, tag, v));
    }
    out
}

#[test]
fn a_run_writes_its_log_to_tensorboard() {
    use mmbal_train::{Quiet, TrainConfig, Trainer};
    let out = std::env::temp_dir().join(format!("mmbal-tb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut c = TrainConfig {
        name: "tb".into(),
        out_dir: out.clone(),
        epochs: 2,
        batch_size: 4,
        tensorboard_every_steps: 2,
        ..TrainConfig::default()
    };
    c.data.synthetic.classes = 3;
    c.data.synthetic.per_class = 10;
    Trainer::from_config(c.clone())
        .unwrap()
        .run(&mut Quiet)
        .unwrap();
    let files: Vec<_> = std::fs::read_dir(c.run_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("tfevents")
        })
        .collect();
    assert_eq!(files.len(), 1);
    let scalars = read_scalars(&files[0]);
    let log = std::fs::read_to_string(c.run_dir().join("metrics.jsonl")).unwrap();
    for (e, line) in log.lines().enumerate() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        for (tag, key) in [
            ("val/acc", &r["val"]["acc"]),
            ("train/loss", &r["train"]["loss"]),
        ] {
            let got: Vec<f32> = scalars
                .iter()
                .filter(|(s, t, _)| *s == e as i64 + 1 && t == tag)
                .map(|x| x.2)
                .collect();
            assert_eq!(
                got,
                vec![key.as_f64().unwrap() as f32],
                "{tag}, epoch {}",
                e + 1
            );
        }
        assert!(scalars
            .iter()
            .any(|(s, t, _)| *s == e as i64 + 1 && t == "val/acc_audio"));
    }
    // 18 training rows in batches of 4: 5 steps per epoch, 10 in all; every second one logged.
    let steps: Vec<i64> = scalars
        .iter()
        .filter(|x| x.1 == "step/loss")
        .map(|x| x.0)
        .collect();
    assert_eq!(steps, vec![2, 4, 6, 8, 10]);
    // A fresh run replacing this one removes the old event file.
    let mut t = Trainer::from_config(c.clone()).unwrap();
    t.set_overwrite(true);
    t.run(&mut Quiet).unwrap();
    let n = std::fs::read_dir(c.run_dir())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("tfevents")
        })
        .count();
    assert_eq!(n, 1);
    let _ = std::fs::remove_dir_all(out);
}
