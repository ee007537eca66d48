//! [`ModelVars`]: every variable of a model in one `VarMap` under its `VarBuilder` path, and the
//! seeded `VarBuilder` backend that creates them, so that layers are built the candle way
//! (`Layer::new(.., vb.pp("encoders.audio"))`) while every run stays reproducible: candle's own
//! CPU generator cannot be seeded.
//!
//! Draws follow the hints of `candle_nn::Init` in the order the layers ask for their tensors, one
//! stream per builder. The formulas are those of the hand-written initialisers they replace, so
//! a layer built either way gets bitwise the same weights (tested): Kaiming's standard deviation
//! is `sqrt(gain^2 / fan)` with the squared gain exact (2 for ReLU), uniform draws use
//! `Rng::random_range`, normal draws `rand_distr::Normal`, all in f64 then rounded to f32.

use candle_core::{bail, DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{NonLinearity, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::sync::{Arc, Mutex};

/// Every variable of a model (parameters and the buffers its forward pass updates, such as
/// BatchNorm running statistics) in one `VarMap` under its `VarBuilder` path, which is the name
/// checkpoints, parameter groups and pretrained loading use. The `VarMap` is a hash map; the
/// order in which layers created the variables is kept beside it, so that every list of
/// parameters (and every sum over them) comes out in the same order in every process.
/// Clones share the variables.
#[derive(Clone)]
pub struct ModelVars {
    map: VarMap,
    order: Arc<Mutex<Vec<String>>>,
}

impl Default for ModelVars {
    fn default() -> Self {
        ModelVars::new()
    }
}

impl ModelVars {
    /// No variables yet.
    pub fn new() -> ModelVars {
        ModelVars {
            map: VarMap::new(),
            order: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// A builder whose new variables go here, drawn from the stream of `seed` in the order the
    /// layers ask for them (one stream per builder; `pp` keeps the stream).
    pub fn seeded(&self, seed: u64, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(SeededInit {
            vars: self.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        });
        VarBuilder::from_backend(backend, DType::F32, device.clone())
    }

    /// candle's `VarMap` itself (for `VarMap::save`, candle-nn's optimizers, ...).
    pub fn varmap(&self) -> &VarMap {
        &self.map
    }

    /// Every variable with its full path, in creation order.
    pub fn named(&self) -> Vec<(String, Var)> {
        let vars = self.map.data().lock().unwrap();
        let order = self.order.lock().unwrap();
        order
            .iter()
            .filter_map(|n| vars.get(n).map(|v| (n.clone(), v.clone())))
            .collect()
    }

    /// The variables under `prefix` (a `VarBuilder` path such as `encoders.audio`), named
    /// relative to it, in creation order.
    pub fn named_under(&self, prefix: &str) -> Vec<(String, Var)> {
        let dotted = format!("{prefix}.");
        self.named()
            .into_iter()
            .filter_map(|(n, v)| n.strip_prefix(&dotted).map(|r| (r.to_string(), v)))
            .collect()
    }

    /// The variable at `name`, if any.
    pub fn get(&self, name: &str) -> Option<Var> {
        self.map.data().lock().unwrap().get(name).cloned()
    }

    /// How many variables there are.
    pub fn len(&self) -> usize {
        self.order.lock().unwrap().len()
    }

    /// Whether no layer has asked for a variable yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The backend: new variables drawn from `rng` into `vars`; names already there are reused.
struct SeededInit {
    vars: ModelVars,
    rng: Mutex<ChaCha8Rng>,
}

/// The squared gain, exact where it is rational, so that `sqrt(gain^2 / fan)` is the
/// hand-written `sqrt(2 / fan)` for ReLU.
fn gain_squared(n: NonLinearity) -> f64 {
    match n {
        NonLinearity::ReLU => 2.0,
        NonLinearity::Linear | NonLinearity::Sigmoid => 1.0,
        NonLinearity::Tanh => 25.0 / 9.0,
        NonLinearity::SELU => 0.5625,
        NonLinearity::ExplicitGain(g) => g * g,
    }
}

/// Kaiming's standard deviation for a fan: `sqrt(gain^2 / fan)`, not candle's
/// `gain / sqrt(fan)`, which differs in the last bit for most fans (392 and 144 among them).
fn kaiming_std(n: NonLinearity, fan: usize) -> f64 {
    (gain_squared(n) / fan as f64).sqrt()
}

/// `n` values of `init` for `shape`, drawn from `rng`.
fn draw(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Result<Vec<f32>> {
    let n = shape.elem_count();
    let normal = |mean: f64, std: f64, rng: &mut ChaCha8Rng| -> Result<Vec<f32>> {
        let d = Normal::new(mean, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((0..n).map(|_| d.sample(rng) as f32).collect())
    };
    let uniform = |lo: f64, up: f64, rng: &mut ChaCha8Rng| -> Vec<f32> {
        (0..n).map(|_| rng.random_range(lo..up) as f32).collect()
    };
    Ok(match init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => normal(mean, stdev, rng)?,
        Init::Uniform { lo, up } => uniform(lo, up, rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = kaiming_std(non_linearity, fan.for_shape(shape));
            match dist {
                NormalOrUniform::Normal => normal(0.0, std, rng)?,
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(-bound, bound, rng)
                }
            }
        }
    })
}

impl SimpleBackend for SeededInit {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        // Lock order everywhere: the map, then the order list.
        let mut vars = self.vars.map.data().lock().unwrap();
        if let Some(v) = vars.get(name) {
            if v.shape() != &s {
                bail!(
                    "parameter `{name}`: asked for {s:?}, it exists with {:?}",
                    v.shape()
                );
            }
            return Ok(v.as_tensor().clone());
        }
        let values = draw(h, &s, &mut self.rng.lock().unwrap())?;
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        vars.insert(name.to_string(), var.clone());
        self.vars.order.lock().unwrap().push(name.to_string());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.vars.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => bail!("no parameter `{name}` (and no shape to create it with)"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.vars.get(name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::init::FanInOut;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// The hand-written initialiser the builder replaced: a conv kernel `(O, I, K, K)`, Kaiming
    /// normal, fan_out, ReLU gain, `std = sqrt(2 / (O K K))`.
    fn kaiming(out: usize, inp: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
        let std = (2.0 / (out * k * k) as f64).sqrt();
        let normal = Normal::new(0.0, std).unwrap();
        (0..out * inp * k * k)
            .map(|_| normal.sample(rng) as f32)
            .collect()
    }

    #[test]
    fn kaiming_through_the_builder_is_the_hand_written_init_bitwise() {
        let dev = Device::Cpu;
        let vars = ModelVars::new();
        let vb = vars.seeded(7, &dev);
        let hint = Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan: FanInOut::FanOut,
            non_linearity: NonLinearity::ReLU,
        };
        // Two layers from one stream, in order, against `kaiming` from the same seed.
        let a = vb
            .pp("layer")
            .get_with_hints((8, 3, 7, 7), "a", hint)
            .unwrap();
        let b = vb
            .pp("layer")
            .get_with_hints((16, 8, 3, 3), "b", hint)
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let a0 = kaiming(8, 3, 7, &mut rng);
        let b0 = kaiming(16, 8, 3, &mut rng);
        assert!(values(&a) == a0);
        assert!(values(&b) == b0);
        // Both are in the map under their paths, in creation order; asking again returns the
        // same variable.
        let names: Vec<String> = vars.named().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["layer.a", "layer.b"]);
        let under: Vec<String> = vars
            .named_under("layer")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(under, vec!["a", "b"]);
        let again = vb
            .pp("layer")
            .get_with_hints((8, 3, 7, 7), "a", hint)
            .unwrap();
        assert_eq!(again.id(), a.id());
        assert!(vb
            .pp("layer")
            .get_with_hints((8, 3, 7, 6), "a", hint)
            .is_err());
    }

    #[test]
    fn kaiming_std_is_the_hand_written_formula_to_the_bit() {
        // ResNet-18's fan-outs at several widths: `kaiming` computes sqrt(2 / fan).
        for (out, k) in [
            (8, 7),
            (16, 3),
            (64, 7),
            (64, 3),
            (128, 1),
            (256, 3),
            (512, 3),
        ] {
            let fan = out * k * k;
            let want = (2.0 / fan as f64).sqrt();
            assert_eq!(kaiming_std(NonLinearity::ReLU, fan), want, "fan {fan}");
        }
    }

    #[test]
    fn constants_uniform_and_normal_hints() {
        let dev = Device::Cpu;
        let vars = ModelVars::new();
        let vb = vars.seeded(1, &dev);
        assert_eq!(
            values(&vb.get_with_hints(3, "one", Init::Const(1.0)).unwrap()),
            vec![1.0; 3]
        );
        let u = vb
            .get_with_hints(1000, "u", Init::Uniform { lo: -0.5, up: 0.5 })
            .unwrap();
        assert!(values(&u).iter().all(|v| (-0.5..0.5).contains(v)));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let want: Vec<f32> = (0..1000)
            .map(|_| rng.random_range(-0.5..0.5) as f32)
            .collect();
        assert!(
            values(&u) == want,
            "uniform draws follow the stream in order"
        );
    }
}
