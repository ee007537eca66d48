use candle_core::{DType, Device, Tensor};
use mmbal_encoders::{resolve_weights, Encoder, ResNet18, SmallCnn};
use std::collections::HashMap;

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn small_cnn_pools_28x28_and_trains() {
    let dev = Device::Cpu;
    let net = SmallCnn::new(1, 8, 3, &dev).unwrap();
    assert_eq!(net.out_dim(), 32);
    let x = Tensor::randn(0f32, 1.0, (4, 1, 28, 28), &dev).unwrap();
    let f = net.features(&x, true).unwrap();
    assert_eq!(f.dims(), &[4, 32]);
    let grads = f.sum_all().unwrap().backward().unwrap();
    for (name, v) in net.params() {
        assert!(grads.get(&v).is_some(), "no gradient for {name}");
    }
    // Training mode moved the running statistics; buffers round-trip by name.
    let bufs = net.buffers();
    assert_eq!(bufs.len(), 6);
    let mean0 = bufs[0].1.to_vec1::<f32>().unwrap();
    assert!(mean0.iter().any(|v| *v != 0.0));
    net.set_buffer(
        "bn0.running_mean",
        Tensor::zeros(8, DType::F32, &dev).unwrap(),
    )
    .unwrap();
    assert_eq!(net.buffers()[0].1.to_vec1::<f32>().unwrap(), vec![0.0; 8]);
    assert!(net
        .set_buffer("bn9.running_mean", bufs[0].1.clone())
        .is_err());
    // Frames fold and average: (2, 3, 1, 28, 28) equals the mean of per-frame features in eval.
    let frames = Tensor::randn(0f32, 1.0, (2, 3, 1, 28, 28), &dev).unwrap();
    let f = net.features(&frames, false).unwrap();
    let per: Vec<Tensor> = (0..3)
        .map(|t| {
            net.features(&frames.narrow(1, t, 1).unwrap().squeeze(1).unwrap(), false)
                .unwrap()
        })
        .collect();
    let mean = (Tensor::stack(&per, 0).unwrap().sum(0).unwrap() / 3.0).unwrap();
    assert!(max_abs_diff(&f, &mean) < 1e-5);
}

/// The Hugging Face transformers name of a torchvision ResNet-18 tensor, written out here
/// independently of the crate's mapping.
fn transformers_name(tv: &str) -> String {
    let (prefix, param) = tv.rsplit_once('.').unwrap();
    let part = |p: &str| {
        if p.starts_with("conv") || p == "downsample.0" {
            "convolution"
        } else {
            "normalization"
        }
    };
    if prefix == "conv1" || prefix == "bn1" {
        return format!("resnet.embedder.embedder.{}.{param}", part(prefix));
    }
    // layer{L}.{b}.{conv1|bn1|conv2|bn2|downsample.0|downsample.1}
    let mut it = prefix.splitn(3, '.');
    let layer: usize = it.next().unwrap()[5..].parse().unwrap();
    let block = it.next().unwrap();
    let inner = it.next().unwrap();
    let head = format!("resnet.encoder.stages.{}.layers.{block}", layer - 1);
    match inner {
        "downsample.0" | "downsample.1" => format!("{head}.shortcut.{}.{param}", part(inner)),
        _ => {
            let i: usize = inner[inner.len() - 1..].parse::<usize>().unwrap() - 1;
            format!("{head}.layer.{i}.{}.{param}", part(inner))
        }
    }
}

#[test]
fn imagenet_weights_load_from_torchvision_timm_and_transformers_names() {
    let dev = Device::Cpu;
    let source = ResNet18::new(3, 1.0, 11, &dev).unwrap();
    // Give the buffers recognisable values.
    for (name, t) in source.buffers() {
        source
            .set_buffer(&name, (t.ones_like().unwrap() * 0.25).unwrap())
            .unwrap();
    }
    let mut tensors: Vec<(String, Tensor)> = source
        .params()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .chain(source.buffers())
        .collect();
    let tmp = std::env::temp_dir().join(format!("mmbal-weights-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();

    // torchvision names with a timm-style `model.` prefix, a classifier and a counter.
    let mut tv: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(n, t)| (format!("model.{n}"), t.clone()))
        .collect();
    tv.insert(
        "model.fc.weight".into(),
        Tensor::zeros((1000, 512), DType::F32, &dev).unwrap(),
    );
    tv.insert(
        "model.bn1.num_batches_tracked".into(),
        Tensor::zeros(1, DType::I64, &dev).unwrap(),
    );
    let tv_path = tmp.join("tv.safetensors");
    candle_core::safetensors::save(&tv, &tv_path).unwrap();

    // transformers names, inside an hf-hub cache layout.
    let snap = tmp.join("hub/models--acme--resnet-18/snapshots/abc123");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(tmp.join("hub/models--acme--resnet-18/refs")).unwrap();
    std::fs::write(tmp.join("hub/models--acme--resnet-18/refs/main"), "abc123").unwrap();
    let hf: HashMap<String, Tensor> = tensors
        .drain(..)
        .map(|(n, t)| (transformers_name(&n), t))
        .collect();
    candle_core::safetensors::save(&hf, snap.join("model.safetensors")).unwrap();
    let hf_path = resolve_weights("hf:acme/resnet-18", Some(&tmp.join("hub"))).unwrap();
    assert_eq!(hf_path, snap.join("model.safetensors"));
    let missing = resolve_weights("hf:acme/absent", Some(&tmp.join("hub"))).unwrap_err();
    assert!(
        format!("{missing:#}").contains("acme/absent"),
        "{missing:#}"
    );

    for path in [&tv_path, &hf_path] {
        let target = ResNet18::new(3, 1.0, 99, &dev).unwrap();
        let loaded = candle_core::safetensors::load(path, &dev).unwrap();
        let report = target.load_pretrained(&loaded).unwrap();
        assert_eq!(report.loaded, 60 + 40, "{}", path.display());
        for ((n, a), (_, b)) in source.params().iter().zip(target.params().iter()) {
            assert_eq!(max_abs_diff(a.as_tensor(), b.as_tensor()), 0.0, "{n}");
        }
        for ((n, a), (_, b)) in source.buffers().iter().zip(target.buffers().iter()) {
            assert_eq!(max_abs_diff(a, b), 0.0, "{n}");
        }
    }
    // 1-channel (audio) stem: the RGB kernel summed over channels.
    let mono = ResNet18::new(1, 1.0, 5, &dev).unwrap();
    mono.load_pretrained(&candle_core::safetensors::load(&tv_path, &dev).unwrap())
        .unwrap();
    let want = source.params()[0].1.as_tensor().sum_keepdim(1).unwrap();
    assert!(max_abs_diff(mono.params()[0].1.as_tensor(), &want) < 1e-6);
    // A narrow model cannot take ImageNet weights: the error names the tensor.
    let narrow = ResNet18::new(3, 0.5, 5, &dev).unwrap();
    let err = narrow
        .load_pretrained(&candle_core::safetensors::load(&tv_path, &dev).unwrap())
        .unwrap_err();
    assert!(format!("{err:#}").contains("conv1.weight"), "{err:#}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
