//! VGGSound: one csv `vggsound.csv`, lines `ytid,start,label,split` (train or test; a label may
//! be quoted), ids `ytid_start` with the start in 6 digits; `val.csv` in the same format,
//! carved when missing; audio `audio/{id}.wav`, frames `visual/{id}`.

use super::{numbered, read_text, CommunityLayout, Entry, Layout};
use crate::Split;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

pub(super) struct VggSound;

impl CommunityLayout for VggSound {
    fn val_list(&self) -> Option<&'static str> {
        Some("val.csv")
    }

    fn list_file(&self) -> &'static str {
        "vggsound.csv"
    }

    fn train_and_test(&self, layout: &Layout, root: &Path) -> Result<(Vec<Entry>, PathBuf)> {
        let path = root.join(layout.list_file());
        Ok((parse_vggsound(&path, &|s| Split::parse(s))?, path))
    }

    fn val(&self, path: &Path) -> Result<Vec<Entry>> {
        parse_vggsound(path, &|_| Some(Split::Val))
    }
}

/// VGGSound's one csv: `ytid,start,label,split` (train or test).
fn parse_vggsound(path: &Path, split_of: &dyn Fn(&str) -> Option<Split>) -> Result<Vec<Entry>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (n, line) in numbered(&text) {
        let at = || format!("{}:{n}", path.display());
        let f = crate::csv_line::fields(line).with_context(at)?;
        let start = f.get(1).and_then(|s| s.parse::<u64>().ok());
        let (Some(start), 4) = (start, f.len()) else {
            bail!(
                "{}: expected `ytid,start,label,split` with a whole number of seconds, found `{line}`",
                at()
            );
        };
        let split = split_of(&f[3])
            .ok_or_else(|| anyhow!("{}: unknown split `{}` (train, val or test)", at(), f[3]))?;
        out.push(Entry {
            id: format!("{}_{start:06}", f[0]),
            label: f[2].clone(),
            split,
            file: path.to_path_buf(),
            line: n,
            raw: line.to_string(),
        });
    }
    Ok(out)
}
