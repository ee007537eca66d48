//! AVE: `trainSet.txt`, `valSet.txt`, `testSet.txt` (the community's own val list, never
//! carved), lines `Class&ytid&quality&start&end` (an `Annotations.txt` header is skipped);
//! audio `audio/{id}.wav`, frames `visual/{id}`.

use super::{CommunityLayout, Entry, Layout, SplitLists};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub(super) struct Ave;

impl SplitLists for Ave {
    const LISTS: (&'static str, &'static str, &'static str) =
        ("trainSet.txt", "valSet.txt", "testSet.txt");

    fn parse_line(&self, n: usize, line: &str) -> Result<Option<(String, String)>> {
        let f: Vec<&str> = line.split('&').map(str::trim).collect();
        if n == 1 && f.first() == Some(&"Category") {
            return Ok(None); // Annotations.txt header
        }
        if f.len() != 5 || f[0].is_empty() || f[1].is_empty() {
            bail!("expected `Class&ytid&quality&start&end`, found `{line}`");
        }
        Ok(Some((f[1].to_string(), f[0].to_string())))
    }
}

impl CommunityLayout for Ave {
    fn val_list(&self) -> Option<&'static str> {
        Some(Self::LISTS.1)
    }

    fn carves_val(&self) -> bool {
        false
    }

    fn train_and_test(&self, layout: &Layout, root: &Path) -> Result<(Vec<Entry>, PathBuf)> {
        self.train_and_test_lists(layout, root)
    }

    fn val(&self, path: &Path) -> Result<Vec<Entry>> {
        self.parse_list(path, crate::Split::Val)
    }
}
