//! MM-Debiased: one JSON `mm-debiased.json`, `{id: {"subset": "train"|"val"|"test", "label":
//! name or index}}`, which names the val samples itself (nothing is carved); audio
//! `audio/{id}.wav`, frames `visual/{id}`.

use super::{read_text, CommunityLayout, Entry, Layout};
use crate::Split;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

pub(super) struct MmDebiased;

impl CommunityLayout for MmDebiased {
    fn val_list(&self) -> Option<&'static str> {
        None
    }

    fn list_file(&self) -> &'static str {
        "mm-debiased.json"
    }

    fn carves_val(&self) -> bool {
        false
    }

    fn train_and_test(&self, layout: &Layout, root: &Path) -> Result<(Vec<Entry>, PathBuf)> {
        let path = root.join(layout.list_file());
        Ok((parse_mm_debiased(&path)?, path))
    }

    fn val(&self, path: &Path) -> Result<Vec<Entry>> {
        bail!("{}: MM-Debiased has no val list of its own", path.display())
    }
}

/// MM-Debiased's JSON `{id: {"subset": "train"|"val"|"test", "label": name or index}}`.
fn parse_mm_debiased(path: &Path) -> Result<Vec<Entry>> {
    let text = read_text(path)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{}: not valid JSON", path.display()))?;
    let obj = value.as_object().ok_or_else(|| {
        anyhow!(
            "{}: expected an object {{id: {{subset, label}}}}",
            path.display()
        )
    })?;
    // The line of each id, for messages (serde_json keeps no positions for values).
    let line_of = |id: &str| {
        text.find(&format!("\"{id}\""))
            .map(|o| text[..o].matches('\n').count() + 1)
            .unwrap_or(1)
    };
    let mut out = Vec::new();
    for (id, v) in obj {
        let n = line_of(id);
        let at = || format!("{}:{n}", path.display());
        let subset = v.get("subset").and_then(|s| s.as_str());
        let label = match v.get("label") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(x)) if x.is_u64() => Some(x.to_string()),
            _ => None,
        };
        let (Some(subset), Some(label)) = (subset, label) else {
            bail!(
                "{}: sample `{id}`: expected {{\"subset\": \"train\"|\"val\"|\"test\", \"label\": name or index}}, found {v}",
                at()
            );
        };
        let split = Split::parse(subset)
            .ok_or_else(|| anyhow!("{}: sample `{id}`: unknown subset `{subset}`", at()))?;
        out.push(Entry {
            id: id.clone(),
            label,
            split,
            file: path.to_path_buf(),
            line: n,
            raw: String::new(),
        });
    }
    Ok(out)
}
