//! Progress of the long passes reaches an installed sink: the input cache build (one step per
//! sample), each evaluation and valuation pass (one step per batch), every task finished.

use mmbal_data::progress::{set_sink, ProgressSink};
use mmbal_train::{Quiet, TrainConfig, Trainer};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Record {
    /// Per task id: name, total, steps advanced, finished.
    tasks: Mutex<HashMap<u64, (String, usize, usize, bool)>>,
}

impl ProgressSink for Record {
    fn start(&self, id: u64, name: &str, total: usize) {
        self.tasks
            .lock()
            .unwrap()
            .insert(id, (name.to_string(), total, 0, false));
    }
    fn advance(&self, id: u64, n: usize) {
        self.tasks.lock().unwrap().get_mut(&id).unwrap().2 += n;
    }
    fn finish(&self, id: u64) {
        self.tasks.lock().unwrap().get_mut(&id).unwrap().3 = true;
    }
}

#[test]
fn long_passes_report_their_progress() {
    let out = std::env::temp_dir().join(format!("mmbal-progress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut c = TrainConfig {
        name: "p".into(),
        out_dir: out.clone(),
        epochs: 1,
        batch_size: 4,
        track_contributions: true,
        ..TrainConfig::default()
    };
    c.data.cache = true;
    c.data.synthetic.classes = 3;
    c.data.synthetic.per_class = 10;
    let record = Arc::new(Record::default());
    set_sink(Some(record.clone()));
    Trainer::from_config(c).unwrap().run(&mut Quiet).unwrap();
    set_sink(None);
    let tasks = record.tasks.lock().unwrap();
    let named = |n: &str| -> Vec<(usize, usize, bool)> {
        tasks
            .values()
            .filter(|t| t.0 == n)
            .map(|t| (t.1, t.2, t.3))
            .collect()
    };
    // 30 samples decoded once.
    assert_eq!(named("building the input cache"), vec![(30, 30, true)]);
    // Val and test (6 rows each, batches of 4): passes of 2 batches.
    let evals = named("evaluating");
    assert!(evals.len() >= 2, "{evals:?}");
    assert!(evals.contains(&(2, 2, true)), "{evals:?}");
    // Valuation of the 18 training rows: 5 batches.
    assert_eq!(named("valuing modalities"), vec![(5, 5, true)]);
    assert!(tasks.values().all(|t| t.3), "every task finished");
    let _ = std::fs::remove_dir_all(out);
}
