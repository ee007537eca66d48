//! Methods by name: one line per method.

use crate::BalanceMethod;
use anyhow::{bail, Result};

/// Builds a method from its options (the `[method]` table of a config, without `name`).
pub type Builder = fn(&toml::Table) -> Result<Box<dyn BalanceMethod>>;

/// Every registered method.
pub const METHODS: &[(&str, Builder)] = &[
    ("joint", crate::joint::build),
    ("sample-level", crate::sample_level::build),
    ("modality-level", crate::modality_level::build),
    ("ogm-ge", crate::ogm::build_ge),
    ("ogm", crate::ogm::build_plain),
    ("pmr", crate::pmr::build),
    ("mla", crate::mla::build),
    ("greedy", crate::greedy::build),
];

/// The method registered as `name`.
pub fn build_method(name: &str, options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    match METHODS.iter().find(|(n, _)| *n == name) {
        Some((_, build)) => build(options),
        None => bail!(
            "unknown method `{name}`; known: {}",
            METHODS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Options of a method that takes a typed options struct: unknown keys are rejected.
pub fn parse_options<T: serde::de::DeserializeOwned>(
    method: &str,
    options: &toml::Table,
) -> Result<T> {
    toml::Value::Table(options.clone())
        .try_into()
        .map_err(|e| anyhow::anyhow!("[method] options of `{method}`: {e}"))
}

/// For methods without options.
pub fn no_options(method: &str, options: &toml::Table) -> Result<()> {
    if let Some(k) = options.keys().next() {
        bail!("method `{method}` takes no options, got `{k}`");
    }
    Ok(())
}
