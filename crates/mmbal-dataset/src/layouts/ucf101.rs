//! UCF-101 as the field's two-stream code reads it: `classInd.txt` (`1 ApplyEyeMakeup`),
//! `trainlist01.txt` (`Class/v_Name.avi index`), `testlist01.txt` (`Class/v_Name.avi`) and
//! `vallist01.txt`, carved when missing; RGB frames `rgb/{id}` and two-channel flow
//! `flow/{uv}/{id}` (u and v folders).

use super::{numbered, read_text, CommunityLayout, Entry, Layout};
use anyhow::{anyhow, bail, Result};
use std::collections::HashMap;
use std::path::Path;

pub(super) struct Ucf101;

impl CommunityLayout for Ucf101 {
    fn split_lists(&self) -> Option<(&'static str, &'static str, &'static str)> {
        Some(("trainlist01.txt", "vallist01.txt", "testlist01.txt"))
    }

    fn parse_line(&self, _n: usize, line: &str) -> Result<Option<(String, String)>> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !(matches!(f.len(), 1 | 2) && f[0].contains('/')) {
            bail!("expected `Class/v_Name.avi [index]`, found `{line}`");
        }
        let (class, file) = f[0].split_once('/').unwrap();
        let stem = Path::new(file)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The index, when present, must agree with the folder (checked with classInd).
        let label = match f.get(1) {
            Some(i) => format!("{class}#{i}"),
            None => class.to_string(),
        };
        Ok(Some((stem, label)))
    }

    fn list_file(&self) -> &'static str {
        "classInd.txt"
    }

    fn modalities(&self) -> &'static [(&'static str, &'static str)] {
        &[("rgb", "rgb/{id}"), ("flow", "flow/{uv}/{id}")]
    }

    /// The classes of `classInd.txt`, in its order.
    fn default_classes(&self, layout: &Layout, root: &Path, _: &[Entry]) -> Result<Vec<String>> {
        let path = root.join(layout.list_file());
        let text = read_text(&path)?;
        let mut classes = Vec::new();
        for (n, line) in numbered(&text) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let index = f.first().and_then(|i| i.parse::<usize>().ok());
            if f.len() != 2 || index != Some(classes.len() + 1) {
                bail!(
                    "{}:{n}: expected `{} ClassName`, found `{line}`",
                    path.display(),
                    classes.len() + 1
                );
            }
            classes.push(f[1].to_string());
        }
        Ok(classes)
    }

    /// `Class#N` from a train list: N (1-based) must name the same class as the folder.
    fn label_index(
        &self,
        label: &str,
        classes: &[String],
        class_of: &HashMap<&str, usize>,
    ) -> Result<usize> {
        let Some((class, n)) = label.split_once('#') else {
            return super::label_by_name_or_index(label, classes, class_of);
        };
        let i = class_of
            .get(class)
            .copied()
            .ok_or_else(|| anyhow!("unknown class folder `{class}` (not in classInd)"))?;
        if n.parse::<usize>().ok() != Some(i + 1) {
            bail!(
                "class index {n} does not match folder `{class}` (classInd gives {})",
                i + 1
            );
        }
        Ok(i)
    }
}
