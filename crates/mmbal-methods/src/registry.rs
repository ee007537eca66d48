//! Methods by name: one line per method.

use crate::BalanceMethod;
use anyhow::{bail, Result};
use std::sync::Mutex;

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
    ("g-blending", crate::gblending::build),
];

/// Methods registered at run time by code outside this crate ([`register`]).
static EXTRA: Mutex<Vec<(String, Builder)>> = Mutex::new(Vec::new());

/// Registers a method defined outside this crate under `name`, so configs can name it. A name
/// already taken (built in or registered) is an error.
pub fn register(name: &str, build: Builder) -> Result<()> {
    let mut extra = EXTRA.lock().unwrap();
    if METHODS.iter().any(|(n, _)| *n == name) || extra.iter().any(|(n, _)| n == name) {
        bail!("a method named `{name}` is already registered");
    }
    extra.push((name.to_string(), build));
    Ok(())
}

/// The method registered as `name` (built in, then registered at run time).
pub fn build_method(name: &str, options: &toml::Table) -> Result<Box<dyn BalanceMethod>> {
    if let Some((_, build)) = METHODS.iter().find(|(n, _)| *n == name) {
        return build(options);
    }
    let extra = EXTRA.lock().unwrap();
    match extra.iter().find(|(n, _)| n == name) {
        Some((_, build)) => build(options),
        None => {
            let mut known: Vec<String> = METHODS.iter().map(|(n, _)| n.to_string()).collect();
            known.extend(extra.iter().map(|(n, _)| n.clone()));
            bail!("unknown method `{name}`; known: {}", known.join(", "))
        }
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
