//! CREMA-D as the OGM-GE code reads it: `train.csv`, `test.csv` (and `val.csv`, carved when
//! missing), lines `clip,EMO`; audio `AudioWAV/{id}.wav`, frames `Image-01-FPS/{id}`; the six
//! emotions in the reference's order.

use super::{CommunityLayout, Entry, Layout};
use anyhow::{bail, Result};
use std::path::Path;

/// CREMA-D's emotions in the OGM-GE reference order (label 0..5).
pub const CREMAD_CLASSES: [&str; 6] = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"];

pub(super) struct CremaD;

impl CommunityLayout for CremaD {
    fn split_lists(&self) -> Option<(&'static str, &'static str, &'static str)> {
        Some(("train.csv", "val.csv", "test.csv"))
    }

    fn parse_line(&self, _n: usize, line: &str) -> Result<Option<(String, String)>> {
        let f = crate::csv_line::fields(line)?;
        if f.len() != 2 || f[0].is_empty() || f[1].is_empty() {
            bail!("expected `clip,EMO`, found `{line}`");
        }
        Ok(Some((f[0].clone(), f[1].clone())))
    }

    fn modalities(&self) -> &'static [(&'static str, &'static str)] {
        &[
            ("audio", "AudioWAV/{id}.wav"),
            ("visual", "Image-01-FPS/{id}"),
        ]
    }

    fn default_classes(&self, _: &Layout, _: &Path, _: &[Entry]) -> Result<Vec<String>> {
        Ok(CREMAD_CLASSES.iter().map(|c| c.to_string()).collect())
    }
}
