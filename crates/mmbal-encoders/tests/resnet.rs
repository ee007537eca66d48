use candle_core::{Device, Tensor, Var};
use mmbal_encoders::{Encoder, ModelVars, ResNet18};

/// A ResNet-18 at the root of its own variables, and its trainable parameters by name.
fn resnet(cin: usize, width: f64, seed: u64) -> (ResNet18, Vec<(String, Var)>) {
    let vars = ModelVars::new();
    let net = ResNet18::new(cin, width, vars.seeded(seed, &Device::Cpu)).unwrap();
    let buffers = net.buffers();
    let params = vars
        .named()
        .into_iter()
        .filter(|(_, v)| !buffers.iter().any(|b| b.id() == v.id()))
        .collect();
    (net, params)
}

#[test]
fn resnet18_shapes_params_and_gradients() {
    let dev = Device::Cpu;
    let (net, p) = resnet(3, 0.125, 1);
    assert_eq!(net.out_channels(), 64);
    let widths: Vec<usize> = (0..5).map(|i| net.stage_channels(i)).collect();
    assert_eq!(widths, vec![8, 8, 16, 32, 64]);
    // torchvision ResNet-18 without fc: 20 convs (incl. 3 downsample) and 20 BNs = 60 tensors,
    // and 40 running statistics.
    assert_eq!(p.len(), 60);
    assert_eq!(net.buffers().len(), 40);
    assert_eq!(p.iter().filter(|(_, v)| v.rank() == 4).count(), 20);
    assert!(p.iter().any(|(n, _)| n == "layer2.0.downsample.0.weight"));
    // Kaiming fan_out: conv1 std = sqrt(2 / (8 * 49)).
    let w = p[0]
        .1
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let var = w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
    assert!(
        (var.sqrt() / (2.0f32 / 392.0).sqrt() - 1.0).abs() < 0.2,
        "std {}",
        var.sqrt()
    );
    // Frames folded into the batch: (N=2, T=3, 3, 40, 36) -> (2, 64), and odd sizes train.
    let x = Tensor::randn(0f32, 1.0, (2, 3, 3, 40, 36), &dev).unwrap();
    let f = net.features(&x, true).unwrap();
    assert_eq!(f.dims(), &[2, 64]);
    let grads = f.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in &p {
        assert!(grads.get(v).is_some(), "no gradient for {name}");
    }
    // Audio-like input with mixed parity (1 x 257 x 188).
    let (a, _) = resnet(1, 0.125, 2);
    let y = a
        .forward(
            &Tensor::randn(0f32, 1.0, (1, 1, 257, 188), &dev).unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(y.dims(), &[1, 64, 9, 6]);
    y.sum_all().unwrap().backward().unwrap();
    // Same seed, same weights.
    let (_, b) = resnet(3, 0.125, 1);
    assert_eq!(
        b[5].1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        p[5].1
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
}
