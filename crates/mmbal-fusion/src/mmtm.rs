//! MMTM, the multimodal transfer module (Vaezi Joze et al., CVPR 2020), between encoder stages of
//! two streams: squeeze each stream's map by its global mean (over frames and space), a shared
//! `Linear(C_a + C_b -> (C_a + C_b) / 2)` + ReLU, a per-stream `Linear` + sigmoid excitation, and a
//! channel-wise scaling of each stream (no factor 2, as in the reference). Greedy's curation
//! replaces one stream's excitation by its running mean; [`MeanRule`] says how that mean is kept
//! (by default as the reference's `balanced_mmtm.py` keeps it).

use crate::head::{linear, LinearInit};
use crate::model::StageMixer;
use candle_core::{bail, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use std::sync::Mutex;

/// How the running means of the excitations (the constants a curated stream gets) are kept.
/// The default is the reference (nyukat/greedy_multimodal_learning, `src/balanced_mmtm.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MeanRule {
    /// `true` (reference): every forward updates the means, evaluation passes and curated
    /// forwards included; `false`: training forwards only.
    pub every_forward: bool,
    /// `false` (reference): both means are taken from stream 0's excitation (the reference's
    /// `running_avg_weight_skeleton` line reads `vis_out`; it needs equal channel counts once
    /// stream 1 is curated); `true`: each stream's own excitation.
    pub own_stream: bool,
    /// `true` (reference): evaluation forwards run curated while a curation window is open, as
    /// the reference's val/test passes do; `false`: evaluation always uses live excitations.
    pub curate_evaluation: bool,
}

impl Default for MeanRule {
    fn default() -> Self {
        MeanRule {
            every_forward: true,
            own_stream: false,
            curate_evaluation: true,
        }
    }
}

/// One MMTM block for two streams of `ca` and `cb` channels.
pub struct Mmtm {
    /// The joint squeeze: both streams' pooled maps to the shared vector.
    pub squeeze: Linear,
    /// Per stream, the shared vector to that stream's channel gates.
    pub excite: [Linear; 2],
    /// Running means of the excitations (a cumulative mean over `count` forwards, see
    /// [`MeanRule`]) and the stream whose excitation is replaced by its mean (curation), if any.
    state: Mutex<MmtmState>,
}

struct MmtmState {
    running: [Option<Tensor>; 2],
    /// Forwards in the running means, kept as f32 so that checkpoints restore it exactly.
    count: f32,
    rule: MeanRule,
    curated: Option<usize>,
    probe: SqueezeProbe,
}

/// Eval-mode instrumentation of the squeeze vectors, for Greedy's conditional utilisation rate.
enum SqueezeProbe {
    Off,
    /// Sum of each stream's per-sample squeeze vectors and the number of samples.
    Record {
        sums: [Option<Tensor>; 2],
        n: usize,
    },
    /// Stream `m`'s squeeze replaced by a fixed `(C_m)` vector for every sample.
    Replace {
        stream: usize,
        value: Tensor,
    },
}

/// Per-sample global mean of a folded map `(B * T, C, H, W)` -> `(B, C)`.
fn squeeze(map: &Tensor, frames: usize) -> Result<Tensor> {
    let (bt, c, _, _) = map.dims4()?;
    map.mean(3)?
        .mean(2)?
        .reshape((bt / frames, frames, c))?
        .mean(1)
}

/// Channel-wise scaling of a folded map by a per-sample excitation `(B, C)`.
fn excite(map: &Tensor, e: &Tensor, frames: usize) -> Result<Tensor> {
    let (b, c) = e.dims2()?;
    let e = e
        .unsqueeze(1)?
        .broadcast_as((b, frames, c))?
        .reshape((b * frames, c, 1, 1))?;
    map.broadcast_mul(&e)
}

impl Mmtm {
    /// A block for streams of `ca` and `cb` channels; `squeeze`, `excite_a` and `excite_b`
    /// under `vb`'s path. The running means are not variables (they do not exist before the
    /// first forward, and their width follows the [`MeanRule`]): see [`Mmtm::buffers`].
    pub fn new(ca: usize, cb: usize, init: LinearInit, vb: VarBuilder) -> Result<Mmtm> {
        let cz = (ca + cb) / 2;
        Ok(Mmtm {
            squeeze: linear(ca + cb, cz, init, vb.pp("squeeze"))?,
            excite: [
                linear(cz, ca, init, vb.pp("excite_a"))?,
                linear(cz, cb, init, vb.pp("excite_b"))?,
            ],
            state: Mutex::new(MmtmState {
                running: [None, None],
                count: 0.0,
                rule: MeanRule::default(),
                curated: None,
                probe: SqueezeProbe::Off,
            }),
        })
    }

    /// How the running means are kept from now on.
    pub fn set_mean_rule(&self, rule: MeanRule) {
        self.state.lock().unwrap().rule = rule;
    }

    /// Replace stream `m`'s excitation by its running mean (`None`: normal operation).
    pub fn set_curation(&self, stream: Option<usize>) {
        self.state.lock().unwrap().curated = stream;
    }

    /// From now on, eval forwards add up each stream's squeeze vectors (see `squeeze_means`).
    pub fn record_squeeze(&self) {
        self.state.lock().unwrap().probe = SqueezeProbe::Record {
            sums: [None, None],
            n: 0,
        };
    }

    /// The mean squeeze vector `(C_m)` of each stream over the eval forwards since
    /// `record_squeeze`; stops recording.
    pub fn squeeze_means(&self) -> Result<[Tensor; 2]> {
        let mut st = self.state.lock().unwrap();
        match std::mem::replace(&mut st.probe, SqueezeProbe::Off) {
            SqueezeProbe::Record {
                sums: [Some(a), Some(b)],
                n,
            } => Ok([(a / n as f64)?, (b / n as f64)?]),
            _ => bail!("MMTM: no squeeze vectors recorded"),
        }
    }

    /// In eval forwards, replace stream `m`'s squeeze vector by `value` `(C_m)` for every sample
    /// (`None`: the live squeeze again).
    pub fn replace_squeeze(&self, replace: Option<(usize, Tensor)>) {
        self.state.lock().unwrap().probe = match replace {
            Some((stream, value)) => SqueezeProbe::Replace { stream, value },
            None => SqueezeProbe::Off,
        };
    }

    /// The excitations `(B, C_a)`, `(B, C_b)` of two maps.
    pub fn excitations(&self, a: &Tensor, b: &Tensor, frames: [usize; 2]) -> Result<[Tensor; 2]> {
        let s = [squeeze(a, frames[0])?, squeeze(b, frames[1])?];
        self.excite_from(s)
    }

    fn excite_from(&self, s: [Tensor; 2]) -> Result<[Tensor; 2]> {
        let s = Tensor::cat(&s, 1)?;
        let z = mmbal_ops::relu(&self.squeeze.forward(&s)?)?;
        Ok([
            candle_nn::ops::sigmoid(&self.excite[0].forward(&z)?)?,
            candle_nn::ops::sigmoid(&self.excite[1].forward(&z)?)?,
        ])
    }

    /// Both streams rescaled. In training, running means of the excitations are updated unless
    /// curating; a curated stream uses its running mean (a constant) instead.
    pub fn forward(
        &self,
        a: &Tensor,
        b: &Tensor,
        frames: [usize; 2],
        train: bool,
    ) -> Result<[Tensor; 2]> {
        let mut s = [squeeze(a, frames[0])?, squeeze(b, frames[1])?];
        if !train {
            let mut st = self.state.lock().unwrap();
            match &mut st.probe {
                SqueezeProbe::Off => {}
                SqueezeProbe::Record { sums, n } => {
                    for (sum, sm) in sums.iter_mut().zip(&s) {
                        let batch_sum = sm.detach().sum(0)?;
                        *sum = Some(match sum.take() {
                            None => batch_sum,
                            Some(t) => (t + batch_sum)?,
                        });
                    }
                    *n += s[0].dim(0)?;
                }
                SqueezeProbe::Replace { stream, value } => {
                    let rows = s[*stream].dim(0)?;
                    s[*stream] = value
                        .unsqueeze(0)?
                        .broadcast_as((rows, value.dim(0)?))?
                        .contiguous()?;
                }
            }
        }
        let mut e = self.excite_from(s)?;
        let mut st = self.state.lock().unwrap();
        let rule = st.rule;
        if train || rule.every_forward {
            // The reference's update: `(batch_mean + running * n) / (n + 1)`, before the
            // excitation is used, so a curated forward sees a mean that includes its own batch.
            let n = st.count as f64;
            for m in 0..2 {
                let source = if rule.own_stream { m } else { 0 };
                let batch_mean = e[source].detach().mean_keepdim(0)?;
                st.running[m] = Some(match st.running[m].take() {
                    None => batch_mean,
                    Some(r) => ((batch_mean + (r * n)?)? / (n + 1.0))?,
                });
            }
            st.count += 1.0;
        }
        if let Some(m) = st.curated {
            if train || rule.curate_evaluation {
                let Some(mean) = st.running[m].clone() else {
                    bail!("MMTM curation of stream {m} before any running mean exists")
                };
                let (rows, c) = e[m].dims2()?;
                if mean.dim(1)? != c {
                    bail!(
                        "MMTM: curating stream {m} ({c} channels) with a running mean of {} \
                         channels: the reference takes both means from stream 0's excitation, \
                         which needs equal channel counts; use each stream's own mean instead \
                         (greedy option mmtm_mean_source = \"own\")",
                        mean.dim(1)?
                    );
                }
                e[m] = mean.broadcast_as((rows, c))?.contiguous()?;
            }
        }
        Ok([excite(a, &e[0], frames[0])?, excite(b, &e[1], frames[1])?])
    }

    /// Running means of the excitations, once they exist (`running_a`, `running_b`), and the
    /// number of forwards in them (`running_count`).
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        let st = self.state.lock().unwrap();
        let mut out: Vec<(String, Tensor)> = ["running_a", "running_b"]
            .iter()
            .zip(st.running.iter())
            .filter_map(|(n, t)| t.clone().map(|t| (n.to_string(), t)))
            .collect();
        if let Some(r) = &st.running[0] {
            if let Ok(count) = Tensor::new(&[st.count], r.device()) {
                out.push(("running_count".into(), count));
            }
        }
        out
    }

    /// Restores `running_a`, `running_b` or `running_count` from a checkpoint.
    pub fn set_buffer(&self, name: &str, value: Tensor) -> Result<()> {
        let mut st = self.state.lock().unwrap();
        match name {
            "running_a" => st.running[0] = Some(value),
            "running_b" => st.running[1] = Some(value),
            "running_count" => st.count = value.flatten_all()?.to_vec1::<f32>()?[0],
            _ => bail!("MMTM has no buffer `{name}`"),
        }
        Ok(())
    }

    /// The running means of both streams' excitations `(1, C)` and the number of forwards in
    /// them (`None` before the first update).
    pub fn running_means(&self) -> Option<([Tensor; 2], usize)> {
        let st = self.state.lock().unwrap();
        match &st.running {
            [Some(a), Some(b)] => Some(([a.clone(), b.clone()], st.count as usize)),
            _ => None,
        }
    }
}

/// MMTM blocks after chosen stages of two encoders (Greedy: after layers 2, 3 and 4).
/// The blocks are shared (`Arc`) so that a method can steer them (curation) and read their
/// parameters by role while the model owns the mixer.
pub struct MmtmMixer {
    /// `(stage, block)`: the block after that encoder stage.
    pub blocks: std::sync::Arc<Vec<(usize, Mmtm)>>,
}

impl StageMixer for MmtmMixer {
    fn after_stages(&self) -> Vec<usize> {
        self.blocks.iter().map(|(s, _)| *s).collect()
    }
    fn mix(
        &self,
        stage: usize,
        maps: &[Tensor],
        frames: &[usize],
        train: bool,
    ) -> Result<Vec<Tensor>> {
        if maps.len() != 2 {
            bail!("MMTM joins exactly two streams, got {}", maps.len());
        }
        let Some((_, block)) = self.blocks.iter().find(|(s, _)| *s == stage) else {
            return Ok(maps.to_vec());
        };
        let [a, b] = block.forward(&maps[0], &maps[1], [frames[0], frames[1]], train)?;
        Ok(vec![a, b])
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        self.blocks
            .iter()
            .flat_map(|(s, b)| {
                b.buffers()
                    .into_iter()
                    .map(move |(n, t)| (format!("stage{s}.{n}"), t))
            })
            .collect()
    }
    fn set_buffer(&self, name: &str, value: Tensor) -> Result<()> {
        for (s, b) in self.blocks.iter() {
            if let Some(rest) = name.strip_prefix(&format!("stage{s}.")) {
                return b.set_buffer(rest, value);
            }
        }
        bail!("MMTM mixer has no buffer `{name}`")
    }
}
