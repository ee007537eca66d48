//! AVE: `trainSet.txt`, `valSet.txt`, `testSet.txt` (the community's own val list, never
//! carved), lines `Class&ytid&quality&start&end` (an `Annotations.txt` header is skipped);
//! audio `audio/{id}.wav`, frames `visual/{id}`.

use super::CommunityLayout;
use anyhow::{bail, Result};

pub(super) struct Ave;

impl CommunityLayout for Ave {
    fn split_lists(&self) -> Option<(&'static str, &'static str, &'static str)> {
        Some(("trainSet.txt", "valSet.txt", "testSet.txt"))
    }

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

    fn carves_val(&self) -> bool {
        false
    }
}
