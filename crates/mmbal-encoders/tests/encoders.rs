use candle_core::{DType, Device, Tensor};
use mmbal_encoders::{
    load_torchvision_weights, read_weights, resolve_weights, resolve_weights_from, Encoder, Hub,
    ModelVars, ResNet18, SmallCnn,
};
use std::collections::HashMap;

/// A ResNet-18 at the root of its own variables (torchvision's names).
fn resnet(cin: usize, width: f64, seed: u64) -> (ResNet18, ModelVars) {
    let vars = ModelVars::new();
    let net = ResNet18::new(cin, width, vars.seeded(seed, &Device::Cpu)).unwrap();
    (net, vars)
}

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
    let vars = ModelVars::new();
    let net = SmallCnn::new(1, 8, vars.seeded(3, &dev)).unwrap();
    assert_eq!(net.out_dim(), 32);
    let x = Tensor::randn(0f32, 1.0, (4, 1, 28, 28), &dev).unwrap();
    let f = net.features(&x, true).unwrap();
    assert_eq!(f.dims(), &[4, 32]);
    let grads = f.sum_all().unwrap().backward().unwrap();
    // Every variable is in the map: 3 x (conv weight, conv bias, BN weight, BN bias) get
    // gradients; the 6 running statistics get none.
    let bufs = net.buffers();
    assert_eq!(bufs.len(), 6);
    assert_eq!(vars.len(), 18);
    for (name, v) in vars.named() {
        let is_buffer = bufs.iter().any(|b| b.id() == v.id());
        assert_eq!(grads.get(&v).is_some(), !is_buffer, "{name}");
    }
    // Training mode moved the running statistics, which are in the map under PyTorch's names.
    assert_eq!(vars.get("bn0.running_mean").unwrap().id(), bufs[0].id());
    let mean0 = bufs[0].as_tensor().to_vec1::<f32>().unwrap();
    assert!(mean0.iter().any(|v| *v != 0.0));
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
    let (source, source_vars) = resnet(3, 1.0, 11);
    // Give the buffers recognisable values.
    for b in source.buffers() {
        b.set(&(b.as_tensor().ones_like().unwrap() * 0.25).unwrap())
            .unwrap();
    }
    let mut tensors: Vec<(String, Tensor)> = source_vars
        .named()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
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
    // Not cached: offline, the error says so and where it looked.
    let missing =
        resolve_weights_from("hf:acme/absent", Some(&tmp.join("hub")), &Hub::Offline).unwrap_err();
    let msg = format!("{missing:#}");
    assert!(
        msg.contains("acme/absent") && msg.contains("downloads are off") && msg.contains("hub"),
        "{msg}"
    );

    let load = |net: &ResNet18, vars: &ModelVars, path: &std::path::Path| {
        load_torchvision_weights(&vars.named(), &net.buffers(), &read_weights(path).unwrap())
    };
    for path in [&tv_path, &hf_path] {
        let (target, target_vars) = resnet(3, 1.0, 99);
        let report = load(&target, &target_vars, path).unwrap();
        assert_eq!(report.loaded, 60 + 40, "{}", path.display());
        for ((n, a), (_, b)) in source_vars.named().iter().zip(&target_vars.named()) {
            assert_eq!(max_abs_diff(a.as_tensor(), b.as_tensor()), 0.0, "{n}");
        }
    }
    // 1-channel (audio) stem: the RGB kernel summed over channels.
    let (mono, mono_vars) = resnet(1, 1.0, 5);
    load(&mono, &mono_vars, &tv_path).unwrap();
    let stem = |vars: &ModelVars| vars.get("conv1.weight").unwrap();
    let want = stem(&source_vars).as_tensor().sum_keepdim(1).unwrap();
    assert!(max_abs_diff(stem(&mono_vars).as_tensor(), &want) < 1e-6);
    // A narrow model cannot take ImageNet weights: the error names the tensor.
    let (narrow, narrow_vars) = resnet(3, 0.5, 5);
    let err = load(&narrow, &narrow_vars, &tv_path).unwrap_err();
    assert!(format!("{err:#}").contains("conv1.weight"), "{err:#}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// `.pth` state dicts as `torch.save` writes them (tests/fixtures/gen_pth.py), bare and under
/// `state_dict`: every name and value PyTorch wrote (element i of the offset-th float tensor is
/// `i / 100 + offset`).
#[test]
fn pytorch_state_dicts_read_by_name() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
    let names = [
        "conv1.weight",
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
    ];
    for file in ["state_dict.pth", "state_dict_wrapped.pth"] {
        let w = read_weights(&std::path::Path::new(dir).join(file)).unwrap();
        for (offset, name) in names.iter().enumerate() {
            let t = w.get(*name).unwrap_or_else(|| panic!("{file}: no {name}"));
            let got = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want: Vec<f32> = (0..got.len())
                .map(|i| i as f32 / 100.0 + offset as f32)
                .collect();
            assert_eq!(got, want, "{file}: {name}");
        }
        assert_eq!(w["conv1.weight"].dims(), &[4, 3, 3, 3]);
    }
}

/// A one-file Hugging Face Hub on localhost: every request gets `x-repo-commit`, an `etag`, and
/// the asked `Range` of `body` with its `content-range`, as the Hub answers hf-hub.
fn fake_hub(body: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut a, mut b) = (0usize, body.len() - 1);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    let (x, y) = r.trim().split_once('-').unwrap();
                    a = x.parse().unwrap();
                    if !y.is_empty() {
                        b = y.parse().unwrap();
                    }
                }
            }
            let part = &body[a..=b];
            let head = format!(
                "HTTP/1.1 206 Partial Content\r\nx-repo-commit: c0ffee\r\netag: \"e7a9\"\r\n\
                 content-range: bytes {a}-{b}/{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len(),
                part.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(part).unwrap();
        }
    });
    format!("http://{addr}")
}

#[test]
fn a_missing_hf_file_is_downloaded_into_the_cache_or_the_error_says_why() {
    let tmp = std::env::temp_dir().join(format!("mmbal-hf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let hub = Hub::Endpoint(fake_hub(body.clone()));
    let path = resolve_weights_from("hf:acme/tiny/weights.bin", Some(&tmp), &hub).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(path.starts_with(&tmp), "{}", path.display());
    // Now cached: found without any hub.
    let again =
        resolve_weights_from("hf:acme/tiny/weights.bin", Some(&tmp), &Hub::Offline).unwrap();
    assert_eq!(again, path);
    // A hub that does not answer: the error names the cache and the failed download.
    let closed = Hub::Endpoint("http://127.0.0.1:1".into());
    let err = resolve_weights_from("hf:acme/other", Some(&tmp), &closed).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("downloading it failed") && msg.contains(&tmp.display().to_string()),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(tmp);
}
