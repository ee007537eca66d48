use candle_core::{Device, Tensor};
use mmbal_encoders::ModelVars;
use mmbal_fusion::{
    BnInit, EncoderSpec, FusionHead, FusionKind, LinearInit, MultimodalModel, ParamGroup,
    Resnet18Options, SmallCnnOptions,
};

fn dev() -> Device {
    Device::Cpu
}

fn t2(v: &[f32], r: usize, c: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (r, c), &dev()).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

fn close(a: &Tensor, b: &Tensor) -> bool {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() < 1e-5
}

/// A head at the root of its own variables (`fc.weight`, ...), drawn from `seed`.
struct Head {
    head: FusionHead,
    vars: ModelVars,
}

impl std::ops::Deref for Head {
    type Target = FusionHead;
    fn deref(&self) -> &FusionHead {
        &self.head
    }
}

fn new_head(
    kind: FusionKind,
    dims: &[usize],
    classes: usize,
    init: LinearInit,
    seed: u64,
) -> candle_core::Result<Head> {
    let vars = ModelVars::new();
    let head = FusionHead::new(kind, dims, classes, init, vars.seeded(seed, &dev()))?;
    Ok(Head { head, vars })
}

fn set(head: &Head, name: &str, t: Tensor) {
    head.vars.get(name).unwrap().set(&t).unwrap();
}

#[test]
fn concat_unimodal_logits_add_up_for_two_and_three_modalities() {
    for dims in [vec![3, 2], vec![3, 2, 4]] {
        let head = new_head(FusionKind::Concat, &dims, 5, LinearInit::Pytorch, 1).unwrap();
        let f: Vec<Tensor> = dims
            .iter()
            .map(|&d| Tensor::randn(0f32, 1.0, (4, d), &dev()).unwrap())
            .collect();
        let out = head.forward(&f, None).unwrap();
        let mut sum = out.unimodal[0].clone();
        for u in &out.unimodal[1..] {
            sum = (sum + u).unwrap();
        }
        assert!(close(&sum, &out.fused), "M = {}", dims.len());
    }
}

#[test]
fn concat_head_by_hand_with_masking() {
    // W = [[1, 2 | 3], [0, -1 | 1]], b = [0.5, -1]; audio (2-d), visual (1-d).
    let head = new_head(FusionKind::Concat, &[2, 1], 2, LinearInit::Pytorch, 1).unwrap();
    set(&head, "fc.weight", t2(&[1., 2., 3., 0., -1., 1.], 2, 3));
    set(
        &head,
        "fc.bias",
        Tensor::new(&[0.5f32, -1.], &dev()).unwrap(),
    );
    let a = t2(&[1., 1., 2., 0.], 2, 2);
    let v = t2(&[2., -1.], 2, 1);
    let out = head.forward(&[a.clone(), v.clone()], None).unwrap();
    // row 0: audio 1+2=3, -1 ; visual 6, 2 ; bias/2 = 0.25, -0.5
    assert_eq!(
        rows(&out.unimodal[0]),
        vec![vec![3.25, -1.5], vec![2.25, -0.5]]
    );
    assert_eq!(
        rows(&out.unimodal[1]),
        vec![vec![6.25, 1.5], vec![-2.75, -1.5]]
    );
    assert_eq!(rows(&out.fused), vec![vec![9.5, 0.0], vec![-0.5, -2.0]]);
    // Row 0 drops visual, row 1 drops audio.
    let keep = t2(&[1., 0., 0., 1.], 2, 2);
    let out = head.forward(&[a, v], Some(&keep)).unwrap();
    assert_eq!(rows(&out.fused), vec![vec![3.5, -2.0], vec![-2.5, -2.0]]);
    assert_eq!(
        rows(&out.unimodal[1]),
        vec![vec![0.25, -0.5], vec![-2.75, -1.5]]
    );
}

#[test]
fn sum_film_and_gated_by_hand() {
    let a = t2(&[1., 2.], 1, 2);
    let v = t2(&[3., -1.], 1, 2);
    // sum: fc.0 = [[1, 0], [0, 1]] + [1, 1]; fc.1 = [[1, 1], [2, 0]] + [0, -1]
    let sum = new_head(FusionKind::Sum, &[2, 2], 2, LinearInit::Pytorch, 1).unwrap();
    set(&sum, "fc.0.weight", t2(&[1., 0., 0., 1.], 2, 2));
    set(&sum, "fc.0.bias", Tensor::new(&[1f32, 1.], &dev()).unwrap());
    set(&sum, "fc.1.weight", t2(&[1., 1., 2., 0.], 2, 2));
    set(
        &sum,
        "fc.1.bias",
        Tensor::new(&[0f32, -1.], &dev()).unwrap(),
    );
    let out = sum.forward(&[a.clone(), v.clone()], None).unwrap();
    assert_eq!(rows(&out.unimodal[0]), vec![vec![2., 3.]]);
    assert_eq!(rows(&out.unimodal[1]), vec![vec![2., 5.]]);
    assert_eq!(rows(&out.fused), vec![vec![4., 8.]]);

    // FiLM: film = Linear(2 -> 4): gamma = [a0, a1], beta = [1, 0]; fc = identity, bias 0.
    let film = new_head(FusionKind::Film, &[2, 2], 2, LinearInit::Pytorch, 1).unwrap();
    set(
        &film,
        "film.weight",
        t2(&[1., 0., 0., 1., 0., 0., 0., 0.], 4, 2),
    );
    set(
        &film,
        "film.bias",
        Tensor::new(&[0f32, 0., 1., 0.], &dev()).unwrap(),
    );
    set(&film, "fc.weight", t2(&[1., 0., 0., 1.], 2, 2));
    set(&film, "fc.bias", Tensor::new(&[0f32, 0.], &dev()).unwrap());
    let out = film.forward(&[a.clone(), v.clone()], None).unwrap();
    // gamma * v + beta = [1*3 + 1, 2*-1 + 0]
    assert_eq!(rows(&out.fused), vec![vec![4., -2.]]);
    // audio only: v = 0 -> beta; visual only: a = 0 -> gamma = 0, beta = [1, 0].
    assert_eq!(rows(&out.unimodal[0]), vec![vec![1., 0.]]);
    assert_eq!(rows(&out.unimodal[1]), vec![vec![1., 0.]]);

    // gated: fc_x = 0 weights, bias [0, ln 3] -> gate [0.5, 0.75]; fc_y identity; fc identity.
    let gated = new_head(FusionKind::Gated, &[2, 2], 2, LinearInit::Pytorch, 1).unwrap();
    set(&gated, "fc_x.weight", t2(&[0.; 4], 2, 2));
    set(
        &gated,
        "fc_x.bias",
        Tensor::new(&[0f32, 3f32.ln()], &dev()).unwrap(),
    );
    for n in ["fc_y", "fc"] {
        set(&gated, &format!("{n}.weight"), t2(&[1., 0., 0., 1.], 2, 2));
        set(
            &gated,
            &format!("{n}.bias"),
            Tensor::new(&[0f32, 0.], &dev()).unwrap(),
        );
    }
    let out = gated.forward(&[a, v], None).unwrap();
    assert!(close(&out.fused, &t2(&[1.5, -0.75], 1, 2)));
    assert!(close(&out.unimodal[0], &t2(&[0., 0.], 1, 2)));

    let three = new_head(FusionKind::Film, &[2, 2, 2], 2, LinearInit::Pytorch, 1);
    assert!(three.is_err());
}

#[test]
fn linear_inits_follow_pytorch_and_xavier() {
    let head = new_head(FusionKind::Concat, &[100, 300], 50, LinearInit::Pytorch, 3).unwrap();
    let w = head
        .vars
        .get("fc.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let bound = 1.0 / 400f32.sqrt();
    assert!(w.iter().all(|x| x.abs() <= bound));
    assert!(w.iter().any(|x| x.abs() > 0.9 * bound));
    let head = new_head(
        FusionKind::Concat,
        &[100, 300],
        50,
        LinearInit::XavierNormal,
        3,
    )
    .unwrap();
    let w = head
        .vars
        .get("fc.weight")
        .unwrap()
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!(
        (std / (2.0f32 / 450.0).sqrt() - 1.0).abs() < 0.05,
        "std {std}"
    );
    let bias = head.vars.get("fc.bias").unwrap();
    assert_eq!(bias.as_tensor().to_vec1::<f32>().unwrap(), vec![0.0; 50]);
}

#[test]
fn model_groups_masks_and_buffers() {
    let names: Vec<String> = ["audio", "visual", "flow"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let specs = vec![
        EncoderSpec::from(SmallCnnOptions {
            in_channels: 1,
            width: 2,
            bn_init: BnInit::Ones,
        }),
        EncoderSpec::from(Resnet18Options {
            in_channels: 3,
            width: 0.0625,
            pretrained: None,
            bn_init: BnInit::Normal,
        }),
        EncoderSpec::from(SmallCnnOptions {
            in_channels: 2,
            width: 2,
            bn_init: BnInit::Ones,
        }),
    ];
    let model = MultimodalModel::new(
        &names,
        &specs,
        FusionKind::Concat,
        LinearInit::Pytorch,
        4,
        1,
        &dev(),
    )
    .unwrap();
    let inputs = vec![
        Tensor::randn(0f32, 1.0, (3, 1, 16, 12), &dev()).unwrap(),
        Tensor::randn(0f32, 1.0, (3, 2, 3, 32, 32), &dev()).unwrap(),
        Tensor::randn(0f32, 1.0, (3, 2, 16, 16), &dev()).unwrap(),
    ];
    let before = model.buffers().unwrap();
    let out = model.forward(&inputs, None, true).unwrap();
    // `buffers` gave copies: the training forward moved the running statistics, not them.
    let after = model.buffers().unwrap();
    assert_eq!(before.len(), after.len());
    let moved = before.iter().zip(&after).filter(|((_, a), (_, b))| {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() > 0.0
    });
    assert!(
        moved.count() > 0,
        "a training forward moves running statistics"
    );
    // Running statistics are variables of the model but no parameter.
    let params = model.named_params();
    assert!(after
        .iter()
        .all(|(n, _)| !params.iter().any(|(p, _)| p == n)));
    assert!(model
        .vars()
        .get("encoders.visual.bn1.running_var")
        .is_some());
    assert_eq!(out.features[1].dims(), &[3, 32]);
    assert_eq!(out.unimodal_logits.len(), 3);
    assert_eq!(
        model
            .group(ParamGroup::EncoderConvKernels(1))
            .unwrap()
            .len(),
        20
    );
    assert_eq!(
        model
            .group(ParamGroup::EncoderConvKernels(0))
            .unwrap()
            .len(),
        3
    );
    assert_eq!(model.group(ParamGroup::Head).unwrap().len(), 2);
    // A concat head has no classifier of one modality's own.
    assert!(model.group(ParamGroup::HeadOf(1)).unwrap().is_empty());
    assert!(model.group(ParamGroup::Mixer).unwrap().is_empty());
    let n = model.named_params();
    assert!(n
        .iter()
        .any(|(k, _)| k == "encoders.visual.layer4.1.bn2.bias"));
    assert_eq!(n.len(), 12 + 60 + 12 + 2);
    // Input masking zeroes exactly the dropped rows.
    let keep = t2(&[1., 0., 1., 0., 1., 1., 1., 1., 0.], 3, 3);
    let masked = MultimodalModel::mask_inputs(&inputs, &keep).unwrap();
    let row_sum = |t: &Tensor, r: usize| {
        t.get(r)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(row_sum(&masked[1], 0), 0.0);
    assert_eq!(row_sum(&masked[0], 1), 0.0);
    assert_eq!(row_sum(&masked[2], 2), 0.0);
    assert!(row_sum(&masked[1], 1) > 0.0);
    // Buffers round-trip by model-level name.
    let bufs = model.buffers().unwrap();
    let (name, t) = &bufs[bufs.len() - 1];
    assert!(name.starts_with("encoders.flow."));
    model.set_buffer(name, t.zeros_like().unwrap()).unwrap();
    assert!(model
        .buffers()
        .unwrap()
        .last()
        .unwrap()
        .1
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|x| *x == 0.0));
    assert!(model
        .set_buffer("encoders.sound.bn0.running_mean", t.clone())
        .is_err());
}

#[test]
fn batch_norm_weights_start_at_one_or_from_normal_1_002() {
    let dev = Device::Cpu;
    let names = vec!["a".to_string(), "b".to_string()];
    let spec = |bn_init| {
        EncoderSpec::from(Resnet18Options {
            in_channels: 1,
            width: 0.125,
            pretrained: None,
            bn_init,
        })
    };
    let bn_weights = |init| -> Vec<f32> {
        let model = MultimodalModel::new(
            &names,
            &[spec(init), spec(init)],
            FusionKind::Concat,
            LinearInit::Pytorch,
            3,
            5,
            &dev,
        )
        .unwrap();
        model
            .named_params()
            .into_iter()
            .filter(|(n, _)| n.contains("bn") && n.ends_with(".weight"))
            .flat_map(|(_, v)| v.as_tensor().to_vec1::<f32>().unwrap())
            .collect()
    };
    assert!(bn_weights(BnInit::Ones).iter().all(|&w| w == 1.0));
    let w = bn_weights(BnInit::Normal);
    let n = w.len() as f64;
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    assert!(
        n > 100.0 && (mean - 1.0).abs() < 0.005,
        "mean {mean} over {n}"
    );
    assert!((std - 0.02).abs() < 0.004, "std {std}");
}

#[test]
fn each_modalitys_own_classifier_under_sum_and_blend() {
    for kind in [FusionKind::Sum, FusionKind::Blend] {
        let head = new_head(kind, &[3, 2, 4], 5, LinearInit::Pytorch, 0).unwrap();
        let named = head.vars.named();
        for m in 0..3 {
            let want: Vec<_> = named
                .iter()
                .filter(|(n, _)| n.starts_with(&format!("fc.{m}.")))
                .map(|(_, v)| v.as_tensor().id())
                .collect();
            let got: Vec<_> = head
                .modality_params(m)
                .unwrap()
                .iter()
                .map(|v| v.as_tensor().id())
                .collect();
            assert_eq!(got.len(), 2, "{kind:?} {m}");
            assert_eq!(got, want, "{kind:?} {m}");
        }
    }
}

/// An encoder kind from outside the crate: a small CNN whose width is fixed.
struct FixedSmallCnn;

impl mmbal_fusion::EncoderKind for FixedSmallCnn {
    fn in_channels(&self, options: &toml::Table) -> anyhow::Result<usize> {
        match options.get("in_channels").and_then(|v| v.as_integer()) {
            Some(c) if options.len() == 1 => Ok(c as usize),
            _ => anyhow::bail!("expected only in_channels, got {options:?}"),
        }
    }
    fn build(
        &self,
        options: &toml::Table,
        slot: &mmbal_fusion::EncoderSlot,
    ) -> anyhow::Result<Box<dyn mmbal_encoders::Encoder>> {
        let c = self.in_channels(options)?;
        Ok(Box::new(mmbal_encoders::SmallCnn::new(
            c,
            3,
            slot.var_builder(),
        )?))
    }
}

#[test]
fn encoders_are_built_by_kind_and_new_kinds_register() {
    mmbal_fusion::register_encoder("fixed-cnn", &FixedSmallCnn).unwrap();
    assert!(mmbal_fusion::register_encoder("small-cnn", &FixedSmallCnn).is_err());
    let spec: EncoderSpec = toml::from_str("kind = \"fixed-cnn\"\nin_channels = 1").unwrap();
    assert_eq!(spec.check().unwrap(), 1);
    let builtin: EncoderSpec =
        toml::from_str("kind = \"small-cnn\"\nin_channels = 1\nwidth = 3").unwrap();
    let names = vec!["a".to_string(), "b".to_string()];
    let model = MultimodalModel::new(
        &names,
        &[spec, builtin.clone()],
        FusionKind::Concat,
        LinearInit::Pytorch,
        4,
        0,
        &dev(),
    )
    .unwrap();
    // Same kind of network, same seed stream (seed + modality): the registered kind builds
    // what the built-in one does with the same width.
    assert_eq!(model.encoder(0).out_dim(), 12);
    let x = Tensor::randn(0f32, 1.0, (2, 1, 12, 12), &dev()).unwrap();
    let out = model.forward(&[x.clone(), x], None, false).unwrap();
    assert_eq!(out.fused_logits.dims(), &[2, 4]);
    // The built-in options are typed: an unknown key is an error naming it.
    let bad: EncoderSpec =
        toml::from_str("kind = \"small-cnn\"\nin_channels = 1\nwidht = 3").unwrap();
    assert!(format!("{:#}", bad.check().unwrap_err()).contains("widht"));
    // And a spec round-trips through TOML as the config writes it.
    let text = toml::to_string(&builtin).unwrap();
    assert_eq!(toml::from_str::<EncoderSpec>(&text).unwrap(), builtin);
}

/// `linear` draws what the hand-written initialisers it replaced drew, bitwise, for both
/// initialisations: PyTorch's uniform(+-1/sqrt(in)) weight then bias, and Xavier-normal weight
/// with a zero bias, from the builder's ChaCha stream.
#[test]
fn linear_layers_draw_what_the_hand_written_init_drew() {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let (inp, out) = (12, 5);
    for init in [LinearInit::Pytorch, LinearInit::XavierNormal] {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let (w0, b0): (Vec<f32>, Vec<f32>) = match init {
            LinearInit::Pytorch => {
                let bound = 1.0 / (inp as f64).sqrt();
                let mut draw = |n: usize| -> Vec<f32> {
                    (0..n)
                        .map(|_| rng.random_range(-bound..bound) as f32)
                        .collect()
                };
                (draw(out * inp), draw(out))
            }
            LinearInit::XavierNormal => {
                let normal = Normal::new(0.0, (2.0 / (inp + out) as f64).sqrt()).unwrap();
                (
                    (0..out * inp)
                        .map(|_| normal.sample(&mut rng) as f32)
                        .collect(),
                    vec![0.0; out],
                )
            }
        };
        let vars = ModelVars::new();
        let l = mmbal_fusion::linear(inp, out, init, vars.seeded(3, &dev()).pp("head.fc")).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(flat(l.weight()) == w0, "{init:?} weight");
        assert!(flat(l.bias().unwrap()) == b0, "{init:?} bias");
        assert!(vars.get("head.fc.weight").is_some());
    }
}

/// A model is assembled from parts built on one `ModelVars`; a variable outside the parts'
/// paths (`encoders.<modality>`, `head`) is refused, naming it.
#[test]
fn from_parts_refuses_variables_outside_the_parts() {
    let build = |stray: bool| {
        let vars = ModelVars::new();
        let enc = mmbal_encoders::SmallCnn::new(1, 2, vars.seeded(0, &dev()).pp("encoders.a"));
        let head = FusionHead::new(
            FusionKind::Concat,
            &[8],
            3,
            LinearInit::Pytorch,
            vars.seeded(1, &dev()).pp("head"),
        )
        .unwrap();
        if stray {
            vars.seeded(2, &dev()).pp("extra").get(3, "w").unwrap();
        }
        MultimodalModel::from_parts(
            vec!["a".into()],
            vec![Box::new(enc.unwrap())],
            head,
            vars,
            &dev(),
        )
    };
    assert!(build(false).is_ok());
    let err = build(true).err().unwrap().to_string();
    assert!(err.contains("extra.w"), "{err}");
}
