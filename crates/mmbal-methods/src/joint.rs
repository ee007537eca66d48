//! Joint training: cross-entropy of the fused logits, one step per batch. Every hook keeps its
//! default; this file is the template for a new method.

use crate::BalanceMethod;
use anyhow::Result;

/// Joint training: the cross-entropy of the fused logits, every hook at its default.
pub struct Joint;

impl BalanceMethod for Joint {
    fn name(&self) -> &'static str {
        "joint"
    }
}

/// Joint training has no options.
pub fn build(options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    crate::registry::no_options("joint", options)?;
    Ok(Box::new(Joint))
}
