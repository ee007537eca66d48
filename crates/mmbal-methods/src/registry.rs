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
    ("mmcosine", crate::mmcosine::build),
    ("opm", crate::opm::build),
    ("mmpareto", crate::mmpareto::build),
    ("inforeg", crate::inforeg::build),
    ("qmf", crate::qmf::build),
    ("lfm", crate::lfm::build),
    ("cml", crate::cml::build),
    ("mbsd", crate::mbsd::build),
    ("amco", crate::amco::build),
    ("agm", crate::agm::build),
    ("mslr", crate::mslr::build),
    ("relearning", crate::relearning::build),
    ("umt", crate::umt::build),
    ("mses", crate::mses::build),
    ("reconboost", crate::reconboost::build),
    ("ume", crate::ume::build),
    ("di-mml", crate::dimml::build),
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

/// A typed options struct as the `[method]` table it was parsed from (what
/// [`crate::BalanceMethod::options`] returns); an option that is `None` is left out.
pub fn options_table<T: serde::Serialize>(method: &str, options: &T) -> toml::Table {
    match toml::Table::try_from(options) {
        Ok(t) => t,
        // Every options struct is a table of plain values; anything else is a bug in the method.
        Err(e) => panic!("options of `{method}` are not a TOML table: {e}"),
    }
}

/// For methods without options.
pub fn no_options(method: &str, options: &toml::Table) -> Result<()> {
    if let Some(k) = options.keys().next() {
        bail!("method `{method}` takes no options, got `{k}`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_methods_resolved_options_build_the_same_method() {
        for (name, _) in METHODS {
            let resolved = build_method(name, &toml::Table::new()).unwrap().options();
            let again = build_method(name, &resolved)
                .unwrap_or_else(|e| panic!("{name}: its own options are refused: {e:#}"));
            assert_eq!(again.options(), resolved, "{name}");
        }
        // Options given are kept, the rest filled in.
        let t: toml::Table = toml::from_str("alpha = 0.5").unwrap();
        let ogm = build_method("ogm", &t).unwrap().options();
        assert_eq!(ogm["alpha"].as_float(), Some(0.5));
        assert_eq!(ogm["end_epoch"].as_integer(), Some(50));
    }
}
