//! `cargo xtask bench step [--config FILE] [--device D] [--steps N]`: training-step time and
//! samples/s on the first batches of a config's training split.
//! `cargo xtask bench cpu [--rows avmnist,grid,cremad] [--repeats N] [--steps N] [--threads N]`:
//! mmbal against PyTorch, side by side, on the CPU (see bench_cpu.rs).
//! `cargo xtask bench train [--rows ..] [--modes fp32,fp32_notf32,bf16]` and `cargo xtask gpu-check`:
//! on a CUDA device, the field's audio-visual step against PyTorch, and the CUDA ops' checks
//! (see gpu.rs).
//! `cargo xtask bench loader [--config FILE] [--epochs N]`: loader throughput (decoded cache,
//! augmentation, batch assembly) in samples/s, without a model.
//! `cargo xtask bench epoch --config FILE [--device D] [--unchecked-cache-sources]`: one epoch
//! from the loader against the same steps on a batch in memory (see bench_epoch.rs).
//! Speed goals are checked with these, never with timed tests. Each prints one JSON line.
//! `cargo xtask --help`, and `--help` after any task, lists every option with its default.
//! `cargo xtask results --config FILE [--config FILE ...] [--seeds N] [--epochs N] [--methods A,B]
//! [--set METHOD:KEY=VALUE ...] [--unimodal] [--out FILE]`: joint training and the registered
//! methods on each config, N seeds each, as a Markdown table paired with joint training by seed;
//! finished runs of the same config are reused, so a table can be made in parts (see results.rs).
//! `cargo xtask reproduce table1 [--datasets A,B] [--methods A,B] [--seeds N] [--profile
//! quick|paper] [--epochs N] [--device D] [--out DIR]`: the valuation paper's Table 1 as a
//! resumable matrix of runs, written to DIR/table1.md, DIR/table1.csv and figures
//! (see reproduce.rs).

mod bench_cpu;
mod bench_epoch;
mod gpu;
mod reproduce;
mod results;
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
    Results(results::ResultsArgs),
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
    /// One training epoch from the loader against the same steps on a batch in memory, and
    /// the loader alone (see bench_epoch.rs).
    Epoch(bench_epoch::EpochArgs),
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

/// One pass of the loader over `rows`, in their order, in batches of `batch_size` (the
/// augmentation draws of epoch `epoch` under the run's seed), without a model; the rows loaded.
fn loader_pass(
    t: &Trainer,
    rows: &[mmbal_data::Row],
    batch_size: usize,
    epoch: u64,
) -> Result<usize> {
    let mut n = 0;
    for b in batches(
        t.dataset.clone(),
        rows.to_vec(),
        batch_size,
        Some((t.config.seed, epoch)),
        t.config.prefetch,
    ) {
        n += b?.rows.len();
    }
    Ok(n)
}

fn bench_loader(a: &Args) -> Result<()> {
    let cfg = config(a)?;
    let t = Trainer::from_config(cfg.clone())?;
    let rows = t.dataset.rows(Split::Train);
    let started = Instant::now();
    let mut n = 0;
    for epoch in 0..a.epochs {
        n += loader_pass(&t, &rows, cfg.batch_size, epoch as u64)?;
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

fn main() -> Result<()> {
    // As in `mmbal`: freed tensors stay in the process (glibc); the bench prints whether it took.
    let retained = mmbal_ops::retain_freed_memory();
    match Cli::parse().task {
        Task::Bench(Bench::Step(a)) => bench_step(&a),
        Task::Bench(Bench::Loader(a)) => bench_loader(&a),
        Task::Bench(Bench::Cpu(a)) => bench_cpu::bench_cpu(a, retained),
        Task::Bench(Bench::Train(a)) => {
            let (_, failed) = gpu::bench_train(&a)?;
            if !failed.is_empty() {
                bail!(
                    "{} measurement(s) failed:\n{}",
                    failed.len(),
                    failed.join("\n")
                );
            }
            Ok(())
        }
        Task::Bench(Bench::Epoch(a)) => bench_epoch::bench_epoch(&a),
        Task::GpuCheck(a) => gpu::gpu_check(a),
        Task::Results(a) => results::results(a),
        Task::Reproduce(Reproduce::Table1(a)) => reproduce::table1(a),
    }
}
