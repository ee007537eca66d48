//! `cargo xtask bench step [--config FILE] [--device D] [--steps N]`: training-step time and
//! samples/s on the first batches of a config's training split.
//! `cargo xtask bench cpu [--rows avmnist,grid,cremad] [--repeats N] [--steps N] [--threads N]`:
//! mmbal against PyTorch, side by side, on the CPU (see bench_cpu.rs).
//! `cargo xtask bench train [--rows ..] [--modes fp32,fp32_notf32]` and `cargo xtask gpu-check`:
//! on a CUDA device, the field's audio-visual step against PyTorch, and the CUDA ops' checks
//! (see gpu.rs).
//! `cargo xtask bench loader [--config FILE] [--epochs N]`: loader throughput (decoded cache,
//! augmentation, batch assembly) in samples/s, without a model.
//! Speed goals are checked with these, never with timed tests. Each prints one JSON line.
//! `cargo xtask --help`, and `--help` after any task, lists every option with its default.
//! `cargo xtask results --config FILE [--config FILE ...] [--seeds N] [--epochs N] [--set METHOD:KEY=VALUE ...] [--unimodal]
//! [--out FILE]`: joint training and every registered method on each config, N seeds each; the epoch with the
//! best val accuracy is reported on test (mean +- std of accuracy and macro-F1, per-modality
//! accuracy) as a Markdown table, each method paired with joint training by seed (mean difference
//! and 95% interval); `--unimodal` adds a row per modality trained alone. A method that reads
//! teachers (UMT, UME) gets, for each seed, one
//! teacher per modality trained first (joint training on that modality alone); UME, which trains
//! nothing, then runs one epoch.
//! `cargo xtask reproduce table1 [--datasets A,B] [--methods A,B] [--seeds N] [--profile
//! quick|paper] [--epochs N] [--device D] [--out DIR]`: the valuation paper's Table 1 as a
//! resumable matrix of runs, written to DIR/table1.md, DIR/table1.csv and figures
//! (see reproduce.rs).

mod bench_cpu;
mod gpu;
mod reproduce;
mod stats;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use mmbal_data::{batches, Split};
use mmbal_train::{TrainConfig, Trainer};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "mmbal's project tasks: benchmarks, the results table, Table 1",
    bin_name = "cargo xtask"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Speed: training step, loader, mmbal against PyTorch on the CPU. Each prints JSON lines.
    #[command(subcommand)]
    Bench(Bench),
    /// Joint training and every registered method on each config, several seeds each; the
    /// epoch with the best val accuracy is reported on test as a Markdown table.
    Results(ResultsArgs),
    /// The valuation paper's tables as resumable matrices of runs.
    #[command(subcommand)]
    Reproduce(Reproduce),
    /// On a CUDA device: every CUDA op against the CPU kernels, a model's steps on both
    /// devices, then `bench train`; one report (see gpu.rs).
    GpuCheck(gpu::CheckArgs),
}

#[derive(Subcommand)]
enum Bench {
    /// Training-step time and samples/s on the first batch of a config's training split.
    Step(Args),
    /// mmbal against PyTorch, side by side, on the CPU (see bench_cpu.rs).
    Cpu(bench_cpu::CpuArgs),
    /// Loader throughput (decoded cache, augmentation, batch assembly) without a model.
    Loader(Args),
    /// The audio-visual training step on a CUDA device against PyTorch (see gpu.rs).
    Train(gpu::TrainArgs),
}

#[derive(Subcommand)]
enum Reproduce {
    /// Table 1: a resumable matrix of runs written to DIR/table1.md, table1.csv and figures.
    Table1(reproduce::Table1Args),
}

#[derive(clap::Args)]
struct Args {
    /// Training config (TOML); the embedded default when absent.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Device to run on (cpu, cuda, cuda:N), overriding the config's.
    #[arg(long)]
    device: Option<String>,
    /// Timed steps (bench step).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Passes over the training split (bench loader).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
}

#[derive(clap::Args)]
struct ResultsArgs {
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
    #[arg(long = "set", value_parser = parse_set)]
    sets: Vec<(String, String, toml::Value)>,
    /// The Markdown file written.
    #[arg(long, default_value = "docs/results.md")]
    out: PathBuf,
    /// Methods, comma-separated (registered names); every registered method when absent.
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<String>>,
    /// Also a row per modality trained alone (joint training on that modality, the same seeds,
    /// epochs, encoders and optimizer): the field's "Unimodal" rows, paired with joint training
    /// like the methods.
    #[arg(long)]
    unimodal: bool,
}

/// The command line as typed, for provenance in what the tasks write.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
        .trim_end()
        .to_string()
}

fn config(a: &Args) -> Result<TrainConfig> {
    let mut c = match &a.config {
        Some(p) => TrainConfig::load(p)?,
        None => TrainConfig::default(),
    };
    if let Some(d) = &a.device {
        c.device = d.clone();
    }
    c.name = format!("bench-{}", c.name);
    Ok(c)
}

fn bench_step(a: &Args) -> Result<()> {
    let cfg = config(a)?;
    let mut t = Trainer::from_config(cfg.clone())?;
    let rows = t.dataset.rows(Split::Train);
    let bs = cfg.batch_size.min(rows.len());
    let batch = t.dataset.batch(&rows[..bs], Some((cfg.seed, 0, 0)))?;
    for _ in 0..3 {
        t.train_step(&batch, 0, 0, 1)?; // warm-up: allocations, kernel loading
    }
    t.model.device().synchronize()?;
    let started = Instant::now();
    for _ in 0..a.steps {
        t.train_step(&batch, 0, 0, 1)?;
    }
    t.model.device().synchronize()?;
    let secs = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "bench": "step",
        "config": cfg.name,
        "device": cfg.device,
        "batch_size": bs,
        "steps": a.steps,
        "ms_per_step": 1000.0 * secs / a.steps as f64,
        "samples_per_s": (a.steps * bs) as f64 / secs,
    });
    println!("{report}");
    Ok(())
}

fn bench_loader(a: &Args) -> Result<()> {
    let cfg = config(a)?;
    let t = Trainer::from_config(cfg.clone())?;
    let rows = t.dataset.rows(Split::Train);
    let started = Instant::now();
    let mut n = 0;
    for epoch in 0..a.epochs {
        for b in batches(
            t.dataset.clone(),
            rows.clone(),
            cfg.batch_size,
            Some((cfg.seed, epoch as u64)),
            cfg.prefetch,
        ) {
            n += b?.rows.len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let report = serde_json::json!({
        "bench": "loader",
        "config": cfg.name,
        "samples": n,
        "threads": threads,
        "samples_per_s": n as f64 / secs,
        "samples_per_s_per_thread": n as f64 / secs / threads as f64,
    });
    println!("{report}");
    Ok(())
}

/// The head a method is defined for (its declared requirements); `None`: the config's head.
fn fusion_for(method: &str) -> Result<Option<mmbal_fusion::FusionKind>> {
    Ok(mmbal_methods::build_method(method, &Default::default())?
        .requirements()
        .fusion)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// `--set METHOD:KEY=VALUE`: one method option for every run of that method (VALUE as TOML:
/// `2`, `0.5`, `true`, `"text"`; a bare word is a string).
fn parse_set(text: &str) -> Result<(String, String, toml::Value)> {
    let (method, rest) = text
        .split_once(':')
        .with_context(|| format!("--set {text}: expected METHOD:KEY=VALUE"))?;
    let (key, value) = rest
        .split_once('=')
        .with_context(|| format!("--set {text}: expected METHOD:KEY=VALUE"))?;
    if !mmbal_methods::METHODS.iter().any(|(n, _)| *n == method) {
        bail!("--set {text}: no method named {method}");
    }
    Ok((
        method.to_string(),
        key.to_string(),
        mmbal_data::overrides::parse_value(value),
    ))
}

/// Methods that read other runs' models (`BalanceMethod::teachers`): unless `--set
/// METHOD:teachers=...` names them, each seed's run gets its own (`mmbal_train::train_teachers`).
const NEEDS_TEACHERS: [&str; 2] = ["umt", "ume"];

fn results(a: ResultsArgs) -> Result<()> {
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
    let methods: Vec<String> = match methods {
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
    let mut table = String::from(
        "| dataset | method | test acc | vs joint, paired [95% CI] | test macro-F1 | per-modality test acc | best val epoch |\n|---|---|---|---|---|---|---|\n",
    );
    for path in &configs {
        let base = TrainConfig::load(path)?;
        // Joint training's per-seed test accuracy, the baseline each row is paired with: from
        // this call, or from the run folders of an earlier one.
        let mut joint: Option<Vec<f64>> = joint_from_run_folders(&base, seeds, epochs);
        for method in methods.iter().map(String::as_str) {
            let (mut acc, mut f1, mut epochs_best) = (Vec::new(), Vec::new(), Vec::new());
            let mut per: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
            for seed in 0..seeds {
                let mut c = base.clone();
                c.seed = seed;
                c.name = format!("results-{}-{method}-s{seed}", base.name);
                if let Some(e) = epochs {
                    c.epochs = e;
                }
                c.method.name = method.to_string();
                c.method.options.clear();
                for (m, key, v) in &sets {
                    if m == method {
                        c.method.options.insert(key.clone(), v.clone());
                    }
                }
                if let Some(f) = fusion_for(method)? {
                    c.model.fusion = f;
                }
                if NEEDS_TEACHERS.contains(&method) && !c.method.options.contains_key("teachers") {
                    let teachers = mmbal_train::train_teachers(&c)?;
                    c.method
                        .options
                        .insert("teachers".into(), toml::Value::Table(teachers));
                }
                // UME trains nothing: one epoch evaluates its members' ensemble.
                if method == "ume" {
                    c.epochs = 1;
                }
                let mut t = Trainer::from_config(c)?;
                // The table is made anew: an earlier run of the same row is replaced.
                t.set_overwrite(true);
                let summary = t.run(&mut mmbal_train::Quiet)?;
                let best = summary.best.context("no epoch ran")?;
                let test = best.test.as_ref().context("test split not evaluated")?;
                acc.push(test.acc);
                f1.push(test.macro_f1);
                epochs_best.push(best.epoch as f64);
                for (m, a) in &test.modality_acc {
                    per.entry(m.clone()).or_default().push(*a);
                }
                eprintln!(
                    "{} {method} seed {seed}: test acc {:.3}",
                    base.name, test.acc
                );
            }
            if method == "joint" {
                joint = Some(acc.clone());
            }
            let paired = match &joint {
                Some(j) if method != "joint" => {
                    stats::paired_difference(&acc, j).map_or("-".to_string(), |d| d.display(100.0))
                }
                _ => "-".to_string(),
            };
            let (am, asd) = mean_std(&acc);
            let (fm, fsd) = mean_std(&f1);
            let per_txt: Vec<String> = per
                .iter()
                .map(|(m, v)| {
                    let (a, s) = mean_std(v);
                    format!("{m} {:.1} +- {:.1}", 100.0 * a, 100.0 * s)
                })
                .collect();
            let ep: Vec<String> = epochs_best.iter().map(|e| format!("{e}")).collect();
            table.push_str(&format!(
                "| {} | {method} | {:.1} +- {:.1} | {paired} | {:.3} +- {:.3} | {} | {} |\n",
                base.name,
                100.0 * am,
                100.0 * asd,
                fm,
                fsd,
                per_txt.join(", "),
                ep.join(", ")
            ));
        }
        if unimodal {
            table.push_str(&unimodal_rows(&base, seeds, epochs, joint.as_deref())?);
        }
    }
    let command = command_line();
    let doc = format!(
        "# Results\n\nMade by `{command}` ({seeds} seeds per row, the same seeds for every method; the \
         epoch with the best val accuracy is reported on test; per-modality accuracy is each \
         modality's unimodal logits; \"vs joint\" is the mean of the per-seed differences from joint \
         training in accuracy points with its 95% confidence interval (Student's t), * where the \
         interval excludes zero).\n\n{table}"
    );
    std::fs::write(&out, doc).with_context(|| format!("{}: cannot write", out.display()))?;
    println!("{}", out.display());
    Ok(())
}

/// The "Unimodal" rows of a results table: for each seed, joint training of `base` on each
/// modality alone (`mmbal_train::train_teachers`), and per modality its test accuracy at the best
/// val epoch, paired with `joint` (per seed) when given.
fn unimodal_rows(
    base: &TrainConfig,
    seeds: u64,
    epochs: Option<usize>,
    joint: Option<&[f64]>,
) -> Result<String> {
    /// One modality's runs: test accuracy, macro-F1 and best val epoch per seed.
    #[derive(Default)]
    struct Runs {
        acc: Vec<f64>,
        f1: Vec<f64>,
        epochs: Vec<String>,
    }
    let mut per: std::collections::BTreeMap<String, Runs> = Default::default();
    for seed in 0..seeds {
        let mut c = base.clone();
        c.seed = seed;
        c.name = format!("results-{}-unimodal-s{seed}", base.name);
        if let Some(e) = epochs {
            c.epochs = e;
        }
        c.method = Default::default();
        for (m, path) in mmbal_train::train_teachers(&c)? {
            let path = PathBuf::from(path.as_str().context("a checkpoint path")?);
            let dir = path.parent().context("a run folder")?;
            let s = mmbal_train::read_summary(&dir.join("summary.json"))?;
            let best = s.best.context("a run without epochs")?;
            let test = best.test.context("test split not evaluated")?;
            eprintln!(
                "{} unimodal {m} seed {seed}: test acc {:.3}",
                base.name, test.acc
            );
            let r = per.entry(m).or_default();
            r.acc.push(test.acc);
            r.f1.push(test.macro_f1);
            r.epochs.push(best.epoch.to_string());
        }
    }
    let mut rows = String::new();
    for (
        m,
        Runs {
            acc,
            f1,
            epochs: ep,
        },
    ) in per
    {
        let paired = joint
            .and_then(|j| stats::paired_difference(&acc, j))
            .map_or("-".to_string(), |d| d.display(100.0));
        let (am, asd) = mean_std(&acc);
        let (fm, fsd) = mean_std(&f1);
        rows.push_str(&format!(
            "| {} | unimodal: {m} | {:.1} +- {:.1} | {paired} | {:.3} +- {:.3} | {m} alone | {} |\n",
            base.name,
            100.0 * am,
            100.0 * asd,
            fm,
            fsd,
            ep.join(", ")
        ));
    }
    Ok(rows)
}

/// Joint training's per-seed test accuracies from the run folders `cargo xtask results` left
/// for `base` (seeds 0..n, the epochs asked), when all of them are there.
fn joint_from_run_folders(
    base: &TrainConfig,
    seeds: u64,
    epochs: Option<usize>,
) -> Option<Vec<f64>> {
    (0..seeds)
        .map(|seed| {
            let dir = base
                .out_dir
                .join(format!("results-{}-joint-s{seed}", base.name));
            let s = mmbal_train::read_summary(&dir.join("summary.json")).ok()?;
            let best = s.best?;
            let last = s.last?;
            // A run of another length is not this table's baseline.
            if last.epoch != epochs.unwrap_or(base.epochs) {
                return None;
            }
            Some(best.test?.acc)
        })
        .collect()
}

fn main() -> Result<()> {
    // As in `mmbal`: freed tensors stay in the process (glibc); the bench prints whether it took.
    let retained = mmbal_ops::retain_freed_memory();
    match Cli::parse().task {
        Task::Bench(Bench::Step(a)) => bench_step(&a),
        Task::Bench(Bench::Loader(a)) => bench_loader(&a),
        Task::Bench(Bench::Cpu(a)) => bench_cpu::bench_cpu(a, retained),
        Task::Bench(Bench::Train(a)) => gpu::bench_train(&a).map(|_| ()),
        Task::GpuCheck(a) => gpu::gpu_check(a),
        Task::Results(a) => results(a),
        Task::Reproduce(Reproduce::Table1(a)) => reproduce::table1(a),
    }
}
