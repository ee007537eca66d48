//! `cargo xtask reproduce table1`: the valuation paper's comparison (Wei et al., CVPR 2024,
//! Table 1 and Fig. 1) as one resumable matrix of runs, datasets x methods x seeds.
//!
//! Every run lives in `<out>/table1/<profile>/<dataset>/<method>-s<seed>/` with its resolved
//! `config.toml`, `provenance.json` (git revision, seed, dataset, profile, command),
//! `data-recipe.toml` when the data was made by `mmbal preprocess`, `requested-config.toml` (the
//! config asked for, its length aside) and `metrics.jsonl`. A run of the same requested config
//! whose `summary.json` reaches the asked epochs is finished and never redone; one with
//! `last.safetensors` and no summary (interrupted), or a summary of fewer epochs, resumes from
//! its checkpoint; a folder of another config is trained anew, with a line saying so. The
//! tables and figures are rebuilt from the run folders each time.

use anyhow::{bail, Context, Result};
use mmbal_train::{EpochRecord, RunSummary, TrainConfig, Trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Gains over joint training reported by the valuation paper's Fig. 1 (accuracy points), never
/// mixed with measured values: printed in their own, labelled column.
const REPORTED_GAINS: [(&str, &str, f64); 10] = [
    ("kinetics-sounds", "sample-level", 4.62),
    ("kinetics-sounds", "modality-level", 4.35),
    ("kinetics-sounds", "ogm-ge", 1.00),
    ("kinetics-sounds", "greedy", 0.07),
    ("kinetics-sounds", "pmr", 0.93),
    ("mm-debiased", "sample-level", 1.49),
    ("mm-debiased", "modality-level", 1.09),
    ("mm-debiased", "ogm-ge", -0.14),
    ("mm-debiased", "greedy", -0.14),
    ("mm-debiased", "pmr", -0.34),
];

/// Mean contributions on the training set reported by the valuation paper's Fig. 2(d)
/// (approximate, read from the figure), printed apart from measured values.
const REPORTED_CONTRIBUTIONS: [(&str, &str); 3] = [
    ("kinetics-sounds", "audio about 1.29, visual 0.71"),
    ("ucf-101", "rgb 1.43, flow 0.57"),
    ("mm-debiased", "audio 1.06, visual 0.89"),
];

/// The paper's Table 1 methods, joint first (the baseline of every gain).
const TABLE1_METHODS: [&str; 6] = [
    "joint",
    "ogm-ge",
    "greedy",
    "pmr",
    "sample-level",
    "modality-level",
];

/// `cargo xtask reproduce table1` options.
#[derive(clap::Args)]
pub struct Table1Args {
    /// Datasets, comma-separated; the profile's own when absent (quick: grid-800 and avmnist
    /// with the shared data, else synthetic; grid-s1, the 200-clip GRID, on request).
    #[arg(long, value_delimiter = ',')]
    datasets: Option<Vec<String>>,
    /// Methods, comma-separated; joint is always added (gains are over it).
    #[arg(long, value_delimiter = ',', default_values_t = TABLE1_METHODS.map(String::from))]
    methods: Vec<String>,
    /// Seeds per method, 0..N, paired across methods.
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Schedule and sizes: quick (this machine) or paper (the paper's, for a GPU).
    #[arg(long, default_value = "quick", value_parser = ["quick", "paper"])]
    profile: String,
    /// Folder of the runs and the table; finished runs there are never redone.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Epochs, overriding the profile's.
    #[arg(long)]
    epochs: Option<usize>,
    /// Device to run on (cpu, cuda, cuda:N).
    #[arg(long)]
    device: Option<String>,
}

fn check(mut o: Table1Args) -> Result<Table1Args> {
    for m in &mut o.methods {
        *m = m.trim().to_string();
    }
    for m in &o.methods {
        if !mmbal_methods::METHODS.iter().any(|(n, _)| n == m) {
            bail!("--methods: no method named {m}");
        }
    }
    if !o.methods.iter().any(|m| m == "joint") {
        // Gains are over joint training, so joint always runs.
        o.methods.insert(0, "joint".into());
    }
    if let Some(d) = &mut o.datasets {
        for s in d.iter_mut() {
            *s = s.trim().to_string();
        }
    }
    Ok(o)
}

/// The explicit carving step (`mmbal data carve-val`) for a community layout without a val
/// list, saying what it wrote; nothing when the list is there.
fn carve_val_once(c: &TrainConfig) -> Result<()> {
    let (card_dir, root) = c.dataset_location()?;
    let (card, _) = mmbal_dataset::manifest::DatasetCard::read(&card_dir)?;
    if let Some(layout) = &card.layout {
        if let Some(note) = mmbal_dataset::layouts::carve_val(&card, layout, &root)? {
            println!("{note}");
        }
    }
    Ok(())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn shared_data() -> Option<PathBuf> {
    let p = std::env::var("MMBAL_SHARED_DATA").ok()?;
    let p = workspace().join(p);
    p.is_dir().then_some(p)
}

/// The base config of one dataset in a profile, and the resampling methods' warm-up epochs
/// (5 of the paper's 60; scaled down with the quick schedules so that they resample at all).
fn dataset_config(profile: &str, dataset: &str) -> Result<(TrainConfig, i64)> {
    let ws = workspace();
    let mut c: (TrainConfig, i64) = match (profile, dataset) {
        ("quick", "synthetic") => (
            TrainConfig {
                epochs: 6,
                ..TrainConfig::default()
            },
            2,
        ),
        ("quick", "grid-s1") => {
            let data = ws.join("data/grid-s1");
            preprocess_grid(&data, &["grid-s1"])?;
            let mut c = TrainConfig::load(&ws.join("configs/grid-results.toml"))?;
            c.data.card = Some(ws.join("datasets/grid-s1"));
            c.data.root = Some(data.to_string_lossy().into_owned());
            c.data.cache_path = Some(ws.join("runs/grid-joint/inputs.mmbc"));
            c.epochs = 5;
            (c, 2)
        }
        ("quick", "grid-800") => {
            let data = ws.join("data/grid-s1-800");
            preprocess_grid(&data, &["grid-s1", "grid-s1-more"])?;
            let mut c = TrainConfig::load(&ws.join("configs/grid-800.toml"))?;
            c.data.card = Some(ws.join("datasets/grid-s1-800"));
            c.data.root = Some(data.to_string_lossy().into_owned());
            (c, 2)
        }
        ("quick", "avmnist") => {
            if shared_data().is_none() {
                bail!("avmnist needs MMBAL_SHARED_DATA (the shared data folder)");
            }
            let mut c = TrainConfig::load(&ws.join("configs/avmnist.toml"))?;
            c.data.card = Some(ws.join("datasets/avmnist"));
            (c, 2)
        }
        ("paper", d @ ("kinetics-sounds" | "ucf-101" | "mm-debiased")) => {
            let var = paper_root_var(d);
            if std::env::var(var).is_err() {
                bail!("the paper profile's {d} needs {var} set to its folder (community layout, datasets/{d}/dataset.toml)");
            }
            let mut c = TrainConfig::load(&ws.join(format!("configs/paper/{d}.toml")))?;
            c.data.card = Some(ws.join(format!("datasets/{d}")));
            carve_val_once(&c)?;
            (c, 5)
        }
        (p, d) => bail!("profile {p} has no dataset {d} (quick: grid-800, avmnist, grid-s1, synthetic; paper: kinetics-sounds, ucf-101, mm-debiased)"),
    };
    c.0.track_contributions = true;
    Ok(c)
}

/// Decodes each of the shared data's GRID `folders` into `data` (25 fps) unless every video of
/// it already has its audio and frames there.
fn preprocess_grid(data: &Path, folders: &[&str]) -> Result<()> {
    let shared = shared_data().context(
        "GRID needs MMBAL_SHARED_DATA (the shared data folder) to preprocess its videos",
    )?;
    let recipe = mmbal_preprocess::preprocess::PreprocessRecipe {
        fps: 25.0,
        ..Default::default()
    };
    for f in folders {
        let videos = std::fs::read_dir(shared.join(f))
            .with_context(|| format!("{}: cannot read", shared.join(f).display()))?;
        let mut done = true;
        for v in videos {
            let v = v?.path();
            if let Some(id) = v.file_stem().map(|s| s.to_string_lossy().into_owned()) {
                let wav = data.join("audio").join(format!("{id}.wav"));
                done &= wav.is_file() && data.join("visual").join(&id).is_dir();
            }
        }
        if done {
            continue;
        }
        eprintln!("preprocessing {f} into {} (25 fps)", data.display());
        let r = mmbal_preprocess::preprocess::preprocess_folder(&shared.join(f), data, &recipe)?;
        if !r.failed.is_empty() {
            bail!("GRID preprocessing failed:\n  {}", r.failed.join("\n  "));
        }
    }
    Ok(())
}

fn paper_root_var(dataset: &str) -> &'static str {
    match dataset {
        "kinetics-sounds" => "MMBAL_KS_ROOT",
        "ucf-101" => "MMBAL_UCF101_ROOT",
        _ => "MMBAL_MMDEBIASED_ROOT",
    }
}

fn default_datasets(profile: &str) -> Result<Vec<String>> {
    Ok(match profile {
        "quick" if shared_data().is_some() => vec!["grid-800".into(), "avmnist".into()],
        "quick" => {
            eprintln!(
                "MMBAL_SHARED_DATA is not set: the quick profile runs on the embedded synthetic dataset"
            );
            vec!["synthetic".into()]
        }
        "paper" => vec![
            "kinetics-sounds".into(),
            "ucf-101".into(),
            "mm-debiased".into(),
        ],
        p => bail!("no profile {p} (quick or paper)"),
    })
}

/// A method's settings on top of the dataset's config: the head it is defined for, and the
/// profile's resampling warm-up for every method that has a `warmup` option.
fn method_config(base: &TrainConfig, warmup: i64, method: &str) -> Result<TrainConfig> {
    let mut c = base.clone();
    c.method.name = method.to_string();
    c.method.options.clear();
    let built = mmbal_methods::build_method(method, &Default::default())?;
    if let Some(f) = built.requirements().fusion {
        c.model.fusion = f;
    }
    if built.options().contains_key("warmup") {
        c.method
            .options
            .insert("warmup".into(), toml::Value::Integer(warmup));
    }
    Ok(c)
}

/// The git revision a run folder's `provenance.json` records ("unknown" without one).
pub(crate) fn run_revision(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("provenance.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["git_revision"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into())
}

pub(crate) fn git_revision() -> String {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(workspace())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "HEAD"]) {
        Some(rev) => {
            // Without the index lock a status may take, so a commit made meanwhile never fails.
            let dirty = run(&["--no-optional-locks", "status", "--porcelain"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown (not a git checkout)".into(),
    }
}

/// Runs (or resumes, or skips) one run; returns its summary and every epoch record.
fn run_one(
    cfg: TrainConfig,
    provenance: &serde_json::Value,
) -> Result<(RunSummary, Vec<EpochRecord>, bool)> {
    let dir = cfg.run_dir();
    let summary_path = dir.join("summary.json");
    let read_summary = || mmbal_train::read_summary(&summary_path);
    // The config the run was asked for, its length aside (a run may be extended): a folder
    // made with another config (or before this was recorded) is not this run.
    let request_path = dir.join("requested-config.toml");
    let requested = {
        let mut r = cfg.clone();
        r.epochs = 0;
        r.to_toml()
    };
    let same_config = std::fs::read_to_string(&request_path).is_ok_and(|t| t == requested);
    if !same_config && dir.is_dir() {
        eprintln!(
            "  {}: made with another config (or before configs were recorded); trained anew",
            dir.display()
        );
    }
    // Finished: a summary at the asked number of epochs. Fewer: extended from its checkpoint.
    let epochs_done = if same_config && summary_path.is_file() {
        read_summary()?.last.map(|r| r.epoch).unwrap_or(0)
    } else {
        0
    };
    if epochs_done > cfg.epochs {
        bail!(
            "{}: this run has {epochs_done} epochs, more than the {} asked; use another --out",
            dir.display(),
            cfg.epochs
        );
    }
    let mut trained = false;
    if epochs_done < cfg.epochs {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("provenance.json"),
            serde_json::to_string_pretty(provenance)?,
        )?;
        std::fs::write(&request_path, &requested)
            .with_context(|| format!("{}: cannot write", request_path.display()))?;
        let last = dir.join("last.safetensors");
        let mut t = if same_config && last.is_file() {
            eprintln!("  resuming {}", dir.display());
            Trainer::resume(&last, Some(cfg.epochs), None)?
        } else {
            // Stopped before its first checkpoint (or never started): nothing to resume from,
            // so whatever it left is replaced.
            let mut t = Trainer::from_config(cfg)?;
            t.set_overwrite(true);
            t
        };
        t.run(&mut mmbal_train::Quiet)?;
        trained = true;
    }
    let summary = read_summary()?;
    let records = mmbal_train::read_log(&dir.join("metrics.jsonl"))?;
    Ok((summary, records, trained))
}

fn pm(v: &[f64], scale: f64, digits: usize) -> String {
    let (m, s) = crate::mean_std(v);
    format!("{:.*} +- {:.*}", digits, scale * m, digits, scale * s)
}

/// Per (dataset, method): the numbers of its seeds.
#[derive(Default)]
struct Cell {
    acc_best: Vec<f64>,
    f1_best: Vec<f64>,
    acc_last: Vec<f64>,
    f1_last: Vec<f64>,
    modality_acc: BTreeMap<String, Vec<f64>>,
    contribution: BTreeMap<String, Vec<f64>>,
    train_seconds: Vec<f64>,
    /// Per epoch, per modality: contributions of each seed.
    curves: BTreeMap<String, BTreeMap<usize, Vec<f64>>>,
}

pub fn table1(args: Table1Args) -> Result<()> {
    let o = check(args)?;
    let datasets = match &o.datasets {
        Some(d) => d.clone(),
        None => default_datasets(&o.profile)?,
    };
    let command = crate::command_line();
    let revision = git_revision();
    let root = o.out.join("table1").join(&o.profile);
    let started = Instant::now();
    let mut cells: BTreeMap<(String, String), Cell> = BTreeMap::new();
    let mut done_now = 0;
    let mut run_revisions = std::collections::BTreeSet::new();
    for dataset in &datasets {
        let (mut base, warmup) = dataset_config(&o.profile, dataset)?;
        if let Some(e) = o.epochs {
            base.epochs = e;
        }
        if let Some(d) = &o.device {
            base.device = d.clone();
        }
        base.out_dir = root.join(dataset);
        for method in &o.methods {
            for seed in 0..o.seeds {
                let mut c = method_config(&base, warmup, method)?;
                c.seed = seed;
                c.name = format!("{method}-s{seed}");
                let provenance = serde_json::json!({
                    "git_revision": revision,
                    "profile": o.profile,
                    "dataset": dataset,
                    "method": method,
                    "seed": seed,
                    "command": command,
                });
                let dir = c.run_dir();
                let (summary, records, trained) = run_one(c, &provenance)
                    .with_context(|| format!("{dataset} {method} seed {seed}"))?;
                // The revision that trained the run (an earlier call's, for a finished one).
                run_revisions.insert(run_revision(&dir));
                if trained {
                    done_now += 1;
                }
                let cell = cells.entry((dataset.clone(), method.clone())).or_default();
                let best = summary.best.as_ref().context("a run without epochs")?;
                let last = summary.last.as_ref().context("a run without epochs")?;
                let (bt, lt) = (
                    best.test.as_ref().context("test split not evaluated")?,
                    last.test.as_ref().context("test split not evaluated")?,
                );
                cell.acc_best.push(bt.acc);
                cell.f1_best.push(bt.macro_f1);
                cell.acc_last.push(lt.acc);
                cell.f1_last.push(lt.macro_f1);
                for (m, a) in &bt.modality_acc {
                    cell.modality_acc.entry(m.clone()).or_default().push(*a);
                }
                for (m, v) in &last.contributions {
                    cell.contribution.entry(m.clone()).or_default().push(*v);
                }
                cell.train_seconds
                    .push(records.iter().map(|r| r.train_seconds).sum());
                for r in &records {
                    for (m, v) in &r.contributions {
                        cell.curves
                            .entry(m.clone())
                            .or_default()
                            .entry(r.epoch)
                            .or_default()
                            .push(*v);
                    }
                }
                eprintln!(
                    "{dataset} {method} seed {seed}: test acc {:.3} (val-selected epoch {}), last {:.3}{}",
                    bt.acc,
                    best.epoch,
                    lt.acc,
                    if trained { "" } else { " [already done]" }
                );
            }
        }
    }
    eprintln!(
        "{done_now} run(s) trained now, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let revisions: Vec<String> = run_revisions.into_iter().collect();
    write_outputs(&o, &datasets, &cells, &command, &revisions.join(", "))
}

fn write_outputs(
    o: &Table1Args,
    datasets: &[String],
    cells: &BTreeMap<(String, String), Cell>,
    command: &str,
    revision: &str,
) -> Result<()> {
    std::fs::create_dir_all(&o.out)?;
    let mut md = format!(
        "# Table 1, reproduced\n\nMade by `{command}` from runs trained at git revision(s) {revision}, profile `{}`, {} seed(s) per row; run folders under `{}`.\n\
         Accuracy and macro-F1 on test, mean +- std over seeds, at the epoch with the best val accuracy (val-selected) and at the last epoch; per-modality accuracy is each modality's unimodal logits (val-selected epoch); contribution is the mean Shapley value per modality on the training split after the last epoch; train time is the sum of the epochs' training seconds.\n\
         The paired gain is the mean of the per-seed differences from joint training (every method runs the same seeds: the same initial weights and data order) with its 95% confidence interval (Student's t), * where the interval excludes zero; at the val-selected epoch, and at the last epoch (the whole schedule, no selection).\n\
         The last column is **reported elsewhere** (the valuation paper's Fig. 1, its own datasets and protocol), not measured here.\n",
        o.profile,
        o.seeds,
        o.out.join("table1").join(&o.profile).display()
    );
    let mut csv = csv::Writer::from_writer(Vec::new());
    csv.write_record([
        "dataset",
        "method",
        "seeds",
        "acc_val_selected_mean",
        "acc_val_selected_std",
        "f1_val_selected_mean",
        "f1_val_selected_std",
        "acc_last_mean",
        "acc_last_std",
        "f1_last_mean",
        "f1_last_std",
        "gain_over_joint",
        "paired_gain_ci_lo",
        "paired_gain_ci_hi",
        "modality_acc",
        "contribution",
        "train_seconds_mean",
        "reported_gain_elsewhere",
        "paired_gain_last_ci_lo",
        "paired_gain_last_ci_hi",
    ])?;
    for dataset in datasets {
        let joint_cell = cells.get(&(dataset.clone(), "joint".to_string()));
        let joint = joint_cell.map(|c| crate::mean_std(&c.acc_best).0);
        md.push_str(&format!(
            "\n## {dataset}\n\n| method | acc (val-selected) | macro-F1 (val-selected) | acc (last) | macro-F1 (last) | gain over joint | paired gain [95% CI] | paired gain, last epoch [95% CI] | per-modality acc | contribution | train time (s) | reported gain elsewhere |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        ));
        let mut gains = Vec::new();
        let mut curves = Vec::new();
        for method in &o.methods {
            let Some(c) = cells.get(&(dataset.clone(), method.clone())) else {
                continue;
            };
            let acc = crate::mean_std(&c.acc_best).0;
            let gain = joint.map(|j| 100.0 * (acc - j));
            // Seeds are run in order for every method: index i is seed i in both.
            let (paired, paired_last) = match joint_cell {
                Some(j) if method != "joint" => (
                    crate::stats::paired_difference(&c.acc_best, &j.acc_best),
                    crate::stats::paired_difference(&c.acc_last, &j.acc_last),
                ),
                _ => (None, None),
            };
            let reported = REPORTED_GAINS
                .iter()
                .find(|(d, m, _)| d == dataset && m == method)
                .map(|(_, _, g)| *g);
            let modal = |map: &BTreeMap<String, Vec<f64>>, scale: f64, digits: usize| {
                map.iter()
                    .map(|(m, v)| format!("{m} {}", pm(v, scale, digits)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            md.push_str(&format!(
                "| {method} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} |\n",
                pm(&c.acc_best, 100.0, 1),
                pm(&c.f1_best, 1.0, 3),
                pm(&c.acc_last, 100.0, 1),
                pm(&c.f1_last, 1.0, 3),
                gain.map(|g| format!("{g:+.1}")).unwrap_or("-".into()),
                paired.map_or("-".into(), |d| d.display(100.0)),
                paired_last.map_or("-".into(), |d| d.display(100.0)),
                modal(&c.modality_acc, 100.0, 1),
                modal(&c.contribution, 1.0, 2),
                crate::mean_std(&c.train_seconds).0,
                reported.map(|g| format!("{g:+.2}")).unwrap_or("-".into()),
            ));
            let kv = |map: &BTreeMap<String, Vec<f64>>| {
                map.iter()
                    .map(|(m, v)| format!("{m}={:.4}", crate::mean_std(v).0))
                    .collect::<Vec<_>>()
                    .join(";")
            };
            let (am, asd) = crate::mean_std(&c.acc_best);
            let (fm, fsd) = crate::mean_std(&c.f1_best);
            let (lm, lsd) = crate::mean_std(&c.acc_last);
            let (lfm, lfsd) = crate::mean_std(&c.f1_last);
            let f4 = |v: f64| format!("{v:.4}");
            csv.write_record([
                dataset.clone(),
                method.clone(),
                c.acc_best.len().to_string(),
                f4(am),
                f4(asd),
                f4(fm),
                f4(fsd),
                f4(lm),
                f4(lsd),
                f4(lfm),
                f4(lfsd),
                gain.map(|g| f4(g / 100.0)).unwrap_or_default(),
                paired.map(|d| f4(d.lo)).unwrap_or_default(),
                paired.map(|d| f4(d.hi)).unwrap_or_default(),
                kv(&c.modality_acc),
                kv(&c.contribution),
                format!("{:.1}", crate::mean_std(&c.train_seconds).0),
                reported.map(|g| f4(g / 100.0)).unwrap_or_default(),
                paired_last.map(|d| f4(d.lo)).unwrap_or_default(),
                paired_last.map(|d| f4(d.hi)).unwrap_or_default(),
            ])?;
            if method != "joint" {
                if let Some(g) = gain {
                    // The whisker is the paired 95% interval (none with one seed).
                    let half = paired.map_or(0.0, |d| 100.0 * (d.hi - d.lo) / 2.0);
                    gains.push((method.clone(), g, half));
                }
            }
            for (m, by_epoch) in &c.curves {
                let points: Vec<(f64, f64)> = by_epoch
                    .iter()
                    .map(|(e, v)| (*e as f64, crate::mean_std(v).0))
                    .collect();
                curves.push((format!("{method} {m}"), points));
            }
        }
        let stem = o.out.join(format!("table1-{dataset}-gain"));
        let mut files = mmbal_train::plots::bar_figure(
            &stem,
            &format!("{dataset}: test accuracy gain over joint training, paired 95% CI"),
            "gain (accuracy points)",
            &gains,
        )?;
        let stem = o.out.join(format!("table1-{dataset}-contributions"));
        files.extend(mmbal_train::plots::line_figure(
            &stem,
            &format!("{dataset}: mean contribution per modality, training split"),
            "mean Shapley value",
            &curves,
        )?);
        if let Some((_, c)) = REPORTED_CONTRIBUTIONS.iter().find(|(d, _)| d == dataset) {
            md.push_str(&format!(
                "\nReported elsewhere (the valuation paper's Fig. 2(d), joint training): mean contribution {c}.\n"
            ));
        }
        md.push('\n');
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".svg") {
                md.push_str(&format!("![{name}]({name})\n"));
            }
        }
    }
    let md_path = o.out.join("table1.md");
    std::fs::write(&md_path, md).with_context(|| format!("{}: cannot write", md_path.display()))?;
    let csv_path = o.out.join("table1.csv");
    let csv = csv.into_inner().map_err(|e| e.into_error())?;
    std::fs::write(&csv_path, csv)
        .with_context(|| format!("{}: cannot write", csv_path.display()))?;
    println!("{}\n{}", md_path.display(), csv_path.display());
    Ok(())
}
