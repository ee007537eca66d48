//! `cargo xtask bench cpu [--rows avmnist,grid,cremad] [--repeats 3] [--steps N] [--threads N]`:
//! mmbal's training step and evaluation forward against PyTorch's on the same model, shapes,
//! batch and optimizer (xtask/bench/torch_step.py, its encoders the mirrors in
//! tests/fixtures/mmbal_mirror.py), run alternately in one command on random inputs. Prints one
//! JSON line per row: medians of each side and the median of adjacent-run ratios. The Python
//! comes from `MMBAL_TORCH_PYTHON` (default `python3`).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use mmbal_fusion::{
    BnInit, EncoderSpec, FusionKind, LinearInit, MultimodalModel, Resnet18Options, SmallCnnOptions,
};
use mmbal_methods::StepIndex;
use mmbal_train::optim::OptimizerConfig;
use std::process::Command;
use std::time::Instant;

/// One benchmark row. Must match `ROWS` in xtask/bench/torch_step.py.
struct Row {
    name: &'static str,
    batch: usize,
    classes: usize,
    /// Per-sample input shapes: (C, H, W), or (T, C, H, W) for frames.
    inputs: [&'static [usize]; 2],
    encoders: [EncoderSpec; 2],
    optimizer: OptimizerConfig,
    /// Timed steps per measurement (the full-size row is slow on 2 cores).
    steps: usize,
}

fn small(in_channels: usize, width: usize) -> EncoderSpec {
    SmallCnnOptions {
        in_channels,
        width,
        bn_init: BnInit::Ones,
    }
    .into()
}

fn resnet(in_channels: usize, width: f64) -> EncoderSpec {
    Resnet18Options {
        in_channels,
        width,
        pretrained: None,
        bn_init: BnInit::Ones,
    }
    .into()
}

fn rows() -> Vec<Row> {
    let adam = |lr| OptimizerConfig::Adam {
        lr,
        weight_decay: 0.0,
        betas: [0.9, 0.999],
        eps: 1e-8,
    };
    vec![
        Row {
            name: "avmnist",
            batch: 32,
            classes: 10,
            inputs: [&[1, 64, 40], &[1, 28, 28]],
            encoders: [small(1, 8), small(1, 8)],
            optimizer: adam(0.005),
            steps: 10,
        },
        Row {
            name: "grid",
            batch: 16,
            classes: 10,
            inputs: [&[1, 120, 64], &[8, 1, 32, 48]],
            encoders: [resnet(1, 0.125), resnet(1, 0.125)],
            optimizer: adam(0.002),
            steps: 10,
        },
        Row {
            name: "cremad",
            batch: 8,
            classes: 6,
            inputs: [&[1, 257, 188], &[1, 3, 224, 224]],
            encoders: [resnet(1, 1.0), resnet(3, 1.0)],
            optimizer: OptimizerConfig::Sgd {
                lr: 1e-3,
                momentum: 0.9,
                weight_decay: 1e-4,
            },
            steps: 2,
        },
    ]
}

/// Milliseconds per training step and per evaluation forward, mmbal.
fn mmbal_row(row: &Row, steps: usize, warmup: usize) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let names = vec!["audio".to_string(), "visual".to_string()];
    let model = MultimodalModel::new(
        &names,
        &row.encoders,
        FusionKind::Concat,
        LinearInit::Pytorch,
        row.classes,
        0,
        &dev,
    )?;
    let mut method = mmbal_methods::build_method("joint", &toml::Table::new())?;
    let mut opt = row.optimizer.build(model.params());
    let inputs = row
        .inputs
        .iter()
        .map(|s| {
            let mut shape = vec![row.batch];
            shape.extend_from_slice(s);
            Tensor::randn(0f32, 1.0, shape, &dev)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let labels: Vec<u32> = (0..row.batch).map(|i| (i % row.classes) as u32).collect();
    let labels = Tensor::new(labels.as_slice(), &dev)?;
    let keep = Tensor::ones((row.batch, 2), DType::F32, &dev)?;
    let mut step = || -> Result<()> {
        mmbal_train::train_step(
            &model,
            method.as_mut(),
            opt.as_mut(),
            mmbal_train::StepInputs {
                inputs: &inputs,
                labels: &labels,
                keep: &keep,
                rows: &[],
                frozen_encoders: &[],
            },
            StepIndex::default(),
        )?;
        Ok(())
    };
    for _ in 0..warmup {
        step()?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        step()?;
    }
    let train_ms = 1000.0 * t0.elapsed().as_secs_f64() / steps as f64;
    for _ in 0..warmup {
        model.forward(&inputs, None, false)?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        model.forward(&inputs, None, false)?;
    }
    let eval_ms = 1000.0 * t0.elapsed().as_secs_f64() / steps as f64;
    Ok((train_ms, eval_ms))
}

fn python() -> String {
    std::env::var("MMBAL_TORCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Milliseconds per training step and per evaluation forward, PyTorch.
fn torch_row(row: &Row, steps: usize, warmup: usize, threads: usize) -> Result<(f64, f64)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/torch_step.py");
    let out = Command::new(python())
        .args([script, "--row", row.name])
        .args([
            "--steps",
            &steps.to_string(),
            "--warmup",
            &warmup.to_string(),
        ])
        .args(["--threads", &threads.to_string()])
        .output()
        .with_context(|| format!("cannot run {} {script}", python()))?;
    if !out.status.success() {
        bail!("{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .context("no output from the PyTorch side")?;
    let v: serde_json::Value = serde_json::from_str(line)
        .with_context(|| format!("not a JSON line from the PyTorch side: {line}"))?;
    let get = |k: &str| v[k].as_f64().with_context(|| format!("no `{k}` in {line}"));
    Ok((get("train_ms")?, get("eval_ms")?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `cargo xtask bench cpu` options.
#[derive(clap::Args)]
pub struct CpuArgs {
    /// Rows to run, comma-separated (avmnist, grid, cremad); all when absent.
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<String>>,
    /// Alternating measurements per side; medians are printed.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Timed steps per measurement, overriding each row's own.
    #[arg(long)]
    steps: Option<usize>,
    /// Threads for both sides; must equal RAYON_NUM_THREADS (default: that variable, else
    /// every core).
    #[arg(long)]
    threads: Option<usize>,
}

/// `retained`: whether mmbal's side keeps freed memory (`mmbal_ops::retain_freed_memory`);
/// PyTorch's side runs with its defaults.
pub fn bench_cpu(args: CpuArgs, retained: bool) -> Result<()> {
    let CpuArgs {
        rows: wanted,
        repeats,
        steps,
        threads,
    } = args;
    if let Some(w) = &wanted {
        let known: Vec<&str> = rows().iter().map(|r| r.name).collect();
        if let Some(bad) = w.iter().find(|n| !known.contains(&n.as_str())) {
            bail!("--rows: no row named {bad} (rows: {})", known.join(", "));
        }
    }
    let check = Command::new(python()).args(["-c", "import torch"]).output();
    if !check.map(|o| o.status.success()).unwrap_or(false) {
        bail!(
            "`{} -c 'import torch'` failed: this bench runs PyTorch beside mmbal. Install it (CPU \
             wheels from the package registry, e.g. `python3 -m venv venv && venv/bin/pip install \
             torch numpy`) and point MMBAL_TORCH_PYTHON at that python",
            python()
        );
    }
    // Both sides get the same cores: candle's pool (mmbal's kernels) and rayon's read
    // RAYON_NUM_THREADS; candle reads CANDLE_NUM_THREADS first, so that may not differ.
    let threads = threads.unwrap_or_else(|| {
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    });
    if std::env::var("RAYON_NUM_THREADS").ok() != Some(threads.to_string()) {
        bail!(
            "run with RAYON_NUM_THREADS={threads} set, so that mmbal uses the {threads} thread(s) \
             PyTorch is given"
        );
    }
    if let Ok(c) = std::env::var("CANDLE_NUM_THREADS") {
        if c != threads.to_string() {
            bail!("CANDLE_NUM_THREADS={c} would give mmbal's kernels other than the {threads} thread(s) PyTorch is given: unset it");
        }
    }
    for row in rows() {
        if let Some(w) = &wanted {
            if !w.iter().any(|n| n == row.name) {
                continue;
            }
        }
        let n = steps.unwrap_or(row.steps);
        let (mut mt, mut me, mut tt, mut te) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..repeats {
            let (a, b) = mmbal_row(&row, n, 2)?;
            let (c, d) = torch_row(&row, n, 2, threads)?;
            mt.push(a);
            me.push(b);
            tt.push(c);
            te.push(d);
        }
        let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
        let report = serde_json::json!({
            "bench": "cpu",
            "row": row.name,
            "batch": row.batch,
            "threads": threads,
            "mmbal_retains_freed_memory": retained,
            "repeats": repeats,
            "steps": n,
            "mmbal_train_ms": median(mt.clone()),
            "torch_train_ms": median(tt.clone()),
            "train_ratio": ratio(&mt, &tt),
            "mmbal_eval_ms": median(me.clone()),
            "torch_eval_ms": median(te.clone()),
            "eval_ratio": ratio(&me, &te),
        });
        println!("{report}");
    }
    Ok(())
}
