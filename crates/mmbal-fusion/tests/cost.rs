//! Compute and parameters counted from the layers: torchvision's ResNet-18 at 224x224 has
//! 1,813,561,344 convolution multiply-accumulates (the "1.8 GFLOPs" of the literature, its
//! 512 x 1000 classifier aside) and 11,176,512 parameters without the classifier; the head's
//! count follows its layers.

use candle_core::{DType, Device, Tensor};
use mmbal_fusion::{
    BnInit, EncoderSpec, FusionKind, LinearInit, MultimodalModel, Resnet18Options, SmallCnnOptions,
};

#[test]
fn resnet18_at_224_has_its_known_compute_and_parameters() {
    let dev = Device::Cpu;
    let rgb: EncoderSpec = Resnet18Options {
        in_channels: 3,
        width: 1.0,
        pretrained: None,
        bn_init: BnInit::default(),
    }
    .into();
    let small: EncoderSpec = SmallCnnOptions {
        in_channels: 1,
        width: 2,
        bn_init: BnInit::Ones,
    }
    .into();
    let names = vec!["rgb".to_string(), "audio".to_string()];
    let model = MultimodalModel::new(
        &names,
        &[rgb, small],
        FusionKind::Concat,
        LinearInit::Pytorch,
        10,
        0,
        &dev,
    )
    .unwrap();
    let inputs = [
        Tensor::zeros((1, 3, 224, 224), DType::F32, &dev).unwrap(),
        Tensor::zeros((1, 1, 12, 12), DType::F32, &dev).unwrap(),
    ];
    let macs = model.encoder_macs(&inputs).unwrap();
    // conv1 112*112*64*3*49, layer1 4 * 56*56*64*64*9, layers 2-4 each
    // (1 + 3 * 2) * 57,802,752 + 6,422,528 (the 1x1 downsample).
    assert_eq!(macs[0], 1_813_561_344);
    assert!((macs[0] as f64 / 1.8e9 - 1.0).abs() < 0.01);
    // Three frames of the same image cost three images.
    let frames = Tensor::zeros((1, 3, 3, 224, 224), DType::F32, &dev).unwrap();
    let macs3 = model.encoder_macs(&[frames, inputs[1].clone()]).unwrap();
    assert_eq!(macs3[0], 3 * macs[0]);
    // The small CNN (width 2): 3x3 convolutions 1 -> 2 at 12x12, 2 -> 4 at 6x6 and 4 -> 8 at
    // 3x3 (each after a 2x2 max-pool): 3 * 2592.
    assert_eq!(
        macs[1],
        12 * 12 * 2 * 9 + 6 * 6 * 4 * 2 * 9 + 3 * 3 * 8 * 4 * 9
    );
    let counts: std::collections::BTreeMap<String, usize> =
        model.param_counts().into_iter().collect();
    assert_eq!(counts["encoders.rgb"], 11_176_512);
    // The concat head: (512 + 8) x 10 weights and 10 biases; one sample's fused logits take
    // 520 x 10 multiply-accumulates.
    let d_small = model.encoder(1).out_dim();
    assert_eq!(counts["head"], (512 + d_small) * 10 + 10);
    assert_eq!(model.head.macs(), ((512 + d_small) * 10) as u64);
    // Batch size other than 1 is refused: the count is per sample.
    let two = Tensor::zeros((2, 1, 12, 12), DType::F32, &dev).unwrap();
    assert!(model.encoder_macs(&[inputs[0].clone(), two]).is_err());
}
