//! Fused optimizer updates: one kernel launch per [`MAX_TENSORS`] parameters, each element read
//! and written once, instead of about ten candle ops per parameter. The parameter and its state
//! are updated in place.

use super::{launch, LaunchConfig};
use crate::ParamUpdate;
use candle_core::cuda_backend::cudarc::driver::DeviceRepr;
use candle_core::{bail, Result, Tensor};

/// Tensors per launch; must equal `MMBAL_TENSORS` in kernels.cu.
const MAX_TENSORS: usize = 24;

/// The kernel's `TensorList`, passed by value.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TensorList {
    param: [u64; MAX_TENSORS],
    grad: [u64; MAX_TENSORS],
    state1: [u64; MAX_TENSORS],
    state2: [u64; MAX_TENSORS],
    len: [u64; MAX_TENSORS],
    lr: [f32; MAX_TENSORS],
}

// SAFETY: plain old data with the C layout of the kernel's struct.
unsafe impl DeviceRepr for TensorList {}

/// The launch over a `TensorList` of `tensors` tensors, the largest `most` elements: one row of
/// blocks per tensor (`blockIdx.y`), grid-stride within it.
fn list_grid(most: usize, tensors: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (most.div_ceil(256).min(264) as u32, tensors as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The device address of a parameter, gradient or state tensor (`cuda::tensor_ptr`; the
/// kernels write the parameter and its state in place).
fn address(t: &Tensor, what: &str) -> Result<u64> {
    super::tensor_ptr("fused optimizer", t, what)
}

/// Calls `launch_group` with each group of at most [`MAX_TENSORS`] updates as a `TensorList`
/// (`states` state slots filled per parameter) and a grid of one row of blocks per tensor.
fn run<F>(updates: &[ParamUpdate], states: usize, mut launch_group: F) -> Result<()>
where
    F: FnMut(&candle_core::cuda_backend::CudaDevice, TensorList, LaunchConfig) -> Result<()>,
{
    let Some(first) = updates.first() else {
        return Ok(());
    };
    let candle_core::Device::Cuda(dev) = first.param.device() else {
        bail!("fused optimizer: parameters are not on a CUDA device");
    };
    for group in updates.chunks(MAX_TENSORS) {
        let mut list = TensorList::default();
        let mut most = 1;
        for (j, u) in group.iter().enumerate() {
            let n = u.param.elem_count();
            if u.grad.elem_count() != n {
                bail!(
                    "fused optimizer: gradient {:?} for parameter {:?}",
                    u.grad.shape(),
                    u.param.shape()
                );
            }
            list.param[j] = address(u.param, "parameter")?;
            list.grad[j] = address(u.grad, "gradient")?;
            for (k, slot) in [&mut list.state1, &mut list.state2]
                .into_iter()
                .enumerate()
                .take(states)
            {
                let Some(s) = u.state[k] else {
                    bail!(
                        "fused optimizer: parameter {:?} has no state {k}",
                        u.param.shape()
                    );
                };
                if s.elem_count() != n {
                    bail!(
                        "fused optimizer: state {:?} for parameter {:?}",
                        s.shape(),
                        u.param.shape()
                    );
                }
                slot[j] = address(s, "optimizer state")?;
            }
            list.len[j] = n as u64;
            list.lr[j] = u.lr as f32;
            most = most.max(n);
        }
        let cfg = list_grid(most, group.len());
        launch_group(dev, list, cfg)?;
    }
    Ok(())
}

/// For each tensor, whether it holds a NaN or an infinity: one launch per [`MAX_TENSORS`] tensors
/// and one copy of the flags to the host.
pub(crate) fn non_finite(tensors: &[&Tensor]) -> Result<Vec<bool>> {
    let Some(first) = tensors.first() else {
        return Ok(Vec::new());
    };
    let candle_core::Device::Cuda(dev) = first.device() else {
        bail!("finite check: tensors are not on a CUDA device");
    };
    let flags = dev.alloc_zeros::<i32>(tensors.len())?;
    let base = super::slice_ptr(&flags);
    for (g, group) in tensors.chunks(MAX_TENSORS).enumerate() {
        let mut list = TensorList::default();
        let mut most = 1;
        for (j, t) in group.iter().enumerate() {
            list.param[j] = address(t, "tensor")?;
            list.len[j] = t.elem_count() as u64;
            most = most.max(t.elem_count());
        }
        let cfg = list_grid(most, group.len());
        let at = base + 4 * (g * MAX_TENSORS) as u64;
        launch!(dev, "mmbal_nonfinite", cfg, list, at);
    }
    Ok(dev
        .clone_dtoh(&flags)?
        .into_iter()
        .map(|f| f != 0)
        .collect())
}

pub(crate) fn sgd(updates: &[ParamUpdate], momentum: f64, weight_decay: f64) -> Result<()> {
    let states = usize::from(momentum != 0.0);
    run(updates, states, |dev, list, cfg| {
        launch!(
            dev,
            "mmbal_sgd_step",
            cfg,
            list,
            momentum as f32,
            weight_decay as f32,
            0i32
        );
        Ok(())
    })
}

pub(crate) fn adam(
    updates: &[ParamUpdate],
    (b1, b2): (f64, f64),
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    step: i32,
) -> Result<()> {
    let bc1 = 1.0 - b1.powi(step);
    let sqrt_bc2 = (1.0 - b2.powi(step)).sqrt();
    run(updates, 2, |dev, list, cfg| {
        launch!(
            dev,
            "mmbal_adam_step",
            cfg,
            list,
            b1 as f32,
            b2 as f32,
            eps as f32,
            weight_decay as f32,
            i32::from(decoupled),
            bc1 as f32,
            sqrt_bc2 as f32
        );
        Ok(())
    })
}
