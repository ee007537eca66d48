//! Shared by the golden tests against reference code: the fixtures' tiny encoder and model,
//! the official AVClassifier's names, and helpers to load fixtures and compare tensors.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use mmbal_encoders::{BatchNorm2d, Encoder, ModelVars};
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
/// BN ReLU, its variables named as `names` says.
pub struct Tiny {
    pub conv1: Tensor,
    pub bn1: BatchNorm2d,
    pub conv2: Tensor,
    pub bn2: BatchNorm2d,
}

impl Tiny {
    /// A tiny encoder of `cin` input channels built from `vb` (values as drawn; the tests set
    /// them by name).
    pub fn new(names: TinyNames, cin: usize, vb: VarBuilder) -> Tiny {
        let [c1, b1, c2, b2] = names.layers();
        Tiny {
            conv1: vb.pp(c1).get((4, cin, 3, 3), "weight").unwrap(),
            bn1: BatchNorm2d::new(4, vb.pp(b1)).unwrap(),
            conv2: vb.pp(c2).get((8, 4, 3, 3), "weight").unwrap(),
            bn2: BatchNorm2d::new(8, vb.pp(b2)).unwrap(),
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
        let y = relu(&self.bn1.forward(&conv2d(x, &self.conv1, 2, 1)?, train)?)?;
        let y = max_pool2d(&y, 3, 2, 1)?;
        relu(&self.bn2.forward(&conv2d(&y, &self.conv2, 1, 1)?, train)?)
    }
    fn buffers(&self) -> Vec<Var> {
        [&self.bn1, &self.bn2]
            .into_iter()
            .flat_map(|bn| bn.buffers())
            .collect()
    }
}

/// The fixtures' model: `audio` and `visual` tiny encoders of `cin` input channels named as
/// `names` says, and a `kind` head of 5 classes (PyTorch initialisation, seed 0), built from one
/// `ModelVars`. The encoders' values are as drawn: set them by name.
pub fn av_model_named(kind: FusionKind, names: TinyNames, cin: [usize; 2]) -> MultimodalModel {
    let dev = Device::Cpu;
    let vars = ModelVars::new();
    let modalities = ["audio", "visual"];
    let encoders: Vec<Box<dyn Encoder>> = modalities
        .iter()
        .zip(cin)
        .map(|(m, c)| {
            let vb = vars.seeded(0, &dev).pp(format!("encoders.{m}"));
            Box::new(Tiny::new(names, c, vb)) as Box<dyn Encoder>
        })
        .collect();
    let head = FusionHead::new(
        kind,
        &[8, 8],
        5,
        LinearInit::Pytorch,
        vars.seeded(0, &dev).pp("head"),
    )
    .unwrap();
    MultimodalModel::from_parts(
        modalities.iter().map(|m| m.to_string()).collect(),
        encoders,
        head,
        vars,
        &dev,
    )
    .unwrap()
}

/// [`av_model_named`] with `nn.Sequential` names.
pub fn av_model(kind: FusionKind, cin: [usize; 2]) -> MultimodalModel {
    av_model_named(kind, TinyNames::Sequential, cin)
}

/// [`av_model_named`] with every encoder variable (weights and running statistics) set to
/// `get(modality, name)`, `name` under `names` (`0.weight`, `bn1.running_mean`, ...).
pub fn av_model_from(
    kind: FusionKind,
    names: TinyNames,
    get: impl Fn(&str, &str) -> Tensor,
) -> MultimodalModel {
    let stem = format!("{}.weight", names.layers()[0]);
    let cin = ["audio", "visual"].map(|m| get(m, &stem).dim(1).unwrap());
    let model = av_model_named(kind, names, cin);
    for m in ["audio", "visual"] {
        for (n, v) in model.vars().named_under(&format!("encoders.{m}")) {
            v.set(&get(m, &n)).unwrap();
        }
    }
    model
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

/// The tiny model (ResNet slot names) with a reference's initial weights: every variable `n`
/// of the encoders and the head from `init.<official(n)>`.
pub fn reference_model(
    f: &HashMap<String, Tensor>,
    kind: FusionKind,
    official: impl Fn(&str) -> String,
) -> MultimodalModel {
    let model = av_model_from(kind, TinyNames::ResNetSlots, |m, k| {
        f[&format!("init.{}", official(&format!("encoders.{m}.{k}")))].clone()
    });
    for (n, v) in model.named_params() {
        if n.starts_with("head.") {
            v.set(&f[&format!("init.{}", official(&n))]).unwrap();
        }
    }
    model
}

/// The fixture's model with the official AVClassifier's initial weights
/// (`init.audio_net.conv1.weight`, ..., `init.fusion_module.fc_out.*`).
pub fn official_model(f: &HashMap<String, Tensor>, kind: FusionKind) -> MultimodalModel {
    reference_model(f, kind, official_name)
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

/// `max |a - b|` in f64: 0 exactly when the tensors are equal element for element (f64 method
/// state included).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Every tensor of checkpoint `a` equals `b`'s bitwise (those whose name `only` accepts, when
/// given), and `b` holds no other.
pub fn assert_checkpoints_equal(
    a: &mmbal_train::checkpoint::Checkpoint,
    b: &mmbal_train::checkpoint::Checkpoint,
    only: Option<&dyn Fn(&str) -> bool>,
    tag: &str,
) {
    let keep = |k: &str| only.is_none_or(|f| f(k));
    let keys: Vec<&String> = a.tensors.keys().filter(|k| keep(k)).collect();
    assert!(!keys.is_empty(), "{tag}: nothing to compare");
    assert_eq!(
        keys.len(),
        b.tensors.keys().filter(|k| keep(k)).count(),
        "{tag}"
    );
    for k in keys {
        let tb = b
            .tensors
            .get(k)
            .unwrap_or_else(|| panic!("{tag}: {k} missing"));
        assert_eq!(max_abs_diff(&a.tensors[k], tb), 0.0, "{tag}: {k} differs");
    }
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

/// `max |got - want| / max(max |want|, 1e-3)`: the golden tests' relative difference.
pub fn rel(got: &Tensor, want: &Tensor) -> f32 {
    let (d, scale) = diff_and_scale(got, want);
    d / scale
}

/// A concat head over `m` features of 8 with the given `(C, 8 m)` weight and `(C)` bias, its
/// variables named `fc.weight` and `fc.bias` (the BalanceBenchmark fixtures' `fc_out`).
pub fn concat_head(m: usize, weight: &Tensor, bias: &Tensor) -> (FusionHead, ModelVars) {
    let vars = ModelVars::new();
    let head = FusionHead::new(
        FusionKind::Concat,
        &vec![8; m],
        weight.dim(0).unwrap(),
        LinearInit::Pytorch,
        vars.seeded(0, &Device::Cpu),
    )
    .unwrap();
    vars.get("fc.weight").unwrap().set(weight).unwrap();
    vars.get("fc.bias").unwrap().set(bias).unwrap();
    (head, vars)
}

/// The case's pooled features `{case}.features.{i}`, `i < m`, as variables.
pub fn case_features(f: &HashMap<String, Tensor>, case: &str, m: usize) -> Vec<Var> {
    (0..m)
        .map(|i| Var::from_tensor(&f[&format!("{case}.features.{i}")]).unwrap())
        .collect()
}

/// The case's gradients of the features (`{case}.grad.features.{i}`) and of the head's
/// `fc.weight` / `fc.bias` (`{case}.grad.weight`, `.bias`), each within 1e-4 relative.
pub fn check_case_grads(
    f: &HashMap<String, Tensor>,
    case: &str,
    grads: &candle_core::backprop::GradStore,
    feats: &[Var],
    vars: &ModelVars,
) {
    for (i, v) in feats.iter().enumerate() {
        let r = rel(
            grads.get(v).unwrap(),
            &f[&format!("{case}.grad.features.{i}")],
        );
        assert!(r < 1e-4, "{case}: feature {i} gradient {r:e}");
    }
    for name in ["weight", "bias"] {
        let v = vars.get(&format!("fc.{name}")).unwrap();
        let r = rel(grads.get(&v).unwrap(), &f[&format!("{case}.grad.{name}")]);
        assert!(r < 1e-4, "{case}: head {name} gradient {r:e}");
    }
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

/// An empty dataset: `epoch_plan` only needs the context to start its per-epoch log.
pub fn empty_dataset() -> std::sync::Arc<mmbal_data::Dataset> {
    let manifest = mmbal_data::Manifest {
        name: "none".into(),
        classes: Vec::new(),
        modalities: Vec::new(),
        samples: Vec::new(),
        notes: Vec::new(),
    };
    std::sync::Arc::new(mmbal_data::Dataset::new(manifest, Vec::new()).unwrap())
}

/// A model name in a reference's naming: the first `(ours, theirs)` prefix pair that matches
/// is swapped (`encoders.audio.` -> `audio_net.`); a name no pair matches is a test bug.
pub fn renamed(n: &str, pairs: &[(&str, &str)]) -> String {
    for (ours, theirs) in pairs {
        if let Some(rest) = n.strip_prefix(ours) {
            return format!("{theirs}{rest}");
        }
    }
    panic!("unexpected parameter {n}")
}

/// Wraps a method and keeps, by model name, the gradients the optimizer is handed (after the
/// method's own edits); every hook the golden tests reach is passed through.
pub struct GradRecorder {
    pub inner: Box<dyn mmbal_methods::BalanceMethod>,
    pub grads: HashMap<String, Tensor>,
}

impl GradRecorder {
    pub fn new(inner: Box<dyn mmbal_methods::BalanceMethod>) -> GradRecorder {
        GradRecorder {
            inner,
            grads: HashMap::new(),
        }
    }
}

impl mmbal_methods::BalanceMethod for GradRecorder {
    fn name(&self) -> &'static str {
        "recorder"
    }
    fn epoch_plan(
        &mut self,
        ctx: &mmbal_methods::EpochCtx,
    ) -> anyhow::Result<Option<Vec<mmbal_data::Row>>> {
        self.inner.epoch_plan(ctx)
    }
    fn loss(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
    ) -> anyhow::Result<Tensor> {
        self.inner.loss(ctx, out)
    }
    fn step_gradients(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
    ) -> anyhow::Result<Option<(Tensor, mmbal_methods::Grads)>> {
        self.inner.step_gradients(ctx, out)
    }
    fn observe_gradients(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
        grads: &mmbal_methods::Grads,
    ) -> anyhow::Result<()> {
        self.inner.observe_gradients(ctx, out, grads)
    }
    fn edit_gradients(
        &mut self,
        ctx: &mmbal_methods::StepCtx,
        out: &mmbal_fusion::ForwardOut,
        grads: &mut mmbal_methods::Grads,
    ) -> anyhow::Result<()> {
        self.inner.edit_gradients(ctx, out, grads)?;
        self.grads.clear();
        for (n, v) in ctx.model.named_params() {
            if let Some(g) = grads.get(&v) {
                self.grads.insert(n, g.clone());
            }
        }
        Ok(())
    }
    fn on_epoch_end(&mut self, ctx: &mmbal_methods::EpochCtx) -> anyhow::Result<()> {
        self.inner.on_epoch_end(ctx)
    }
    fn diagnostics(&self) -> Vec<(String, f64)> {
        self.inner.diagnostics()
    }
    fn state(&self) -> anyhow::Result<Vec<(String, Tensor)>> {
        self.inner.state()
    }
}

/// After one step: every gradient against `{p}.grad.<official>` (tolerance `tols.0`; a
/// parameter without a gradient must have none in the fixture either), then every parameter and
/// buffer against `{p}.after.<official>` (tolerance `tols.1`).
pub fn check_step(
    report: &mut Report,
    f: &HashMap<String, Tensor>,
    p: &str,
    model: &MultimodalModel,
    grads: &HashMap<String, Tensor>,
    official: impl Fn(&str) -> String,
    (grad_tol, tol): (f32, f32),
) {
    for (n, _) in model.named_params() {
        let key = format!("{p}.grad.{}", official(&n));
        match (grads.get(&n), f.get(&key)) {
            (Some(g), Some(want)) => report.tensor("grad", &key, g, want, grad_tol),
            (None, None) => {}
            (got, want) => report.failures.push(format!(
                "{key}: mmbal has a gradient: {}, the official code: {}",
                got.is_some(),
                want.is_some()
            )),
        }
    }
    for (n, v) in model.named_params() {
        let key = format!("{p}.after.{}", official(&n));
        report.tensor("weights after step", &key, v.as_tensor(), &f[&key], tol);
    }
    for (n, t) in model.buffers().unwrap() {
        let key = format!("{p}.after.{}", official(&n));
        report.tensor("running stats after step", &key, &t, &f[&key], tol);
    }
}
