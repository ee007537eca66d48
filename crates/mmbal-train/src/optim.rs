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

pub trait Optimizer: Send {
    /// One update of every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f64;
    fn set_learning_rate(&mut self, lr: f64);
    /// Per-parameter state (momentum buffers, moments, step counts) by name, for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores what [`Optimizer::state`] wrote.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// An optimizer as a config names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OptimizerConfig {
    Sgd {
        lr: f64,
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
    },
    Adam {
        lr: f64,
        #[serde(default)]
        weight_decay: f64,
        /// `[beta1, beta2]` (PyTorch's default `[0.9, 0.999]`; PMR's reference uses 0.99).
        #[serde(default = "adam_betas")]
        betas: [f64; 2],
        #[serde(default = "adam_eps")]
        eps: f64,
    },
    Adamw {
        lr: f64,
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
        #[serde(default = "adam_betas")]
        betas: [f64; 2],
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
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. }
            | OptimizerConfig::Adam { lr, .. }
            | OptimizerConfig::Adamw { lr, .. } => *lr,
        }
    }
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

pub struct Sgd {
    params: Vec<Var>,
    buffers: Vec<Option<Tensor>>,
    pub lr: f64,
    pub momentum: f64,
    pub weight_decay: f64,
}

impl Sgd {
    pub fn new(params: Vec<Var>, lr: f64, momentum: f64, weight_decay: f64) -> Sgd {
        let buffers = vec![None; params.len()];
        Sgd {
            params,
            buffers,
            lr,
            momentum,
            weight_decay,
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        for (p, buf) in self.params.iter().zip(self.buffers.iter_mut()) {
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
            p.set(&(value - (g * self.lr)?)?)?;
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
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
}

pub struct Adam {
    params: Vec<Var>,
    moments: Vec<Option<(Tensor, Tensor)>>,
    steps: Vec<i32>,
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW's decoupled weight decay instead of Adam's L2 term.
    pub decoupled: bool,
}

impl Adam {
    pub fn new(params: Vec<Var>, lr: f64, weight_decay: f64) -> Adam {
        let n = params.len();
        Adam {
            params,
            moments: vec![None; n],
            steps: vec![0; n],
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay,
            decoupled: false,
        }
    }
    pub fn adamw(params: Vec<Var>, lr: f64, weight_decay: f64) -> Adam {
        Adam {
            decoupled: true,
            ..Adam::new(params, lr, weight_decay)
        }
    }
}

impl Optimizer for Adam {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let (b1, b2) = self.betas;
        for ((p, mom), t) in self
            .params
            .iter()
            .zip(self.moments.iter_mut())
            .zip(self.steps.iter_mut())
        {
            let Some(g) = grads.get(p) else { continue };
            // Detached, as in SGD: moments must not hold autograd graphs.
            let mut g = g.detach();
            let mut value = p.as_tensor().detach();
            if self.decoupled {
                value = (value * (1.0 - self.lr * self.weight_decay))?;
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
            let update = ((&m / denom)? * (self.lr / bc1))?;
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
