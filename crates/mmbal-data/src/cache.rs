//! The packed cache: every decoded item of a dataset in one file, so that epochs do not decode
//! JPEG and audio again. The header stamps the recipe and the sample ids: a cache made with
//! another recipe, or for other samples, is refused. It also stamps every source file the items
//! were decoded from (path, size, modification time, and a content hash for files modified in
//! the seconds before the build, whose time alone could miss a change in the same clock tick):
//! [`PackedCache::open_or_rebuild`] rebuilds a cache whose sources changed (a file modified, a
//! frame added to a folder) and says which; a source that was deleted is an error naming it.
//!
//! Layout: `MMBALC02`, header length (u64 LE), header JSON, then the items back to back.
//! `MMBALC01` (before the source stamps) is refused with a message to delete it.

use crate::recipe::{Decoded, DecodedData, Recipe};
use anyhow::{bail, Context, Result};
use mmbal_dataset::manifest::Manifest;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The format id; bumped whenever the layout or the header's meaning changes.
const MAGIC: &[u8; 8] = b"MMBALC02";
/// The first bytes every format of the cache shares.
const MAGIC_FAMILY: &[u8; 6] = b"MMBALC";
/// A source modified this close to the build (or later) is stamped with a content hash too:
/// modification times tick coarsely (a few ms on Linux, 2 s on FAT), so a second change within
/// one tick would leave size and time as they were.
const RACY: Duration = Duration::from_secs(2);

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
    /// Every source file the items were decoded from, sorted by path.
    sources: Vec<FileStamp>,
    /// `entries[sample][modality]`.
    entries: Vec<Vec<Entry>>,
}

/// The identity of one source file when the cache was built.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct FileStamp {
    path: PathBuf,
    size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 before it).
    mtime_ns: u64,
    /// FNV-1a of the content, for files modified within [`RACY`] of the build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hash: Option<u64>,
}

/// How a source differs from what the cache was built from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceChange {
    /// The file is there, with another size, time or content (the reason in words).
    Changed(PathBuf, String),
    /// A file the sources have now and did not have (a frame added to a folder).
    Added(PathBuf),
    /// The file no longer exists.
    Deleted(PathBuf),
}

impl std::fmt::Display for SourceChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceChange::Changed(p, how) => write!(f, "{} ({how})", p.display()),
            SourceChange::Added(p) => write!(f, "{} (new)", p.display()),
            SourceChange::Deleted(p) => write!(f, "{} (deleted)", p.display()),
        }
    }
}

/// The first ten changes, one per line, and how many more there are.
fn list_changes<'a>(changes: impl IntoIterator<Item = &'a SourceChange>) -> String {
    let all: Vec<&SourceChange> = changes.into_iter().collect();
    let mut text: Vec<String> = all.iter().take(10).map(|c| format!("\n  {c}")).collect();
    if all.len() > 10 {
        text.push(format!("\n  ... and {} more", all.len() - 10));
    }
    text.concat()
}

/// Every file the samples' sources name: the file itself, or the frames of a folder (the files
/// decoding lists), as absolute paths, so that a cache built from one working directory is
/// checked the same from another (a resumed run). Files that do not exist are left out
/// (decoding reports them).
fn source_files(manifest: &Manifest, recipes: &[Recipe]) -> BTreeSet<PathBuf> {
    manifest
        .samples
        .par_iter()
        .flat_map_iter(|s| {
            let mut files = Vec::new();
            for p in s.sources.iter().flat_map(|src| src.paths()) {
                if p.is_dir() {
                    files.extend(mmbal_transforms::video::list_frames(p).unwrap_or_default());
                } else if p.exists() {
                    files.push(p.to_path_buf());
                }
            }
            // A recipe cut to a word of the clip's alignment reads that file too.
            for (src, r) in s.sources.iter().zip(recipes) {
                if let Some(w) = r.word_window() {
                    if let Ok(a) = w.alignment_path(src.path()) {
                        if a.exists() {
                            files.push(a);
                        }
                    }
                }
            }
            files
                .into_iter()
                .map(|f| std::fs::canonicalize(&f).unwrap_or(f))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .into_iter()
        .collect()
}

fn fnv1a_file(path: &Path) -> Result<u64> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            return Ok(h);
        }
        for &b in &buf[..n] {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The stamp of one file; `None` when it does not exist. With `built_at`, a file modified
/// within [`RACY`] of it gets a content hash.
fn stamp_file(path: &Path, built_at: Option<SystemTime>) -> Result<Option<FileStamp>> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mtime = md
        .modified()
        .with_context(|| format!("{}: no modification time", path.display()))?;
    let mtime_ns = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0);
    let hash = match built_at {
        Some(t) if mtime + RACY >= t => Some(fnv1a_file(path)?),
        _ => None,
    };
    Ok(Some(FileStamp {
        path: path.to_path_buf(),
        size: md.len(),
        mtime_ns,
        hash,
    }))
}

/// Stamps every source file of the manifest, in parallel, sorted by path.
fn stamp_sources(
    manifest: &Manifest,
    recipes: &[Recipe],
    built_at: SystemTime,
) -> Result<Vec<FileStamp>> {
    let files: Vec<PathBuf> = source_files(manifest, recipes).into_iter().collect();
    let stamps: Vec<Option<FileStamp>> = files
        .par_iter()
        .map(|p| stamp_file(p, Some(built_at)))
        .collect::<Result<_>>()?;
    Ok(stamps.into_iter().flatten().collect())
}

/// How the sources of `manifest` differ from `stamped`, in path order.
fn source_changes(
    stamped: &[FileStamp],
    manifest: &Manifest,
    recipes: &[Recipe],
) -> Result<Vec<SourceChange>> {
    let now = source_files(manifest, recipes);
    let old: BTreeMap<&Path, &FileStamp> = stamped.iter().map(|s| (s.path.as_path(), s)).collect();
    let mut changes: Vec<SourceChange> = stamped
        .par_iter()
        .map(|was| -> Result<Option<SourceChange>> {
            let p = &was.path;
            let Some(is) = stamp_file(p, None)? else {
                return Ok(Some(SourceChange::Deleted(p.clone())));
            };
            if !now.contains(p) {
                return Ok(Some(SourceChange::Changed(
                    p.clone(),
                    "no longer a source of this dataset".into(),
                )));
            }
            let how = if is.size != was.size {
                format!("size {} -> {} bytes", was.size, is.size)
            } else if is.mtime_ns != was.mtime_ns {
                "modified since the cache was built".to_string()
            } else {
                match was.hash {
                    Some(h) if fnv1a_file(p)? != h => {
                        "content differs, same size and time".to_string()
                    }
                    _ => return Ok(None),
                }
            };
            Ok(Some(SourceChange::Changed(p.clone(), how)))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    changes.extend(
        now.iter()
            .filter(|p| !old.contains_key(p.as_path()))
            .map(|p| SourceChange::Added(p.clone())),
    );
    Ok(changes)
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
    sources: Vec<FileStamp>,
    entries: Vec<Vec<Entry>>,
}

impl PackedCache {
    /// Decodes every item in parallel and writes the cache. The first decoding error aborts
    /// with the sample's id and file.
    pub fn build(path: &Path, manifest: &Manifest, recipes: &[Recipe]) -> Result<()> {
        // Stamped before decoding: a file changed while the build runs shows as changed later.
        let sources = stamp_sources(manifest, recipes, SystemTime::now())?;
        let progress = crate::progress::task("building the input cache", manifest.samples.len());
        let items: Vec<Vec<Decoded>> = manifest
            .samples
            .par_iter()
            .map(|s| {
                let decoded = recipes
                    .iter()
                    .zip(&s.sources)
                    .map(|(r, src)| r.decode(src).with_context(|| format!("sample `{}`", s.id)))
                    .collect();
                progress.advance(1);
                decoded
            })
            .collect::<Result<_>>()?;
        drop(progress);
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
            sources,
            entries,
        })
        .with_context(|| format!("{}: cannot write the cache header", path.display()))?;
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

    /// Opens a cache and checks its stamp against this manifest and these recipes, and its
    /// sources against the files as they are now: a cache whose sources changed is refused
    /// with the list ([`PackedCache::open_or_rebuild`] rebuilds it instead).
    pub fn open(path: &Path, manifest: &Manifest, recipes: &[Recipe]) -> Result<PackedCache> {
        let cache = PackedCache::open_sources_unchecked(path, manifest, recipes)?;
        let changes = cache.source_changes(manifest, recipes)?;
        if !changes.is_empty() {
            bail!(
                "{}: {} source file(s) changed since the cache was built; delete the cache to rebuild it:{}",
                path.display(),
                changes.len(),
                list_changes(&changes)
            );
        }
        Ok(cache)
    }

    /// Opens the cache at `path`, building it when absent, and rebuilding it when its sources
    /// changed since it was built; the second value then says so, naming the files (for the
    /// manifest's notes). A cache made with another recipe or for other samples is refused; so
    /// is one whose source files were deleted (named in the error), since rebuilding would
    /// quietly train without them.
    pub fn open_or_rebuild(
        path: &Path,
        manifest: &Manifest,
        recipes: &[Recipe],
    ) -> Result<(PackedCache, Option<String>)> {
        if !path.exists() {
            PackedCache::build(path, manifest, recipes)?;
            return Ok((PackedCache::open(path, manifest, recipes)?, None));
        }
        let cache = PackedCache::open_sources_unchecked(path, manifest, recipes)?;
        let changes = cache.source_changes(manifest, recipes)?;
        if changes.is_empty() {
            return Ok((cache, None));
        }
        drop(cache);
        let deleted: Vec<&SourceChange> = changes
            .iter()
            .filter(|c| matches!(c, SourceChange::Deleted(_)))
            .collect();
        if !deleted.is_empty() {
            bail!(
                "{}: {} source file(s) the cache was made from no longer exist; restore them, or \
                 delete the cache to rebuild it from the files as they are now:{}",
                path.display(),
                deleted.len(),
                list_changes(deleted)
            );
        }
        let what = format!(
            "{} source file(s) changed since it was built:{}",
            changes.len(),
            list_changes(&changes)
        );
        PackedCache::build(path, manifest, recipes).with_context(|| {
            format!(
                "{}: the cache is stale ({what}) and rebuilding it failed",
                path.display()
            )
        })?;
        let cache = PackedCache::open(path, manifest, recipes)?;
        Ok((
            cache,
            Some(format!(
                "rebuilt the input cache {}: {what}",
                path.display()
            )),
        ))
    }

    /// How this cache's sources differ from the files of `manifest` (and the word alignments
    /// the `recipes` read) as they are now.
    pub fn source_changes(
        &self,
        manifest: &Manifest,
        recipes: &[Recipe],
    ) -> Result<Vec<SourceChange>> {
        source_changes(&self.sources, manifest, recipes)
    }

    /// Opens a cache, checking its format and recipe stamp but not its sources (see
    /// [`crate::Dataset::with_cache_sources_unchecked`]; [`PackedCache::open`] checks them).
    pub fn open_sources_unchecked(
        path: &Path,
        manifest: &Manifest,
        recipes: &[Recipe],
    ) -> Result<PackedCache> {
        let mut file =
            File::open(path).with_context(|| format!("{}: cannot open cache", path.display()))?;
        let mut head = [0u8; 16];
        file.read_exact(&mut head)
            .with_context(|| format!("{}: truncated cache", path.display()))?;
        if &head[..8] != MAGIC {
            if head[..6] == MAGIC_FAMILY[..] {
                bail!(
                    "{}: an input cache of another format ({}; this mmbal reads {}): delete it, and it \
                     is built again from the sources",
                    path.display(),
                    String::from_utf8_lossy(&head[..8]),
                    String::from_utf8_lossy(MAGIC)
                );
            }
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
            sources: header.sources,
            entries: header.entries,
        })
    }

    /// The stored item of `sample` (0-based index into the manifest's samples) for
    /// `modality` (index into the recipes), read from the file.
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
