//! The field's datasets in their community layouts, read as they are on disk.
//!
//! A dataset card with a `[layout]` table names the layout and, optionally, where its files are
//! (every path relative to the data root, `{id}` replaced by the sample id):
//!
//! | `kind` | lists (defaults) | line format | modalities (default sources) |
//! |---|---|---|---|
//! | `kinetics-sounds` | `train.txt`, `val.txt`*, `test.txt` | `name,10,label` | audio `audio/{id}.npy` (Kaldi fbank 1024x128), visual `visual/{id}` |
//! | `crema-d` | `train.csv`, `val.csv`*, `test.csv` | `clip,EMO` | audio `AudioWAV/{id}.wav`, visual `Image-01-FPS/{id}` |
//! | `ucf-101` | `classInd.txt`; `trainlist01.txt`, `vallist01.txt`*, `testlist01.txt` | `Class/v_X.avi N` (test: no N) | rgb `rgb/{id}`, flow `flow/{uv}/{id}` (u and v folders, 2 channels) |
//! | `vggsound` | `vggsound.csv`; `val.csv`* | `ytid,start,label,split` (label may be quoted) | audio `audio/{id}.wav`, visual `visual/{id}`; id `ytid_start` (start 6 digits) |
//! | `ave` | `trainSet.txt`, `valSet.txt`, `testSet.txt` | `Class&ytid&quality&start&end` | audio `audio/{id}.wav`, visual `visual/{id}` |
//! | `mm-debiased` | `mm-debiased.json` | `{id: {"subset": ..., "label": ...}}` | audio `audio/{id}.wav`, visual `visual/{id}` |
//!
//! `*` The community has no validation split for these: loading without a val list is an error
//! until [`carve_val`] (`mmbal data carve-val`) has carved one from train (`val_fraction` of every
//! class, 0.1, chosen by a hash of `val_seed` and the id) and written it in the layout's own line
//! format at the val path, saying what it wrote; the carved ids leave train. Loading never
//! writes. So no method ever selects on test, and the split is a file anyone
//! can read. Labels are class names, or 0-based class indices when the card lists the classes.
//! Without `classes` in the card: CREMA-D's six emotions in the reference order, UCF-101's
//! `classInd.txt`, otherwise the sorted set of labels in the lists (when every label is a
//! number, the classes are `0..=max`, named by their index).
//!
//! Every sample's sources must exist; a missing one is an error naming the list file, line and
//! path, unless `allow_missing = true`, which leaves such samples out and says how many in the
//! manifest's notes (VGGSound and AVE are YouTube crawls: some videos are always gone).
//!
//! ```no_run
//! use mmbal_dataset::Manifest;
//! use std::path::Path;
//! // datasets/crema-d/dataset.toml holds `[layout] kind = "crema-d"`.
//! let m = Manifest::load(Path::new("datasets/crema-d"), Path::new("/data/CREMA-D")).unwrap();
//! println!("{} samples, classes {:?}", m.samples.len(), m.classes);
//! ```

use crate::manifest::{DatasetCard, Manifest, Sample, Source, Split};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayoutKind {
    #[serde(rename = "kinetics-sounds")]
    KineticsSounds,
    #[serde(rename = "crema-d")]
    CremaD,
    #[serde(rename = "ucf-101")]
    Ucf101,
    #[serde(rename = "vggsound")]
    VggSound,
    #[serde(rename = "ave")]
    Ave,
    #[serde(rename = "mm-debiased")]
    MmDebiased,
}

/// CREMA-D's emotions in the OGM-GE reference order (label 0..5).
pub const CREMAD_CLASSES: [&str; 6] = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"];

/// The `[layout]` table of a dataset card. Every path is optional (defaults in the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub kind: LayoutKind,
    #[serde(default)]
    pub train: Option<String>,
    #[serde(default)]
    pub val: Option<String>,
    #[serde(default)]
    pub test: Option<String>,
    /// The single list (VGGSound csv, MM-Debiased json) or UCF-101's class index.
    #[serde(default)]
    pub list: Option<String>,
    #[serde(default)]
    pub audio: Option<String>,
    #[serde(default)]
    pub visual: Option<String>,
    /// UCF-101: RGB frames and the flow template (`{uv}` becomes `u` and `v`).
    #[serde(default)]
    pub rgb: Option<String>,
    #[serde(default)]
    pub flow: Option<String>,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    #[serde(default)]
    pub val_seed: u64,
    #[serde(default)]
    pub allow_missing: bool,
}

fn default_val_fraction() -> f64 {
    0.1
}

impl Layout {
    pub fn new(kind: LayoutKind) -> Layout {
        Layout {
            kind,
            train: None,
            val: None,
            test: None,
            list: None,
            audio: None,
            visual: None,
            rgb: None,
            flow: None,
            val_fraction: default_val_fraction(),
            val_seed: 0,
            allow_missing: false,
        }
    }

    /// `(train, val, test)` list files; `None` where the layout has one list for every split.
    fn split_lists(&self) -> Option<(String, String, String)> {
        let (t, v, s) = match self.kind {
            LayoutKind::KineticsSounds => ("train.txt", "val.txt", "test.txt"),
            LayoutKind::CremaD => ("train.csv", "val.csv", "test.csv"),
            LayoutKind::Ucf101 => ("trainlist01.txt", "vallist01.txt", "testlist01.txt"),
            LayoutKind::Ave => ("trainSet.txt", "valSet.txt", "testSet.txt"),
            LayoutKind::VggSound | LayoutKind::MmDebiased => return None,
        };
        let pick = |o: &Option<String>, d: &str| o.clone().unwrap_or_else(|| d.to_string());
        Some((
            pick(&self.train, t),
            pick(&self.val, v),
            pick(&self.test, s),
        ))
    }

    /// Whether a missing val list is carved from train (the community has none).
    fn carves_val(&self) -> bool {
        !matches!(self.kind, LayoutKind::Ave | LayoutKind::MmDebiased)
    }

    fn list_file(&self) -> String {
        let d = match self.kind {
            LayoutKind::VggSound => "vggsound.csv",
            LayoutKind::MmDebiased => "mm-debiased.json",
            LayoutKind::Ucf101 => "classInd.txt",
            _ => "",
        };
        self.list.clone().unwrap_or_else(|| d.to_string())
    }

    /// Modality names and their source templates.
    pub fn modalities(&self) -> Vec<(String, String)> {
        let pick = |o: &Option<String>, d: &str| o.clone().unwrap_or_else(|| d.to_string());
        match self.kind {
            LayoutKind::Ucf101 => vec![
                ("rgb".into(), pick(&self.rgb, "rgb/{id}")),
                ("flow".into(), pick(&self.flow, "flow/{uv}/{id}")),
            ],
            kind => {
                let (a, v) = match kind {
                    LayoutKind::KineticsSounds => ("audio/{id}.npy", "visual/{id}"),
                    LayoutKind::CremaD => ("AudioWAV/{id}.wav", "Image-01-FPS/{id}"),
                    _ => ("audio/{id}.wav", "visual/{id}"),
                };
                vec![
                    ("audio".into(), pick(&self.audio, a)),
                    ("visual".into(), pick(&self.visual, v)),
                ]
            }
        }
    }
}

/// One sample as a list names it.
#[derive(Debug, Clone)]
struct Entry {
    id: String,
    label: String,
    split: Split,
    file: PathBuf,
    line: usize,
    /// The line as written, for carving a val list in the layout's own format.
    raw: String,
}

impl Entry {
    fn at(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }
}

/// A list file's text, without a leading byte-order mark.
fn read_text(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(crate::manifest::strip_bom(&text).to_string())
}

/// Non-empty lines with their 1-based numbers.
fn numbered(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Parses one split list of a layout with a list per split.
fn parse_list(kind: LayoutKind, path: &Path, split: Split) -> Result<Vec<Entry>> {
    let text = read_text(path)?;
    let mut out = Vec::new();
    for (n, line) in numbered(&text) {
        let at = || format!("{}:{n}", path.display());
        let (id, label) = match kind {
            LayoutKind::KineticsSounds => {
                let f = crate::csv_line::fields(line).with_context(at)?;
                if f.len() != 3 || f[0].is_empty() || f[2].is_empty() {
                    bail!("{}: expected `name,10,label`, found `{line}`", at());
                }
                (f[0].clone(), f[2].clone())
            }
            LayoutKind::CremaD => {
                let f = crate::csv_line::fields(line).with_context(at)?;
                if f.len() != 2 || f[0].is_empty() || f[1].is_empty() {
                    bail!("{}: expected `clip,EMO`, found `{line}`", at());
                }
                (f[0].clone(), f[1].clone())
            }
            LayoutKind::Ucf101 => {
                let f: Vec<&str> = line.split_whitespace().collect();
                let ok = matches!(f.len(), 1 | 2) && f[0].contains('/');
                if !ok {
                    bail!(
                        "{}: expected `Class/v_Name.avi [index]`, found `{line}`",
                        at()
                    );
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
                (stem, label)
            }
            LayoutKind::Ave => {
                let f: Vec<&str> = line.split('&').map(str::trim).collect();
                if n == 1 && f.first() == Some(&"Category") {
                    continue; // Annotations.txt header
                }
                if f.len() != 5 || f[0].is_empty() || f[1].is_empty() {
                    bail!(
                        "{}: expected `Class&ytid&quality&start&end`, found `{line}`",
                        at()
                    );
                }
                (f[1].to_string(), f[0].to_string())
            }
            LayoutKind::VggSound | LayoutKind::MmDebiased => unreachable!(),
        };
        out.push(Entry {
            id,
            label,
            split,
            file: path.to_path_buf(),
            line: n,
            raw: line.to_string(),
        });
    }
    Ok(out)
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

/// UCF-101's `classInd.txt`: `1 ApplyEyeMakeup` per line.
fn parse_class_index(path: &Path) -> Result<Vec<String>> {
    let text = read_text(path)?;
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

/// FNV-1a of the seed and id: a stable order for carving (not Rust's randomised hasher).
fn stable_hash(seed: u64, id: &str) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ seed.wrapping_mul(0x100000001b3);
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The train entries that become val: `round(fraction * n)` of every class (at least one when
/// the class has two or more), those with the smallest hashes.
fn carve(train: &[Entry], fraction: f64, seed: u64) -> HashSet<String> {
    let mut by_class: HashMap<&str, Vec<&Entry>> = HashMap::new();
    for e in train {
        by_class.entry(&e.label).or_default().push(e);
    }
    let mut out = HashSet::new();
    for (_, mut entries) in by_class {
        entries.sort_by_key(|e| (stable_hash(seed, &e.id), e.id.clone()));
        let n = entries.len();
        let mut k = (fraction * n as f64).round() as usize;
        if k == 0 && n >= 2 && fraction > 0.0 {
            k = 1;
        }
        out.extend(entries[..k.min(n - 1)].iter().map(|e| e.id.clone()));
    }
    out
}

/// Reads a community layout under `root` into a manifest.
pub fn load(card: &DatasetCard, layout: &Layout, root: &Path) -> Result<Manifest> {
    load_with_train_list(card, layout, root).map(|(m, _)| m)
}

/// [`load`], and the file that lists the train split (for messages about it).
pub fn load_with_train_list(
    card: &DatasetCard,
    layout: &Layout,
    root: &Path,
) -> Result<(Manifest, PathBuf)> {
    read_layout(card, layout, root, false)
}

/// The explicit step before a first load of a layout whose community has no validation split
/// (Kinetics-Sounds, CREMA-D, UCF-101, VGGSound): carves one from train (`val_fraction` of each
/// class, chosen by a hash of `val_seed` and the id) and writes it at the layout's val path, in
/// the layout's own line format. Returns what it wrote, or `None` when there is nothing to do
/// (the val list exists, or the layout has its own).
pub fn carve_val(card: &DatasetCard, layout: &Layout, root: &Path) -> Result<Option<String>> {
    let (manifest, _) = read_layout(card, layout, root, true)?;
    Ok(manifest
        .notes
        .into_iter()
        .find(|n| n.starts_with("carved a val split")))
}

/// Reads the lists; a missing val list that the layout carves is written when `carve`, an
/// error naming the step otherwise.
fn read_layout(
    card: &DatasetCard,
    layout: &Layout,
    root: &Path,
    carve: bool,
) -> Result<(Manifest, PathBuf)> {
    if !(0.0..1.0).contains(&layout.val_fraction) {
        bail!(
            "[layout] val_fraction must be in [0, 1), got {}",
            layout.val_fraction
        );
    }
    let mut notes = Vec::new();
    let train_list = match layout.split_lists() {
        Some((train, _, _)) => root.join(train),
        None => root.join(layout.list_file()),
    };
    let mut entries = match (layout.kind, layout.split_lists()) {
        (LayoutKind::VggSound, _) => {
            let path = root.join(layout.list_file());
            let mut e = parse_vggsound(&path, &|s| Split::parse(s))?;
            let val_path = root.join(layout.val.as_deref().unwrap_or("val.csv"));
            e.extend(val_entries(
                layout,
                &val_path,
                &e,
                carve,
                &mut notes,
                |p| parse_vggsound(p, &|_| Some(Split::Val)),
            )?);
            e
        }
        (LayoutKind::MmDebiased, _) => parse_mm_debiased(&root.join(layout.list_file()))?,
        (kind, Some((train, val, test))) => {
            let mut e = parse_list(kind, &root.join(&train), Split::Train)?;
            e.extend(parse_list(kind, &root.join(&test), Split::Test)?);
            let val_path = root.join(&val);
            e.extend(val_entries(
                layout,
                &val_path,
                &e,
                carve,
                &mut notes,
                |p| parse_list(kind, p, Split::Val),
            )?);
            e
        }
        (_, None) => unreachable!("every layout with one list is matched above"),
    };
    // Val ids leave train (a carved val list holds train lines).
    let val_ids: HashSet<String> = entries
        .iter()
        .filter(|e| e.split == Split::Val)
        .map(|e| e.id.clone())
        .collect();
    entries.retain(|e| !(e.split == Split::Train && val_ids.contains(&e.id)));

    let classes = resolve_classes(card, layout, root, &entries)?;
    let class_of: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let templates = layout.modalities();
    let mut samples = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut missing = Vec::new();
    for e in &entries {
        if let Some(first) = seen.insert(e.id.clone(), e.at()) {
            bail!("{}: sample `{}` is already listed at {first}", e.at(), e.id);
        }
        let label = label_index(layout.kind, &e.label, &classes, &class_of)
            .with_context(|| format!("{}: sample `{}`", e.at(), e.id))?;
        let sources: Vec<Source> = templates
            .iter()
            .map(|(_, t)| {
                let t = t.replace("{id}", &e.id);
                if t.contains("{uv}") {
                    Source::Flow {
                        u: root.join(t.replace("{uv}", "u")),
                        v: root.join(t.replace("{uv}", "v")),
                    }
                } else {
                    Source::Path(root.join(t))
                }
            })
            .collect();
        let absent: Vec<String> = sources
            .iter()
            .zip(&templates)
            .flat_map(|(s, (m, _))| {
                s.paths()
                    .into_iter()
                    .filter(|p| !p.exists())
                    .map(move |p| format!("{m} {}", p.display()))
            })
            .collect();
        if !absent.is_empty() {
            missing.push(format!(
                "{}: sample `{}`: missing {}",
                e.at(),
                e.id,
                absent.join(", ")
            ));
            continue;
        }
        samples.push(Sample {
            id: e.id.clone(),
            label,
            split: e.split,
            sources,
        });
    }
    if !missing.is_empty() {
        let shown = missing
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ");
        let more = missing.len().saturating_sub(10);
        let more = if more > 0 {
            format!("\n  ... and {more} more")
        } else {
            String::new()
        };
        if !layout.allow_missing {
            bail!(
                "{} sample(s) with missing files (set [layout] allow_missing = true to leave them out):\n  {shown}{more}",
                missing.len()
            );
        }
        notes.push(format!(
            "left out {} sample(s) with missing files (allow_missing):\n  {shown}{more}",
            missing.len()
        ));
    }
    let manifest = Manifest {
        name: card.name.clone(),
        classes,
        modalities: templates.into_iter().map(|(m, _)| m).collect(),
        samples,
        notes,
    };
    Ok((manifest, train_list))
}

/// The val entries: the val list when it exists; otherwise, where the community has none and
/// `write_carved` is set, carved from train and written to `path`.
fn val_entries(
    layout: &Layout,
    path: &Path,
    entries: &[Entry],
    write_carved: bool,
    notes: &mut Vec<String>,
    parse: impl Fn(&Path) -> Result<Vec<Entry>>,
) -> Result<Vec<Entry>> {
    if path.exists() {
        return parse(path);
    }
    if !layout.carves_val() {
        return Err(anyhow!("{}: cannot read the val list", path.display()));
    }
    if !write_carved {
        bail!(
            "{}: no val list, and this layout's community has none; write one carved from train \
             ({:.0}% of each class, seed {}) with `mmbal data carve-val --config <your config>` \
             (mmbal_dataset::layouts::carve_val), or set [layout] val to a list of your own",
            path.display(),
            100.0 * layout.val_fraction,
            layout.val_seed
        );
    }
    let train: Vec<Entry> = entries
        .iter()
        .filter(|e| e.split == Split::Train)
        .cloned()
        .collect();
    let chosen = carve(&train, layout.val_fraction, layout.val_seed);
    let mut text = String::new();
    for e in train.iter().filter(|e| chosen.contains(&e.id)) {
        text.push_str(&e.raw);
        text.push('\n');
    }
    std::fs::write(path, &text).with_context(|| {
        format!(
            "{}: cannot write the val split carved from train (set [layout] val to a writable path)",
            path.display()
        )
    })?;
    notes.push(format!(
        "carved a val split from train ({} of {} samples, {:.0}% of each class, seed {}) and wrote it to {}",
        chosen.len(),
        train.len(),
        100.0 * layout.val_fraction,
        layout.val_seed,
        path.display()
    ));
    parse(path)
}

fn resolve_classes(
    card: &DatasetCard,
    layout: &Layout,
    root: &Path,
    entries: &[Entry],
) -> Result<Vec<String>> {
    if !card.classes.is_empty() {
        return Ok(card.classes.clone());
    }
    Ok(match layout.kind {
        LayoutKind::CremaD => CREMAD_CLASSES.iter().map(|c| c.to_string()).collect(),
        LayoutKind::Ucf101 => parse_class_index(&root.join(layout.list_file()))?,
        _ => {
            let set: BTreeSet<&str> = entries.iter().map(|e| e.label.as_str()).collect();
            let indices: Option<Vec<usize>> = set.iter().map(|l| l.parse().ok()).collect();
            match indices {
                // Class indices only: the classes are named by their index, 0..=max.
                Some(ix) if !ix.is_empty() => (0..=*ix.iter().max().unwrap())
                    .map(|i| i.to_string())
                    .collect(),
                _ => set.into_iter().map(String::from).collect(),
            }
        }
    })
}

fn label_index(
    kind: LayoutKind,
    label: &str,
    classes: &[String],
    class_of: &HashMap<&str, usize>,
) -> Result<usize> {
    if kind == LayoutKind::Ucf101 {
        // `Class#N` from a train list: N (1-based) must name the same class as the folder.
        if let Some((class, n)) = label.split_once('#') {
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
            return Ok(i);
        }
    }
    if let Some(&i) = class_of.get(label) {
        return Ok(i);
    }
    match label.parse::<usize>() {
        Ok(i) if i < classes.len() => Ok(i),
        _ => {
            let shown: Vec<&str> = classes.iter().take(8).map(String::as_str).collect();
            let more = if classes.len() > 8 { " ..." } else { "" };
            bail!(
                "unknown label `{label}` ({} classes: {}{more})",
                classes.len(),
                shown.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carving_is_stratified_and_deterministic() {
        let entry = |id: &str, label: &str| Entry {
            id: id.into(),
            label: label.into(),
            split: Split::Train,
            file: "t".into(),
            line: 1,
            raw: String::new(),
        };
        let train: Vec<Entry> = (0..20)
            .map(|i| entry(&format!("a{i}"), "A"))
            .chain((0..10).map(|i| entry(&format!("b{i}"), "B")))
            .chain([entry("c0", "C")])
            .collect();
        let v = carve(&train, 0.1, 0);
        let count = |p: &str| v.iter().filter(|id| id.starts_with(p)).count();
        // 10% of 20 = 2, of 10 = 1, and a class of one keeps its only sample.
        assert_eq!((count("a"), count("b"), count("c")), (2, 1, 0));
        assert_eq!(v, carve(&train, 0.1, 0));
        assert_ne!(v, carve(&train, 0.1, 1));
    }
}
