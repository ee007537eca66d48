//! Three optimizer steps against PyTorch 2.11 (tests/fixtures/optimizers.safetensors).

use candle_core::{safetensors, Device, Tensor, Var};
use mmbal_train::optim::{Adam, Optimizer, Sgd};
use std::collections::HashMap;

fn run(f: &HashMap<String, Tensor>, tag: &str, make: impl Fn(Var) -> Box<dyn Optimizer>) {
    let p = Var::from_tensor(&f["param0"]).unwrap();
    let mut opt = make(p.clone());
    for k in 0..3 {
        // Feed the fixture's gradient through a linear loss so the GradStore holds exactly it.
        let g = f["grads"].get(k).unwrap();
        let grads = (p.as_tensor() * &g)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads).unwrap();
        let want = &f[&format!("{tag}_after_{}", k + 1)];
        let d = (p.as_tensor() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let d = d.to_scalar::<f32>().unwrap();
        assert!(d < 2e-6, "{tag} after {} steps differs by {d}", k + 1);
    }
}

#[test]
fn optimizers_match_pytorch() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/optimizers.safetensors");
    let f: HashMap<String, Tensor> = safetensors::load(&path, &Device::Cpu).unwrap();
    run(&f, "sgd", |p| Box::new(Sgd::new(vec![p], 0.1, 0.9, 1e-4)));
    run(&f, "sgd_plain", |p| {
        Box::new(Sgd::new(vec![p], 0.1, 0.0, 0.0))
    });
    run(&f, "adam", |p| Box::new(Adam::new(vec![p], 1e-2, 1e-4)));
    run(&f, "adamw", |p| Box::new(Adam::adamw(vec![p], 1e-2, 1e-2)));
}

/// Optimizer state must not keep autograd graphs alive: a momentum buffer that tracked its ops
/// would chain every step's graph to the next, and memory would grow without bound.
#[test]
fn optimizer_state_holds_no_graph() {
    let w = Var::new(&[1.0f32, -2.0, 0.5], &Device::Cpu).unwrap();
    let mut opts: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Sgd::new(vec![w.clone()], 0.1, 0.9, 1e-4)),
        Box::new(Adam::new(vec![w.clone()], 0.1, 1e-4)),
        Box::new(Adam::adamw(vec![w.clone()], 0.1, 1e-2)),
    ];
    for opt in opts.iter_mut() {
        for _ in 0..3 {
            let loss = (w.as_tensor().sqr().unwrap() * 3.0)
                .unwrap()
                .sum_all()
                .unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let state = opt.state();
        assert!(!state.is_empty());
        for (name, t) in state {
            assert!(
                !t.track_op(),
                "optimizer state `{name}` holds an autograd graph"
            );
        }
        assert!(!w.as_tensor().detach().track_op());
    }
}
