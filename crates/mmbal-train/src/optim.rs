//! PyTorch's SGD, Adam and AdamW, step for step.
//!
//! * SGD: `g += wd * p`; momentum buffer `b = g` at the first step, then `b = mu * b + g`
//!   (no dampening, no Nesterov); `p -= lr * b`.
//! * Adam: `g += wd * p` (L2 into the gradient); `m = b1 m + (1 - b1) g`,
//!   `v = b2 v + (1 - b2) g^2`; `p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`
//!   (PyTorch's form: `sqrt(v) / sqrt(1 - b2^t) + eps`).
//! * AdamW: as Adam without L2, and `p *= 1 - lr * wd` first (decoupled decay).

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

pub trait Optimizer {
    /// One update of every parameter that has a gradient in `grads`.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    fn learning_rate(&self) -> f64;
    fn set_learning_rate(&mut self, lr: f64);
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
            let mut g = g.clone();
            if self.weight_decay != 0.0 {
                g = (g + (p.as_tensor() * self.weight_decay)?)?;
            }
            if self.momentum != 0.0 {
                let b = match buf.take() {
                    None => g,
                    Some(b) => ((b * self.momentum)? + g)?,
                };
                g = b.clone();
                *buf = Some(b);
            }
            p.set(&(p.as_tensor() - (g * self.lr)?)?)?;
        }
        Ok(())
    }
    fn learning_rate(&self) -> f64 {
        self.lr
    }
    fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
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
            let mut g = g.clone();
            let mut value = p.as_tensor().clone();
            if self.decoupled {
                value = (value * (1.0 - self.lr * self.weight_decay))?;
            } else if self.weight_decay != 0.0 {
                g = (g + (p.as_tensor() * self.weight_decay)?)?;
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
}
