//! Encoders by name, like the methods: a config's `[model.encoders.<modality>]` table names a
//! `kind` and that kind's options; each kind is one [`EncoderKind`] in [`ENCODERS`] (or added at
//! run time with [`register_encoder`]), so a contributor adds an encoder without touching an
//! enum. The built-in kinds' options are typed structs ([`Resnet18Options`],
//! [`SmallCnnOptions`]): unknown keys are errors naming the kind.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Var};
use candle_nn::VarBuilder;
use mmbal_encoders::{Encoder, ModelVars, ResNet18, SmallCnn};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// One modality's encoder as a config gives it: a registered `kind` and its options (the rest
/// of the table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderSpec {
    /// The registered kind (`resnet18`, `small-cnn`, or one added with [`register_encoder`]).
    pub kind: String,
    /// The kind's options.
    #[serde(flatten)]
    pub options: toml::Table,
}

impl EncoderSpec {
    /// A spec of `kind` from a typed options struct.
    pub fn new<T: Serialize>(kind: &str, options: &T) -> EncoderSpec {
        EncoderSpec {
            kind: kind.to_string(),
            options: toml::Table::try_from(options)
                .unwrap_or_else(|e| panic!("options of encoder `{kind}` are not a table: {e}")),
        }
    }

    /// Builds the encoder in `slot`.
    pub fn build(&self, slot: &EncoderSlot) -> Result<Box<dyn Encoder>> {
        find(&self.kind)?
            .build(&self.options, slot)
            .with_context(|| format!("encoder `{}`", self.kind))
    }

    /// Checks the options without building anything; returns the input channels they ask for
    /// (a config checks them against its recipe's).
    pub fn check(&self) -> Result<usize> {
        find(&self.kind)?
            .in_channels(&self.options)
            .with_context(|| format!("encoder `{}`", self.kind))
    }
}

impl From<Resnet18Options> for EncoderSpec {
    fn from(o: Resnet18Options) -> EncoderSpec {
        EncoderSpec::new("resnet18", &o)
    }
}

impl From<SmallCnnOptions> for EncoderSpec {
    fn from(o: SmallCnnOptions) -> EncoderSpec {
        EncoderSpec::new("small-cnn", &o)
    }
}

/// Where an encoder is built: the model's variables, the encoder's path among them
/// (`encoders.<modality>`), the seed of its initial weights and the device.
pub struct EncoderSlot<'a> {
    /// The model's variables.
    pub vars: &'a ModelVars,
    /// The encoder's `VarBuilder` path.
    pub path: String,
    /// The seed of the encoder's weight stream.
    pub seed: u64,
    /// Where the weights live.
    pub device: &'a Device,
}

impl EncoderSlot<'_> {
    /// The seeded builder at the encoder's path: what its layers are built from.
    pub fn var_builder(&self) -> VarBuilder<'static> {
        self.vars.seeded(self.seed, self.device).pp(&self.path)
    }

    /// The encoder's variables named relative to its path (pretrained loading).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.vars.named_under(&self.path)
    }
}

/// One kind of encoder.
pub trait EncoderKind: Send + Sync {
    /// Input channels the options ask for; an error for invalid options (unknown keys, a width
    /// that is not positive).
    fn in_channels(&self, options: &toml::Table) -> Result<usize>;
    /// The encoder the options describe, built from the slot's builder (its weights drawn from
    /// the slot's seed, or loaded where the options name pretrained weights).
    fn build(&self, options: &toml::Table, slot: &EncoderSlot) -> Result<Box<dyn Encoder>>;
}

/// How an encoder's BatchNorm weights start (biases start at 0 either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnInit {
    /// 1, PyTorch's default (the OGM-GE lineage: OGM-GE, PMR, Greedy, MLA).
    #[default]
    Ones,
    /// Drawn from N(1, 0.02) (the valuation paper's backbone, Wei et al. CVPR 2024).
    Normal,
}

/// Applies `init` to a freshly built encoder (before any pretrained weights are loaded), from its
/// own seed stream.
fn init_batch_norm(encoder: &dyn Encoder, init: BnInit, seed: u64) -> Result<()> {
    match init {
        BnInit::Ones => Ok(()),
        BnInit::Normal => Ok(mmbal_encoders::init_batch_norm_weights(
            encoder,
            1.0,
            0.02,
            seed ^ 0xB47C_0000_0000_0000,
        )?),
    }
}

fn parse<T: serde::de::DeserializeOwned>(options: &toml::Table) -> Result<T> {
    Ok(toml::Value::Table(options.clone()).try_into()?)
}

/// `kind = "resnet18"`: [`ResNet18`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resnet18Options {
    /// Input channels: 1 (audio), 2 (flow) or 3 (RGB).
    pub in_channels: usize,
    /// Channel scale (1.0: torchvision's ResNet-18, 512-d features).
    #[serde(default = "one")]
    pub width: f64,
    /// Weights to load: a safetensors or PyTorch `.pth` path, or `hf:owner/name[/file]` in the
    /// hf-hub cache (width 1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// How BatchNorm weights start.
    #[serde(default)]
    pub bn_init: BnInit,
}

fn one() -> f64 {
    1.0
}

struct Resnet18Kind;

impl Resnet18Options {
    /// The options of a table, checked.
    fn from_table(options: &toml::Table) -> Result<Resnet18Options> {
        let o: Resnet18Options = parse(options)?;
        if !(o.width.is_finite() && o.width > 0.0) {
            bail!("width = {}: the width must be positive", o.width);
        }
        Ok(o)
    }
}

impl EncoderKind for Resnet18Kind {
    fn in_channels(&self, options: &toml::Table) -> Result<usize> {
        Ok(Resnet18Options::from_table(options)?.in_channels)
    }

    fn build(&self, options: &toml::Table, slot: &EncoderSlot) -> Result<Box<dyn Encoder>> {
        let o = Resnet18Options::from_table(options)?;
        let net = ResNet18::new(o.in_channels, o.width, slot.var_builder())?;
        init_batch_norm(&net, o.bn_init, slot.seed)?;
        if let Some(p) = &o.pretrained {
            mmbal_encoders::load_resnet18_weights(&slot.named_vars(), &net.buffers(), p)?;
        }
        Ok(Box::new(net))
    }
}

/// `kind = "small-cnn"`: [`SmallCnn`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallCnnOptions {
    /// Input channels.
    pub in_channels: usize,
    /// First-stage channels (features are `4 * width`).
    pub width: usize,
    /// How BatchNorm weights start.
    #[serde(default)]
    pub bn_init: BnInit,
}

struct SmallCnnKind;

impl SmallCnnOptions {
    /// The options of a table, checked.
    fn from_table(options: &toml::Table) -> Result<SmallCnnOptions> {
        let o: SmallCnnOptions = parse(options)?;
        if o.width == 0 {
            bail!("width = 0: the width must be positive");
        }
        Ok(o)
    }
}

impl EncoderKind for SmallCnnKind {
    fn in_channels(&self, options: &toml::Table) -> Result<usize> {
        Ok(SmallCnnOptions::from_table(options)?.in_channels)
    }

    fn build(&self, options: &toml::Table, slot: &EncoderSlot) -> Result<Box<dyn Encoder>> {
        let o = SmallCnnOptions::from_table(options)?;
        let net = SmallCnn::new(o.in_channels, o.width, slot.var_builder())?;
        init_batch_norm(&net, o.bn_init, slot.seed)?;
        Ok(Box::new(net))
    }
}

/// Every built-in encoder kind.
pub const ENCODERS: &[(&str, &dyn EncoderKind)] =
    &[("resnet18", &Resnet18Kind), ("small-cnn", &SmallCnnKind)];

/// Kinds registered at run time by code outside this crate.
static EXTRA: Mutex<Vec<(String, &'static dyn EncoderKind)>> = Mutex::new(Vec::new());

/// Registers an encoder kind defined outside this crate under `name`, so configs can name it.
/// A name already taken is an error.
pub fn register_encoder(name: &str, kind: &'static dyn EncoderKind) -> Result<()> {
    let mut extra = EXTRA.lock().unwrap();
    if ENCODERS.iter().any(|(n, _)| *n == name) || extra.iter().any(|(n, _)| n == name) {
        bail!("an encoder kind named `{name}` is already registered");
    }
    extra.push((name.to_string(), kind));
    Ok(())
}

fn find(name: &str) -> Result<&'static dyn EncoderKind> {
    if let Some((_, k)) = ENCODERS.iter().find(|(n, _)| *n == name) {
        return Ok(*k);
    }
    let extra = EXTRA.lock().unwrap();
    match extra.iter().find(|(n, _)| n == name) {
        Some((_, k)) => Ok(*k),
        None => {
            let mut known: Vec<String> = ENCODERS.iter().map(|(n, _)| n.to_string()).collect();
            known.extend(extra.iter().map(|(n, _)| n.clone()));
            bail!("unknown encoder kind `{name}`; known: {}", known.join(", "))
        }
    }
}
