//! MMTM against PyTorch (tests/fixtures/tiny_av.safetensors, `mmtm.*`): outputs of both streams
//! and the input gradients of `sum(out_A) + 2 sum(out_B)`.

use candle_core::{Device, Tensor, Var};
use mmbal_encoders::ModelVars;
use mmbal_fusion::{LinearInit, Mmtm};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
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
fn mmtm_matches_pytorch() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/tiny_av.safetensors"
    );
    let f = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let vars = ModelVars::new();
    let block = Mmtm::new(4, 6, LinearInit::Pytorch, vars.seeded(0, &Device::Cpu)).unwrap();
    // squeeze, excite_a, excite_b: the reference module's names.
    assert_eq!(vars.len(), 6);
    for (name, var) in vars.named() {
        var.set(&f[&format!("mmtm.{name}")]).unwrap();
    }
    let a = Var::from_tensor(&f["mmtm.A"]).unwrap();
    let b = Var::from_tensor(&f["mmtm.B"]).unwrap();
    let [oa, ob] = block
        .forward(a.as_tensor(), b.as_tensor(), [1, 1], true)
        .unwrap();
    assert!(max_diff(&oa, &f["mmtm.out_A"]) < 1e-5);
    assert!(max_diff(&ob, &f["mmtm.out_B"]) < 1e-5);
    let loss = (oa.sum_all().unwrap() + (ob.sum_all().unwrap() * 2.0).unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    assert!(max_diff(grads.get(&a).unwrap(), &f["mmtm.dA"]) < 1e-5);
    assert!(max_diff(grads.get(&b).unwrap(), &f["mmtm.dB"]) < 1e-5);
    // Curation: stream 0's excitation becomes its running mean, a constant: no gradient flows
    // through the squeeze from stream 0's excitation, and the output is the map times the mean.
    block.set_curation(Some(0));
    let [ca, _] = block
        .forward(a.as_tensor(), b.as_tensor(), [1, 1], true)
        .unwrap();
    let e = block
        .excitations(a.as_tensor(), b.as_tensor(), [1, 1])
        .unwrap();
    let mean = e[0].mean_keepdim(0).unwrap(); // one training forward so far: running = batch mean
    let want = a
        .as_tensor()
        .broadcast_mul(&mean.reshape((1, 4, 1, 1)).unwrap())
        .unwrap();
    assert!(max_diff(&ca, &want) < 1e-6);
}

#[test]
fn frames_share_their_clip_excitation() {
    // Stream A of 2 clips x 3 frames: squeezed per clip over frames and space.
    let block = Mmtm::new(
        4,
        6,
        LinearInit::Pytorch,
        ModelVars::new().seeded(1, &Device::Cpu),
    )
    .unwrap();
    let a = Tensor::randn(0f32, 1.0, (6, 4, 3, 3), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (2, 6, 2, 2), &Device::Cpu).unwrap();
    let e = block.excitations(&a, &b, [3, 1]).unwrap();
    assert_eq!(e[0].dims(), &[2, 4]);
    let [oa, _] = block.forward(&a, &b, [3, 1], false).unwrap();
    // Frame 4 belongs to clip 1.
    let want = a
        .get(4)
        .unwrap()
        .broadcast_mul(&e[0].get(1).unwrap().reshape((4, 1, 1)).unwrap())
        .unwrap();
    assert!(max_diff(&oa.get(4).unwrap(), &want) < 1e-6);
}

#[test]
fn squeeze_probe_records_means_and_replaces_one_stream() {
    let dev = Device::Cpu;
    let block = Mmtm::new(4, 6, LinearInit::Pytorch, ModelVars::new().seeded(2, &dev)).unwrap();
    let a = Tensor::randn(0f32, 1.0, (3, 4, 2, 2), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (3, 6, 2, 2), &dev).unwrap();
    // Two eval forwards of the same 3 clips: the mean squeeze of stream b is the mean of its
    // 3 clips' global means, i.e. the mean of b over clips and space.
    block.record_squeeze();
    block.forward(&a, &b, [1, 1], false).unwrap();
    block.forward(&a, &b, [1, 1], false).unwrap();
    let [_, mean_b] = block.squeeze_means().unwrap();
    let want = b.mean(3).unwrap().mean(2).unwrap().mean(0).unwrap();
    assert!(max_diff(&mean_b, &want) < 1e-6);
    assert!(block.squeeze_means().is_err(), "recording stops");

    // With b's squeeze replaced, stream a's scaling no longer depends on b.
    let b2 = Tensor::randn(0f32, 1.0, (3, 6, 2, 2), &dev).unwrap();
    block.replace_squeeze(Some((1, mean_b.clone())));
    let [oa1, _] = block.forward(&a, &b, [1, 1], false).unwrap();
    let [oa2, _] = block.forward(&a, &b2, [1, 1], false).unwrap();
    assert_eq!(max_diff(&oa1, &oa2), 0.0);
    // ... and equals the live forward of inputs whose b squeezes are exactly the mean.
    let b_mean_map = mean_b
        .reshape((1, 6, 1, 1))
        .unwrap()
        .broadcast_as((3, 6, 2, 2))
        .unwrap()
        .contiguous()
        .unwrap();
    block.replace_squeeze(None);
    let [oa3, _] = block.forward(&a, &b_mean_map, [1, 1], false).unwrap();
    assert!(max_diff(&oa1, &oa3) < 1e-6);
    let [oa4, _] = block.forward(&a, &b2, [1, 1], false).unwrap();
    assert!(max_diff(&oa1, &oa4) > 1e-4, "live squeeze is back");
}
