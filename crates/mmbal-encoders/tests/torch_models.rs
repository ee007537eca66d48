//! Whole encoders against PyTorch 2.11 (tests/fixtures/models.safetensors, made by
//! tests/fixtures/gen_models.py): SmallCnn and ResNet-18, each with a 1- and a 3-channel stem,
//! one training-mode forward (the pooled feature), the gradients of `sum(out * upstream)` for the
//! input and the parameters, and the BatchNorm running statistics after it; then max-pool on
//! inputs with many exact ties, through mmbal's CPU op and the composite (non-CPU) path.
//!
//! The inputs have constant regions (an MNIST background, zero-padded spectrogram rows), so after
//! ReLU many pooling windows hold equal maxima. PyTorch sends a window's gradient to its first
//! maximum; candle 0.11.1's own `max_pool2d` backward scales it by the share of maxima in the
//! window (a unique maximum of a 2x2 window gets a quarter, four tied maxima get it four times),
//! and its `relu` passes gradient where the input is exactly 0. These tests fail with either.

use candle_core::{safetensors, DType, Device, Tensor, Var};
use mmbal_encoders::{Encoder, ModelVars, ResNet18, SmallCnn};
use mmbal_ops::{max_pool2d, max_pool2d_composite, relu};
use std::collections::{BTreeSet, HashMap};

fn fixture() -> HashMap<String, Tensor> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/models.safetensors");
    safetensors::load(&path, &Device::Cpu).unwrap()
}

/// `max |got - want|` and `max |want|`.
fn diff(got: &Tensor, want: &Tensor) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims());
    let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let d = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    (d, w.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// Asserts `max |got - want| <= tol * max |want|` and returns that relative difference.
fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) -> f32 {
    let (d, scale) = diff(got, want);
    let rel = d / scale.max(1e-12);
    assert!(
        d <= tol * scale,
        "{name}: max difference {d:e} = {rel:e} of max |want| {scale:e} (tolerance {tol:e})"
    );
    rel
}

/// Variables by name.
type Named = Vec<(String, Var)>;

/// An encoder's variables, named relative to it: `(parameters, running statistics)`.
fn split(vars: &ModelVars, enc: &dyn Encoder) -> (Named, Named) {
    let buffers = enc.buffers();
    vars.named()
        .into_iter()
        .partition(|(_, v)| !buffers.iter().any(|b| b.id() == v.id()))
}

/// Sets an encoder's parameters and running statistics to the fixture's `prefix.init.<name>`
/// (falling back to `fallback.init.<name>`), and checks that the fixture names exactly the
/// encoder's variables.
fn load(f: &HashMap<String, Tensor>, vars: &ModelVars, prefix: &str, fallback: Option<&str>) {
    let get = |n: &str| {
        f.get(&format!("{prefix}.init.{n}"))
            .or_else(|| fallback.and_then(|p| f.get(&format!("{p}.init.{n}"))))
            .unwrap_or_else(|| panic!("{prefix}: fixture has no initial `{n}`"))
            .clone()
    };
    let mut names = BTreeSet::new();
    for (n, v) in vars.named() {
        v.set(&get(&n)).unwrap();
        names.insert(n);
    }
    for p in std::iter::once(prefix).chain(fallback) {
        let start = format!("{p}.init.");
        for k in f.keys().filter_map(|k| k.strip_prefix(&start)) {
            assert!(
                names.contains(k),
                "fixture `{p}.init.{k}` is not in the encoder"
            );
        }
    }
}

/// Forward, backward and running statistics of one encoder against the fixture.
fn check_encoder(f: &HashMap<String, Tensor>, enc: &dyn Encoder, vars: &ModelVars, prefix: &str) {
    let (params, buffers) = split(vars, enc);
    let x = Var::from_tensor(&f[&format!("{prefix}.input")]).unwrap();
    let y = enc.features(x.as_tensor(), true).unwrap();
    let rel = assert_close(
        &format!("{prefix} forward"),
        &y,
        &f[&format!("{prefix}.out")],
        1e-5,
    );
    eprintln!("{prefix}: forward {rel:.1e}");
    let grads = (y * &f[&format!("{prefix}.upstream")])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let rel = assert_close(
        &format!("{prefix} grad input"),
        grads.get(&x).unwrap(),
        &f[&format!("{prefix}.grad.input")],
        1e-4,
    );
    eprintln!("{prefix}: grad input {rel:.1e}");
    let mut worst = (0f32, String::new());
    let mut checked = 0;
    for (n, v) in &params {
        let Some(want) = f.get(&format!("{prefix}.grad.{n}")) else {
            continue;
        };
        checked += 1;
        let got = grads
            .get(v)
            .unwrap_or_else(|| panic!("{prefix}: no gradient for {n}"));
        let rel = match n.strip_suffix(".bias").filter(|s| s.starts_with("conv")) {
            // A conv bias followed by training-mode BatchNorm has a zero gradient in exact
            // arithmetic; both sides hold rounding noise. Bound it by the same layer's kernel
            // gradient instead of by itself.
            Some(layer) => {
                let (d, _) = diff(got, want);
                let kernel = &f[&format!("{prefix}.grad.{layer}.weight")];
                let scale = kernel.abs().unwrap().max_all().unwrap();
                let scale = scale.to_scalar::<f32>().unwrap();
                assert!(
                    d <= 1e-4 * scale,
                    "{prefix} grad {n}: {d:e} against kernel gradients of {scale:e}"
                );
                d / scale
            }
            None => assert_close(&format!("{prefix} grad {n}"), got, want, 1e-4),
        };
        if rel > worst.0 {
            worst = (rel, n.clone());
        }
    }
    assert!(
        checked >= 8,
        "{prefix}: only {checked} gradients in the fixture"
    );
    eprintln!(
        "{prefix}: {checked} parameter gradients, worst {:.1e} ({})",
        worst.0, worst.1
    );
    let mut worst = 0f32;
    for (n, t) in &buffers {
        let rel = assert_close(
            &format!("{prefix} running {n}"),
            t.as_tensor(),
            &f[&format!("{prefix}.after.{n}")],
            1e-5,
        );
        worst = worst.max(rel);
    }
    eprintln!("{prefix}: running statistics {worst:.1e}");
}

#[test]
fn small_cnn_matches_pytorch() {
    let f = fixture();
    for c in [1, 3] {
        let prefix = format!("small_cnn_c{c}");
        let vars = ModelVars::new();
        let net = SmallCnn::new(c, 4, vars.seeded(0, &Device::Cpu)).unwrap();
        load(&f, &vars, &prefix, None);
        check_encoder(&f, &net, &vars, &prefix);
    }
}

#[test]
fn resnet18_matches_pytorch() {
    let f = fixture();
    for c in [1, 3] {
        let prefix = format!("resnet18_c{c}");
        let vars = ModelVars::new();
        let net = ResNet18::new(c, 0.125, vars.seeded(0, &Device::Cpu)).unwrap();
        // The 1-channel network shares the 3-channel one's weights past its stem.
        load(&f, &vars, &prefix, Some("resnet18_c3"));
        check_encoder(&f, &net, &vars, &prefix);
    }
}

const POOLS: [(&str, usize, usize, usize); 2] = [("k2s2", 2, 2, 0), ("k3s2p1", 3, 2, 1)];

type Pool = fn(&Tensor, usize, usize, usize) -> candle_core::Result<Tensor>;

#[test]
fn max_pool_with_ties_matches_pytorch() {
    let f = fixture();
    let paths: [(&str, Pool); 2] = [("cpu op", max_pool2d), ("composite", max_pool2d_composite)];
    for (path, pool) in paths {
        for (tag, k, s, p) in POOLS {
            let name = format!("{path} {tag}");
            // The pool alone on the relu'd input.
            let x = Var::from_tensor(&f["ties.x"]).unwrap();
            let y = pool(x.as_tensor(), k, s, p).unwrap();
            assert_close(&format!("{name} y"), &y, &f[&format!("ties.{tag}.y")], 0.0);
            let up = &f[&format!("ties.{tag}.upstream")];
            let g = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
            let rel = assert_close(
                &format!("{name} dx"),
                g.get(&x).unwrap(),
                &f[&format!("ties.{tag}.dx")],
                1e-6,
            );
            // ReLU then the pool, from inputs with exact zeros.
            let raw = Var::from_tensor(&f["ties.raw"]).unwrap();
            let y = pool(&relu(raw.as_tensor()).unwrap(), k, s, p).unwrap();
            let g = (y * up).unwrap().sum_all().unwrap().backward().unwrap();
            let rel_raw = assert_close(
                &format!("{name} d raw"),
                g.get(&raw).unwrap(),
                &f[&format!("ties.{tag}.draw")],
                1e-6,
            );
            eprintln!("{name}: dx {rel:.1e}, d raw {rel_raw:.1e}");
        }
    }
}

#[test]
fn candle_own_pool_and_relu_backward_still_differ_from_pytorch() {
    // What mmbal's own ops exist for. If candle changes its backward passes, this test says so.
    let f = fixture();
    let x = Var::from_tensor(&f["ties.x"]).unwrap();
    // candle's max_pool2d needs a size divisible by the kernel to be comparable: crop to 8x8.
    let crop = |t: &Tensor| t.narrow(2, 0, 8).unwrap();
    let y = crop(x.as_tensor()).max_pool2d(2).unwrap();
    assert_close("candle pool y", &y, &f["ties.k2s2.y"], 0.0);
    let g = (y * &f["ties.k2s2.upstream"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (d, scale) = diff(&crop(g.get(&x).unwrap()), &crop(&f["ties.k2s2.dx"]));
    assert!(
        d > 0.1 * scale,
        "candle's max_pool2d backward now matches PyTorch on ties ({d:e})"
    );
    let raw = Var::from_tensor(&f["ties.raw"]).unwrap();
    let y = max_pool2d(&raw.as_tensor().relu().unwrap(), 2, 2, 0).unwrap();
    let g = (y * &f["ties.k2s2.upstream"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (d, scale) = diff(g.get(&raw).unwrap(), &f["ties.k2s2.draw"]);
    assert!(
        d > 0.1 * scale,
        "candle's relu backward at 0 now matches PyTorch ({d:e})"
    );
    // And mmbal's relu agrees with candle's forward.
    let ours = relu(raw.as_tensor()).unwrap();
    assert_close("relu forward", &ours, &f["ties.x"], 0.0);
    assert_eq!(ours.dtype(), DType::F32);
}
