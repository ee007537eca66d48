//! The GPU tasks (a binary built with `--features cuda`, run where a CUDA device is):
//!
//! * `cargo xtask bench train [--rows ks,cremad-t1,cremad-t3] [--modes fp32,fp32_notf32,bf16]
//!   [--steps 30] [--warmup 8] [--no-torch]`: the training step and evaluation forward of the
//!   field's audio-visual model (two ResNet-18 trained from scratch, concat head, SGD lr 1e-3,
//!   momentum 0.9, weight decay 1e-4, batch 64, random inputs already on the GPU) in samples/s,
//!   with the peak of the CUDA memory pool; then the PyTorch reference,
//!   `xtask/bench/torch_av_bench.py` (a copy of the project's `shared/bench/torch_av_bench.py`),
//!   in the same command, and the ratio per row. In `fp32` mode convolutions may use TF32 (both
//!   sides, PyTorch's default), `fp32_notf32` is strict fp32, `bf16` mixed precision (mmbal:
//!   `precision = "bf16"`, loss scaling included; PyTorch: bf16 autocast, NCHW, no scaler).
//!   Each row also times the sample-level valuation of a batch (encoders once, the head per
//!   modality subset) against a training step on it: over an epoch the two scale alike, so the
//!   ratio is the valuation pass's share of an epoch.
//! * `cargo xtask gpu-check [--out DIR] [--steps N] [--no-torch]`: every CUDA op against the
//!   CPU kernels (themselves tested against PyTorch) on fresh random inputs, forward and
//!   gradients, strict fp32, TF32 and bf16 activations; the fused optimizers against the
//!   composed CPU ones; a whole model's training steps on both devices, in f32 and in bf16; then
//!   `bench train`. A check that errors is a failed line, and the others still run. Writes
//!   DIR/gpu-check.md and DIR/gpu-check.json (DIR: `--out`, else `$OUT`, else `gpu-check`) and
//!   fails when a check fails.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use mmbal_fusion::{BnInit, EncoderSpec, FusionKind, LinearInit, MultimodalModel, Resnet18Options};
use mmbal_methods::StepIndex;
use mmbal_train::loss_scale::LossScaler;
use mmbal_train::optim::{Adam, Optimizer, Sgd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// One row of the PyTorch reference table; names as torch_av_bench.py prints them.
struct Row {
    name: &'static str,
    key: &'static str,
    audio: [usize; 3],
    frames: usize,
    batch: usize,
    classes: usize,
}

const ROWS: [Row; 3] = [
    Row {
        name: "ks_fbank_1024x128_T3",
        key: "ks",
        audio: [1, 1024, 128],
        frames: 3,
        batch: 64,
        classes: 31,
    },
    Row {
        name: "cremad_stft_257x188_T1",
        key: "cremad-t1",
        audio: [1, 257, 188],
        frames: 1,
        batch: 64,
        classes: 6,
    },
    Row {
        name: "cremad_stft_257x188_T3",
        key: "cremad-t3",
        audio: [1, 257, 188],
        frames: 3,
        batch: 64,
        classes: 6,
    },
];

/// `cargo xtask bench train` options.
#[derive(clap::Args, Clone)]
pub struct TrainArgs {
    /// Rows, comma-separated (ks, cremad-t1, cremad-t3); all when absent.
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<String>>,
    /// Precision modes, comma-separated: fp32 (TF32 convolutions, PyTorch's default),
    /// fp32_notf32 (strict fp32) and bf16 (mixed precision; PyTorch: bf16 autocast, NCHW).
    #[arg(long, value_delimiter = ',', default_value = "fp32,fp32_notf32,bf16")]
    modes: Vec<String>,
    /// Timed steps per measurement.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Untimed steps first (cuDNN plans, kernel loading, the memory pool).
    #[arg(long, default_value_t = 8)]
    warmup: usize,
    /// CUDA device.
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_torch: bool,
}

/// `cargo xtask gpu-check` options.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// Folder for gpu-check.md and gpu-check.json (default: $OUT, else ./gpu-check).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The bench's options.
    #[command(flatten)]
    bench: TrainArgs,
    /// Only the op checks, no bench.
    #[arg(long)]
    no_bench: bool,
}

fn av_model(classes: usize, width: f64, dev: &Device) -> Result<MultimodalModel> {
    let spec = |c| -> EncoderSpec {
        Resnet18Options {
            in_channels: c,
            width,
            pretrained: None,
            bn_init: BnInit::Ones,
        }
        .into()
    };
    let names = vec!["audio".to_string(), "visual".to_string()];
    MultimodalModel::new(
        &names,
        &[spec(1), spec(3)],
        FusionKind::Concat,
        LinearInit::Pytorch,
        classes,
        0,
        dev,
    )
}

/// mmbal's numbers for one row and mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    row: String,
    mode: String,
    batch: usize,
    train_samples_per_s: f64,
    eval_samples_per_s: f64,
    peak_mem_gib: Option<f64>,
    valuation_over_train: f64,
    torch_train_samples_per_s: Option<f64>,
    torch_eval_samples_per_s: Option<f64>,
    torch_peak_mem_gib: Option<f64>,
    train_ratio: Option<f64>,
    eval_ratio: Option<f64>,
}

fn set_mode(mode: &str) -> Result<()> {
    match mode {
        "fp32" => mmbal_ops::set_cuda_tf32(true),
        "fp32_notf32" => mmbal_ops::set_cuda_tf32(false),
        "bf16" => mmbal_ops::set_cuda_tf32(true),
        other => bail!(
            "--modes: unknown mode {other} (fp32, fp32_notf32, bf16; channels-last, PyTorch's \
             cl_bf16, is not built)"
        ),
    }
    Ok(())
}

fn measure(row: &Row, mode: &str, a: &TrainArgs, dev: &Device) -> Result<Measured> {
    set_mode(mode)?;
    let mut model = av_model(row.classes, 1.0, dev)?;
    // bf16: what `precision = "bf16"` trains with, loss scaling included (PyTorch's bf16 row
    // runs autocast without a scaler).
    let mut scaler = None;
    if mode == "bf16" {
        model.set_compute_dtype(DType::BF16)?;
        scaler = Some(LossScaler::default());
    }
    let mut method = mmbal_methods::build_method("joint", &toml::Table::new())?;
    let mut opt = Sgd::new(model.params(), 1e-3, 0.9, 1e-4);
    let b = row.batch;
    let [c, h, w] = row.audio;
    let inputs = vec![
        Tensor::randn(0f32, 1.0, (b, c, h, w), dev)?,
        Tensor::randn(0f32, 1.0, (b, row.frames, 3, 224, 224), dev)?,
    ];
    let labels: Vec<u32> = (0..b).map(|i| (i % row.classes) as u32).collect();
    let labels_t = Tensor::new(labels.as_slice(), dev)?;
    let keep = Tensor::ones((b, 2), DType::F32, dev)?;
    let mut step = || -> Result<()> {
        mmbal_train::train_step_scaled(
            &model,
            method.as_mut(),
            &mut opt as &mut dyn Optimizer,
            mmbal_train::StepInputs {
                inputs: &inputs,
                labels: &labels_t,
                keep: &keep,
                rows: &[],
                frozen_encoders: &[],
            },
            StepIndex::default(),
            scaler.as_mut(),
        )?;
        Ok(())
    };
    let timed = |f: &mut dyn FnMut() -> Result<()>, n: usize| -> Result<f64> {
        dev.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..n {
            f()?;
        }
        dev.synchronize()?;
        Ok(t0.elapsed().as_secs_f64())
    };
    mmbal_ops::cuda_peak_memory(dev, true)?;
    timed(&mut step, a.warmup)?;
    let train_s = timed(&mut step, a.steps)?;
    let mut eval = || -> Result<()> {
        model.forward(&inputs, None, false)?;
        Ok(())
    };
    timed(&mut eval, a.warmup)?;
    let eval_s = timed(&mut eval, a.steps)?;
    let mut value = || -> Result<()> {
        mmbal_valuation::value_batch(
            &model,
            &inputs,
            &labels,
            mmbal_valuation::MaskRoute::Features,
            mmbal_valuation::Benefit::SizeIfCorrect,
        )?;
        Ok(())
    };
    timed(&mut value, 2)?;
    let value_s = timed(&mut value, a.steps.div_ceil(3))? / a.steps.div_ceil(3) as f64;
    let peak = mmbal_ops::cuda_peak_memory(dev, true)?;
    let per_step = train_s / a.steps as f64;
    Ok(Measured {
        row: row.name.into(),
        mode: mode.into(),
        batch: b,
        train_samples_per_s: (b * a.steps) as f64 / train_s,
        eval_samples_per_s: (b * a.steps) as f64 / eval_s,
        peak_mem_gib: peak.map(|p| p as f64 / (1u64 << 30) as f64),
        valuation_over_train: value_s / per_step,
        torch_train_samples_per_s: None,
        torch_eval_samples_per_s: None,
        torch_peak_mem_gib: None,
        train_ratio: None,
        eval_ratio: None,
    })
}

fn python() -> String {
    std::env::var("MMBAL_TORCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs torch_av_bench.py for `modes` and returns its JSON rows.
fn torch_rows(modes: &[String]) -> Result<Vec<serde_json::Value>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/torch_av_bench.py");
    let script = if std::path::Path::new(script).exists() {
        script.to_string()
    } else {
        "xtask/bench/torch_av_bench.py".to_string()
    };
    let out = Command::new(python())
        .arg(&script)
        .arg(modes.join(","))
        .env_remove("OUT")
        .output()
        .with_context(|| format!("cannot run {} {script}", python()))?;
    if !out.status.success() {
        bail!("{script} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("config").is_some())
        .collect())
}

/// `cargo xtask bench train`: prints one JSON line per row and mode; returns them and the
/// errors of the rows and modes that failed (the others still run, so one failing mode does not
/// cost a GPU lease the rest of its measurements).
pub fn bench_train(a: &TrainArgs) -> Result<(Vec<Measured>, Vec<String>)> {
    let dev = mmbal_train::parse_device(&a.device)?;
    if !dev.is_cuda() {
        bail!("bench train runs on a CUDA device (got {})", a.device);
    }
    mmbal_ops::keep_cuda_memory(&dev)?;
    if let Some(w) = &a.rows {
        if let Some(bad) = w.iter().find(|n| !ROWS.iter().any(|r| r.key == n.as_str())) {
            bail!("--rows: no row named {bad} (rows: ks, cremad-t1, cremad-t3)");
        }
    }
    for m in &a.modes {
        set_mode(m)?;
    }
    let mut all = Vec::new();
    let mut failed = Vec::new();
    for row in ROWS.iter() {
        if a.rows
            .as_ref()
            .is_some_and(|w| !w.iter().any(|n| n == row.key))
        {
            continue;
        }
        for mode in &a.modes {
            match measure(row, mode, a, &dev) {
                Ok(m) => {
                    eprintln!("{}", serde_json::to_string(&m)?);
                    all.push(m);
                }
                Err(e) => {
                    let e = format!("bench train, row {} mode {mode}: {e:#}", row.name);
                    eprintln!("FAIL {e}");
                    failed.push(e);
                }
            }
        }
    }
    mmbal_ops::set_cuda_tf32(true);
    if !a.no_torch {
        match torch_rows(&a.modes) {
            Ok(rows) => {
                for m in all.iter_mut() {
                    let Some(t) = rows
                        .iter()
                        .find(|t| t["config"] == m.row.as_str() && t["mode"] == m.mode.as_str())
                    else {
                        continue;
                    };
                    m.torch_train_samples_per_s = t["train_samples_per_s"].as_f64();
                    m.torch_eval_samples_per_s = t["eval_samples_per_s"].as_f64();
                    m.torch_peak_mem_gib = t["peak_mem_gib"].as_f64();
                    m.train_ratio = m
                        .torch_train_samples_per_s
                        .map(|t| m.train_samples_per_s / t);
                    m.eval_ratio = m.torch_eval_samples_per_s.map(|t| m.eval_samples_per_s / t);
                }
            }
            Err(e) => eprintln!("PyTorch side not run: {e:#}"),
        }
    }
    for m in &all {
        println!("{}", serde_json::to_string(m)?);
    }
    Ok((all, failed))
}

/// `‖a - b‖ / ‖b‖` in f64 on the host; infinite when either holds a non-finite value.
fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    if a.len() != b.len() {
        bail!(
            "compared tensors differ in size: {} and {}",
            a.len(),
            b.len()
        );
    }
    if a.iter().chain(&b).any(|v| !v.is_finite()) {
        return Ok(f64::INFINITY);
    }
    let diff: f64 = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    Ok(if norm == 0.0 { diff } else { diff / norm })
}

/// One check's outcome.
#[derive(Debug, serde::Serialize)]
struct Check {
    name: String,
    what: String,
    rel_err: f64,
    tol: f64,
    pass: bool,
}

struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, name: &str, what: &str, err: f64, tol: f64) {
        let pass = err <= tol;
        eprintln!(
            "{} {name} {what}: rel err {err:.2e} (tol {tol:.0e})",
            if pass { "ok  " } else { "FAIL" }
        );
        self.0.push(Check {
            name: name.into(),
            // One table cell: an error's own lines and bars would break the report's table.
            what: what.replace('|', "/").replace('\n', " "),
            rel_err: err,
            tol,
            pass,
        });
    }
}

/// Runs `f` on the CPU and on `dev` over the same fresh inputs (`grad[i]`: whether input i is a
/// variable), backpropagates `sum(y0 * r)` with the same random `r`, and compares every output and
/// gradient.
fn op_case(
    checks: &mut Checks,
    name: &str,
    tol: f64,
    dev: &Device,
    inputs: Vec<(Tensor, bool)>,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>>,
) -> Result<()> {
    // An op that errors is a failed check, and the other checks still run: one device call
    // reports everything.
    if let Err(e) = op_case_run(checks, name, tol, dev, inputs, f) {
        checks.push(name, &format!("error: {e:#}"), f64::INFINITY, tol);
    }
    Ok(())
}

fn op_case_run(
    checks: &mut Checks,
    name: &str,
    tol: f64,
    dev: &Device,
    inputs: Vec<(Tensor, bool)>,
    f: &dyn Fn(&[Tensor]) -> candle_core::Result<Vec<Tensor>>,
) -> Result<()> {
    let run = |d: &Device| -> Result<(Vec<Tensor>, Vec<Option<Tensor>>)> {
        let vars: Vec<(Tensor, Option<Var>)> = inputs
            .iter()
            .map(|(t, g)| -> Result<_> {
                let t = t.to_device(d)?;
                Ok(if *g {
                    let v = Var::from_tensor(&t)?;
                    (v.as_tensor().clone(), Some(v))
                } else {
                    (t, None)
                })
            })
            .collect::<Result<_>>()?;
        let xs: Vec<Tensor> = vars.iter().map(|(t, _)| t.clone()).collect();
        let outs = f(&xs)?;
        Ok((
            outs,
            vars.into_iter()
                .map(|(_, v)| v.map(|v| v.as_tensor().clone()))
                .collect(),
        ))
    };
    let (cpu_out, cpu_vars) = run(&Device::Cpu)?;
    let (gpu_out, gpu_vars) = run(dev)?;
    let r =
        Tensor::randn(0f32, 1.0, cpu_out[0].shape(), &Device::Cpu)?.to_dtype(cpu_out[0].dtype())?;
    let cpu_grads = (&cpu_out[0] * &r)?.sum_all()?.backward()?;
    let gpu_grads = (&gpu_out[0] * &r.to_device(dev)?)?.sum_all()?.backward()?;
    for (i, (c, g)) in cpu_out.iter().zip(&gpu_out).enumerate() {
        checks.push(name, &format!("output {i}"), rel(g, c)?, tol);
    }
    for (i, (c, g)) in cpu_vars.iter().zip(&gpu_vars).enumerate() {
        let (Some(c), Some(g)) = (c, g) else { continue };
        let (Some(cg), Some(gg)) = (cpu_grads.get(c), gpu_grads.get(g)) else {
            checks.push(
                name,
                &format!("gradient of input {i} (missing)"),
                f64::INFINITY,
                tol,
            );
            continue;
        };
        checks.push(name, &format!("gradient of input {i}"), rel(gg, cg)?, tol);
    }
    Ok(())
}

fn randn(shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1.0, shape, &Device::Cpu)?)
}

/// A convolution check: name, input and filter shapes, stride, padding, whether the input needs a
/// gradient.
type ConvCase = (&'static str, [usize; 4], [usize; 4], usize, usize, bool);

fn op_checks(checks: &mut Checks, dev: &Device) -> Result<()> {
    // (name, x, w, stride, padding, x needs a gradient): every ResNet-18 geometry kind, the
    // CREMA-D stem (257x188: height and width of different parity at stride 2) and an odd map.
    let convs: [ConvCase; 6] = [
        (
            "conv stem 7x7/2 on 1x257x188",
            [4, 1, 257, 188],
            [64, 1, 7, 7],
            2,
            3,
            true,
        ),
        (
            "conv stem 7x7/2, data input",
            [4, 1, 257, 188],
            [64, 1, 7, 7],
            2,
            3,
            false,
        ),
        ("conv 3x3/1", [8, 64, 28, 28], [64, 64, 3, 3], 1, 1, true),
        (
            "conv 3x3/2 on 29x22",
            [8, 64, 29, 22],
            [128, 64, 3, 3],
            2,
            1,
            true,
        ),
        ("conv 1x1/2", [8, 64, 28, 28], [128, 64, 1, 1], 2, 0, true),
        (
            "conv 3x3/1 deep",
            [8, 512, 7, 6],
            [512, 512, 3, 3],
            1,
            1,
            true,
        ),
    ];
    for (tf32, tol) in [(false, 1e-4), (true, 1e-2)] {
        mmbal_ops::set_cuda_tf32(tf32);
        let mode = if tf32 { "tf32" } else { "strict fp32" };
        conv_checks(checks, dev, &convs, mode, tol, DType::F32)?;
    }
    mmbal_ops::set_cuda_tf32(false);
    let bn = [8, 64, 28, 22];
    op_case(
        checks,
        "batch norm (train)",
        1e-4,
        dev,
        vec![
            ((randn(&bn)? * 2.0)? + 0.5)?,
            ((randn(&[64])? * 0.1)? + 1.0)?,
            (randn(&[64])? * 0.1)?,
        ]
        .into_iter()
        .map(|t| (t, true))
        .collect(),
        &|v| {
            let (y, m, var) = mmbal_ops::batch_norm_train(&v[0], &v[1], &v[2], 1e-5)?;
            Ok(vec![y, m, var])
        },
    )?;
    // Ties: ReLU leaves about half the inputs at exactly 0.
    for (name, shape, k, s, p) in [
        ("max-pool 3x3/2/1 with ties", [8, 64, 57, 44], 3, 2, 1),
        ("max-pool 2x2/2", [8, 16, 28, 27], 2, 2, 0),
    ] {
        op_case(
            checks,
            name,
            0.0,
            dev,
            vec![(randn(&shape)?.relu()?, true)],
            &|v| Ok(vec![mmbal_ops::max_pool2d(&v[0], k, s, p)?]),
        )?;
    }
    op_case(
        checks,
        "relu with zeros",
        0.0,
        dev,
        vec![((randn(&[8, 64, 30, 30])?.relu()? - 0.5)?, true)],
        &|v| Ok(vec![mmbal_ops::relu(&v[0].relu()?)?]),
    )?;
    op_case(
        checks,
        "batch norm (eval: per-channel affine)",
        1e-5,
        dev,
        vec![
            (randn(&bn)?, true),
            (((randn(&[64])? * 0.1)? + 1.0)?, true),
            ((randn(&[64])? * 0.1)?, true),
            (randn(&[64])?, false),
            ((randn(&[64])?.abs()? + 0.5)?, false),
        ],
        &|v| {
            Ok(vec![mmbal_ops::batch_norm_eval(
                &v[0], &v[1], &v[2], &v[3], &v[4], 1e-5,
            )?])
        },
    )?;
    // The running statistics moved in place (cuDNN on CUDA, candle ops on the CPU).
    {
        let (x, w, b) = (randn(&bn)?, randn(&[64])?, randn(&[64])?);
        let (m0, v0) = (randn(&[64])?, (randn(&[64])?.abs()? + 0.5)?);
        let run = |d: &Device| -> Result<(Tensor, Tensor, Tensor)> {
            let (rm, rv) = (
                Var::from_tensor(&m0.to_device(d)?)?,
                Var::from_tensor(&v0.to_device(d)?)?,
            );
            let y = mmbal_ops::batch_norm_train_running(
                &x.to_device(d)?,
                &w.to_device(d)?,
                &b.to_device(d)?,
                (&rm, &rv),
                0.1,
                1e-5,
            )?;
            Ok((y, rm.as_tensor().clone(), rv.as_tensor().clone()))
        };
        let (c, g) = (run(&Device::Cpu)?, run(dev)?);
        let name = "batch norm (train, running statistics moved)";
        checks.push(name, "output", rel(&g.0, &c.0)?, 1e-5);
        checks.push(name, "running mean", rel(&g.1, &c.1)?, 1e-5);
        checks.push(name, "running variance", rel(&g.2, &c.2)?, 1e-5);
    }
    mmbal_ops::set_cuda_conv_benchmark(false);
    let mode = "strict fp32, heuristic algorithms";
    conv_checks(checks, dev, &convs[..3], mode, 1e-4, DType::F32)?;
    mmbal_ops::set_cuda_conv_benchmark(true);
    bf16_op_checks(checks, dev, &convs)?;
    optimizer_checks(checks, dev)?;
    // The finite check: a NaN in the 27th of 30 tensors.
    let mut ts: Vec<Tensor> = (0..30)
        .map(|i| Tensor::randn(0f32, 1.0, (i + 1) * 997, dev))
        .collect::<candle_core::Result<_>>()?;
    let refs: Vec<&Tensor> = ts.iter().collect();
    let none = mmbal_ops::first_non_finite(&refs)?;
    let mut v = ts[26].to_device(&Device::Cpu)?.to_vec1::<f32>()?;
    v[500] = f32::NAN;
    ts[26] = Tensor::new(v.as_slice(), dev)?;
    let refs: Vec<&Tensor> = ts.iter().collect();
    let found = mmbal_ops::first_non_finite(&refs)?;
    let ok = none.is_none() && found == Some(26);
    checks.push(
        "first_non_finite (NaN in tensor 26 of 30)",
        &format!("got {none:?} then {found:?}"),
        if ok { 0.0 } else { f64::INFINITY },
        0.0,
    );
    Ok(())
}

/// One check per convolution case, named `<case> (<mode>)`: fresh input and filter (scaled by
/// 1/sqrt(fan-in)), the input cast to `input` (bf16 for mixed precision) before the convolution.
fn conv_checks(
    checks: &mut Checks,
    dev: &Device,
    convs: &[ConvCase],
    mode: &str,
    tol: f64,
    input: DType,
) -> Result<()> {
    for &(name, x, w, s, p, xg) in convs {
        let scale = (1.0 / (w[1] * w[2] * w[3]) as f64).sqrt();
        op_case(
            checks,
            &format!("{name} ({mode})"),
            tol,
            dev,
            vec![(randn(&x)?, xg), ((randn(&w)? * scale)?, true)],
            &|v| {
                Ok(vec![mmbal_ops::conv2d(
                    &v[0].to_dtype(input)?,
                    &v[1],
                    s,
                    p,
                )?])
            },
        )?;
    }
    Ok(())
}

/// Mixed precision: the ops on bf16 activations (f32 parameters, gradients back to f32), CUDA's
/// native bf16 convolution against the CPU's f32 arithmetic on the same bf16 operands. Both
/// round their outputs to bf16, so they may differ by an ulp of bf16 (2^-8) where their
/// summation orders round differently. ReLU and max-pool run bf16 kernels on CUDA and must give
/// the CPU's widened results bit for bit; BatchNorm widens to f32 on both devices.
fn bf16_op_checks(checks: &mut Checks, dev: &Device, convs: &[ConvCase]) -> Result<()> {
    let bf16 = |t: &Tensor| t.to_dtype(DType::BF16);
    conv_checks(checks, dev, convs, "bf16", 1e-2, DType::BF16)?;
    let bn = [8, 64, 28, 22];
    op_case(
        checks,
        "batch norm (train, bf16 input)",
        1e-2,
        dev,
        vec![
            (((randn(&bn)? * 2.0)? + 0.5)?, true),
            (((randn(&[64])? * 0.1)? + 1.0)?, true),
            ((randn(&[64])? * 0.1)?, true),
        ],
        &|v| {
            let (y, m, var) = mmbal_ops::batch_norm_train(&bf16(&v[0])?, &v[1], &v[2], 1e-5)?;
            Ok(vec![y, m, var])
        },
    )?;
    op_case(
        checks,
        "max-pool 3x3/2/1 and ReLU (bf16)",
        0.0,
        dev,
        vec![(randn(&[8, 64, 57, 44])?, true)],
        &|v| {
            let y = mmbal_ops::relu(&bf16(&v[0])?)?;
            Ok(vec![mmbal_ops::max_pool2d(&y, 3, 2, 1)?])
        },
    )?;
    Ok(())
}

/// Three steps of the fused optimizers on CUDA against the composed ones on the CPU, same
/// gradients (made by backpropagating `sum(p * r)`, so the gradient is `r`).
fn optimizer_checks(checks: &mut Checks, dev: &Device) -> Result<()> {
    let shapes: [&[usize]; 4] = [&[64, 3, 7, 7], &[64], &[31, 1024], &[512, 512, 3, 3]];
    type Build = fn(Vec<Var>) -> Box<dyn Optimizer>;
    let builds: [(&str, Build); 3] = [
        ("fused sgd (momentum, weight decay)", |p| {
            Box::new(Sgd::new(p, 0.05, 0.9, 1e-4))
        }),
        ("fused adam", |p| Box::new(Adam::new(p, 0.01, 1e-4))),
        ("fused adamw", |p| Box::new(Adam::adamw(p, 0.01, 1e-2))),
    ];
    for (name, build) in builds {
        let init: Vec<Tensor> = shapes.iter().map(|s| randn(s)).collect::<Result<_>>()?;
        let cpu: Vec<Var> = init
            .iter()
            .map(Var::from_tensor)
            .collect::<candle_core::Result<_>>()?;
        let gpu: Vec<Var> = init
            .iter()
            .map(|t| Var::from_tensor(&t.to_device(dev)?))
            .collect::<candle_core::Result<_>>()?;
        let (mut oc, mut og) = (build(cpu.clone()), build(gpu.clone()));
        for _ in 0..3 {
            let rs: Vec<Tensor> = shapes.iter().map(|s| randn(s)).collect::<Result<_>>()?;
            let loss = |vars: &[Var], d: &Device| -> Result<candle_core::backprop::GradStore> {
                let mut total = Tensor::zeros((), DType::F32, d)?;
                for (v, r) in vars.iter().zip(&rs) {
                    total = (total + (v.as_tensor() * r.to_device(d)?)?.sum_all()?)?;
                }
                Ok(total.backward()?)
            };
            oc.step(&loss(&cpu, &Device::Cpu)?)?;
            og.step(&loss(&gpu, dev)?)?;
        }
        let mut worst: f64 = 0.0;
        for (c, g) in cpu.iter().zip(&gpu) {
            worst = worst.max(rel(g.as_tensor(), c.as_tensor())?);
        }
        checks.push(name, "parameters after 3 steps", worst, 1e-6);
    }
    Ok(())
}

/// A reduced-width audio-visual model on both devices, same weights and inputs: the gradient
/// of every parameter after one backward (each parameter's relative error; the three worst are
/// named), then two training steps (losses, and the parameters' change over the steps).
fn model_check(checks: &mut Checks, dev: &Device) -> Result<()> {
    mmbal_ops::set_cuda_tf32(false);
    let name = "model: ResNet-18 x2 width 1/4, strict fp32";
    let inputs = [randn(&[6, 1, 65, 48])?, randn(&[6, 2, 3, 32, 32])?];
    let labels = [0u32, 1, 2, 3, 4, 5];
    let build = |d: &Device| -> Result<(MultimodalModel, Vec<Tensor>, Tensor, Tensor)> {
        let model = av_model(6, 0.25, d)?;
        let xs = inputs
            .iter()
            .map(|t| t.to_device(d))
            .collect::<candle_core::Result<_>>()?;
        Ok((
            model,
            xs,
            Tensor::new(&labels, d)?,
            Tensor::ones((6, 2), DType::F32, d)?,
        ))
    };
    // One backward of the cross-entropy of the fused logits.
    let grads = |d: &Device| -> Result<Vec<(String, Tensor, Tensor)>> {
        let (model, xs, y, keep) = build(d)?;
        let out = model.forward(&xs, Some(&keep), true)?;
        let loss = candle_nn::loss::cross_entropy(&out.fused_logits, &y)?;
        let g = loss.backward()?;
        model
            .named_params()
            .into_iter()
            .map(|(n, v)| {
                let gr = g
                    .get(&v)
                    .with_context(|| format!("no gradient for {n}"))?
                    .clone();
                Ok((n, v.as_tensor().clone(), gr))
            })
            .collect()
    };
    let (gc, gg) = (grads(&Device::Cpu)?, grads(dev)?);
    let mut per: Vec<(f64, String, f64)> = Vec::new();
    let (mut num, mut den) = (0f64, 0f64);
    for ((n, _, c), (_, _, g)) in gc.iter().zip(&gg) {
        let e = rel(g, c)?;
        let norm = c.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        num += (e * e) * norm;
        den += norm;
        per.push((e, n.clone(), norm.sqrt()));
    }
    per.sort_by(|a, b| b.0.total_cmp(&a.0));
    let worst: Vec<String> = per
        .iter()
        .take(3)
        .map(|(e, n, norm)| format!("{n} {e:.1e} (grad norm {norm:.1e})"))
        .collect();
    checks.push(
        name,
        "all gradients, one backward",
        (num / den.max(f64::MIN_POSITIVE)).sqrt(),
        1e-5,
    );
    checks.push(
        name,
        &format!("worst single gradient: {}", worst.join("; ")),
        per[0].0,
        1e-3,
    );

    let cpu = reduced_model_steps(&Device::Cpu, &inputs, 2, false)?;
    let gpu = reduced_model_steps(dev, &inputs, 2, false)?;
    let (loss_err, change_err) = compare_steps(&cpu, &gpu)?;
    checks.push(name, "losses of two training steps", loss_err, 1e-5);
    checks.push(name, "parameter change over two steps", change_err, 1e-4);
    Ok(())
}

/// `steps` joint-training steps of the reduced-width audio-visual model (6 classes, SGD lr 0.01,
/// momentum 0.9, weight decay 1e-4) on `inputs`, one sample per class.
struct StepsRun {
    losses: Vec<f64>,
    before: Vec<Tensor>,
    after: Vec<Tensor>,
    /// The loss scale at the end (bf16 mixed precision, under loss scaling); `None` in f32.
    scale: Option<f64>,
}

fn reduced_model_steps(
    d: &Device,
    inputs: &[Tensor],
    steps: usize,
    bf16: bool,
) -> Result<StepsRun> {
    let mut model = av_model(6, 0.25, d)?;
    if bf16 {
        model.set_compute_dtype(DType::BF16)?;
    }
    let xs: Vec<Tensor> = inputs
        .iter()
        .map(|t| t.to_device(d))
        .collect::<candle_core::Result<_>>()?;
    let y = Tensor::new(&[0u32, 1, 2, 3, 4, 5], d)?;
    let keep = Tensor::ones((6, 2), DType::F32, d)?;
    let before: Vec<Tensor> = model
        .params()
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?;
    let mut method = mmbal_methods::build_method("joint", &toml::Table::new())?;
    let mut opt = Sgd::new(model.params(), 0.01, 0.9, 1e-4);
    let mut scaler = bf16.then(LossScaler::default);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let (loss, _) = mmbal_train::train_step_scaled(
            &model,
            method.as_mut(),
            &mut opt as &mut dyn Optimizer,
            mmbal_train::StepInputs {
                inputs: &xs,
                labels: &y,
                keep: &keep,
                rows: &[],
                frozen_encoders: &[],
            },
            StepIndex::default(),
            scaler.as_mut(),
        )?;
        losses.push(loss);
    }
    let after = model
        .params()
        .iter()
        .map(|v| v.as_tensor().clone())
        .collect();
    Ok(StepsRun {
        losses,
        before,
        after,
        scale: scaler.map(|s| s.scale()),
    })
}

/// The largest relative difference of the two devices' losses, and the relative difference of
/// their parameter changes over all parameters, `‖Δp_gpu - Δp_cpu‖ / ‖Δp_cpu‖`.
fn compare_steps(cpu: &StepsRun, gpu: &StepsRun) -> Result<(f64, f64)> {
    let loss_err = cpu
        .losses
        .iter()
        .zip(&gpu.losses)
        .map(|(c, g)| (c - g).abs() / c.abs())
        .fold(0.0, f64::max);
    let (mut num, mut den) = (0f64, 0f64);
    let pairs = cpu.before.iter().zip(&cpu.after);
    for ((b0, a0), (b1, a1)) in pairs.zip(gpu.before.iter().zip(&gpu.after)) {
        let dc = (a0 - b0)?;
        let dg = (a1.to_device(&Device::Cpu)? - b1.to_device(&Device::Cpu)?)?;
        num += (&dg - &dc)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        den += dc.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok((loss_err, (num / den).sqrt()))
}

/// The reduced-width model in bf16 mixed precision on both devices, same weights and inputs:
/// the losses of three training steps under loss scaling, and the parameters' change. The GPU's
/// bf16 convolutions sum in another order than the CPU's, so the tolerances are bf16's.
fn model_check_bf16(checks: &mut Checks, dev: &Device) -> Result<()> {
    let name = "model: ResNet-18 x2 width 1/4, bf16 mixed precision";
    let inputs = [randn(&[6, 1, 65, 48])?, randn(&[6, 2, 3, 32, 32])?];
    let cpu = reduced_model_steps(&Device::Cpu, &inputs, 3, true)?;
    let gpu = reduced_model_steps(dev, &inputs, 3, true)?;
    let (loss_err, change_err) = compare_steps(&cpu, &gpu)?;
    checks.push(name, "losses of three training steps", loss_err, 2e-2);
    let (sc, sg) = (cpu.scale.unwrap_or(0.0), gpu.scale.unwrap_or(0.0));
    checks.push(
        name,
        &format!("loss scale after three steps (CPU {sc}, GPU {sg})"),
        if sc == sg { 0.0 } else { f64::INFINITY },
        0.0,
    );
    checks.push(name, "parameter change over three steps", change_err, 5e-2);
    Ok(())
}

/// `cargo xtask gpu-check`.
pub fn gpu_check(a: CheckArgs) -> Result<()> {
    let dev = mmbal_train::parse_device(&a.bench.device)?;
    if !dev.is_cuda() {
        bail!("gpu-check runs on a CUDA device (got {})", a.bench.device);
    }
    let out = a
        .out
        .clone()
        .or_else(|| std::env::var_os("OUT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("gpu-check"));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let started = Instant::now();
    let mut checks = Checks(Vec::new());
    type Part = fn(&mut Checks, &Device) -> Result<()>;
    let parts: [(&str, Part); 3] = [
        ("op checks", op_checks),
        ("model check", model_check),
        ("model check, bf16", model_check_bf16),
    ];
    for (name, part) in parts {
        if let Err(e) = part(&mut checks, &dev) {
            checks.push(name, &format!("error: {e:#}"), f64::INFINITY, 0.0);
        }
    }
    let checks_s = started.elapsed().as_secs_f64();
    let mut bench_failures = Vec::new();
    let bench = if a.no_bench {
        Vec::new()
    } else {
        let (bench, failed) = bench_train(&a.bench)?;
        bench_failures = failed;
        bench
    };
    let failed = checks.0.iter().filter(|c| !c.pass).count();
    let mut md = format!(
        "# gpu-check\n\n`{}`, {} checks, {} failed ({checks_s:.0} s).\n\n| check | what | rel. error | tolerance | |\n|---|---|---|---|---|\n",
        crate::command_line(),
        checks.0.len(),
        failed
    );
    for c in &checks.0 {
        md += &format!(
            "| {} | {} | {:.2e} | {:.0e} | {} |\n",
            c.name,
            c.what,
            c.rel_err,
            c.tol,
            if c.pass { "ok" } else { "FAIL" }
        );
    }
    if !bench.is_empty() {
        md += "\n| row | mode | mmbal train/s | PyTorch train/s | ratio | mmbal eval/s | PyTorch eval/s | ratio | peak GiB (mmbal / PyTorch) | valuation / train step |\n|---|---|---|---|---|---|---|---|---|---|\n";
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        let r = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}x"));
        for m in &bench {
            md += &format!(
                "| {} | {} | {:.1} | {} | {} | {:.1} | {} | {} | {} / {} | {:.2} |\n",
                m.row,
                m.mode,
                m.train_samples_per_s,
                f(m.torch_train_samples_per_s),
                r(m.train_ratio),
                m.eval_samples_per_s,
                f(m.torch_eval_samples_per_s),
                r(m.eval_ratio),
                m.peak_mem_gib.map_or("-".into(), |v| format!("{v:.2}")),
                f(m.torch_peak_mem_gib),
                m.valuation_over_train
            );
        }
    }
    for f in &bench_failures {
        md += &format!("\nFAILED: {f}\n");
    }
    std::fs::write(out.join("gpu-check.md"), &md)?;
    std::fs::write(
        out.join("gpu-check.json"),
        serde_json::to_string_pretty(&serde_json::json!({ "checks": checks.0, "bench": bench }))?,
    )?;
    println!("{md}");
    if failed > 0 || !bench_failures.is_empty() {
        bail!(
            "{failed} check(s) and {} bench measurement(s) failed; see {}",
            bench_failures.len(),
            out.join("gpu-check.md").display()
        );
    }
    Ok(())
}
