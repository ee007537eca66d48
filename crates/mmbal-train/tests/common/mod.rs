//! Shared by the golden tests against reference code: the fixtures' tiny encoder and model,
//! the official AVClassifier's names, and helpers to load fixtures and compare tensors.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use mmbal_encoders::{BatchNorm2d, Encoder};
use mmbal_fusion::{FusionHead, FusionKind, LinearInit, MultimodalModel};
use mmbal_ops::{conv2d, max_pool2d, relu};
use std::collections::{BTreeMap, HashMap};

/// How a [`Tiny`] names its layers (conv, BN, conv, BN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TinyNames {
    /// PyTorch's `nn.Sequential` indices: `0`, `1`, `4`, `5`.
    Sequential,
    /// The slots of the official ResNet: `conv1`, `bn1`, `layer1.0`, `layer1.1`.
    ResNetSlots,
}

impl TinyNames {
    /// The names of the first conv, first BN, second conv and second BN.
    pub fn layers(self) -> [&'static str; 4] {
        match self {
            TinyNames::Sequential => ["0", "1", "4", "5"],
            TinyNames::ResNetSlots => ["conv1", "bn1", "layer1.0", "layer1.1"],
        }
    }
}

/// The fixtures' encoder: Conv(cin, 4, 3, s2, p1) BN ReLU MaxPool(3, 2, 1) Conv(4, 8, 3, s1, p1)
/// BN ReLU, its parameters and buffers named as `names` says.
pub struct Tiny {
    pub names: TinyNames,
    pub conv1: Var,
    pub bn1: BatchNorm2d,
    pub conv2: Var,
    pub bn2: BatchNorm2d,
}

impl Tiny {
    /// A tiny encoder whose weights and BatchNorm statistics are `get(name)`, `name` a
    /// parameter or buffer name under `names` (`0.weight`, `bn1.running_mean`, ...).
    pub fn from_fn(names: TinyNames, get: impl Fn(&str) -> Tensor) -> Tiny {
        let dev = Device::Cpu;
        let [c1, b1, c2, b2] = names.layers();
        let var = |l: &str| Var::from_tensor(&get(&format!("{l}.weight"))).unwrap();
        let bn = |l: &str, c: usize| {
            let b = BatchNorm2d::new(c, &dev).unwrap();
            b.weight.set(&get(&format!("{l}.weight"))).unwrap();
            b.bias.set(&get(&format!("{l}.bias"))).unwrap();
            b.set_running_stats(
                get(&format!("{l}.running_mean")),
                get(&format!("{l}.running_var")),
            );
            b
        };
        Tiny {
            names,
            conv1: var(c1),
            bn1: bn(b1, 4),
            conv2: var(c2),
            bn2: bn(b2, 8),
        }
    }
}

impl Encoder for Tiny {
    fn out_dim(&self) -> usize {
        8
    }
    fn num_stages(&self) -> usize {
        1
    }
    fn stage_channels(&self, _i: usize) -> usize {
        8
    }
    fn stage(&self, _i: usize, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = relu(
            &self
                .bn1
                .forward(&conv2d(x, self.conv1.as_tensor(), 2, 1)?, train)?,
        )?;
        let y = max_pool2d(&y, 3, 2, 1)?;
        relu(
            &self
                .bn2
                .forward(&conv2d(&y, self.conv2.as_tensor(), 1, 1)?, train)?,
        )
    }
    fn params(&self) -> Vec<(String, Var)> {
        let [c1, b1, c2, b2] = self.names.layers();
        vec![
            (format!("{c1}.weight"), self.conv1.clone()),
            (format!("{b1}.weight"), self.bn1.weight.clone()),
            (format!("{b1}.bias"), self.bn1.bias.clone()),
            (format!("{c2}.weight"), self.conv2.clone()),
            (format!("{b2}.weight"), self.bn2.weight.clone()),
            (format!("{b2}.bias"), self.bn2.bias.clone()),
        ]
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let [_, b1, _, b2] = self.names.layers();
        let (m1, v1) = self.bn1.running_stats();
        let (m2, v2) = self.bn2.running_stats();
        vec![
            (format!("{b1}.running_mean"), m1),
            (format!("{b1}.running_var"), v1),
            (format!("{b2}.running_mean"), m2),
            (format!("{b2}.running_var"), v2),
        ]
    }
    fn set_buffer(&self, name: &str, value: Tensor) -> candle_core::Result<()> {
        let [_, b1, _, b2] = self.names.layers();
        let stat = |layer: &str| name.strip_prefix(layer)?.strip_prefix('.');
        let (bn, stat) = if let Some(s) = stat(b1) {
            (&self.bn1, s)
        } else if let Some(s) = stat(b2) {
            (&self.bn2, s)
        } else {
            candle_core::bail!("no buffer {name}")
        };
        let (m, v) = bn.running_stats();
        match stat {
            "running_mean" => bn.set_running_stats(value, v),
            _ => bn.set_running_stats(m, value),
        }
        Ok(())
    }
}

/// A tiny encoder of `cin` input channels with zero weights and `nn.Sequential` names, to be
/// loaded by name.
pub fn tiny_blank(cin: usize) -> Tiny {
    let dev = Device::Cpu;
    Tiny {
        names: TinyNames::Sequential,
        conv1: Var::zeros((4, cin, 3, 3), DType::F32, &dev).unwrap(),
        bn1: BatchNorm2d::new(4, &dev).unwrap(),
        conv2: Var::zeros((8, 4, 3, 3), DType::F32, &dev).unwrap(),
        bn2: BatchNorm2d::new(8, &dev).unwrap(),
    }
}

/// The fixtures' model: `audio` and `visual` tiny encoders and a `kind` head of 5 classes
/// (PyTorch initialisation, seed 0).
pub fn av_model(kind: FusionKind, audio: Tiny, visual: Tiny) -> MultimodalModel {
    let dev = Device::Cpu;
    let head = FusionHead::new(kind, &[8, 8], 5, LinearInit::Pytorch, 0, &dev).unwrap();
    MultimodalModel::from_parts(
        vec!["audio".into(), "visual".into()],
        vec![Box::new(audio), Box::new(visual)],
        head,
        &dev,
    )
    .unwrap()
}

/// The official AVClassifier's module of a modality: `audio_net`, `visual_net`.
pub fn official_module(modality: &str) -> &'static str {
    match modality {
        "audio" => "audio_net",
        "visual" => "visual_net",
        m => panic!("no modality {m}"),
    }
}

/// Model name (`encoders.audio.conv1.weight`, `head.fc.weight`) to the official AVClassifier's
/// state_dict name (`audio_net.conv1.weight`, `fusion_module.fc_out.weight`).
pub fn official_name(n: &str) -> String {
    if let Some(rest) = n.strip_prefix("encoders.") {
        let (m, p) = rest.split_once('.').unwrap();
        format!("{}.{p}", official_module(m))
    } else if let Some(p) = n.strip_prefix("head.fc.") {
        format!("fusion_module.fc_out.{p}")
    } else {
        panic!("unexpected parameter {n}")
    }
}

/// The official initial weights of modality `m` (`init.audio_net.conv1.weight`, ...) in a tiny
/// encoder named by the official ResNet's slots.
pub fn official_tiny(f: &HashMap<String, Tensor>, m: &str) -> Tiny {
    let o = official_module(m);
    Tiny::from_fn(TinyNames::ResNetSlots, |k| {
        f[&format!("init.{o}.{k}")].clone()
    })
}

/// The fixture's model with the official initial weights, encoders and a `kind` head
/// (`init.fusion_module.fc_out.*`).
pub fn official_model(f: &HashMap<String, Tensor>, kind: FusionKind) -> MultimodalModel {
    let model = av_model(kind, official_tiny(f, "audio"), official_tiny(f, "visual"));
    for (n, v) in model.named_params() {
        if n.starts_with("head.") {
            v.set(&f[&format!("init.{}", official_name(&n))]).unwrap();
        }
    }
    model
}

/// `tests/fixtures/NAME.safetensors`.
pub fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = format!(
        "{}/../../tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture tensor by key, as f32, with a message naming a missing key.
pub fn get(f: &HashMap<String, Tensor>, key: &str) -> Tensor {
    f.get(key)
        .unwrap_or_else(|| panic!("fixture has no `{key}`"))
        .to_dtype(DType::F32)
        .unwrap()
}

pub fn scalar(f: &HashMap<String, Tensor>, key: &str) -> f64 {
    get(f, key).flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
}

/// A fixture tensor's values as `dtype`, with a message naming a missing key.
fn values<T: candle_core::WithDType>(f: &HashMap<String, Tensor>, k: &str, dtype: DType) -> Vec<T> {
    f.get(k)
        .unwrap_or_else(|| panic!("fixture has no `{k}`"))
        .to_dtype(dtype)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// A fixture tensor's values as f64, with a message naming a missing key.
pub fn floats(f: &HashMap<String, Tensor>, k: &str) -> Vec<f64> {
    values(f, k, DType::F64)
}

/// A fixture tensor's values as i64, with a message naming a missing key.
pub fn ints(f: &HashMap<String, Tensor>, k: &str) -> Vec<i64> {
    values(f, k, DType::I64)
}

/// A float32 fixture scalar as the decimal it was written from (0.8, not 0.800000011920929).
pub fn meta(f: &HashMap<String, Tensor>, k: &str) -> f64 {
    format!("{}", floats(f, k)[0] as f32).parse().unwrap()
}

/// The fixture's batch `tag`: `input_audio.TAG`, `input_visual.TAG` and `label.TAG` (as u32).
pub fn batch(f: &HashMap<String, Tensor>, tag: &str) -> ([Tensor; 2], Tensor) {
    (
        [
            f[&format!("input_audio.{tag}")].clone(),
            f[&format!("input_visual.{tag}")].clone(),
        ],
        f[&format!("label.{tag}")].to_dtype(DType::U32).unwrap(),
    )
}

/// `max |t|`, in f32.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `(max |got - want|, max(max |want|, 1e-3))`, in f32.
pub fn diff_and_scale(got: &Tensor, want: &Tensor) -> (f32, f32) {
    let got = got.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    (max_abs(&(&got - &want).unwrap()), max_abs(&want).max(1e-3))
}

/// Asserts `max |got - want| <= tol * max(|want|, 1e-3)`.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let (d, scale) = diff_and_scale(got, want);
    assert!(
        d <= tol * scale,
        "{name}: max difference {d} (scale {scale})"
    );
}

/// Collects every comparison with the official code: the largest relative difference per kind,
/// and the failures.
#[derive(Default)]
pub struct Report {
    pub max: BTreeMap<&'static str, (f32, String)>,
    pub failures: Vec<String>,
}

impl Report {
    /// `max |got - want| / max(max |want|, 1e-3)` against `tol`.
    pub fn tensor(
        &mut self,
        kind: &'static str,
        name: &str,
        got: &Tensor,
        want: &Tensor,
        tol: f32,
    ) {
        if got.dims() != want.dims() {
            self.failures.push(format!(
                "{name}: shape {:?} vs official {:?}",
                got.dims(),
                want.dims()
            ));
            return;
        }
        let (d, scale) = diff_and_scale(got, want);
        self.note(kind, name, d / scale, tol);
    }

    /// `|got - want| / max(|want|, 1e-3)` against `tol`.
    pub fn scalar(&mut self, kind: &'static str, name: &str, got: f64, want: f64, tol: f32) {
        let rel = ((got - want).abs() / want.abs().max(1e-3)) as f32;
        self.note(kind, name, rel, tol);
    }

    /// A relative difference: a failure above `tol` or NaN.
    pub fn note(&mut self, kind: &'static str, name: &str, rel: f32, tol: f32) {
        if rel > tol || rel.is_nan() {
            self.failures.push(format!(
                "{name}: relative difference {rel:e} (tolerance {tol:e})"
            ));
        }
        let e = self.max.entry(kind).or_insert((0.0, String::new()));
        if e.1.is_empty() || rel > e.0 || rel.is_nan() {
            *e = (rel, name.to_string());
        }
    }

    /// Prints the largest difference per kind and fails naming every failure.
    pub fn finish(self, what: &str) {
        for (kind, (rel, name)) in &self.max {
            println!("{what}: {kind}: max relative difference {rel:e} ({name})");
        }
        assert!(
            self.failures.is_empty(),
            "{what} departs from the official code ({} differences):\n  {}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}
