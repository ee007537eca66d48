//! Shared by the golden tests against reference code: the fixtures' tiny encoder and helpers to
//! load fixtures and compare tensors.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use mmbal_encoders::{conv2d, max_pool2d, relu, BatchNorm2d, Encoder};
use std::collections::HashMap;

/// The fixtures' encoder: Conv(cin, 4, 3, s2, p1) BN ReLU MaxPool(3, 2, 1) Conv(4, 8, 3, s1, p1)
/// BN ReLU, with PyTorch's `nn.Sequential` names (0, 1, 4, 5).
pub struct Tiny {
    pub c0: Var,
    pub bn1: BatchNorm2d,
    pub c4: Var,
    pub bn5: BatchNorm2d,
}

impl Encoder for Tiny {
    fn out_dim(&self) -> usize {
        8
    }
    fn num_stages(&self) -> usize {
        1
    }
    fn stage_channels(&self, _i: usize) -> usize {
        8
    }
    fn stage(&self, _i: usize, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = relu(
            &self
                .bn1
                .forward(&conv2d(x, self.c0.as_tensor(), 2, 1)?, train)?,
        )?;
        let y = max_pool2d(&y, 3, 2, 1)?;
        relu(
            &self
                .bn5
                .forward(&conv2d(&y, self.c4.as_tensor(), 1, 1)?, train)?,
        )
    }
    fn params(&self) -> Vec<(String, Var)> {
        vec![
            ("0.weight".into(), self.c0.clone()),
            ("1.weight".into(), self.bn1.weight.clone()),
            ("1.bias".into(), self.bn1.bias.clone()),
            ("4.weight".into(), self.c4.clone()),
            ("5.weight".into(), self.bn5.weight.clone()),
            ("5.bias".into(), self.bn5.bias.clone()),
        ]
    }
    fn buffers(&self) -> Vec<(String, Tensor)> {
        let (m1, v1) = self.bn1.running_stats();
        let (m5, v5) = self.bn5.running_stats();
        vec![
            ("1.running_mean".into(), m1),
            ("1.running_var".into(), v1),
            ("5.running_mean".into(), m5),
            ("5.running_var".into(), v5),
        ]
    }
    fn set_buffer(&self, name: &str, value: Tensor) -> candle_core::Result<()> {
        let (bn, stat) = match name.split_once('.') {
            Some(("1", s)) => (&self.bn1, s),
            Some(("5", s)) => (&self.bn5, s),
            _ => candle_core::bail!("no buffer {name}"),
        };
        let (m, v) = bn.running_stats();
        match stat {
            "running_mean" => bn.set_running_stats(value, v),
            _ => bn.set_running_stats(m, value),
        }
        Ok(())
    }
}

/// A tiny encoder of `cin` input channels with zero weights, to be loaded by name.
pub fn tiny_blank(cin: usize) -> Tiny {
    let dev = Device::Cpu;
    Tiny {
        c0: Var::zeros((4, cin, 3, 3), DType::F32, &dev).unwrap(),
        bn1: BatchNorm2d::new(4, &dev).unwrap(),
        c4: Var::zeros((8, 4, 3, 3), DType::F32, &dev).unwrap(),
        bn5: BatchNorm2d::new(8, &dev).unwrap(),
    }
}

/// `tests/fixtures/NAME.safetensors`.
pub fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = format!(
        "{}/../../tests/fixtures/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A fixture tensor by key, as f32, with a message naming a missing key.
pub fn get(f: &HashMap<String, Tensor>, key: &str) -> Tensor {
    f.get(key)
        .unwrap_or_else(|| panic!("fixture has no `{key}`"))
        .to_dtype(DType::F32)
        .unwrap()
}

pub fn scalar(f: &HashMap<String, Tensor>, key: &str) -> f64 {
    get(f, key).flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64
}

/// Asserts `max |got - want| <= tol * max(|want|, 1e-3)`.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let got = got.to_dtype(DType::F32).unwrap();
    let want = want.to_dtype(DType::F32).unwrap();
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let d = (&got - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-3);
    assert!(
        d <= tol * scale,
        "{name}: max difference {d} (scale {scale})"
    );
}
