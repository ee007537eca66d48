//! The example method of docs/adding-a-method.md, registered at run time and trained for one
//! epoch: if this test breaks, the guide is wrong.

use anyhow::Result;
use candle_core::Tensor;
use mmbal_fusion::{ForwardOut, FusionKind, ParamGroup};
use mmbal_methods::{
    options_table, parse_options, register, BalanceMethod, Grads, Requirements, StepCtx,
};
use mmbal_train::{Quiet, TrainConfig, Trainer};
use serde::{Deserialize, Serialize};

/// Joint training plus `weight` times each modality's own cross-entropy (an auxiliary unimodal
/// loss), logging the squared gradient norm each modality's classifier got.
struct AuxUnimodal {
    opts: Options,
    last_aux: f64,
    head_grad: Vec<f64>,
}

#[derive(Serialize, Deserialize)]
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

    /// Each modality needs a classifier of its own, to read its gradient.
    fn requirements(&self) -> Requirements {
        Requirements {
            fusion: Some(FusionKind::Sum),
            ..Default::default()
        }
        .at_least(2)
    }

    fn options(&self) -> toml::Table {
        options_table(self.name(), &self.opts)
    }

    fn loss(&mut self, ctx: &StepCtx, out: &ForwardOut) -> Result<Tensor> {
        let mut loss = candle_nn::loss::cross_entropy(&out.fused_logits, ctx.labels)?;
        let mut aux = 0.0;
        for logits in &out.unimodal_logits {
            let l = candle_nn::loss::cross_entropy(logits, ctx.labels)?;
            aux += l.to_scalar::<f32>()? as f64;
            loss = (loss + (l * self.opts.weight)?)?;
        }
        self.last_aux = aux;
        Ok(loss)
    }

    fn observe_gradients(&mut self, ctx: &StepCtx, _out: &ForwardOut, grads: &Grads) -> Result<()> {
        self.head_grad.clear();
        for m in 0..ctx.model.num_modalities() {
            let mut sq = 0.0;
            for v in ctx.model.group(ParamGroup::HeadOf(m))? {
                if let Some(g) = grads.get(&v) {
                    sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
                }
            }
            self.head_grad.push(sq);
        }
        Ok(())
    }

    fn diagnostics(&self) -> Vec<(String, f64)> {
        let mut d = vec![("aux_loss".to_string(), self.last_aux)];
        for (m, g) in self.head_grad.iter().enumerate() {
            d.push((format!("head_grad_sq_{m}"), *g));
        }
        d
    }
}

fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    Ok(Box::new(AuxUnimodal {
        opts: parse_options("aux-unimodal", options)?, // unknown keys are errors
        last_aux: 0.0,
        head_grad: Vec::new(),
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
    // The default concat head is refused: the method declared the sum head.
    let err = Trainer::from_config(cfg.clone()).err().expect("refused");
    assert!(format!("{err:#}").contains("fusion = \"sum\""), "{err:#}");
    cfg.model.fusion = FusionKind::Sum;
    let mut t = Trainer::from_config(cfg.clone()).unwrap();
    let summary = t.run(&mut Quiet).unwrap();
    let last = summary.last.unwrap();
    assert_eq!(summary.method, "aux-unimodal");
    assert!(last.method["aux_loss"] > 0.0);
    assert!(last.method["head_grad_sq_0"] > 0.0 && last.method["head_grad_sq_1"] > 0.0);
    let saved = std::fs::read_to_string(cfg.run_dir().join("config.toml")).unwrap();
    assert!(saved.contains("weight = 0.3"), "{saved}");
    let _ = std::fs::remove_dir_all(out);
}
