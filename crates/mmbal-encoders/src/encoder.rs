//! The [`Encoder`] trait: a network run stage by stage (so blocks such as MMTM can be inserted
//! between stages), then pooled to one feature vector per sample.

use candle_core::{bail, Result, Tensor, Var};

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
    /// Trainable parameters with stable (torchvision-style) names.
    fn params(&self) -> Vec<(String, Var)>;
    /// Non-trainable state (BatchNorm running statistics) by name.
    fn buffers(&self) -> Vec<(String, Tensor)>;
    /// Restores one buffer written by [`Encoder::buffers`].
    fn set_buffer(&self, name: &str, value: Tensor) -> Result<()>;

    /// The 4-D convolution kernels (what OGM-GE modulates).
    fn conv_kernels(&self) -> Vec<Var> {
        self.params()
            .into_iter()
            .filter(|(_, v)| v.rank() == 4)
            .map(|(_, v)| v)
            .collect()
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
/// `(N, C)`.
pub fn pool_map(map: &Tensor, frames: usize) -> Result<Tensor> {
    let (nt, c, _, _) = map.dims4()?;
    let f = map.mean(3)?.mean(2)?;
    if frames == 1 {
        return Ok(f);
    }
    f.reshape((nt / frames, frames, c))?.mean(1)
}
