//! # mmbal-train
//!
//! The training loop ([`Trainer`]) that composes a dataset, a [`mmbal_fusion::MultimodalModel`]
//! and a [`mmbal_methods::BalanceMethod`], with the pieces it needs, each usable alone:
//! PyTorch-exact optimizers ([`optim`]), per-epoch schedules ([`schedule`]), metrics
//! ([`metrics`]), safetensors checkpoints ([`checkpoint`]) and the TOML config ([`config`]).
//! The gradient store is passed to the optimizer, so a method can read, rescale or noise any
//! gradient between `backward()` and `step()`.
//!
//! ```
//! use candle_core::{Device, Tensor, Var};
//! use mmbal_train::optim::{Optimizer, Sgd};
//! let w = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
//! let mut opt = Sgd::new(vec![w.clone()], 0.1, 0.9, 0.0);
//! let loss = w.as_tensor().sqr().unwrap().sum_all().unwrap(); // gradient 2w
//! let grads = loss.backward().unwrap();
//! opt.step(&grads).unwrap();
//! assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), vec![0.8, -1.6]);
//! ```

#![warn(missing_docs)]

mod assemble;
pub mod checkpoint;
mod checkpointer;
pub mod config;
pub mod cost;
pub mod features;
pub mod loss_scale;
pub mod metrics;
mod monitor;
pub mod optim;
pub mod plots;
pub mod probe;
pub mod robustness;
mod run_folder;
mod run_log;
pub mod schedule;
mod step;
mod teachers;
pub mod tensorboard;
mod trainer;
pub use assemble::parse_device;
pub use config::{Precision, Selection, TrainConfig};
pub use run_log::{
    read_log, read_summary, EpochRecord, Events, LossScaleRecord, Quiet, RunSummary, SplitMetrics,
};
pub use step::{train_step, train_step_scaled, StepInputs, StepReport};
pub use teachers::{teacher_configs, train_teachers};
pub use trainer::Trainer;
