//! `KEY=VALUE` overrides of a TOML form, as `--set` gives them on the command line: dotted
//! keys reach into nested tables, the value is read as TOML (`3`, `1e-3`, `true`, `[1, 2]`) and
//! otherwise taken as a string. Used for preprocessing recipes and training configs, whose
//! own parsers then reject unknown keys.

use anyhow::{Context, Result};

/// `text` as a TOML value, or as a string when it is not one (`--set name=grid`).
pub fn parse_value(text: &str) -> toml::Value {
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Applies one `KEY=VALUE` to `table`; `what` names the form in errors ("the recipe").
pub fn apply(table: &mut toml::Table, set: &str, what: &str) -> Result<()> {
    let (key, value) = set
        .split_once('=')
        .with_context(|| format!("--set {set}: expected KEY=VALUE"))?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut at = table;
    for p in &parts[..parts.len() - 1] {
        at = at
            .get_mut(*p)
            .and_then(|v| v.as_table_mut())
            .with_context(|| format!("--set {set}: {what} has no table `{p}`"))?;
    }
    at.insert(
        parts[parts.len() - 1].to_string(),
        parse_value(value.trim()),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_keys_reach_nested_tables_and_values_are_typed() {
        let mut t: toml::Table = "a = 1\n[audio]\nframes = 2\n".parse().unwrap();
        apply(&mut t, "audio.frames=512", "the form").unwrap();
        apply(&mut t, "name=grid", "the form").unwrap();
        apply(&mut t, "lr=1e-3", "the form").unwrap();
        assert_eq!(t["audio"]["frames"].as_integer(), Some(512));
        assert_eq!(t["name"].as_str(), Some("grid"));
        assert_eq!(t["lr"].as_float(), Some(1e-3));
        let err = apply(&mut t, "video.fps=25", "the form").unwrap_err();
        assert!(format!("{err}").contains("the form has no table `video`"));
        assert!(apply(&mut t, "fps", "the form").is_err());
    }
}
