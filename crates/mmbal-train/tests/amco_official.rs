//! AMCo against BalanceBenchmark's implementation (GeWu-Lab/BalanceBenchmark at 4c1482f,
//! `AMCo_trainer.py` and `BaseClassifierAMCoModel`; no code of the authors was found): the values
//! in tests/fixtures/amco_official.safetensors come from its own `training_step`, `forward` and
//! `unimodality_calculate`, run by tests/fixtures/gen_amco.py on given features, a concat head and
//! the `C x C` layer (see that script's docstring). mmbal's `amco_forward` with the method's loss
//! (the output's cross-entropy plus each modality's) must give the same loss and gradients, and
//! `amco_dominant` the same flags: a step with nothing masked and one with the audio logits
//! masked.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::Linear;
use common::{case_features, fixture, rel};
use mmbal_encoders::ModelVars;
use mmbal_fusion::{linear, FusionHead, FusionKind, LinearInit};

#[test]
fn amco_matches_balancebenchmark_training_step() {
    let f = fixture("amco_official");
    let dev = Device::Cpu;
    let vars = ModelVars::new();
    let head = FusionHead::new(
        FusionKind::Concat,
        &[8, 8],
        5,
        LinearInit::Pytorch,
        vars.seeded(0, &dev).pp("head"),
    )
    .unwrap();
    let star: Linear = linear(5, 5, LinearInit::Pytorch, vars.seeded(1, &dev).pp("star")).unwrap();
    for (name, key) in [
        ("head.fc.weight", "weight"),
        ("head.fc.bias", "bias"),
        ("star.weight", "star.weight"),
        ("star.bias", "star.bias"),
    ] {
        vars.get(name).unwrap().set(&f[key]).unwrap();
    }
    let sigma = f["meta.sigma"].to_vec1::<f32>().unwrap()[0] as f64;
    let mut flags_seen = Vec::new();
    for step in ["s0", "s1"] {
        let feats = case_features(&f, step, 2);
        let features: Vec<Tensor> = feats.iter().map(|v| v.as_tensor().clone()).collect();
        let labels = f[&format!("{step}.label")].to_dtype(DType::U32).unwrap();
        let masks: Vec<Option<Tensor>> = match f.get(&format!("{step}.mask")) {
            Some(m) => vec![Some(m.clone()), None],
            None => vec![None, None],
        };
        let a = mmbal_methods::amco_forward(&head, &star, &features, &masks).unwrap();
        let loss_out = candle_nn::loss::cross_entropy(&a.output, &labels).unwrap();
        let want = &f[&format!("{step}.loss")];
        assert!(
            rel(&loss_out.reshape(1).unwrap(), want) < 1e-5,
            "{step}: loss {loss_out} vs {want}"
        );
        let mut loss = loss_out;
        for u in &a.unimodal {
            loss = (loss + candle_nn::loss::cross_entropy(u, &labels).unwrap()).unwrap();
        }
        let grads = loss.backward().unwrap();
        for (i, v) in feats.iter().enumerate() {
            let r = rel(
                grads.get(v).unwrap(),
                &f[&format!("{step}.grad.features.{i}")],
            );
            assert!(r < 1e-4, "{step}: feature {i} gradient {r:e}");
        }
        for (name, key) in [
            ("head.fc.weight", "weight"),
            ("head.fc.bias", "bias"),
            ("star.weight", "star.weight"),
            ("star.bias", "star.bias"),
        ] {
            let v = vars.get(name).unwrap();
            let r = rel(grads.get(&v).unwrap(), &f[&format!("{step}.grad.{key}")]);
            assert!(r < 1e-4, "{step}: {name} gradient {r:e}");
        }
        let flags = mmbal_methods::amco_dominant(&a.unimodal, sigma).unwrap();
        let want: Vec<bool> = f[&format!("{step}.dependent")]
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| x == 1.0)
            .collect();
        assert_eq!(flags, want, "{step}: dominance flags");
        flags_seen.push(flags);
    }
    assert!(
        flags_seen.iter().flatten().any(|&x| x),
        "a modality is found dominant"
    );
}
