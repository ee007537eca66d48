//! Kinetics-Sounds as the OGM-GE and PMR code read it: `train.txt`, `test.txt` (and `val.txt`,
//! carved when missing), lines `name,10,label`; audio a stored Kaldi fbank `audio/{id}.npy`
//! (1024x128), frames `visual/{id}`.

use super::CommunityLayout;
use anyhow::{bail, Result};

pub(super) struct KineticsSounds;

impl CommunityLayout for KineticsSounds {
    fn split_lists(&self) -> Option<(&'static str, &'static str, &'static str)> {
        Some(("train.txt", "val.txt", "test.txt"))
    }

    fn parse_line(&self, _n: usize, line: &str) -> Result<Option<(String, String)>> {
        let f = crate::csv_line::fields(line)?;
        if f.len() != 3 || f[0].is_empty() || f[2].is_empty() {
            bail!("expected `name,10,label`, found `{line}`");
        }
        Ok(Some((f[0].clone(), f[2].clone())))
    }

    fn modalities(&self) -> &'static [(&'static str, &'static str)] {
        &[("audio", "audio/{id}.npy"), ("visual", "visual/{id}")]
    }
}
