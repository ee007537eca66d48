//! [`MultimodalModel`]: one encoder per modality, optional blocks between encoder stages, and a
//! fusion head. What every balancing method reads comes out of one forward pass
//! ([`ForwardOut`]); what methods modify is published as [`ParamGroup`]s, so no method parses
//! parameter names.
//!
//! Every part is built from a `VarBuilder` path of one [`ModelVars`]: `encoders.<modality>`,
//! `head`, `mixer`. Those paths are the names checkpoints, parameter groups and pretrained
//! loading use; nothing else names a parameter.

use crate::encoders::{EncoderSlot, EncoderSpec};
use crate::head::{FusionHead, FusionKind, LinearInit};
use candle_core::{bail, DType, Device, Result, Tensor, TensorId, Var};
use candle_nn::VarBuilder;
use mmbal_encoders::{fold_frames, pool_map, Encoder, ModelVars};
use std::collections::HashSet;

/// Blocks run between encoder stages over all modalities at once (MMTM). `after_stages` lists
/// the stage indices after which [`StageMixer::mix`] is called. A mixer's parameters are built
/// from [`MultimodalModel::mixer_builder`], under the model's `mixer` path.
pub trait StageMixer: Send + Sync {
    /// Stage indices after which `mix` runs.
    fn after_stages(&self) -> Vec<usize>;
    /// `maps[m]` is modality m's map after `stage`, `(B * frames[m], C, H, W)`.
    fn mix(
        &self,
        stage: usize,
        maps: &[Tensor],
        frames: &[usize],
        train: bool,
    ) -> Result<Vec<Tensor>>;
    /// State kept in checkpoints that is not a variable (MMTM's running means, which do not
    /// exist before the first forward), named under the mixer.
    fn buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Restores one of `buffers` by name; an unknown name is an error.
    fn set_buffer(&self, name: &str, _value: Tensor) -> Result<()> {
        bail!("this mixer has no buffer `{name}`")
    }
}

/// What one forward pass gives a method.
pub struct ForwardOut {
    /// Pooled per-modality features `(B, D_m)`, before masking.
    pub features: Vec<Tensor>,
    /// Per-modality logits `(B, C)` (see [`crate::FusionHead`]).
    pub unimodal_logits: Vec<Tensor>,
    /// `(B, C)`.
    pub fused_logits: Tensor,
}

/// Named parameter sets that methods act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamGroup {
    /// Every parameter of modality m's encoder.
    Encoder(usize),
    /// Only the 4-D parameters (convolution kernels) of modality m's encoder (OGM-GE).
    EncoderConvKernels(usize),
    /// The fusion head.
    Head,
    /// The part of the head that reads modality m's features alone: its own classifier under
    /// the sum and blend heads (`fc.{m}`); empty for the heads that have none (concat, FiLM,
    /// gated, shared).
    HeadOf(usize),
    /// Blocks between encoder stages.
    Mixer,
}

/// One encoder per modality, an optional mixer between stages, and a fusion head.
pub struct MultimodalModel {
    /// Modality names, in input order.
    pub modalities: Vec<String>,
    encoders: Vec<Box<dyn Encoder>>,
    /// The fusion head over the pooled features.
    pub head: FusionHead,
    mixer: Option<Box<dyn StageMixer>>,
    vars: ModelVars,
    /// The variables the forward pass updates (running statistics): in `vars`, given to no
    /// optimizer.
    buffer_ids: HashSet<TensorId>,
    device: Device,
    /// The element type the encoders compute in (f32, or bf16 for mixed precision).
    compute: DType,
}

/// The prefix of modality `name`'s encoder among the model's variables.
pub fn encoder_path(name: &str) -> String {
    format!("encoders.{name}")
}

impl MultimodalModel {
    /// Builds encoders (seeded `seed + m`) and a head (seeded `seed + 1000`); loads pretrained
    /// weights where a spec names them.
    pub fn new(
        modalities: &[String],
        encoders: &[EncoderSpec],
        fusion: FusionKind,
        head_init: LinearInit,
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> anyhow::Result<MultimodalModel> {
        if modalities.len() != encoders.len() {
            anyhow::bail!(
                "{} modalities ({modalities:?}) but {} encoder specs",
                modalities.len(),
                encoders.len()
            );
        }
        let vars = ModelVars::new();
        let mut built: Vec<Box<dyn Encoder>> = Vec::new();
        for (m, spec) in encoders.iter().enumerate() {
            let slot = EncoderSlot {
                vars: &vars,
                path: encoder_path(&modalities[m]),
                seed: seed.wrapping_add(m as u64),
                device,
            };
            built.push(
                spec.build(&slot)
                    .map_err(|e| e.context(format!("the encoder of `{}`", modalities[m])))?,
            );
        }
        let dims: Vec<usize> = built.iter().map(|e| e.out_dim()).collect();
        let head = FusionHead::new(
            fusion,
            &dims,
            classes,
            head_init,
            vars.seeded(seed.wrapping_add(1000), device).pp("head"),
        )?;
        Ok(MultimodalModel::from_parts(
            modalities.to_vec(),
            built,
            head,
            vars,
            device,
        )?)
    }

    /// A model from encoders built elsewhere (any [`Encoder`] implementation) and a head, all
    /// built from `vars`: encoder m under `encoders.<modalities[m]>` ([`encoder_path`]), the head
    /// under `head`. A variable anywhere else is an error.
    pub fn from_parts(
        modalities: Vec<String>,
        encoders: Vec<Box<dyn Encoder>>,
        head: FusionHead,
        vars: ModelVars,
        device: &Device,
    ) -> Result<MultimodalModel> {
        if modalities.len() != encoders.len() || head.num_modalities() != encoders.len() {
            bail!(
                "{} modalities, {} encoders and a head for {} modalities",
                modalities.len(),
                encoders.len(),
                head.num_modalities()
            );
        }
        let mut prefixes: Vec<String> = modalities
            .iter()
            .map(|m| format!("{}.", encoder_path(m)))
            .collect();
        prefixes.push("head.".into());
        for (name, _) in vars.named() {
            if !prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                bail!(
                    "variable `{name}` is outside the model's parts (expected it under one of \
                     {prefixes:?})"
                );
            }
        }
        let buffer_ids = encoders
            .iter()
            .flat_map(|e| e.buffers())
            .map(|v| v.id())
            .collect();
        Ok(MultimodalModel {
            modalities,
            encoders,
            head,
            mixer: None,
            vars,
            buffer_ids,
            device: device.clone(),
            compute: DType::F32,
        })
    }

    /// The seeded builder at the model's `mixer` path, for the blocks of a [`StageMixer`].
    pub fn mixer_builder(&self, seed: u64) -> VarBuilder<'static> {
        self.vars.seeded(seed, &self.device).pp("mixer")
    }

    /// Inserts blocks between encoder stages (MMTM), built from [`Self::mixer_builder`].
    pub fn set_mixer(&mut self, mixer: Box<dyn StageMixer>) {
        self.mixer = Some(mixer);
    }

    /// Every variable of the model by name (parameters and running statistics).
    pub fn vars(&self) -> &ModelVars {
        &self.vars
    }

    /// Whether a mixer joins the encoders between stages (intermediate fusion: zeroing a pooled
    /// feature no longer removes a modality, so valuation must mask inputs).
    pub fn has_mixer(&self) -> bool {
        self.mixer.is_some()
    }

    /// Where the parameters live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Sets the element type the encoders compute in: f32 (the default) or bf16, mixed precision
    /// as PyTorch's autocast does it for these layers. Under bf16 the inputs are rounded to bf16
    /// and every encoder layer works on bf16 maps (convolutions in bf16 with their f32 weights
    /// rounded, BatchNorm statistics and arithmetic in f32; see `mmbal_ops`); the maps are
    /// widened to f32 for pooling, the blocks between stages and the head. Parameters, their
    /// gradients and the optimizer stay f32 (the master weights).
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            bail!("the encoders compute in f32 or bf16, not {dtype:?}");
        }
        self.compute = dtype;
        Ok(())
    }

    /// The element type the encoders compute in ([`MultimodalModel::set_compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// An input in the encoders' element type.
    fn to_compute(&self, x: &Tensor) -> Result<Tensor> {
        if x.dtype() == self.compute {
            Ok(x.clone())
        } else {
            x.to_dtype(self.compute)
        }
    }

    /// Modalities (and encoders).
    pub fn num_modalities(&self) -> usize {
        self.encoders.len()
    }

    /// Modality `m`'s encoder.
    pub fn encoder(&self, m: usize) -> &dyn Encoder {
        self.encoders[m].as_ref()
    }

    /// Pooled features of every modality, stage by stage so a mixer can see all maps.
    pub fn encode(&self, inputs: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        self.encode_modes(inputs, &vec![train; self.encoders.len()])
    }

    /// [`MultimodalModel::encode`] with a mode per encoder: `train[m]` false runs encoder `m`
    /// in eval mode (running statistics used and left alone) while the others train, as
    /// PyTorch's `encoder.eval()` on one branch (a frozen stage). A mixer trains when any
    /// encoder does.
    pub fn encode_modes(&self, inputs: &[Tensor], train: &[bool]) -> Result<Vec<Tensor>> {
        if inputs.len() != self.encoders.len() || train.len() != self.encoders.len() {
            bail!(
                "model has {} modalities, got {} inputs and {} modes",
                self.encoders.len(),
                inputs.len(),
                train.len()
            );
        }
        let Some(mixer) = &self.mixer else {
            return self
                .encoders
                .iter()
                .zip(inputs)
                .zip(train)
                .map(|((e, x), &t)| e.features(&self.to_compute(x)?, t))
                .collect();
        };
        let mixer_train = train.iter().any(|&t| t);
        let mut maps = Vec::new();
        let mut frames = Vec::new();
        for x in inputs {
            let (y, t) = fold_frames(&self.to_compute(x)?)?;
            maps.push(y);
            frames.push(t);
        }
        let mix_after = mixer.after_stages();
        let stages = self
            .encoders
            .iter()
            .map(|e| e.num_stages())
            .max()
            .unwrap_or(0);
        for s in 0..stages {
            for (m, e) in self.encoders.iter().enumerate() {
                if s < e.num_stages() {
                    maps[m] = e.stage(s, &maps[m], train[m])?;
                }
            }
            if mix_after.contains(&s) {
                if self.compute == DType::F32 {
                    maps = mixer.mix(s, &maps, &frames, mixer_train)?;
                } else {
                    // The blocks between stages run in f32, as the head does.
                    let wide = maps
                        .iter()
                        .map(|y| y.to_dtype(DType::F32))
                        .collect::<Result<Vec<_>>>()?;
                    maps = mixer
                        .mix(s, &wide, &frames, mixer_train)?
                        .iter()
                        .map(|y| self.to_compute(y))
                        .collect::<Result<_>>()?;
                }
            }
        }
        maps.iter()
            .zip(&frames)
            .map(|(y, &t)| pool_map(y, t))
            .collect()
    }

    /// Encoders, then the head. `keep` `(B, M)` zeroes features per row (0 = dropped).
    pub fn forward(
        &self,
        inputs: &[Tensor],
        keep: Option<&Tensor>,
        train: bool,
    ) -> Result<ForwardOut> {
        self.forward_modes(inputs, keep, &vec![train; self.encoders.len()])
    }

    /// [`MultimodalModel::forward`] with a mode per encoder (see
    /// [`MultimodalModel::encode_modes`]).
    pub fn forward_modes(
        &self,
        inputs: &[Tensor],
        keep: Option<&Tensor>,
        train: &[bool],
    ) -> Result<ForwardOut> {
        let features = self.encode_modes(inputs, train)?;
        let out = self.head.forward(&features, keep)?;
        Ok(ForwardOut {
            features,
            unimodal_logits: out.unimodal,
            fused_logits: out.fused,
        })
    }

    /// Inputs with dropped modalities zeroed (the input-masking route, for intermediate fusion).
    pub fn mask_inputs(inputs: &[Tensor], keep: &Tensor) -> Result<Vec<Tensor>> {
        inputs
            .iter()
            .enumerate()
            .map(|(m, x)| {
                let mut shape = vec![x.dim(0)?];
                shape.extend(std::iter::repeat_n(1, x.rank() - 1));
                let k = keep.narrow(1, m, 1)?.reshape(shape)?.to_dtype(x.dtype())?;
                x.broadcast_mul(&k)
            })
            .collect()
    }

    /// Every trainable parameter: `encoders.<modality>.<name>`, `head.<name>`, `mixer.<name>`,
    /// in the order the layers created them.
    pub fn named_params(&self) -> Vec<(String, Var)> {
        self.vars
            .named()
            .into_iter()
            .filter(|(_, v)| !self.buffer_ids.contains(&v.id()))
            .collect()
    }

    /// Every trainable parameter (encoders, head, mixer), in `named_params` order.
    pub fn params(&self) -> Vec<Var> {
        self.named_params().into_iter().map(|(_, v)| v).collect()
    }

    /// The trainable parameters under a path (`head`, `encoders.audio`).
    fn params_under(&self, path: &str) -> Vec<Var> {
        let prefix = format!("{path}.");
        self.named_params()
            .into_iter()
            .filter(|(n, _)| n.starts_with(&prefix))
            .map(|(_, v)| v)
            .collect()
    }

    /// The parameters of one group (see [`ParamGroup`]).
    pub fn group(&self, g: ParamGroup) -> Result<Vec<Var>> {
        Ok(match g {
            ParamGroup::Encoder(m) => self.params_under(&encoder_path(&self.modalities[m])),
            ParamGroup::EncoderConvKernels(m) => self
                .params_under(&encoder_path(&self.modalities[m]))
                .into_iter()
                .filter(|v| v.rank() == 4)
                .collect(),
            ParamGroup::Head => self.params_under("head"),
            ParamGroup::HeadOf(m) => self.head.modality_params(m)?,
            ParamGroup::Mixer => self.params_under("mixer"),
        })
    }

    /// Runs `f` (eval-mode passes of a diagnostic) and then puts every buffer back as it was,
    /// whether `f` succeeded or not: state that every forward feeds, such as MMTM running means,
    /// does not move.
    pub fn keeping_buffers<T, E: From<candle_core::Error>>(
        &self,
        f: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let saved = self.buffers()?;
        let out = f();
        for (name, t) in saved {
            self.set_buffer(&name, t)?;
        }
        out
    }

    /// A copy of every buffer as it is now: the encoders' running statistics
    /// (`encoders.<modality>.<name>`) and mixer state (`mixer.<name>`).
    pub fn buffers(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (n, v) in self.vars.named() {
            if self.buffer_ids.contains(&v.id()) {
                // A copy: the variable itself changes with the next training forward.
                out.push((n, v.as_tensor().copy()?));
            }
        }
        if let Some(mx) = &self.mixer {
            for (n, t) in mx.buffers() {
                out.push((format!("mixer.{n}"), t));
            }
        }
        Ok(out)
    }

    /// Multiply-accumulates of each encoder's convolutions for one sample (`inputs[m]`: one
    /// sample's input with its batch dimension, `(1, ...)`), counted while the encoders run in
    /// eval mode on it (`mmbal_ops::count_conv_macs`; buffers are left as they were). A mixer's
    /// layers between the stages are not counted.
    pub fn encoder_macs(&self, inputs: &[Tensor]) -> Result<Vec<u64>> {
        if inputs.len() != self.encoders.len() {
            bail!(
                "model has {} modalities, got {} inputs",
                self.encoders.len(),
                inputs.len()
            );
        }
        self.keeping_buffers(|| {
            self.encoders
                .iter()
                .zip(inputs)
                .map(|(e, x)| {
                    if x.dim(0)? != 1 {
                        bail!(
                            "encoder_macs takes one sample per modality, got {:?}",
                            x.dims()
                        );
                    }
                    let (out, macs) = mmbal_ops::count_conv_macs(|| e.features(x, false));
                    out?;
                    Ok(macs)
                })
                .collect()
        })
    }

    /// Trainable parameters per part: each encoder (`encoders.<modality>`), `head`, and `mixer`
    /// when there is one, with their element counts.
    pub fn param_counts(&self) -> Vec<(String, usize)> {
        let mut parts: Vec<(String, usize)> = self
            .modalities
            .iter()
            .map(|m| (encoder_path(m), 0))
            .collect();
        parts.push(("head".into(), 0));
        if self.mixer.is_some() {
            parts.push(("mixer".into(), 0));
        }
        for (name, v) in self.named_params() {
            if let Some(p) = parts
                .iter_mut()
                .find(|(p, _)| name.starts_with(&format!("{p}.")))
            {
                p.1 += v.elem_count();
            }
        }
        parts
    }

    /// A copy of every variable, parameters and buffers, under the given paths
    /// (`encoders.audio`, `head.fc.0`), by name: a snapshot for [`MultimodalModel::restore`]
    /// (a branch put back to its best epoch).
    pub fn snapshot(&self, paths: &[String]) -> Result<Vec<(String, Tensor)>> {
        let prefixes: Vec<String> = paths.iter().map(|p| format!("{p}.")).collect();
        let mut out = Vec::new();
        for (n, v) in self.vars.named() {
            if prefixes.iter().any(|p| n.starts_with(p)) {
                out.push((n, v.as_tensor().detach().copy()?));
            }
        }
        if out.is_empty() {
            bail!("the model has no variable under {paths:?}");
        }
        Ok(out)
    }

    /// Puts back what [`MultimodalModel::snapshot`] copied; every name must be a variable of
    /// the model with the snapshot's shape.
    pub fn restore(&self, snapshot: &[(String, Tensor)]) -> Result<()> {
        for (name, value) in snapshot {
            let Some(v) = self.vars.get(name) else {
                bail!("the snapshot holds `{name}`, which the model does not have");
            };
            if value.dims() != v.dims() {
                bail!(
                    "`{name}`: the snapshot's shape is {:?}, the model's {:?}",
                    value.dims(),
                    v.dims()
                );
            }
            v.set(&value.to_device(v.device())?.to_dtype(v.dtype())?)?;
        }
        Ok(())
    }

    /// Restores a buffer by its checkpoint name (encoder running statistics, mixer state).
    pub fn set_buffer(&self, name: &str, value: Tensor) -> Result<()> {
        if let (Some(rest), Some(mx)) = (name.strip_prefix("mixer."), &self.mixer) {
            return mx.set_buffer(rest, value);
        }
        match self.vars.get(name) {
            Some(v) if self.buffer_ids.contains(&v.id()) => {
                if value.dims() != v.dims() {
                    bail!(
                        "buffer `{name}`: shape {:?}, expected {:?}",
                        value.dims(),
                        v.dims()
                    );
                }
                v.set(&value.to_device(v.device())?.to_dtype(v.dtype())?)
            }
            _ => bail!("model has no buffer `{name}`"),
        }
    }
}
