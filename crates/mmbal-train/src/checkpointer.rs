//! A run's state in a checkpoint and back: model parameters and buffers, optimizer and method
//! state, the config and the progress; nothing non-finite is written or loaded. `last` is
//! written after every epoch and copied whole to `best` when the epoch is selected.

use crate::checkpoint::{self, Checkpoint};
use crate::step::all_finite;
use crate::Trainer;
use anyhow::{bail, Context, Result};
use candle_core::{Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// Copies `dir/last.safetensors` to `dir/best.safetensors` through a temporary file, so `best`
/// is never half written.
pub(crate) fn promote_last_to_best(dir: &Path) -> Result<()> {
    let (tmp, best) = (
        dir.join("best.safetensors.tmp"),
        dir.join("best.safetensors"),
    );
    std::fs::copy(dir.join("last.safetensors"), &tmp)
        .and_then(|_| std::fs::rename(&tmp, &best))
        .with_context(|| format!("{}: cannot write", best.display()))?;
    Ok(())
}

/// Sets every variable of `named` from the checkpoint section `saved`: each must be there, with
/// the variable's shape and finite values (`what` names the kind in errors).
fn restore_params(
    saved: &HashMap<String, Tensor>,
    named: Vec<(String, Var)>,
    what: &str,
) -> Result<()> {
    for (name, var) in named {
        let t = saved
            .get(&name)
            .with_context(|| format!("no {what} `{name}`"))?;
        if t.dims() != var.dims() {
            bail!(
                "{what} `{name}`: shape {:?} in the checkpoint, {:?} expected",
                t.dims(),
                var.dims()
            );
        }
        if !all_finite(t)? {
            bail!("{what} `{name}` holds NaN or infinite values");
        }
        var.set(&t.to_device(var.device())?)?;
    }
    Ok(())
}

/// Adds `t` as `<section>.<name>` to the tensors of the checkpoint at `path`, or refuses the
/// whole checkpoint when `t` holds NaN or an infinity (`what` names the kind in the error).
fn push_finite(
    tensors: &mut Vec<(String, Tensor)>,
    path: &Path,
    what: &str,
    section: &str,
    name: String,
    t: &Tensor,
) -> Result<()> {
    if !all_finite(t)? {
        bail!(
            "{}: not written, {what} `{name}` holds NaN or infinite values",
            path.display()
        );
    }
    tensors.push((format!("{section}.{name}"), t.clone()));
    Ok(())
}

impl Trainer {
    pub(crate) fn load_checkpoint(&mut self, ck: &Checkpoint) -> Result<()> {
        restore_params(&ck.section("model"), self.model.named_params(), "parameter")?;
        let bufs = ck.section("buffer");
        for (name, _) in self.model.buffers()? {
            if !bufs.contains_key(&name) {
                bail!("no buffer `{name}`");
            }
        }
        // Every saved buffer, also those a fresh model does not have yet (MMTM running means).
        for (name, t) in &bufs {
            self.model
                .set_buffer(name, t.to_device(self.model.device())?)?;
        }
        self.optimizer.load_state(&ck.section("optim"))?;
        self.method.load_state(&ck.section("method"))?;
        restore_params(
            &ck.section("method_param"),
            self.method.params(),
            "method parameter",
        )?;
        self.epochs_done = ck.meta("epochs_done")?.parse()?;
        self.step = ck.meta("step")?.parse()?;
        let lr: f64 = ck.meta("lr")?.parse()?;
        self.optimizer.set_learning_rate(lr);
        if let Some(scaler) = &mut self.scaler {
            scaler.load_meta(ck.meta("loss_scale")?)?;
        }
        Ok(())
    }

    /// Writes the model, optimizer and method state with the config and progress.
    /// Refuses (writes nothing) when a weight or buffer is not finite.
    pub fn save_checkpoint(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (n, v) in self.model.named_params() {
            push_finite(&mut tensors, path, "parameter", "model", n, v.as_tensor())?;
        }
        for (n, t) in self.model.buffers()? {
            push_finite(&mut tensors, path, "buffer", "buffer", n, &t)?;
        }
        for (n, t) in self.optimizer.state() {
            tensors.push((format!("optim.{n}"), t));
        }
        for (n, v) in self.method.params() {
            let t = v.as_tensor();
            push_finite(&mut tensors, path, "method parameter", "method_param", n, t)?;
        }
        for (n, t) in self.method.state()? {
            tensors.push((format!("method.{n}"), t));
        }
        let mut meta: HashMap<String, String> = [
            ("config", self.config.to_toml()),
            ("epochs_done", self.epochs_done.to_string()),
            ("step", self.step.to_string()),
            ("lr", self.optimizer.learning_rate().to_string()),
            ("method", self.method.name().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(scaler) = &self.scaler {
            meta.insert("loss_scale".into(), scaler.to_meta());
        }
        checkpoint::save(path, tensors, meta)
    }
}
