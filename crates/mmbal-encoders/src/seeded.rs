//! A `VarBuilder` backend whose initial weights come from a seeded ChaCha stream, for building
//! layers the candle way (`Layer::new(.., vb.pp("encoders.audio"))`) while every run stays
//! reproducible: candle's own CPU generator cannot be seeded. The variables land in a
//! [`VarMap`], which then holds every parameter name.
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
use std::sync::Mutex;

/// The backend: new variables drawn from `rng` into `map`; names already in `map` are reused.
pub struct SeededInit {
    map: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededInit {
    /// A builder whose new variables go into `map`, drawn from the stream of `seed`.
    pub fn var_builder(map: &VarMap, seed: u64, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(SeededInit {
            map: map.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        });
        VarBuilder::from_backend(backend, DType::F32, device.clone())
    }
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
        let mut vars = self.map.data().lock().unwrap();
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
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        match self.map.data().lock().unwrap().get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => bail!("no parameter `{name}` (and no shape to create it with)"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.data().lock().unwrap().contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::init::FanInOut;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn kaiming_through_the_builder_is_the_hand_written_init_bitwise() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let vb = SeededInit::var_builder(&map, 7, &dev);
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
        let a0 = crate::resnet::kaiming(8, 3, 7, &mut rng, &dev).unwrap();
        let b0 = crate::resnet::kaiming(16, 8, 3, &mut rng, &dev).unwrap();
        assert!(values(&a) == values(a0.as_tensor()));
        assert!(values(&b) == values(b0.as_tensor()));
        // Both are in the map under their paths; asking again returns the same variable.
        let mut names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        assert_eq!(names, vec!["layer.a", "layer.b"]);
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
        let map = VarMap::new();
        let vb = SeededInit::var_builder(&map, 1, &dev);
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
