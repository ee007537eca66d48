//! Fusion heads: pooled features of every modality in, fused logits and per-modality
//! ("unimodal") logits out.
//!
//! * concat: `out = [f_1; ...; f_M] W^T + b`; the unimodal logits slice the same head,
//!   `out_m = f_m W[:, D_m]^T + b / M`, so they add up to the fused logits.
//! * sum: `out = sum_m (f_m W_m^T + b_m)`; `out_m = f_m W_m^T + b_m`.
//! * FiLM (two modalities): `[gamma, beta] = split(Linear(f_1))`, `out = Linear(gamma * f_2 + beta)`.
//! * gated (two modalities): `out = Linear(sigmoid(Linear(f_1)) * Linear(f_2))`.
//! * shared (MLA): one classifier `H` for every modality (equal feature widths);
//!   `out_m = H(f_m)`, `out = mean_m H(f_m)`.
//! * blend (G-Blending): a concat classifier for the fused logits and a separate classifier per
//!   modality for its unimodal logits, `out_m = f_m W_m^T + b_m` (the logits do not add up).
//!
//! FiLM and gated mix the modalities before the classifier, so no slice of the head belongs to
//! one modality; their unimodal logits are defined as the head run with every other modality's
//! feature set to zero (the same masking Shapley valuation uses).

use candle_core::{bail, Module, Result, Tensor, Var};
use candle_nn::{Init, Linear, VarBuilder};
use serde::{Deserialize, Serialize};

/// How a head fuses the modalities' pooled features (the module docs give each formula).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionKind {
    /// One linear layer over the concatenated features.
    Concat,
    /// One linear layer per modality, logits summed.
    Sum,
    /// FiLM: the first modality scales and shifts the second (two modalities).
    Film,
    /// The first modality gates the second (two modalities).
    Gated,
    /// One classifier shared by every modality, logits averaged (MLA).
    Shared,
    /// A concat classifier plus one per modality (G-Blending).
    Blend,
}

/// How linear layers start: PyTorch's default (weight and bias uniform in +-1/sqrt(fan_in); the
/// valuation paper's code) or Xavier normal weights with zero bias (OGM-GE's code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LinearInit {
    /// Weight and bias uniform in +-1/sqrt(fan_in) (`nn.Linear`'s default).
    #[default]
    Pytorch,
    /// Xavier-normal weight, zero bias (OGM-GE's code).
    XavierNormal,
}

/// candle-nn's `Linear` from `inp` to `out` features at `vb`'s `weight` and `bias`, initialised
/// as `init` says (the weight drawn before the bias, from the builder's stream).
pub fn linear(inp: usize, out: usize, init: LinearInit, vb: VarBuilder) -> Result<Linear> {
    let (weight, bias) = match init {
        LinearInit::Pytorch => {
            let bound = 1.0 / (inp as f64).sqrt();
            let uniform = Init::Uniform {
                lo: -bound,
                up: bound,
            };
            (uniform, uniform)
        }
        LinearInit::XavierNormal => {
            let stdev = (2.0 / (inp + out) as f64).sqrt();
            (Init::Randn { mean: 0.0, stdev }, Init::Const(0.0))
        }
    };
    let w = vb.get_with_hints((out, inp), "weight", weight)?;
    let b = vb.get_with_hints(out, "bias", bias)?;
    Ok(Linear::new(w, Some(b)))
}

/// The variables of a linear layer built by [`linear`]: `[weight, bias]`.
pub fn linear_vars(l: &Linear) -> Result<Vec<Var>> {
    let mut out = vec![Var::from_tensor(l.weight())?];
    if let Some(b) = l.bias() {
        out.push(Var::from_tensor(b)?);
    }
    Ok(out)
}

/// Features with each row's dropped modalities zeroed: `features[m] * keep[:, m]`, `keep`
/// `(B, M)` with 0 where modality m is dropped for that row (what the head does with `keep`).
pub fn mask_features(features: &[Tensor], keep: &Tensor) -> Result<Vec<Tensor>> {
    features
        .iter()
        .enumerate()
        .map(|(m, x)| x.broadcast_mul(&keep.narrow(1, m, 1)?.to_dtype(x.dtype())?))
        .collect()
}

/// Fused and per-modality logits, each `(B, C)`.
pub struct HeadOut {
    /// The fused logits.
    pub fused: Tensor,
    /// Each modality's logits (see the module docs for each head).
    pub unimodal: Vec<Tensor>,
}

/// A fusion head: features of every modality in, fused and per-modality logits out.
pub struct FusionHead {
    /// Which fusion.
    pub kind: FusionKind,
    dims: Vec<usize>,
    classes: usize,
    /// concat: one layer over all features; sum: one per modality; FiLM: [film, fc];
    /// gated: [fx, fy, fc].
    layers: Vec<(String, Linear)>,
}

impl FusionHead {
    /// `dims[m]` is modality `m`'s feature width; `classes` output logits; the layers'
    /// variables come from `vb` (`fc.weight`, `fc.0.bias`, `film.weight`, ... under its path).
    pub fn new(
        kind: FusionKind,
        dims: &[usize],
        classes: usize,
        init: LinearInit,
        vb: VarBuilder,
    ) -> Result<FusionHead> {
        if dims.is_empty() {
            bail!("a fusion head needs at least one modality");
        }
        if matches!(kind, FusionKind::Film | FusionKind::Gated) && dims.len() != 2 {
            bail!(
                "{kind:?} fusion is defined for exactly two modalities (the first conditions the second); got {}",
                dims.len()
            );
        }
        let lin = |name: &str, i: usize, o: usize| -> Result<(String, Linear)> {
            Ok((name.to_string(), linear(i, o, init, vb.pp(name))?))
        };
        if kind == FusionKind::Shared && dims.iter().any(|&d| d != dims[0]) {
            bail!("shared fusion needs equal feature widths, got {dims:?}");
        }
        let layers = match kind {
            FusionKind::Shared => vec![lin("fc", dims[0], classes)?],
            FusionKind::Blend => {
                let mut l = vec![lin("fc", dims.iter().sum(), classes)?];
                for (m, &d) in dims.iter().enumerate() {
                    l.push(lin(&format!("fc.{m}"), d, classes)?);
                }
                l
            }
            FusionKind::Concat => vec![lin("fc", dims.iter().sum(), classes)?],
            FusionKind::Sum => dims
                .iter()
                .enumerate()
                .map(|(m, &d)| lin(&format!("fc.{m}"), d, classes))
                .collect::<Result<_>>()?,
            FusionKind::Film => vec![
                lin("film", dims[0], 2 * dims[1])?,
                lin("fc", dims[1], classes)?,
            ],
            FusionKind::Gated => vec![
                lin("fc_x", dims[0], dims[1])?,
                lin("fc_y", dims[1], dims[1])?,
                lin("fc", dims[1], classes)?,
            ],
        };
        Ok(FusionHead {
            kind,
            dims: dims.to_vec(),
            classes,
            layers,
        })
    }

    /// Modalities the head takes.
    pub fn num_modalities(&self) -> usize {
        self.dims.len()
    }

    /// Classes it predicts (the width of its logits).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Multiply-accumulates of the fused prediction for one sample: each linear layer's
    /// `in x out` as often as the fused forward applies it (the shared head once per modality).
    pub fn macs(&self) -> u64 {
        let layer = |i: usize| {
            let w = self.layers[i].1.weight().dims();
            (w[0] * w[1]) as u64
        };
        match self.kind {
            FusionKind::Shared => layer(0) * self.dims.len() as u64,
            // The fused logits read the concat classifier only.
            FusionKind::Blend | FusionKind::Concat => layer(0),
            FusionKind::Sum | FusionKind::Film | FusionKind::Gated => {
                (0..self.layers.len()).map(layer).sum()
            }
        }
    }

    /// The classifier that reads modality `m`'s features alone (sum and blend heads: `fc.{m}`);
    /// empty for the other heads.
    pub fn modality_params(&self, m: usize) -> Result<Vec<Var>> {
        let name = format!("fc.{m}");
        match self.kind {
            FusionKind::Sum | FusionKind::Blend => {
                match self.layers.iter().find(|(n, _)| *n == name) {
                    Some((_, l)) => linear_vars(l),
                    None => Ok(Vec::new()),
                }
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The columns of the concat head's weight that read modality `m`'s features, `(C, D_m)`
    /// (MMCosine's and OPM's per-modality classifiers), as a contiguous copy that stays in the
    /// graph (CUDA's matmul takes no column slice); an error for other heads.
    pub fn concat_weight_of(&self, m: usize) -> Result<Tensor> {
        if self.kind != FusionKind::Concat {
            bail!("the {:?} head has no concat weight to slice", self.kind);
        }
        let Some(&d) = self.dims.get(m) else {
            bail!("the head has {} modalities, asked for {m}", self.dims.len())
        };
        let start: usize = self.dims[..m].iter().sum();
        self.layers[0].1.weight().narrow(1, start, d)?.contiguous()
    }

    /// The concat head's bias, if it has one; an error for other heads.
    pub fn concat_bias(&self) -> Result<Option<&Tensor>> {
        if self.kind != FusionKind::Concat {
            bail!("the {:?} head has no concat bias", self.kind);
        }
        Ok(self.layers[0].1.bias())
    }

    /// The one classifier every modality shares (the shared head, MLA); an error for other heads.
    pub fn shared_classifier(&self) -> Result<&Linear> {
        match self.kind {
            FusionKind::Shared => Ok(&self.layers[0].1),
            k => bail!("the {k:?} head has no classifier shared by every modality"),
        }
    }

    /// Fused logits only, from (already masked) features.
    fn fused(&self, f: &[Tensor]) -> Result<Tensor> {
        let l = |i: usize| &self.layers[i].1;
        match self.kind {
            FusionKind::Concat | FusionKind::Blend => l(0).forward(&Tensor::cat(f, 1)?),
            FusionKind::Sum => {
                let mut out = l(0).forward(&f[0])?;
                for (m, x) in f.iter().enumerate().skip(1) {
                    out = (out + l(m).forward(x)?)?;
                }
                Ok(out)
            }
            FusionKind::Film => {
                let gb = l(0).forward(&f[0])?;
                let d = self.dims[1];
                let (gamma, beta) = (gb.narrow(1, 0, d)?, gb.narrow(1, d, d)?);
                l(1).forward(&((gamma * &f[1])? + beta)?)
            }
            FusionKind::Gated => {
                let gate = candle_nn::ops::sigmoid(&l(0).forward(&f[0])?)?;
                l(2).forward(&(gate * l(1).forward(&f[1])?)?)
            }
            FusionKind::Shared => {
                let mut out = l(0).forward(&f[0])?;
                for x in &f[1..] {
                    out = (out + l(0).forward(x)?)?;
                }
                out / f.len() as f64
            }
        }
    }

    /// Fused and unimodal logits. `keep`: optional `(B, M)` with 0 where a modality's feature is
    /// zeroed for that row (resampled copies, Shapley coalitions).
    pub fn forward(&self, features: &[Tensor], keep: Option<&Tensor>) -> Result<HeadOut> {
        let m_count = self.dims.len();
        if features.len() != m_count {
            bail!(
                "fusion head built for {m_count} modalities got {}",
                features.len()
            );
        }
        let f: Vec<Tensor> = match keep {
            None => features.to_vec(),
            Some(k) => mask_features(features, k)?,
        };
        let fused = self.fused(&f)?;
        let unimodal = match self.kind {
            FusionKind::Concat => {
                let l = &self.layers[0].1;
                let Some(b) = l.bias() else {
                    bail!("the concat head's classifier has no bias")
                };
                let w = l.weight();
                let shared_bias = (b / m_count as f64)?;
                let mut start = 0;
                let mut out = Vec::with_capacity(m_count);
                for (x, &d) in f.iter().zip(&self.dims) {
                    // Contiguous: CUDA's matmul takes no column slice.
                    let wm = w.narrow(1, start, d)?.contiguous()?;
                    out.push(x.matmul(&wm.t()?)?.broadcast_add(&shared_bias)?);
                    start += d;
                }
                out
            }
            FusionKind::Sum => f
                .iter()
                .enumerate()
                .map(|(m, x)| self.layers[m].1.forward(x))
                .collect::<Result<_>>()?,
            FusionKind::Shared => f
                .iter()
                .map(|x| self.layers[0].1.forward(x))
                .collect::<Result<_>>()?,
            FusionKind::Blend => f
                .iter()
                .enumerate()
                .map(|(m, x)| self.layers[m + 1].1.forward(x))
                .collect::<Result<_>>()?,
            FusionKind::Film | FusionKind::Gated => (0..m_count)
                .map(|m| {
                    let only: Vec<Tensor> = f
                        .iter()
                        .enumerate()
                        .map(|(j, x)| {
                            if j == m {
                                Ok(x.clone())
                            } else {
                                x.zeros_like()
                            }
                        })
                        .collect::<Result<_>>()?;
                    self.fused(&only)
                })
                .collect::<Result<_>>()?,
        };
        Ok(HeadOut { fused, unimodal })
    }
}
