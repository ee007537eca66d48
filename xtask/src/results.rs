//! `cargo xtask results`: joint training and the registered methods on each config, several
//! seeds each, as one Markdown table with every method paired with joint training by seed.
//!
//! Runs are resumable: a run's folder gets `requested-config.toml` (the config it was asked to
//! train, written once it finished) and `provenance.json` (git revision, command). A later call
//! that asks for the same config (same text) reuses the finished run and says so; any other
//! run of that name is trained anew, replacing the old one. So a table can be made in parts, and
//! the table names every git revision whose runs it holds.

use crate::stats::{self, PairedDifference};
use anyhow::{bail, Context, Result};
use mmbal_train::{RunSummary, SplitMetrics, TrainConfig, Trainer};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct ResultsArgs {
    /// A training config (TOML); give several for several datasets.
    #[arg(long = "config", required = true)]
    configs: Vec<PathBuf>,
    /// Seeds per method, 0..N; every method runs the same seeds (paired: same initial weights
    /// and data order under one seed).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Epochs, overriding each config's.
    #[arg(long)]
    epochs: Option<usize>,
    /// A method option, METHOD:KEY=VALUE (VALUE read as TOML, else as a string); repeatable.
    #[arg(long = "set", value_parser = crate::parse_set)]
    sets: Vec<(String, String, toml::Value)>,
    /// The Markdown file written.
    #[arg(long, default_value = "docs/results.md")]
    out: PathBuf,
    /// Methods, comma-separated (registered names); every registered method when absent. Joint
    /// training, the baseline of the paired differences, always runs.
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Also a row per modality trained alone (joint training on that modality, the same seeds,
    /// epochs, encoders and optimizer): the field's "Unimodal" rows, paired with joint training
    /// like the methods. They are the same runs as UMT's teachers and UME's members.
    #[arg(long)]
    unimodal: bool,
}

/// Methods that read other runs' models (`BalanceMethod::teachers`): unless `--set
/// METHOD:teachers=...` names them, each seed's run reads that seed's unimodal runs.
const NEEDS_TEACHERS: [&str; 2] = ["umt", "ume"];

/// What one run contributes to its row: the numbers at its val-selected epoch.
struct RunNumbers {
    acc: f64,
    /// Test accuracy at the last epoch (the whole schedule, no selection).
    acc_last: f64,
    macro_f1: f64,
    best_epoch: usize,
    modality_acc: BTreeMap<String, f64>,
    /// Val accuracy of every epoch, in order (the learning curve).
    val_curve: Vec<f64>,
}

/// One row's runs, seed i at index i.
#[derive(Default)]
struct Row {
    acc: Vec<f64>,
    acc_last: Vec<f64>,
    f1: Vec<f64>,
    epochs: Vec<String>,
    modality_acc: BTreeMap<String, Vec<f64>>,
    val_curves: Vec<Vec<f64>>,
}

impl Row {
    fn push(&mut self, r: RunNumbers) {
        self.val_curves.push(r.val_curve);
        self.acc.push(r.acc);
        self.acc_last.push(r.acc_last);
        self.f1.push(r.macro_f1);
        self.epochs.push(r.best_epoch.to_string());
        for (m, a) in r.modality_acc {
            self.modality_acc.entry(m).or_default().push(a);
        }
    }
}

/// The run folders trained by this call and those reused from earlier calls, and the git
/// revisions of all of them.
#[derive(Default)]
struct Tally {
    trained: BTreeSet<PathBuf>,
    reused: BTreeSet<PathBuf>,
    revisions: BTreeSet<String>,
}

/// Trains `c`, or reuses the finished run in its folder when that run was asked for exactly
/// `c` (the text of `requested-config.toml`) and reached `c.epochs`.
fn run_or_reuse(c: TrainConfig, tally: &mut Tally) -> Result<RunNumbers> {
    let dir = c.run_dir();
    let requested = c.to_toml();
    let request_path = dir.join("requested-config.toml");
    let provenance_path = dir.join("provenance.json");
    let finished = || -> Option<RunSummary> {
        let text = std::fs::read_to_string(&request_path).ok()?;
        let s = mmbal_train::read_summary(&dir.join("summary.json")).ok()?;
        (text == requested && s.last.as_ref()?.epoch == c.epochs).then_some(s)
    };
    let summary = match finished() {
        Some(s) => {
            if !tally.trained.contains(&dir) {
                tally.reused.insert(dir.clone());
            }
            s
        }
        None => {
            if dir.join("summary.json").is_file() {
                eprintln!(
                    "  {}: an earlier run of another config or length is replaced",
                    dir.display()
                );
            }
            // Until the new run finishes, nothing says this folder holds a finished run.
            let _ = std::fs::remove_file(&request_path);
            let mut t = Trainer::from_config(c.clone())?;
            t.set_overwrite(true);
            let s = t.run(&mut mmbal_train::Quiet)?;
            let provenance = serde_json::json!({
                "git_revision": crate::reproduce::git_revision(),
                "command": crate::command_line(),
            });
            std::fs::write(&provenance_path, serde_json::to_string_pretty(&provenance)?)
                .with_context(|| format!("{}: cannot write", provenance_path.display()))?;
            // Written last: its presence says the run finished.
            std::fs::write(&request_path, &requested)
                .with_context(|| format!("{}: cannot write", request_path.display()))?;
            tally.trained.insert(dir.clone());
            s
        }
    };
    tally.revisions.insert(crate::reproduce::run_revision(&dir));
    let best = summary
        .best
        .with_context(|| format!("{}: a run without epochs", dir.display()))?;
    let test: SplitMetrics = best
        .test
        .with_context(|| format!("{}: test split not evaluated", dir.display()))?;
    let val_curve = mmbal_train::read_log(&dir.join("metrics.jsonl"))?
        .iter()
        .map(|r| r.val.as_ref().map_or(f64::NAN, |v| v.acc))
        .collect();
    let acc_last = summary
        .last
        .as_ref()
        .and_then(|l| l.test.as_ref())
        .with_context(|| format!("{}: test split not evaluated", dir.display()))?
        .acc;
    Ok(RunNumbers {
        acc: test.acc,
        acc_last,
        macro_f1: test.macro_f1,
        best_epoch: best.epoch,
        modality_acc: test.modality_acc,
        val_curve,
    })
}

/// `base` for one seed and method, before the method's own settings.
fn seed_config(base: &TrainConfig, seed: u64, epochs: Option<usize>, tag: &str) -> TrainConfig {
    let mut c = base.clone();
    c.seed = seed;
    c.name = format!("results-{}-{tag}-s{seed}", base.name);
    if let Some(e) = epochs {
        c.epochs = e;
    }
    c.method = Default::default();
    c
}

/// Each modality of `base` trained alone under `seed` (the unimodal rows, UMT's teachers and
/// UME's members): per modality, the run's numbers and its best checkpoint.
fn unimodal_runs(
    base: &TrainConfig,
    seed: u64,
    epochs: Option<usize>,
    tally: &mut Tally,
) -> Result<Vec<(String, RunNumbers, PathBuf)>> {
    let c = seed_config(base, seed, epochs, "unimodal");
    mmbal_train::teacher_configs(&c)
        .into_iter()
        .map(|(m, t)| {
            let best = t.run_dir().join("best.safetensors");
            Ok((m, run_or_reuse(t, tally)?, best))
        })
        .collect()
}

fn pm(v: &[f64]) -> String {
    let (m, s) = crate::mean_std(v);
    format!("{:.1} +- {:.1}", 100.0 * m, 100.0 * s)
}

fn paired(a: &[f64], joint: Option<&[f64]>) -> Option<PairedDifference> {
    joint.and_then(|j| stats::paired_difference(a, j))
}

/// One table line; `joint` is the baseline row (`None` for joint itself); `branches` replaces
/// the per-modality column when given.
fn table_line(
    dataset: &str,
    label: &str,
    row: &Row,
    joint: Option<&Row>,
    branches: Option<&str>,
) -> String {
    let vs = paired(&row.acc, joint.map(|j| j.acc.as_slice()))
        .map_or("-".to_string(), |d| d.display(100.0));
    let vs_last = paired(&row.acc_last, joint.map(|j| j.acc_last.as_slice()))
        .map_or("-".to_string(), |d| d.display(100.0));
    let (fm, fsd) = crate::mean_std(&row.f1);
    // Each branch's accuracy, and its paired difference from joint training's same branch.
    let per: Vec<String> = row
        .modality_acc
        .iter()
        .map(|(m, v)| {
            let d = paired(
                v,
                joint.and_then(|j| j.modality_acc.get(m).map(Vec::as_slice)),
            );
            match d {
                Some(d) => format!("{m} {} ({})", pm(v), d.display(100.0)),
                None => format!("{m} {}", pm(v)),
            }
        })
        .collect();
    format!(
        "| {dataset} | {label} | {} | {vs} | {} | {vs_last} | {fm:.3} +- {fsd:.3} | {} | {} |\n",
        pm(&row.acc),
        pm(&row.acc_last),
        branches.map_or_else(|| per.join(", "), String::from),
        row.epochs.join(", ")
    )
}

/// One line of the learning-curve table: the row's val accuracy per epoch, mean over seeds.
fn curve_line(dataset: &str, label: &str, row: &Row, epochs: usize) -> String {
    let cells: Vec<String> = (0..epochs)
        .map(|e| {
            let v: Vec<f64> = row
                .val_curves
                .iter()
                .filter_map(|c| c.get(e))
                .copied()
                .collect();
            if v.is_empty() {
                "".into()
            } else {
                format!("{:.1}", 100.0 * crate::mean_std(&v).0)
            }
        })
        .collect();
    format!("| {dataset} | {label} | {} |\n", cells.join(" | "))
}

pub fn results(a: ResultsArgs) -> Result<()> {
    let started = Instant::now();
    let ResultsArgs {
        configs,
        seeds,
        epochs,
        sets,
        out,
        methods,
        unimodal,
    } = a;
    let registered: Vec<&str> = mmbal_methods::METHODS.iter().map(|(n, _)| *n).collect();
    let mut methods: Vec<String> = match methods {
        Some(list) => {
            for m in &list {
                if !registered.contains(&m.as_str()) {
                    bail!(
                        "--methods: no method named `{m}`; known: {}",
                        registered.join(", ")
                    );
                }
            }
            list
        }
        None => registered.iter().map(|m| m.to_string()).collect(),
    };
    // Joint training first: the baseline every other row is paired with.
    methods.retain(|m| m != "joint");
    methods.insert(0, "joint".into());
    let mut tally = Tally::default();
    let mut table = String::from(
        "| dataset | method | test acc | vs joint, paired [95% CI] | test acc, last epoch | vs joint, last epoch | test macro-F1 | per-modality test acc (vs joint's branch, paired) | best val epoch |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut curves = String::new();
    for path in &configs {
        let base = TrainConfig::load(path)?;
        let n_epochs = epochs.unwrap_or(base.epochs);
        curves.push_str(&format!(
            "\n| dataset | method | {} |\n|---|---|{}\n",
            (1..=n_epochs)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(n_epochs)
        ));
        let mut joint: Option<Row> = None;
        for method in methods.iter().map(String::as_str) {
            let mut row = Row::default();
            for seed in 0..seeds {
                let mut c = seed_config(&base, seed, epochs, method);
                c.method.name = method.to_string();
                for (m, key, v) in &sets {
                    if m == method {
                        c.method.options.insert(key.clone(), v.clone());
                    }
                }
                if let Some(f) = crate::fusion_for(method)? {
                    c.model.fusion = f;
                }
                if NEEDS_TEACHERS.contains(&method) && !c.method.options.contains_key("teachers") {
                    let mut teachers = toml::Table::new();
                    for (m, _, best) in unimodal_runs(&base, seed, epochs, &mut tally)? {
                        teachers.insert(m, toml::Value::String(best.display().to_string()));
                    }
                    c.method
                        .options
                        .insert("teachers".into(), toml::Value::Table(teachers));
                }
                // UME trains nothing: one epoch evaluates its members' ensemble.
                if method == "ume" {
                    c.epochs = 1;
                }
                let r = run_or_reuse(c, &mut tally)
                    .with_context(|| format!("{} {method} seed {seed}", base.name))?;
                eprintln!("{} {method} seed {seed}: test acc {:.3}", base.name, r.acc);
                row.push(r);
            }
            table.push_str(&table_line(&base.name, method, &row, joint.as_ref(), None));
            curves.push_str(&curve_line(&base.name, method, &row, n_epochs));
            if method == "joint" {
                joint = Some(row);
            }
        }
        if unimodal {
            let mut per: BTreeMap<String, Row> = BTreeMap::new();
            for seed in 0..seeds {
                for (m, r, _) in unimodal_runs(&base, seed, epochs, &mut tally)? {
                    eprintln!(
                        "{} unimodal {m} seed {seed}: test acc {:.3}",
                        base.name, r.acc
                    );
                    per.entry(m).or_default().push(r);
                }
            }
            for (m, row) in per {
                // Its only branch is the modality itself.
                let label = format!("unimodal: {m}");
                let branches = format!("{m} alone");
                let line = table_line(&base.name, &label, &row, joint.as_ref(), Some(&branches));
                table.push_str(&line);
                curves.push_str(&curve_line(&base.name, &label, &row, n_epochs));
            }
        }
    }
    let command = crate::command_line();
    let revisions: Vec<&str> = tally.revisions.iter().map(String::as_str).collect();
    let doc = format!(
        "# Results\n\nMade by `{command}` ({seeds} seeds per row, the same seeds for every method; the \
         epoch with the best val accuracy is reported on test; per-modality accuracy is each \
         modality's unimodal logits; \"vs joint\" is the mean of the per-seed differences from joint \
         training in accuracy points with its 95% confidence interval (Student's t), * where the \
         interval excludes zero; the same at the last epoch, the whole schedule without selection). {} runs trained by this call and {} reused from earlier calls \
         (same config), at git revision(s) {}; this call took {:.0} s.\n\n{table}\nLearning curves: val accuracy (percent) by epoch, mean over the seeds; the \
         table above reports each run at its best val epoch.\n{curves}",
        tally.trained.len(),
        tally.reused.len(),
        revisions.join(", "),
        started.elapsed().as_secs_f64()
    );
    std::fs::write(&out, doc).with_context(|| format!("{}: cannot write", out.display()))?;
    println!("{}", out.display());
    Ok(())
}
