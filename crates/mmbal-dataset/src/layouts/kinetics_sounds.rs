//! Kinetics-Sounds as the OGM-GE and PMR code read it: `train.txt`, `test.txt` (and `val.txt`,
//! carved when missing), lines `name,10,label`; audio a stored Kaldi fbank `audio/{id}.npy`
//! (1024x128), frames `visual/{id}`.

use super::{CommunityLayout, Entry, Layout, SplitLists};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

pub(super) struct KineticsSounds;

impl SplitLists for KineticsSounds {
    const LISTS: (&'static str, &'static str, &'static str) = ("train.txt", "val.txt", "test.txt");

    fn parse_line(&self, _n: usize, line: &str) -> Result<Option<(String, String)>> {
        let f = crate::csv_line::fields(line)?;
        if f.len() != 3 || f[0].is_empty() || f[2].is_empty() {
            bail!("expected `name,10,label`, found `{line}`");
        }
        Ok(Some((f[0].clone(), f[2].clone())))
    }
}

impl CommunityLayout for KineticsSounds {
    fn val_list(&self) -> Option<&'static str> {
        Some(Self::LISTS.1)
    }

    fn modalities(&self) -> &'static [(&'static str, &'static str)] {
        &[("audio", "audio/{id}.npy"), ("visual", "visual/{id}")]
    }

    fn train_and_test(&self, layout: &Layout, root: &Path) -> Result<(Vec<Entry>, PathBuf)> {
        self.train_and_test_lists(layout, root)
    }

    fn val(&self, path: &Path) -> Result<Vec<Entry>> {
        self.parse_list(path, crate::Split::Val)
    }
}
