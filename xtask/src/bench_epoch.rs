//! `cargo xtask bench epoch --config FILE [--device cuda:0] [--precision bf16]
//! [--unchecked-cache-sources]`: one
//! training epoch of a config from its data (the loader: packed-cache reads, per-sample
//! transforms, batch assembly, a batch ahead on a background thread) against the same number of
//! steps on one batch already in memory, and the loader alone over the same epoch. When the
//! epoch from the loader is no slower than the steps in memory, the loader is not what limits
//! training. Prints one JSON line.
//!
//! `--unchecked-cache-sources` opens the config's packed cache without its source files
//! (`Trainer::for_timing`), for a GPU machine that is handed the cache but not the dataset.

use anyhow::{Context, Result};
use mmbal_data::{batches, Split};
use mmbal_train::{TrainConfig, Trainer};
use std::path::PathBuf;
use std::time::Instant;

/// `cargo xtask bench epoch` options.
#[derive(clap::Args)]
pub struct EpochArgs {
    /// Training config (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Device to run on (cpu, cuda:N), overriding the config's.
    #[arg(long)]
    device: Option<String>,
    /// Open the config's packed input cache without checking its source files (a machine that
    /// holds the cache but not the dataset; needs `[data] cache = true`).
    #[arg(long)]
    unchecked_cache_sources: bool,
    /// Untimed steps first (kernel loading, cuDNN plans, the memory pool).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// The config's `precision` instead (fp32, fp32-strict, bf16).
    #[arg(long)]
    precision: Option<String>,
}

pub fn bench_epoch(a: &EpochArgs) -> Result<()> {
    let mut cfg = TrainConfig::load(&a.config)?;
    if let Some(d) = &a.device {
        cfg.device = d.clone();
    }
    if let Some(p) = &a.precision {
        cfg.precision = serde_json::from_value(serde_json::Value::String(p.clone()))
            .with_context(|| format!("--precision {p}: expected fp32, fp32-strict or bf16"))?;
    }
    cfg.name = format!("bench-{}", cfg.name);
    let mut t = if a.unchecked_cache_sources {
        Trainer::for_timing(cfg.clone())?
    } else {
        Trainer::from_config(cfg.clone())?
    };
    let rows = t.split_rows(Split::Train)?;
    let bs = cfg.batch_size.min(rows.len());
    let n_batches = rows.len().div_ceil(bs);
    let held = t.dataset.batch(&rows[..bs], Some((cfg.seed, 0, 0)))?;
    for _ in 0..a.warmup {
        t.train_step(&held, 0, 0, n_batches)?;
    }
    let dev = t.model.device().clone();
    dev.synchronize()?;

    // The epoch as training runs it: batches from the loader, one step each.
    let started = Instant::now();
    let mut loaded = 0;
    let stream = batches(
        t.dataset.clone(),
        rows.clone(),
        bs,
        Some((cfg.seed, 1)),
        cfg.prefetch,
    );
    for (i, b) in stream.enumerate() {
        let b = b.with_context(|| format!("loading batch {}", i + 1))?;
        loaded += b.rows.len();
        t.train_step(&b, 1, i, n_batches)?;
    }
    dev.synchronize()?;
    let epoch_s = started.elapsed().as_secs_f64();

    // The same number of steps on the batch already in memory: no loading at all.
    let started = Instant::now();
    for i in 0..n_batches {
        t.train_step(&held, 1, i, n_batches)?;
    }
    dev.synchronize()?;
    let held_s = started.elapsed().as_secs_f64();

    // The loader alone over the same epoch (no model).
    let started = Instant::now();
    let alone = crate::loader_pass(&t, &rows, bs, 2)?;
    let loader_s = started.elapsed().as_secs_f64();

    let epoch_rate = loaded as f64 / epoch_s;
    let held_rate = (n_batches * bs) as f64 / held_s;
    let report = serde_json::json!({
        "bench": "epoch",
        "config": a.config.display().to_string(),
        "device": cfg.device,
        "precision": cfg.precision,
        "cache_sources_checked": !a.unchecked_cache_sources,
        "batch_size": bs,
        "batches": n_batches,
        "epoch_samples": loaded,
        "epoch_s": epoch_s,
        "epoch_samples_per_s": epoch_rate,
        "held_batch_samples_per_s": held_rate,
        "loader_alone_samples_per_s": alone as f64 / loader_s,
        // Above 1: the epoch from the loader is slower than training alone, by this factor.
        "held_over_epoch": held_rate / epoch_rate,
    });
    println!("{report}");
    Ok(())
}
