//! AMCo (Zhou et al., 2023), as BalanceBenchmark implements it (`balancemm/trainer/
//! AMCo_trainer.py` and `BaseClassifierAMCoModel` in `balancemm/models/avclassify_model.py`,
//! GeWu-Lab/BalanceBenchmark at 4c1482f; no code of the authors was found): the prediction is a
//! learned `C x C` layer over the sum of the modalities' logits (the concat head's slices); a
//! modality found dominant in the previous step has its logits multiplied by a class mask whose
//! share of zeros grows within each epoch; the loss adds each modality's cross-entropy.
//! docs/methods/amco.md has the details.

use crate::{BalanceMethod, EpochCtx, Prediction, Requirements, StepCtx};
use anyhow::{bail, Result};
use candle_core::{DType, Module, Tensor, Var, D};
use candle_nn::Linear;
use mmbal_encoders::ModelVars;
use mmbal_fusion::{linear, ForwardOut, FusionHead, FusionKind, LinearInit, MultimodalModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    /// A modality is dominant when its share of the softmax over all modalities' logits,
    /// averaged over the batch, exceeds this.
    sigma: f64,
    /// The mask's share of zeros reaches 1 when the within-epoch counter reaches `eps`.
    eps: f64,
    /// The masking runs in epochs `start_epoch..=end_epoch` (0-based).
    start_epoch: usize,
    end_epoch: usize,
    /// Seed of the `C x C` layer's initial weights and of the masks (the masks mixed with the
    /// run's seed and the step).
    seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sigma: 0.5,
            eps: 0.3,
            start_epoch: 0,
            end_epoch: 80,
            seed: 0,
        }
    }
}

/// What one AMCo forward gives.
pub struct AmcoOut {
    /// `linear_star(sum_m unimodal_m)`, the prediction.
    pub output: Tensor,
    /// Each modality's logits after its mask.
    pub unimodal: Vec<Tensor>,
}

/// `BaseClassifierAMCoModel`'s forward from pooled features: each modality's concat-head slice
/// `f_m W_m^T + b / M`, multiplied by `masks[m]` (a `(C,)` class mask) where given, summed, and
/// passed through the `C x C` layer `star`.
pub fn amco_forward(
    head: &FusionHead,
    star: &Linear,
    features: &[Tensor],
    masks: &[Option<Tensor>],
) -> Result<AmcoOut> {
    let out = head.forward(features, None)?;
    let mut unimodal = Vec::with_capacity(out.unimodal.len());
    for (u, mask) in out.unimodal.into_iter().zip(masks) {
        unimodal.push(match mask {
            Some(m) => u.broadcast_mul(&m.unsqueeze(0)?)?,
            None => u,
        });
    }
    let mut sum = unimodal[0].clone();
    for u in &unimodal[1..] {
        sum = (sum + u)?;
    }
    Ok(AmcoOut {
        output: star.forward(&sum)?,
        unimodal,
    })
}

/// The next step's dominance flags: softmax over the concatenated `(B, M C)` logits; modality
/// m is dominant when its block's probability, summed and divided by B, exceeds `sigma`.
pub fn amco_dominant(unimodal: &[Tensor], sigma: f64) -> Result<Vec<bool>> {
    let all = Tensor::cat(unimodal, 1)?.detach();
    let p = candle_nn::ops::softmax(&all, D::Minus1)?;
    let b = p.dim(0)? as f64;
    let mut start = 0;
    let mut out = Vec::with_capacity(unimodal.len());
    for u in unimodal {
        let c = u.dim(1)?;
        let share = p
            .narrow(1, start, c)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            / b;
        out.push(share > sigma);
        start += c;
    }
    Ok(out)
}

struct Amco {
    opts: Options,
    vars: ModelVars,
    star: Option<Linear>,
    dominant: Vec<bool>,
    counter: f64,
    run_seed: u64,
    masked_steps: usize,
    steps: usize,
}

impl BalanceMethod for Amco {
    fn name(&self) -> &'static str {
        "amco"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Concat),
            ..Default::default()
        }
        .at_least(2)
    }

    fn options(&self) -> toml::Table {
        crate::options_table(self.name(), &self.opts)
    }

    /// The `C x C` layer, PyTorch's `nn.Linear` initialisation from the method's seed.
    fn prepare_model(&mut self, model: &mut MultimodalModel) -> Result<()> {
        let c = model.head.classes();
        let vb = self
            .vars
            .seeded(self.opts.seed, model.device())
            .pp("linear_star");
        self.star = Some(linear(c, c, LinearInit::Pytorch, vb)?);
        Ok(())
    }

    fn params(&self) -> Vec<(String, Var)> {
        self.vars.named()
    }

    /// The flags and the within-epoch counter start afresh (the reference's `train_loop`).
    fn epoch_plan(&mut self, ctx: &EpochCtx) -> Result<Option<Vec<mmbal_data::Row>>> {
        self.dominant = vec![false; ctx.model.num_modalities()];
        self.counter = 0.0;
        self.run_seed = ctx.seed;
        (self.masked_steps, self.steps) = (0, 0);
        Ok(None)
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let Some(star) = &self.star else {
            bail!("amco: prepare_model was not called");
        };
        if self.dominant.len() != out.features.len() {
            bail!("amco: epoch_plan was not called before the step");
        }
        let in_window = ctx.epoch >= self.opts.start_epoch && ctx.epoch <= self.opts.end_epoch;
        // The class mask of this step: `N = int(pt C)` zeros at shuffled places, `pt = sin(pi/2
        // min(eps, l) / eps)`; the counter grows by epoch / 10 per step.
        let classes = out.fused_logits.dim(1)?;
        let pt =
            (std::f64::consts::FRAC_PI_2 * self.counter.min(self.opts.eps) / self.opts.eps).sin();
        self.counter += ctx.epoch as f64 / 10.0;
        let zeros = (pt * classes as f64) as usize;
        let mut mask: Vec<f32> = (0..classes)
            .map(|i| if i < classes - zeros { 1.0 } else { 0.0 })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.opts.seed
                ^ self.run_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (ctx.step as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
        );
        for i in (1..classes).rev() {
            mask.swap(i, rng.random_range(0..=i));
        }
        let mask = Tensor::new(mask.as_slice(), ctx.labels.device())?;
        let masks: Vec<Option<Tensor>> = self
            .dominant
            .iter()
            .map(|&d| (in_window && d).then(|| mask.clone()))
            .collect();
        self.steps += 1;
        self.masked_steps += usize::from(masks.iter().any(|m| m.is_some()));
        let features = mmbal_fusion::mask_features(&out.features, ctx.keep)?;
        let a = amco_forward(&ctx.model.head, star, &features, &masks)?;
        let mut loss = candle_nn::loss::cross_entropy(&a.output, ctx.labels)?;
        if in_window {
            for u in &a.unimodal {
                loss = (loss + candle_nn::loss::cross_entropy(u, ctx.labels)?)?;
            }
            self.dominant = amco_dominant(&a.unimodal, self.opts.sigma)?;
        }
        Ok(loss)
    }

    /// The `C x C` layer over the sum of the (unmasked) logits: the concat head's fused logits.
    fn predict(&self, _model: &MultimodalModel, out: &ForwardOut) -> Result<Prediction> {
        let Some(star) = &self.star else {
            bail!("amco: prepare_model was not called");
        };
        Ok(Prediction::fused_from(
            out,
            star.forward(&out.fused_logits)?,
        ))
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        vec![(
            "amco_masked_steps".into(),
            self.masked_steps as f64 / self.steps.max(1) as f64,
        )]
    }
}

/// Builds `amco` from its options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = crate::parse_options("amco", options)?;
    if !(opts.eps.is_finite() && opts.eps > 0.0) {
        bail!("amco: eps = {} must be positive", opts.eps);
    }
    if !(0.0..=1.0).contains(&opts.sigma) {
        bail!("amco: sigma = {} must be in [0, 1]", opts.sigma);
    }
    Ok(Box::new(Amco {
        opts,
        vars: ModelVars::new(),
        star: None,
        dominant: Vec::new(),
        counter: 0.0,
        run_seed: 0,
        masked_steps: 0,
        steps: 0,
    }))
}
