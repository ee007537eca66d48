//! One training step, the part of the loop that touches gradients: a train-mode forward, then
//! per backward pass of the method's [`StepPlan`] its loss, backward, the method's read-only look
//! and edits, a finite check, and the optimizer step.

use crate::loss_scale::LossScaler;
use crate::optim::Optimizer;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use mmbal_data::{Batch, Row};
use mmbal_fusion::{ForwardOut, MultimodalModel, ParamGroup};
use mmbal_methods::{BalanceMethod, Grads, StepCtx, StepIndex, StepPlan};

/// What one step trains on, on the model's device.
#[derive(Clone, Copy)]
pub struct StepInputs<'a> {
    /// One input per modality, `(B, ...)`.
    pub inputs: &'a [Tensor],
    /// `(B,)` u32 labels.
    pub labels: &'a Tensor,
    /// `(B, M)`: 1 = modality kept, 0 = zeroed.
    pub keep: &'a Tensor,
    /// The batch's rows (sample index, zeroed modalities); empty when there are none.
    pub rows: &'a [Row],
    /// Encoders held fixed (the method's [`mmbal_methods::Phase`]): eval mode in the forward,
    /// no step; empty when everything trains.
    pub frozen_encoders: &'a [usize],
}

/// One training step: a train-mode forward (frozen encoders in eval mode) with `keep` masking the
/// features, then for each backward pass of the method's [`StepPlan`]: the method's loss and one
/// backward (or the gradients the method computes itself, `step_gradients`), the method's read-only
/// look and edits, the finite check (the model's and the method's own parameters) and an optimizer
/// step. Returns the summed loss and the forward output.
pub fn train_step(
    model: &MultimodalModel,
    method: &mut dyn BalanceMethod,
    optimizer: &mut dyn Optimizer,
    batch: StepInputs,
    at: StepIndex,
) -> Result<(f64, ForwardOut)> {
    train_step_scaled(model, method, optimizer, batch, at, None)
}

/// [`train_step`] under dynamic loss scaling (bf16 mixed precision): the loss is scaled before
/// backward and the gradients unscaled before the method sees them; a backward pass whose
/// gradients are not finite takes no step (the method neither sees nor edits them) and halves
/// the scale. Gradients a method computes itself (`step_gradients`: OPM, MMPareto) are not
/// scaled and leave the scale alone: non-finite ones stop the run, as without a scaler.
pub fn train_step_scaled(
    model: &MultimodalModel,
    method: &mut dyn BalanceMethod,
    optimizer: &mut dyn Optimizer,
    batch: StepInputs,
    at: StepIndex,
    mut scaler: Option<&mut LossScaler>,
) -> Result<(f64, ForwardOut)> {
    let StepInputs {
        inputs,
        labels,
        keep,
        rows,
        frozen_encoders,
    } = batch;
    // A model that mixes modalities inside its encoders (MMTM) would pass a zeroed modality's
    // information on before the features are masked: its inputs are zeroed too.
    let masked;
    let inputs = if model.has_mixer() && keep.min_all()?.to_scalar::<f32>()? < 1.0 {
        masked = MultimodalModel::mask_inputs(inputs, keep)?;
        &masked[..]
    } else {
        inputs
    };
    let modes: Vec<bool> = (0..model.num_modalities())
        .map(|m| !frozen_encoders.contains(&m))
        .collect();
    let out = model.forward_modes(inputs, Some(keep), &modes)?;
    let frozen_params = frozen_encoders
        .iter()
        .map(|&m| model.group(ParamGroup::Encoder(m)))
        .collect::<Result<Vec<_>, _>>()?
        .concat();
    let turns: Vec<Option<usize>> = match method.step_plan() {
        StepPlan::Joint => vec![None],
        StepPlan::PerModality => (0..model.num_modalities()).map(Some).collect(),
    };
    let mut total = 0.0;
    for turn in turns {
        let ctx = StepCtx {
            epoch: at.epoch,
            step: at.step,
            batch: at.batch,
            batches: at.batches,
            model,
            labels,
            keep,
            inputs,
            rows,
            turn,
        };
        // A method that combines the gradients of several losses computes them itself.
        let custom = method.step_gradients(&ctx, &out)?;
        let loss = match &custom {
            Some((loss, _)) => loss.clone(),
            None => method.loss(&ctx, &out)?,
        };
        let at_step = || {
            let turn = turn
                .map(|m| format!(" ({} turn)", model.modalities[m]))
                .unwrap_or_default();
            format!(
                "epoch {}, batch {} of {}{turn}",
                at.epoch + 1,
                at.batch + 1,
                at.batches
            )
        };
        // The scaler drives only backward passes it scaled.
        let mut scaling = if custom.is_none() {
            scaler.as_deref_mut()
        } else {
            None
        };
        let mut grads = match (custom, scaling.as_deref()) {
            (Some((_, grads)), _) => grads,
            (None, None) => Grads {
                store: loss.backward()?,
            },
            (None, Some(scaler)) => {
                let mut store = scaler.scaled(&loss)?.backward()?;
                let own = method.params().into_iter().map(|(_, v)| v);
                let params: Vec<_> = model.params().into_iter().chain(own).collect();
                scaler.unscale(&mut store, &params)?;
                Grads { store }
            }
        };
        // Read after the backward is queued: on a GPU the host then waits for the forward
        // while the backward's kernels are already launched. Nothing has been stepped yet.
        let value = loss
            .sum_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            bail!("{}: the loss is {value}; no step was taken", at_step());
        }
        total += value;
        if let Some(scaler) = scaling.as_deref_mut() {
            if let Some(name) = first_non_finite_gradient(model, &*method, &grads, &frozen_params)?
            {
                scaler.skip(&format!("`{name}` ({})", at_step()))?;
                continue;
            }
        }
        method.observe_gradients(&ctx, &out, &grads)?;
        method.edit_gradients(&ctx, &out, &mut grads)?;
        for v in &frozen_params {
            grads.remove(v);
        }
        if let Some(name) = first_non_finite_gradient(model, &*method, &grads, &[])? {
            bail!(
                "{}: the gradient of `{name}` is not finite (loss {value}); no step was taken",
                at_step()
            );
        }
        optimizer.step(&grads.store)?;
        if let Some(scaler) = scaling {
            scaler.stepped();
        }
    }
    Ok((total, out))
}

/// The name of the first parameter (outside `except`) whose gradient holds a NaN or an infinity.
fn first_non_finite_gradient(
    model: &MultimodalModel,
    method: &dyn BalanceMethod,
    grads: &Grads,
    except: &[candle_core::Var],
) -> Result<Option<String>> {
    let own = method
        .params()
        .into_iter()
        .map(|(n, v)| (format!("method_param.{n}"), v));
    let mut names = Vec::new();
    let mut tensors = Vec::new();
    for (name, v) in model.named_params().into_iter().chain(own) {
        if except.iter().any(|e| e.id() == v.id()) {
            continue;
        }
        if let Some(g) = grads.get(&v) {
            names.push(name);
            tensors.push(g.clone());
        }
    }
    // One pass for all gradients (on CUDA one launch per 24 and a single copy to the host).
    let refs: Vec<&Tensor> = tensors.iter().collect();
    Ok(mmbal_ops::first_non_finite(&refs)?.map(|i| names.swap_remove(i)))
}

/// Whether every element is finite (`mmbal_ops::first_non_finite`, the check the step runs on
/// gradients).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(mmbal_ops::first_non_finite(&[t])?.is_none())
}

/// What one training step of [`crate::Trainer::train_step`] reports.
pub struct StepReport {
    /// Summed loss of the step's backward passes.
    pub loss: f64,
    /// Train-mode predictions: fused, then per modality.
    pub fused: Vec<u32>,
    /// Per modality (in the model's order), the train-mode predictions of its unimodal logits.
    pub unimodal: Vec<Vec<u32>>,
}

/// A loader batch's inputs, labels and keep mask on `dev`.
pub(crate) fn to_device(batch: &Batch, dev: &Device) -> Result<(Vec<Tensor>, Tensor, Tensor)> {
    let inputs = batch
        .inputs
        .iter()
        .map(|x| x.to_device(dev))
        .collect::<candle_core::Result<_>>()?;
    Ok((
        inputs,
        batch.labels.to_device(dev)?,
        batch.keep.to_device(dev)?,
    ))
}
