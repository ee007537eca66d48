//! PyTorch's SGD, Adam and AdamW, step for step.
//!
//! * SGD: `g += wd * p`; momentum buffer `b = g` at the first step, then `b = mu * b + g`
//!   (no dampening, no Nesterov); `p -= lr * b`.
//! * Adam: `g += wd * p` (L2 into the gradient); `m = b1 m + (1 - b1) g`,
//!   `v = b2 v + (1 - b2) g^2`; `p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`
//!   (PyTorch's form: `sqrt(v) / sqrt(1 - b2^t) + eps`).
//! * AdamW: as Adam without L2, and `p *= 1 - lr * wd` first (decoupled decay).

use candle_core::backprop::GradStore;
use candle_core::{bail, Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// An optimizer over a fixed list of parameters, stepped as PyTorch's (see the module docs).
pub trait Optimizer: Send {
    /// One update of every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The learning rate the next step uses.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate (the trainer does, per the schedule, at the start of each epoch).
    fn set_learning_rate(&mut self, lr: f64);
    /// Per-parameter factors on the learning rate, in the order of the parameters the
    /// optimizer was built over (PyTorch's parameter groups with their own `lr`: a group's rate
    /// is its factor times the scheduled rate, decoupled weight decay included). All 1 until set.
    fn set_lr_scales(&mut self, scales: Vec<f64>) -> Result<()>;
    /// Per-parameter state (momentum buffers, moments, step counts) by name, for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores what [`Optimizer::state`] wrote.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    /// Drops every per-parameter state, as a new PyTorch optimizer over the same parameters
    /// (a staged method's new stage); the learning rate and its factors stay.
    fn reset(&mut self);
}

/// An optimizer as a config names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// `kind = "sgd"`: SGD with optional momentum and L2 weight decay.
    Sgd {
        /// Base learning rate, before the schedule.
        lr: f64,
        /// Momentum factor, no dampening or Nesterov (default 0: plain SGD).
        #[serde(default)]
        momentum: f64,
        /// L2 coefficient, added to the gradient as `weight_decay * p` (default 0).
        #[serde(default)]
        weight_decay: f64,
    },
    /// `kind = "adam"`: Adam, with weight decay as an L2 term in the gradient.
    Adam {
        /// Base learning rate, before the schedule.
        lr: f64,
        /// L2 coefficient, added to the gradient as `weight_decay * p` (default 0).
        #[serde(default)]
        weight_decay: f64,
        /// `[beta1, beta2]` (PyTorch's default `[0.9, 0.999]`; PMR's reference uses 0.99).
        #[serde(default = "adam_betas")]
        betas: [f64; 2],
        /// Added to the bias-corrected `sqrt(v)` in the denominator (default 1e-8).
        #[serde(default = "adam_eps")]
        eps: f64,
    },
    /// `kind = "adamw"`: Adam with decoupled weight decay.
    Adamw {
        /// Base learning rate, before the schedule.
        lr: f64,
        /// Decoupled decay, `p *= 1 - lr * weight_decay` before each update (default 0.01).
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
        /// `[beta1, beta2]` (default `[0.9, 0.999]`).
        #[serde(default = "adam_betas")]
        betas: [f64; 2],
        /// Added to the bias-corrected `sqrt(v)` in the denominator (default 1e-8).
        #[serde(default = "adam_eps")]
        eps: f64,
    },
}

fn adamw_decay() -> f64 {
    0.01
}

fn adam_betas() -> [f64; 2] {
    [0.9, 0.999]
}

fn adam_eps() -> f64 {
    1e-8
}

impl Default for OptimizerConfig {
    /// The field's testbed: SGD(lr 1e-3, momentum 0.9, weight decay 1e-4).
    fn default() -> Self {
        OptimizerConfig::Sgd {
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 1e-4,
        }
    }
}

impl OptimizerConfig {
    /// The base learning rate, before the schedule.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::Adamw { lr, .. } => *lr,
        }
    }
    /// The optimizer this config names, over `params`.
    pub fn build(&self, params: Vec<Var>) -> Box<dyn Optimizer> {
        match *self {
            OptimizerConfig::Sgd {
                lr,
                momentum,
                weight_decay,
            } => Box::new(Sgd::new(params, lr, momentum, weight_decay)),
            OptimizerConfig::Adam {
                lr,
                weight_decay,
                betas,
                eps,
            }
            | OptimizerConfig::Adamw {
                lr,
                weight_decay,
                betas,
                eps,
            } => Box::new(Adam {
                betas: (betas[0], betas[1]),
                eps,
                decoupled: matches!(self, OptimizerConfig::Adamw { .. }),
                ..Adam::new(params, lr, weight_decay)
            }),
        }
    }
}

fn restore(state: &HashMap<String, Tensor>, key: &str, like: &Var) -> Result<Option<Tensor>> {
    match state.get(key) {
        None => Ok(None),
        Some(t) if t.dims() == like.dims() => Ok(Some(t.to_device(like.device())?)),
        Some(t) => bail!(
            "optimizer state `{key}` has shape {:?}, parameter {:?}",
            t.dims(),
            like.dims()
        ),
    }
}

/// `scales` when there is one finite, non-negative factor per parameter.
fn checked_scales(scales: Vec<f64>, params: usize) -> Result<Vec<f64>> {
    if scales.len() != params {
        candle_core::bail!(
            "{} learning-rate factors for {params} parameters",
            scales.len()
        );
    }
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
        candle_core::bail!("learning-rate factor {s}: factors are finite and not negative");
    }
    Ok(scales)
}

/// Whether the fused CUDA update serves `params`: all f32 on a CUDA device, with mmbal-ops built
/// for CUDA. Elsewhere the composed candle ops run (bitwise what the CPU tests and resumes check).
fn fused(params: &[Var]) -> bool {
    cfg!(feature = "cuda")
        && params
            .iter()
            .all(|p| p.device().is_cuda() && p.dtype() == candle_core::DType::F32)
        && !params.is_empty()
}

/// PyTorch's SGD: momentum without dampening or Nesterov, L2 weight decay in the gradient.
pub struct Sgd {
    params: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
    lr_scales: Vec<f64>,
    /// Learning rate of the next step.
    pub lr: f64,
    /// Momentum factor; 0 keeps no buffers.
    pub momentum: f64,
    /// L2 coefficient, added to the gradient as `weight_decay * p`.
    pub weight_decay: f64,
}

impl Sgd {
    /// SGD over `params`, with no momentum buffers yet (the first step's gradient starts them).
    pub fn new(params: Vec<Var>, lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        let buffers = vec![None; params.len()];
        Sgd {
            lr_scales: vec![1.0; params.len()],
            params,
            buffers,
            lr,
            momentum,
            weight_decay,
        }
    }
}

impl Sgd {
    /// The same update on CUDA as one fused kernel per 24 parameters (`mmbal_ops::fused_sgd`);
    /// a new momentum buffer starts at zeros, so the first step's `b = 0 * m + g` is `g` exactly.
    fn step_fused(&mut self, grads: &GradStore) -> Result<()> {
        let mut taken = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if self.momentum != 0.0 && self.buffers[i].is_none() {
                self.buffers[i] = Some(p.as_tensor().zeros_like()?);
            }
            taken.push((i, g.detach().contiguous()?));
        }
        let updates: Vec<mmbal_ops::ParamUpdate> = taken
            .iter()
            .map(|(i, g)| mmbal_ops::ParamUpdate {
                param: self.params[*i].as_tensor(),
                grad: g,
                state: [self.buffers[*i].as_ref(), None],
                lr: self.lr * self.lr_scales[*i],
            })
            .collect();
        mmbal_ops::fused_sgd(&updates, self.momentum, self.weight_decay)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        if fused(&self.params) {
            return self.step_fused(grads);
        }
        for ((p, buf), scale) in self
            .params
            .iter()
            .zip(self.buffers.iter_mut())
            .zip(&self.lr_scales)
        {
            let Some(g) = grads.get(p) else { continue };
            // Detached: state kept across steps must not hold autograd graphs (it would chain
            // every step's graph to the next and grow without bound).
            let mut g = g.detach();
            let value = p.as_tensor().detach();
            if self.weight_decay != 0.0 {
                g = (g + (&value * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => g,
                    Some(b) => ((b * self.momentum)? + g)?,
                };
                g = b.clone();
                *buf = Some(b);
            }
            p.set(&(value - (g * (self.lr * scale))?)?)?;
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn set_lr_scales(&mut self, scales: Vec<f64>) -> Result<()> {
        self.lr_scales = checked_scales(scales, self.params.len())?;
        Ok(())
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        self.buffers
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (format!("momentum.{i}"), b.clone())))
            .collect()
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            self.buffers[i] = restore(state, &format!("momentum.{i}"), p)?;
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.buffers.iter_mut().for_each(|b| *b = None);
    }
}

/// PyTorch's Adam, or AdamW when `decoupled`; moments and step counts kept per parameter.
pub struct Adam {
    params: Vec<Var>,
    moments: Vec<Option<(Tensor, Tensor)>>,
    steps: Vec<i32>,
    lr_scales: Vec<f64>,
    /// Learning rate of the next step.
    pub lr: f64,
    /// `(beta1, beta2)`: decay rates of the first and second moment estimates.
    pub betas: (f64, f64),
    /// Added to the bias-corrected `sqrt(v)` in the denominator.
    pub eps: f64,
    /// Weight decay: an L2 term in the gradient, or decoupled when `decoupled`.
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay instead of Adam's L2 term.
    pub decoupled: bool,
}

impl Adam {
    /// Adam over `params`, with PyTorch's defaults: betas `(0.9, 0.999)`, eps 1e-8.
    pub fn new(params: Vec<Var>, lr: f64, weight_decay: f64) -> Adam {
        let n = params.len();
        Adam {
            params,
            moments: vec![None; n],
            steps: vec![0; n],
            lr_scales: vec![1.0; n],
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay,
            decoupled: false,
        }
    }
    /// AdamW (decoupled weight decay) over `params`, with Adam's defaults otherwise.
    pub fn adamw(params: Vec<Var>, lr: f64, weight_decay: f64) -> Adam {
        Adam {
            decoupled: true,
            ..Adam::new(params, lr, weight_decay)
        }
    }
}

impl Adam {
    /// The same update on CUDA as one fused kernel per 24 parameters of equal step count
    /// (`mmbal_ops::fused_adam`); moments start at zeros as in the composed path.
    fn step_fused(&mut self, grads: &GradStore) -> Result<()> {
        let mut by_step: std::collections::BTreeMap<i32, Vec<(usize, Tensor)>> = Default::default();
        for (i, p) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p) else { continue };
            if self.moments[i].is_none() {
                let p = p.as_tensor();
                self.moments[i] = Some((p.zeros_like()?, p.zeros_like()?));
            }
            self.steps[i] += 1;
            by_step
                .entry(self.steps[i])
                .or_default()
                .push((i, g.detach().contiguous()?));
        }
        for (t, taken) in by_step {
            let updates: Vec<mmbal_ops::ParamUpdate> = taken
                .iter()
                .map(|(i, g)| {
                    let (m, v) = self.moments[*i].as_ref().expect("moments set above");
                    mmbal_ops::ParamUpdate {
                        param: self.params[*i].as_tensor(),
                        grad: g,
                        state: [Some(m), Some(v)],
                        lr: self.lr * self.lr_scales[*i],
                    }
                })
                .collect();
            mmbal_ops::fused_adam(
                &updates,
                self.betas,
                self.eps,
                self.weight_decay,
                self.decoupled,
                t,
            )?;
        }
        Ok(())
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        if fused(&self.params) {
            return self.step_fused(grads);
        }
        let (b1, b2) = self.betas;
        for (((p, mom), t), scale) in self
            .params
            .iter()
            .zip(self.moments.iter_mut())
            .zip(self.steps.iter_mut())
            .zip(&self.lr_scales)
        {
            let Some(g) = grads.get(p) else { continue };
            let lr = self.lr * scale;
            // Detached, as in SGD: moments must not hold autograd graphs.
            let mut g = g.detach();
            let mut value = p.as_tensor().detach();
            if self.decoupled {
                value = (value * (1.0 - lr * self.weight_decay))?;
            } else if self.weight_decay != 0.0 {
                g = (g + (&value * self.weight_decay)?)?;
            }
            *t += 1;
            let (m, v) = match mom.take() {
                None => (g.zeros_like()?, g.zeros_like()?),
                Some(mv) => mv,
            };
            let m = ((m * b1)? + (&g * (1.0 - b1))?)?;
            let v = ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let bc1 = 1.0 - b1.powi(*t);
            let bc2 = 1.0 - b2.powi(*t);
            let denom = ((v.sqrt()? / bc2.sqrt())? + self.eps)?;
            let update = ((&m / denom)? * (lr / bc1))?;
            p.set(&(value - update)?)?;
            *mom = Some((m, v));
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn set_lr_scales(&mut self, scales: Vec<f64>) -> Result<()> {
        self.lr_scales = checked_scales(scales, self.params.len())?;
        Ok(())
    }
    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, (mv, t)) in self.moments.iter().zip(&self.steps).enumerate() {
            if let Some((m, v)) = mv {
                out.push((format!("exp_avg.{i}"), m.clone()));
                out.push((format!("exp_avg_sq.{i}"), v.clone()));
                let step = Tensor::new(&[*t as f32], m.device()).expect("scalar tensor");
                out.push((format!("step.{i}"), step));
            }
        }
        out
    }
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            let m = restore(state, &format!("exp_avg.{i}"), p)?;
            let v = restore(state, &format!("exp_avg_sq.{i}"), p)?;
            (self.moments[i], self.steps[i]) = match (m, v, state.get(&format!("step.{i}"))) {
                (Some(m), Some(v), Some(t)) => {
                    (Some((m, v)), t.flatten_all()?.to_vec1::<f32>()?[0] as i32)
                }
                (None, None, None) => (None, 0),
                _ => bail!("optimizer state of parameter {i} is incomplete"),
            };
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.moments.iter_mut().for_each(|m| *m = None);
        self.steps.iter_mut().for_each(|t| *t = 0);
    }
}

#[cfg(test)]
mod betas_tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn adam_betas_and_eps_from_the_config() {
        let cfg: OptimizerConfig =
            toml::from_str("kind = \"adam\"\nlr = 0.1\nbetas = [0.5, 0.9]\neps = 0.001").unwrap();
        let p = Var::new(&[1.0f32], &Device::Cpu).unwrap();
        let mut opt = cfg.build(vec![p.clone()]);
        // Two steps with gradients 1 then 3, by hand in f64 (PyTorch's form).
        let (b1, b2, eps, lr) = (0.5f64, 0.9f64, 1e-3, 0.1);
        let (mut m, mut v, mut x) = (0.0f64, 0.0f64, 1.0f64);
        for (t, g) in [(1, 1.0f64), (2, 3.0)] {
            let loss = (p.as_tensor() * g).unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let denom = v.sqrt() / (1.0 - b2.powi(t)).sqrt() + eps;
            x -= lr * (m / (1.0 - b1.powi(t))) / denom;
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - x).abs() < 1e-6, "{got} vs {x}");
        // The defaults are PyTorch's.
        let d: OptimizerConfig = toml::from_str("kind = \"adam\"\nlr = 0.1").unwrap();
        assert!(matches!(d, OptimizerConfig::Adam { betas: [0.9, 0.999], eps, .. } if eps == 1e-8));
    }
}

#[cfg(test)]
mod lr_scale_tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Three parameters stepped once with gradient 1 (loss = sum of all), factors 1, 0.5, 0.
    fn stepped(cfg: &str) -> Vec<f32> {
        let cfg: OptimizerConfig = toml::from_str(cfg).unwrap();
        let ps: Vec<Var> = (0..3)
            .map(|_| Var::new(&[1.0f32], &Device::Cpu).unwrap())
            .collect();
        let mut opt = cfg.build(ps.clone());
        opt.set_lr_scales(vec![1.0, 0.5, 0.0]).unwrap();
        let loss = ps
            .iter()
            .map(|p| p.as_tensor().sum_all().unwrap())
            .reduce(|a, b| (a + b).unwrap())
            .unwrap();
        opt.step(&loss.backward().unwrap()).unwrap();
        ps.iter()
            .map(|p| p.as_tensor().to_vec1::<f32>().unwrap()[0])
            .collect()
    }

    #[test]
    fn each_parameter_steps_at_its_factor_of_the_rate() {
        // SGD with decay: p -= lr * s * (g + wd p).
        let sgd = stepped("kind = \"sgd\"\nlr = 0.1\nweight_decay = 0.5");
        assert_eq!(sgd, vec![1.0 - 0.1 * 1.5, 1.0 - 0.05 * 1.5, 1.0]);
        // AdamW: the decoupled decay and the step both follow the factor; the first Adam step
        // moves by lr * s (m / bc1 = g, sqrt(v / bc2) = |g|).
        let adamw = stepped("kind = \"adamw\"\nlr = 0.1\nweight_decay = 0.5");
        let want = |s: f64| ((1.0 - 0.1 * s * 0.5) - 0.1 * s * (1.0 / (1.0 + 1e-8))) as f32;
        for (got, s) in adamw.iter().zip([1.0, 0.5, 0.0]) {
            assert!((got - want(s)).abs() < 1e-6, "{got} vs {}", want(s));
        }
        assert_eq!(adamw[2], 1.0);
        // One factor per parameter, finite and not negative.
        let mut opt =
            OptimizerConfig::default().build(vec![Var::new(&[1.0f32], &Device::Cpu).unwrap()]);
        assert!(opt.set_lr_scales(vec![1.0, 1.0]).is_err());
        assert!(opt.set_lr_scales(vec![-1.0]).is_err());
        assert!(opt.set_lr_scales(vec![f64::NAN]).is_err());
    }
}
