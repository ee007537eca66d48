//! `cargo xtask bench step [--config FILE] [--device D] [--steps N]`: training-step time and
//! samples/s on the first batches of a config's training split.
//! `cargo xtask bench loader [--config FILE] [--epochs N]`: loader throughput (decoded cache,
//! augmentation, batch assembly) in samples/s, without a model.
//! Speed goals are checked with these, never with timed tests. Each prints one JSON line.

use anyhow::{bail, Context, Result};
use mmbal_data::{batches, Split};
use mmbal_train::{TrainConfig, Trainer};
use std::path::PathBuf;
use std::time::Instant;

struct Args {
    config: Option<PathBuf>,
    device: Option<String>,
    steps: usize,
    epochs: usize,
}

fn parse(rest: &[String]) -> Result<Args> {
    let mut a = Args {
        config: None,
        device: None,
        steps: 20,
        epochs: 1,
    };
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => a.config = Some(PathBuf::from(value()?)),
            "--device" => a.device = Some(value()?.clone()),
            "--steps" => a.steps = value()?.parse()?,
            "--epochs" => a.epochs = value()?.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(a)
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["bench", "step", ..] => bench_step(&parse(&args[2..])?),
        ["bench", "loader", ..] => bench_loader(&parse(&args[2..])?),
        _ => bail!(
            "usage: cargo xtask bench step [--config FILE] [--device D] [--steps N]\n       cargo xtask bench loader [--config FILE] [--epochs N]"
        ),
    }
}
