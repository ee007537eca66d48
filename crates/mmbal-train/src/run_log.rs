//! What a run records: one [`EpochRecord`] per line of `metrics.jsonl`, the selected and last
//! epochs, and `summary.json` naming them; [`Events`] for other sinks (the CLI's progress bar).
//! The selected epoch is chosen here alone, for a running and a resumed run alike.

use crate::config::Selection;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Metrics of one split.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SplitMetrics {
    /// Number of rows scored (for train, the epoch's rows, resampled copies included).
    pub samples: usize,
    /// Mean loss per row: the steps' training loss for train, the cross-entropy of the
    /// method's prediction for val and test.
    pub loss: f64,
    /// Top-1 accuracy of the method's fused prediction, in [0, 1].
    pub acc: f64,
    /// Macro-F1 of the same predictions (sklearn's definition), in [0, 1].
    pub macro_f1: f64,
    /// Accuracy of each modality's unimodal logits.
    pub modality_acc: BTreeMap<String, f64>,
}

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Learning rate of the epoch, after the schedule.
    pub lr: f64,
    /// Train-mode metrics of the epoch's training rows, from the steps' predictions.
    pub train: SplitMetrics,
    /// Eval-mode metrics on val; `None` when the dataset has no val samples.
    pub val: Option<SplitMetrics>,
    /// Eval-mode metrics on test; `None` when it has no test samples or `eval_test` is off.
    pub test: Option<SplitMetrics>,
    /// The method's own diagnostics at the end of the epoch, by name.
    pub method: BTreeMap<String, f64>,
    /// OGM's discrepancy ratio, when the config's `monitor_score_ratio` is on: each modality's
    /// summed true-class probability (its unimodal logits, training batches) over the mean of
    /// the other modalities'.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub score_ratio: BTreeMap<String, f64>,
    /// Mean Shapley contribution per modality on the training split, when the config's
    /// `track_contributions` is on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contributions: BTreeMap<String, f64>,
    /// Wall-clock seconds of the epoch's training batches (evaluation not included).
    pub train_seconds: f64,
    /// Training rows per second over `train_seconds`.
    pub train_samples_per_s: f64,
    /// How unequally the modalities are learned (`cost::imbalance`); absent with one modality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imbalance: Option<crate::cost::Imbalance>,
    /// Per modality, the val and test accuracy of a linear probe on its frozen features, when
    /// the config's `track_linear_probe` is on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub linear_probe: BTreeMap<String, ProbeAcc>,
    /// Peak memory so far in MiB (`cost::peak_memory_mib`: the process's peak resident set on
    /// the CPU, the memory pool's peak on CUDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_mib: Option<f64>,
    /// Under bf16 mixed precision, the loss scale at the epoch's end and the steps skipped in
    /// the epoch for non-finite gradients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScaleRecord>,
}

/// The dynamic loss scale of an epoch ([`EpochRecord::loss_scale`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaleRecord {
    /// The scale at the epoch's end.
    pub scale: f64,
    /// Steps skipped in the epoch because a gradient was not finite.
    pub skipped_steps: usize,
}

impl EpochRecord {
    /// Every number of the record by a TensorBoard tag: `train/loss`, `val/acc`,
    /// `val/acc_<modality>`, `test/macro_f1`, `lr`, `method/<name>`, `score_ratio/<modality>`,
    /// `contribution/<modality>`, `imbalance/unimodal_gap`, `time/train_seconds`,
    /// `memory/peak_mib`, ...
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out = vec![("lr".to_string(), self.lr)];
        let splits = [
            ("train", Some(&self.train)),
            ("val", self.val.as_ref()),
            ("test", self.test.as_ref()),
        ];
        for (name, m) in splits {
            let Some(m) = m else { continue };
            out.push((format!("{name}/loss"), m.loss));
            out.push((format!("{name}/acc"), m.acc));
            out.push((format!("{name}/macro_f1"), m.macro_f1));
            for (modality, a) in &m.modality_acc {
                out.push((format!("{name}/acc_{modality}"), *a));
            }
        }
        for (k, v) in &self.method {
            out.push((format!("method/{k}"), *v));
        }
        for (k, v) in &self.score_ratio {
            out.push((format!("score_ratio/{k}"), *v));
        }
        for (k, v) in &self.contributions {
            out.push((format!("contribution/{k}"), *v));
        }
        for (k, p) in &self.linear_probe {
            out.push((format!("probe/val_acc_{k}"), p.val_acc));
            out.push((format!("probe/test_acc_{k}"), p.test_acc));
        }
        if let Some(i) = &self.imbalance {
            out.push(("imbalance/unimodal_gap".into(), i.unimodal_gap));
            if let Some(r) = i.contribution_ratio {
                out.push(("imbalance/contribution_ratio".into(), r));
            }
        }
        if let Some(l) = &self.loss_scale {
            out.push(("precision/loss_scale".into(), l.scale));
            out.push(("precision/skipped_steps".into(), l.skipped_steps as f64));
        }
        out.push(("time/train_seconds".into(), self.train_seconds));
        out.push(("time/train_samples_per_s".into(), self.train_samples_per_s));
        if let Some(m) = self.peak_memory_mib {
            out.push(("memory/peak_mib".into(), m));
        }
        out
    }
}

/// A linear probe's accuracies (`EpochRecord::linear_probe`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeAcc {
    /// Val accuracy of the selected probe epoch.
    pub val_acc: f64,
    /// Test accuracy there.
    pub test_acc: f64,
}

/// Reads a run's `metrics.jsonl`: one record per line, each error naming file and line.
pub fn read_log(path: &Path) -> Result<Vec<EpochRecord>> {
    std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not an epoch record", path.display(), i + 1))
        })
        .collect()
}

/// Reads a run's `summary.json` (at `path`), errors naming the file.
pub fn read_summary(path: &Path) -> Result<RunSummary> {
    serde_json::from_str(
        &std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?,
    )
    .with_context(|| format!("{}: not a run summary", path.display()))
}

/// Progress callbacks (the CLI draws a progress bar with them).
pub trait Events {
    /// Called as an epoch starts, with its 0-based index and number of batches.
    fn epoch_start(&mut self, _epoch: usize, _batches: usize) {}
    /// Called after each training batch with its loss.
    fn batch_end(&mut self, _loss: f64) {}
    /// Called once an epoch is logged and its checkpoints and summary are written.
    fn epoch_end(&mut self, _record: &EpochRecord) {}
}

/// No progress output.
pub struct Quiet;
impl Events for Quiet {}

/// What a run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    /// Name of the balancing method.
    pub method: String,
    /// Name of the dataset (from its manifest).
    pub dataset: String,
    /// How `best` was chosen (summaries written before this field: `val`).
    #[serde(default)]
    pub selection: Selection,
    /// The selected epoch: best val accuracy (first on ties), or the last with `select = "last"`.
    pub best: Option<EpochRecord>,
    /// The last epoch trained.
    pub last: Option<EpochRecord>,
    /// Parameters and compute of the model (summaries written before this field: absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<crate::cost::Cost>,
}

/// `metrics.jsonl` of a run being trained, with the selected and the last epoch so far.
pub(crate) struct RunLog {
    path: PathBuf,
    file: std::fs::File,
    select: Selection,
    best: Option<EpochRecord>,
    last: Option<EpochRecord>,
}

impl RunLog {
    /// Opens `dir/metrics.jsonl`: empty for a fresh run (`epochs_done` 0); for a resumed run
    /// the records of the `epochs_done` epochs its checkpoint holds are kept (later lines, from a
    /// run stopped between log and checkpoint, are dropped so those epochs repeat cleanly) and
    /// new ones appended.
    pub fn open(dir: &Path, epochs_done: usize, select: Selection) -> Result<RunLog> {
        let path = dir.join("metrics.jsonl");
        let mut log = RunLog {
            file: std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(epochs_done > 0)
                .truncate(epochs_done == 0)
                .open(&path)
                .with_context(|| format!("{}: cannot open log", path.display()))?,
            path,
            select,
            best: None,
            last: None,
        };
        if epochs_done > 0 {
            log.restore(epochs_done)?;
        }
        Ok(log)
    }

    /// Writes `record` as the next line and returns whether it is now the selected epoch.
    pub fn push(&mut self, record: &EpochRecord) -> Result<bool> {
        writeln!(self.file, "{}", serde_json::to_string(record)?)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: cannot write", self.path.display()))?;
        Ok(self.add(record.clone()))
    }

    /// The one place an epoch is selected: `record` replaces the best so far when the config's
    /// selection prefers it; it is the last either way.
    fn add(&mut self, record: EpochRecord) -> bool {
        let selected = self.select.prefers(&record, self.best.as_ref());
        if selected {
            self.best = Some(record.clone());
        }
        self.last = Some(record);
        selected
    }

    /// `summary.json` in `dir`, written whole (temporary file, then rename): call it after the
    /// checkpoints it names are written.
    pub fn write_summary(
        &self,
        dir: &Path,
        method: &str,
        dataset: &str,
        cost: Option<&crate::cost::Cost>,
    ) -> Result<RunSummary> {
        let summary = RunSummary {
            method: method.to_string(),
            dataset: dataset.to_string(),
            selection: self.select,
            best: self.best.clone(),
            last: self.last.clone(),
            cost: cost.cloned(),
        };
        let (tmp, path) = (dir.join("summary.json.tmp"), dir.join("summary.json"));
        std::fs::write(&tmp, serde_json::to_string_pretty(&summary)?)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .with_context(|| format!("{}: cannot write", path.display()))?;
        Ok(summary)
    }

    /// On resume: the selected and last records of the first `epochs_done` epochs, and the log
    /// cut back to them.
    fn restore(&mut self, epochs_done: usize) -> Result<()> {
        let log_path = &self.path;
        let text = std::fs::read_to_string(log_path)?;
        let mut kept = Vec::new();
        let mut records = Vec::new();
        let n = text.lines().count();
        for (i, line) in text.lines().enumerate() {
            let record: EpochRecord = match serde_json::from_str(line) {
                Ok(r) => r,
                // A run killed while writing its last line: that epoch is trained again.
                Err(_) if i + 1 == n && !text.ends_with('\n') => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("{}:{}: not an epoch record", log_path.display(), i + 1)
                    })
                }
            };
            if record.epoch > epochs_done {
                continue;
            }
            kept.push(line.to_string());
            records.push(record);
        }
        std::fs::write(
            log_path,
            kept.iter().map(|l| format!("{l}\n")).collect::<String>(),
        )?;
        for r in records {
            self.add(r);
        }
        Ok(())
    }
}
