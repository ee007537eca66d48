//! The example method of docs/adding-a-method.md, registered at run time and trained for one
//! epoch: if this test breaks, the guide is wrong.

use anyhow::Result;
use candle_core::Tensor;
use mmbal_fusion::ForwardOut;
use mmbal_methods::{parse_options, register, BalanceMethod, StepCtx};
use mmbal_train::{Quiet, TrainConfig, Trainer};
use serde::Deserialize;

/// Joint training plus `weight` times each modality's own cross-entropy (an auxiliary
/// unimodal loss).
struct AuxUnimodal {
    weight: f64,
    last_aux: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Options {
    weight: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { weight: 0.5 }
    }
}

impl BalanceMethod for AuxUnimodal {
    fn name(&self) -> &'static str {
        "aux-unimodal"
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let mut loss = candle_nn::loss::cross_entropy(&out.fused_logits, ctx.labels)?;
        let mut aux = 0.0;
        for logits in &out.unimodal_logits {
            let l = candle_nn::loss::cross_entropy(logits, ctx.labels)?;
            aux += l.to_scalar::<f32>()? as f64;
            loss = (loss + (l * self.weight)?)?;
        }
        self.last_aux = aux;
        Ok(loss)
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        vec![("aux_loss".into(), self.last_aux)]
    }
}

fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    let opts: Options = parse_options("aux-unimodal", options)?;
    Ok(Box::new(AuxUnimodal {
        weight: opts.weight,
        last_aux: 0.0,
    }))
}

#[test]
fn example_method_registers_and_trains_one_epoch() {
    register("aux-unimodal", build).unwrap();
    assert!(register("aux-unimodal", build).is_err(), "names are unique");
    assert!(
        register("joint", build).is_err(),
        "built-in names are taken"
    );
    let out = std::env::temp_dir().join(format!("mmbal-example-method-{}", std::process::id()));
    let mut cfg = TrainConfig {
        name: "aux".into(),
        out_dir: out.clone(),
        epochs: 1,
        batch_size: 4,
        ..TrainConfig::default()
    };
    cfg.data.synthetic.classes = 3;
    cfg.data.synthetic.per_class = 10;
    cfg.method.name = "aux-unimodal".into();
    cfg.method.options = toml::from_str("weight = 0.3").unwrap();
    let mut t = Trainer::from_config(cfg).unwrap();
    let summary = t.run(&mut Quiet).unwrap();
    let last = summary.last.unwrap();
    assert_eq!(summary.method, "aux-unimodal");
    assert!(last.method["aux_loss"] > 0.0);
    let _ = std::fs::remove_dir_all(out);
}
