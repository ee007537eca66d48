//! OGM and OGM-GE against the official code (GeWu-Lab/OGM-GE_CVPR2022 at 343dc1d): the values
//! in tests/fixtures/ogm_official.safetensors come from its own `main.train_epoch`, run by
//! tests/fixtures/gen_ogm.py on a tiny model that keeps the official `AVClassifier.forward` and
//! `ResNet.forward` (see that script's docstring for every key).
//!
//! Four epochs of one batch each, window `modulation_starts = 1`, `modulation_ends = 2`:
//! epoch 0 (audio leads) and epoch 3 (visual leads) are outside the window, epoch 1 has audio
//! leading and epoch 2 visual leading. mmbal's `ogm` runs the same four steps through
//! `mmbal_train::train_step` with its `Sgd`; loss, logits, scores, coefficients (the method's
//! diagnostics), the scale applied to each conv kernel gradient, raw gradients, and weights and
//! BatchNorm statistics after every step must equal the official ones.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{batch, fixture, floats, meta, official_model, official_name, Report};
use mmbal_data::Row;
use mmbal_fusion::{ForwardOut, FusionKind, MultimodalModel};
use mmbal_methods::{BalanceMethod, EpochCtx, Grads, StepCtx, StepIndex, StepPlan};
use mmbal_train::optim::Sgd;
use mmbal_train::{train_step, StepInputs};
use std::collections::HashMap;

const EPOCHS: usize = 4;
/// Relative tolerance (difference / max |official value|).
const TOL: f32 = 1e-5;

fn fixtures() -> HashMap<String, Tensor> {
    fixture("ogm_official")
}

/// A method that keeps the gradients it was handed and the ones it passed on.
struct Recorder {
    inner: Box<dyn BalanceMethod>,
    raw: HashMap<String, Tensor>,
    used: HashMap<String, Tensor>,
}

impl BalanceMethod for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn step_plan(&self) -> StepPlan {
        self.inner.step_plan()
    }
    fn epoch_plan(&mut self, ctx: &EpochCtx) -> anyhow::Result<Option<Vec<Row>>> {
        self.inner.epoch_plan(ctx)
    }
    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> anyhow::Result<Tensor> {
        self.inner.loss(ctx, out)
    }
    fn edit_gradients(
        &mut self,
        ctx: &StepCtx,
        out: &ForwardOut,
        grads: &mut Grads,
    ) -> anyhow::Result<()> {
        self.raw.clear();
        self.used.clear();
        for (n, v) in ctx.model.named_params() {
            if let Some(g) = grads.get(&v) {
                self.raw.insert(n, g.clone());
            }
        }
        self.inner.edit_gradients(ctx, out, grads)?;
        for (n, v) in ctx.model.named_params() {
            if let Some(g) = grads.get(&v) {
                self.used.insert(n, g.clone());
            }
        }
        Ok(())
    }
    fn diagnostics(&self) -> Vec<(String, f64)> {
        self.inner.diagnostics()
    }
}

/// mmbal's method options matching the official arguments in the fixture.
fn options(f: &HashMap<String, Tensor>, extra: &str) -> toml::Table {
    let alpha = meta(f, "meta.alpha");
    let w = floats(f, "meta.window");
    let text = format!(
        "alpha = {alpha}\nstart_epoch = {}\nend_epoch = {}\n{extra}",
        w[0] as usize, w[1] as usize
    );
    toml::from_str(&text).unwrap()
}

/// Runs the four epochs with `method` (wrapped in a [`Recorder`]) and calls `check` after each
/// step with the epoch, the step's loss and output, the recorder and the model.
fn run(
    f: &HashMap<String, Tensor>,
    method: Box<dyn BalanceMethod>,
    mut check: impl FnMut(usize, f64, &ForwardOut, &Recorder, &MultimodalModel),
) {
    let dev = Device::Cpu;
    let model = official_model(f, FusionKind::Concat);
    let dataset = common::empty_dataset();
    let mut rec = Recorder {
        inner: method,
        raw: HashMap::new(),
        used: HashMap::new(),
    };
    let (lr, momentum, wd) = (
        meta(f, "meta.lr"),
        meta(f, "meta.momentum"),
        meta(f, "meta.weight_decay"),
    );
    let mut sgd = Sgd::new(model.params(), lr, momentum, wd);
    for e in 0..EPOCHS {
        let ctx = EpochCtx {
            epoch: e,
            epochs: EPOCHS,
            seed: 0,
            batch_size: 10,
            model: &model,
            dataset: &dataset,
            out_dir: None,
        };
        assert!(rec.epoch_plan(&ctx).unwrap().is_none());
        let (inputs, labels) = batch(f, &format!("e{e}"));
        let keep = Tensor::ones((labels.dim(0).unwrap(), 2), DType::F32, &dev).unwrap();
        let at = StepIndex {
            epoch: e,
            step: e,
            batch: 0,
            batches: 1,
        };
        let (loss, out) = train_step(
            &model,
            &mut rec,
            &mut sgd,
            StepInputs {
                inputs: &inputs,
                labels: &labels,
                keep: &keep,
                rows: &[],
                frozen_encoders: &[],
            },
            at,
        )
        .unwrap();
        check(e, loss, &out, &rec, &model);
    }
}

/// `<g_used, g_raw> / <g_raw, g_raw>`: the scale applied to a gradient (as the generator
/// measures it on the official side).
fn applied_scale(raw: &Tensor, used: &Tensor) -> f64 {
    let dot = |a: &Tensor, b: &Tensor| {
        (a * b)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    dot(used, raw) / dot(raw, raw)
}

fn diag(rec: &Recorder) -> HashMap<String, f64> {
    rec.diagnostics().into_iter().collect()
}

#[test]
fn fixture_covers_both_leads_and_the_window_edges() {
    let f = fixtures();
    let w = floats(&f, "meta.window");
    assert_eq!((w[0], w[1]), (1.0, 2.0));
    let ratio_v = |e: usize| floats(&f, &format!("ogm.e{e}.ratio"))[1];
    assert!(ratio_v(1) < 0.98, "epoch 1: audio leads");
    assert!(ratio_v(2) > 1.02, "epoch 2: visual leads");
    for e in 0..EPOCHS {
        let coeff = floats(&f, &format!("ogm.e{e}.coeff"));
        let applied = floats(&f, &format!("ogm.e{e}.applied"));
        // The official code computes a coefficient in every epoch...
        assert!(coeff.iter().any(|c| *c < 0.5), "epoch {e}: {coeff:?}");
        // ...and applies it only inside modulation_starts <= epoch <= modulation_ends.
        if (1..=2).contains(&e) {
            for (a, c) in applied.iter().zip(&coeff) {
                assert!(
                    (a - c).abs() < 1e-5,
                    "epoch {e}: applied {applied:?} vs {coeff:?}"
                );
            }
        } else {
            assert!(
                applied.iter().all(|a| (a - 1.0).abs() < 1e-6),
                "epoch {e}: {applied:?}"
            );
        }
    }
    let labels: Vec<i64> = f["label.e0"].to_vec1().unwrap();
    for c in 0..5 {
        assert!(labels.contains(&c), "class {c} in the batch");
    }
}

#[test]
fn ogm_four_epochs_match_official_train_epoch() {
    let f = fixtures();
    let method = mmbal_methods::build_method("ogm", &options(&f, "")).unwrap();
    let mut report = Report::default();
    run(&f, method, |e, loss, out, rec, model| {
        let p = format!("ogm.e{e}");
        report.scalar(
            "loss",
            &format!("{p}.loss"),
            loss,
            floats(&f, &format!("{p}.loss"))[0],
            TOL,
        );
        report.tensor(
            "logits",
            &format!("{p}.out"),
            &out.fused_logits,
            &f[&format!("{p}.out")],
            TOL,
        );
        report.tensor(
            "logits",
            &format!("{p}.out_a"),
            &out.unimodal_logits[0],
            &f[&format!("{p}.out_a")],
            TOL,
        );
        report.tensor(
            "logits",
            &format!("{p}.out_v"),
            &out.unimodal_logits[1],
            &f[&format!("{p}.out_v")],
            TOL,
        );
        // Scores, ratios and coefficients: the method's diagnostics (one step per epoch, so the
        // epoch means are this step's values). The official code computes them in every epoch.
        let d = diag(rec);
        let want_coeff = floats(&f, &format!("{p}.coeff"));
        let want_ratio = floats(&f, &format!("{p}.ratio"));
        for (i, m) in ["audio", "visual"].iter().enumerate() {
            match d.get(&format!("ogm_coeff_{m}")) {
                Some(&c) => {
                    report.scalar("coeff", &format!("{p}.coeff[{m}]"), c, want_coeff[i], TOL)
                }
                None => report
                    .failures
                    .push(format!("{p}: no diagnostic ogm_coeff_{m}")),
            }
            match d.get(&format!("ogm_ratio_{m}")) {
                Some(&r) => {
                    report.scalar("ratio", &format!("{p}.ratio[{m}]"), r, want_ratio[i], TOL)
                }
                None => report
                    .failures
                    .push(format!("{p}: no diagnostic ogm_ratio_{m}")),
            }
        }
        // The coefficient formula alone, on the official scores.
        let (k, _) = mmbal_methods::ogm_coefficients(
            &floats(&f, &format!("{p}.score")),
            meta(&f, "meta.alpha"),
        );
        for (i, m) in ["audio", "visual"].iter().enumerate() {
            report.scalar(
                "coeff (official scores)",
                &format!("{p}.coeff[{m}] from official scores"),
                k[i],
                want_coeff[i],
                TOL,
            );
        }
        // What was applied: every gradient's scale; only 4-D kernels of an encoder may move.
        let applied = floats(&f, &format!("{p}.applied"));
        for (n, v) in model.named_params() {
            let (raw, used) = (&rec.raw[&n], &rec.used[&n]);
            report.tensor(
                "raw grad",
                &format!("{p}.grad.{}", official_name(&n)),
                raw,
                &f[&format!("{p}.grad.{}", official_name(&n))],
                1e-4,
            );
            let want = match (v.rank(), n.strip_prefix("encoders.")) {
                (4, Some(rest)) if rest.starts_with("audio.") => applied[0],
                (4, Some(_)) => applied[1],
                _ => 1.0,
            };
            report.scalar(
                "applied scale",
                &format!("{p} scale of grad {n}"),
                applied_scale(raw, used),
                want,
                TOL,
            );
        }
        for (n, v) in model.named_params() {
            let k = format!("{p}.after.{}", official_name(&n));
            report.tensor("weights after step", &k, v.as_tensor(), &f[&k], TOL);
        }
        for (n, t) in model.buffers().unwrap() {
            let k = format!("{p}.after.{}", official_name(&n));
            report.tensor("running stats after step", &k, &t, &f[&k], TOL);
        }
    });
    report.finish("ogm");
}

/// Pearson correlation of two tensors' elements.
fn corr(a: &Tensor, b: &Tensor) -> f64 {
    let v = |t: &Tensor| -> Vec<f64> {
        t.to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (v(a), v(b));
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt().max(1e-30)
}

/// Unbiased std.
fn std(t: &Tensor) -> f64 {
    let x: Vec<f64> = t
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let m = x.iter().sum::<f64>() / x.len() as f64;
    (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64).sqrt()
}

/// OGM-GE: the noise is random on both sides, so the comparison is of what is deterministic:
/// the coefficients up to the first noisy step (epochs 0 and 1 start from the same weights),
/// and where the official code adds noise (every 4-D kernel of both encoders, coefficient 1
/// included, inside the window only) with a std that follows the raw gradient's.
#[test]
fn ogm_ge_noise_where_and_how_the_official_code_adds_it() {
    let f = fixtures();
    let method = mmbal_methods::build_method("ogm-ge", &options(&f, "noise_seed = 7")).unwrap();
    let mut report = Report::default();
    run(&f, method, |e, _loss, _out, rec, model| {
        let p = format!("ogm_ge.e{e}");
        let coeff = floats(&f, &format!("{p}.coeff"));
        if e <= 1 {
            let d = diag(rec);
            for (i, m) in ["audio", "visual"].iter().enumerate() {
                match d.get(&format!("ogm_coeff_{m}")) {
                    Some(&c) => {
                        report.scalar("coeff", &format!("{p}.coeff[{m}]"), c, coeff[i], TOL)
                    }
                    None => report
                        .failures
                        .push(format!("{p}: no diagnostic ogm_coeff_{m}")),
                }
            }
        }
        let d = diag(rec);
        for (n, v) in model.named_params() {
            let (raw, used) = (&rec.raw[&n], &rec.used[&n]);
            let Some(rest) = n.strip_prefix("encoders.").filter(|_| v.rank() == 4) else {
                report.tensor("untouched", &format!("{p} grad {n}"), used, raw, 0.0);
                continue;
            };
            let m = if rest.starts_with("audio.") {
                "audio"
            } else {
                "visual"
            };
            let official = official_name(&n);
            let official_noise = floats(&f, &format!("{p}.noise_std.{official}"))[0];
            // Where the official code modulates (it adds noise exactly there), the scale is
            // mmbal's own coefficient this step (its trajectory differs from the official one
            // once noise was added); elsewhere the gradient must be left as it is.
            let k = if official_noise > 0.0 {
                d[&format!("ogm_coeff_{m}")]
            } else {
                1.0
            };
            let noise = (used - (raw * k).unwrap()).unwrap();
            let ratio = std(&noise) / (std(raw) + 1e-8);
            if official_noise > 0.0 {
                let official_ratio =
                    official_noise / (floats(&f, &format!("{p}.grad_std.{official}"))[0] + 1e-8);
                println!(
                    "{p} {n}: noise std / grad std mmbal {ratio:.3}, official {official_ratio:.3}"
                );
                if !(0.6..1.4).contains(&ratio) {
                    report.failures.push(format!(
                        "{p} {n}: official adds noise with std ratio {official_ratio:.3}, mmbal {ratio:.3}"
                    ));
                }
                // What is left after taking off k * raw must be independent of raw (a wrong
                // scale leaves a multiple of raw, correlation 1; 36 to 288 draws keep pure
                // noise well under 0.6).
                let c = corr(&noise, raw);
                if c.abs() > 0.6 {
                    report.failures.push(format!(
                        "{p} {n}: grad - {k:.5} * raw correlates with raw ({c:.3}): not the official scale {k:.5} plus noise"
                    ));
                }
            } else if ratio != 0.0 {
                report.failures.push(format!(
                    "{p} {n}: official adds no noise here, mmbal adds noise of std ratio {ratio:.3}"
                ));
            }
        }
    });
    report.finish("ogm-ge");
}
