//! The [`Encoder`] trait: a network run stage by stage (so blocks such as MMTM can be inserted
//! between stages), then pooled to one feature vector per sample. An encoder is built from a
//! `VarBuilder` path, so its parameters' names are the builder's: the trait does not list them.

use crate::BatchNorm2d;
use candle_core::{bail, Result, Tensor, Var};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

/// An encoder split into stages. Frames `(N, T, C, H, W)` are folded into the batch before stage
/// 0 and averaged over T after pooling; `(N, C, H, W)` inputs pass straight through.
pub trait Encoder: Send + Sync {
    /// Width of the pooled feature.
    fn out_dim(&self) -> usize;
    /// Number of stages (ResNet-18: stem, layer1..layer4 = 5).
    fn num_stages(&self) -> usize;
    /// Channels of stage `i`'s output map (what a block between stages is built for).
    fn stage_channels(&self, i: usize) -> usize;
    /// Runs stage `i` on the output of stage `i - 1` (stage 0 takes the folded input).
    fn stage(&self, i: usize, x: &Tensor, train: bool) -> Result<Tensor>;
    /// The variables the forward pass updates itself (BatchNorm running statistics). They sit
    /// in the model's `VarMap` beside the parameters, under the names the layers gave them; no
    /// optimizer is given them.
    fn buffers(&self) -> Vec<Var>;

    /// The BatchNorm layers, for initialisation schemes that touch them (see
    /// [`init_batch_norm_weights`]).
    fn batch_norm_layers(&self) -> Vec<&BatchNorm2d> {
        Vec::new()
    }

    /// All stages then pooling: `(N, D)`.
    fn features(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mut y, frames) = fold_frames(x)?;
        for i in 0..self.num_stages() {
            y = self.stage(i, &y, train)?;
        }
        pool_map(&y, frames)
    }
}

/// `(N, T, C, H, W)` -> `((N*T, C, H, W), T)`; `(N, C, H, W)` -> `(x, 1)`.
pub fn fold_frames(x: &Tensor) -> Result<(Tensor, usize)> {
    match x.rank() {
        5 => {
            let (n, t, c, h, w) = x.dims5()?;
            Ok((x.reshape((n * t, c, h, w))?, t))
        }
        4 => Ok((x.clone(), 1)),
        r => bail!("encoder input must be (N, C, H, W) or (N, T, C, H, W), got rank {r}"),
    }
}

/// Mean over space, then over the `frames` that were folded into the batch: `(N*T, C, h, w)` ->
/// `(N, C)`, always f32 (a bf16 map of mixed precision is widened first, so the mean sums in
/// f32).
pub fn pool_map(map: &Tensor, frames: usize) -> Result<Tensor> {
    let (nt, c, _, _) = map.dims4()?;
    let wide;
    let map = if map.dtype() == candle_core::DType::F32 {
        map
    } else {
        wide = map.to_dtype(candle_core::DType::F32)?;
        &wide
    };
    let f = map.mean(3)?.mean(2)?;
    if frames == 1 {
        return Ok(f);
    }
    f.reshape((nt / frames, frames, c))?.mean(1)
}

/// Draws every BatchNorm weight of `encoder` from `N(mean, std)` (seeded; biases stay 0), as the
/// valuation paper's backbone does with `N(1, 0.02)`; the OGM-GE lineage keeps PyTorch's 1.
pub fn init_batch_norm_weights(
    encoder: &dyn Encoder,
    mean: f64,
    std: f64,
    seed: u64,
) -> Result<()> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = match Normal::new(mean, std) {
        Ok(n) => n,
        Err(e) => bail!("BatchNorm init N({mean}, {std}): {e}"),
    };
    let layers = encoder.batch_norm_layers();
    if layers.is_empty() {
        bail!("this encoder has no BatchNorm layers to initialise");
    }
    for bn in layers {
        let w = bn.weight.as_tensor();
        let data: Vec<f32> = (0..w.elem_count())
            .map(|_| normal.sample(&mut rng) as f32)
            .collect();
        bn.weight
            .set(&Tensor::from_vec(data, w.shape(), w.device())?)?;
    }
    Ok(())
}
