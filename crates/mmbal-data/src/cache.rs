//! The packed cache: every decoded item of a dataset in one file, so that epochs do not decode
//! JPEG and audio again. The header stamps the recipe; a cache made with another recipe, or for
//! other samples, is refused.
//!
//! Layout: `MMBALC01`, header length (u64 LE), header JSON, then the items back to back.

use crate::manifest::Manifest;
use crate::recipe::{Decoded, DecodedData, Recipe};
use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"MMBALC01";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Entry {
    offset: u64,
    shape: Vec<usize>,
    bytes: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    /// The recipe stamp: dataset name, modality names and recipes, and the sample ids.
    stamp: String,
    /// `entries[sample][modality]`.
    entries: Vec<Vec<Entry>>,
}

/// The stamp a cache must carry to serve these samples with these recipes.
pub fn recipe_stamp(manifest: &Manifest, recipes: &[Recipe]) -> String {
    let ids: Vec<&str> = manifest.samples.iter().map(|s| s.id.as_str()).collect();
    serde_json::json!({
        "dataset": manifest.name,
        "modalities": manifest.modalities,
        "recipes": recipes,
        "samples": ids,
    })
    .to_string()
}

/// An open cache file; items are read on demand (thread-safe positional reads).
pub struct PackedCache {
    path: PathBuf,
    file: File,
    data_start: u64,
    entries: Vec<Vec<Entry>>,
}

impl PackedCache {
    /// Decodes every item in parallel and writes the cache. The first decoding error aborts
    /// with the sample's id and file.
    pub fn build(path: &Path, manifest: &Manifest, recipes: &[Recipe]) -> Result<()> {
        let items: Vec<Vec<Decoded>> = manifest
            .samples
            .par_iter()
            .map(|s| {
                recipes
                    .iter()
                    .zip(&s.sources)
                    .map(|(r, src)| r.decode(src).with_context(|| format!("sample `{}`", s.id)))
                    .collect()
            })
            .collect::<Result<_>>()?;
        let mut offset = 0u64;
        let entries: Vec<Vec<Entry>> = items
            .iter()
            .map(|per| {
                per.iter()
                    .map(|d| {
                        let (bytes, len) = match &d.data {
                            DecodedData::U8(v) => (true, v.len() as u64),
                            DecodedData::F32(v) => (false, 4 * v.len() as u64),
                        };
                        let e = Entry {
                            offset,
                            shape: d.shape.clone(),
                            bytes,
                        };
                        offset += len;
                        e
                    })
                    .collect()
            })
            .collect();
        let header = serde_json::to_vec(&Header {
            stamp: recipe_stamp(manifest, recipes),
            entries,
        })?;
        let tmp = path.with_extension("partial");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut w = BufWriter::new(
            File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?,
        );
        w.write_all(MAGIC)?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for per in &items {
            for d in per {
                match &d.data {
                    DecodedData::U8(v) => w.write_all(v)?,
                    DecodedData::F32(v) => {
                        for x in v {
                            w.write_all(&x.to_le_bytes())?;
                        }
                    }
                }
            }
        }
        w.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }

    /// Opens a cache and checks its stamp against this manifest and these recipes.
    pub fn open(path: &Path, manifest: &Manifest, recipes: &[Recipe]) -> Result<PackedCache> {
        let mut file =
            File::open(path).with_context(|| format!("{}: cannot open cache", path.display()))?;
        let mut head = [0u8; 16];
        file.read_exact(&mut head)
            .with_context(|| format!("{}: truncated cache", path.display()))?;
        if &head[..8] != MAGIC {
            bail!("{}: not an mmbal cache file", path.display());
        }
        let len = u64::from_le_bytes(head[8..16].try_into().unwrap());
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header)
            .with_context(|| format!("{}: truncated cache header", path.display()))?;
        let header: Header = serde_json::from_slice(&header)
            .with_context(|| format!("{}: corrupt cache header", path.display()))?;
        if header.stamp != recipe_stamp(manifest, recipes) {
            bail!(
                "{}: cache was made with another recipe or other samples; delete it or use another cache path",
                path.display()
            );
        }
        Ok(PackedCache {
            path: path.to_path_buf(),
            file,
            data_start: 16 + len,
            entries: header.entries,
        })
    }

    pub fn read(&self, sample: usize, modality: usize) -> Result<Decoded> {
        let e = &self.entries[sample][modality];
        let n: usize = e.shape.iter().product();
        let mut buf = vec![0u8; if e.bytes { n } else { 4 * n }];
        self.file
            .read_exact_at(&mut buf, self.data_start + e.offset)
            .with_context(|| format!("{}: truncated cache data", self.path.display()))?;
        let data = if e.bytes {
            DecodedData::U8(buf)
        } else {
            DecodedData::F32(
                buf.chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            )
        };
        Ok(Decoded {
            shape: e.shape.clone(),
            data,
        })
    }
}
