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

mod ave;
mod crema_d;
mod kinetics_sounds;
mod mm_debiased;
mod ucf101;
mod vggsound;

pub use crema_d::CREMAD_CLASSES;

use crate::manifest::{DatasetCard, Manifest, Sample, Source, Split};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// The community layouts mmbal reads (the `kind` of a `[layout]` table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayoutKind {
    /// Kinetics-Sounds (OGM-GE, PMR).
    #[serde(rename = "kinetics-sounds")]
    KineticsSounds,
    /// CREMA-D (OGM-GE).
    #[serde(rename = "crema-d")]
    CremaD,
    /// UCF-101 split 1, RGB and optical flow.
    #[serde(rename = "ucf-101")]
    Ucf101,
    /// VGGSound.
    #[serde(rename = "vggsound")]
    VggSound,
    /// AVE.
    #[serde(rename = "ave")]
    Ave,
    /// MM-Debiased.
    #[serde(rename = "mm-debiased")]
    MmDebiased,
}

/// The `[layout]` table of a dataset card. Every path is optional (defaults in the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Which layout.
    pub kind: LayoutKind,
    /// The train list, relative to the data root.
    #[serde(default)]
    pub train: Option<String>,
    /// The val list (written there by `carve_val` when the community has none).
    #[serde(default)]
    pub val: Option<String>,
    /// The test list.
    #[serde(default)]
    pub test: Option<String>,
    /// The single list (VGGSound csv, MM-Debiased json) or UCF-101's class index.
    #[serde(default)]
    pub list: Option<String>,
    /// Audio source template (`{id}` replaced by the sample id).
    #[serde(default)]
    pub audio: Option<String>,
    /// Frames source template.
    #[serde(default)]
    pub visual: Option<String>,
    /// UCF-101: RGB frames and the flow template (`{uv}` becomes `u` and `v`).
    #[serde(default)]
    pub rgb: Option<String>,
    /// UCF-101's flow template, `{uv}` replaced by `u` and `v`.
    #[serde(default)]
    pub flow: Option<String>,
    /// Share of each class carved from train into val (0.1).
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Seed of the carving's hash.
    #[serde(default)]
    pub val_seed: u64,
    /// Leave out samples whose files are missing (saying how many) instead of failing.
    #[serde(default)]
    pub allow_missing: bool,
}

fn default_val_fraction() -> f64 {
    0.1
}

impl LayoutKind {
    /// The name a card's `kind` gives it (`kinetics-sounds`, `crema-d`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LayoutKind::KineticsSounds => "kinetics-sounds",
            LayoutKind::CremaD => "crema-d",
            LayoutKind::Ucf101 => "ucf-101",
            LayoutKind::VggSound => "vggsound",
            LayoutKind::Ave => "ave",
            LayoutKind::MmDebiased => "mm-debiased",
        }
    }
}

impl Layout {
    /// A layout with every path at its default.
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

    /// The community layout this card names.
    fn community(&self) -> &'static dyn CommunityLayout {
        match self.kind {
            LayoutKind::KineticsSounds => &kinetics_sounds::KineticsSounds,
            LayoutKind::CremaD => &crema_d::CremaD,
            LayoutKind::Ucf101 => &ucf101::Ucf101,
            LayoutKind::VggSound => &vggsound::VggSound,
            LayoutKind::Ave => &ave::Ave,
            LayoutKind::MmDebiased => &mm_debiased::MmDebiased,
        }
    }

    /// A path as the card gives it, else the layout's default.
    fn pick(given: &Option<String>, default: &str) -> String {
        given.clone().unwrap_or_else(|| default.to_string())
    }

    /// The one list file (VGGSound's csv, MM-Debiased's json, UCF-101's class index).
    fn list_file(&self) -> String {
        Layout::pick(&self.list, self.community().list_file())
    }

    /// The val list's path under `root`, for the layouts with a val list.
    fn val_path(&self, root: &Path) -> Option<PathBuf> {
        let default = self.community().val_list()?;
        Some(root.join(Layout::pick(&self.val, default)))
    }

    /// Modality names and their source templates.
    pub fn modalities(&self) -> Vec<(String, String)> {
        self.community()
            .modalities()
            .iter()
            .map(|&(name, default)| {
                let given = match name {
                    "audio" => &self.audio,
                    "visual" => &self.visual,
                    "rgb" => &self.rgb,
                    _ => &self.flow,
                };
                (name.to_string(), Layout::pick(given, default))
            })
            .collect()
    }
}

/// What differs between the community layouts, one module each; [`read_layout`] does the rest
/// (val carving, classes, sources, missing files) the same way for all.
trait CommunityLayout: Sync {
    /// Default `(train, val, test)` lists, relative to the data root, for the layouts with a
    /// list per split; `None` for those with one list for every split.
    fn split_lists(&self) -> Option<(&'static str, &'static str, &'static str)> {
        None
    }

    /// One line (1-based `n`) of a per-split list: `(id, label)`, or `None` for a header line.
    fn parse_line(&self, _n: usize, _line: &str) -> Result<Option<(String, String)>> {
        bail!("this layout has no per-split lists")
    }

    /// Default val list, relative to the data root; `None` when the layout's one list names
    /// the val samples itself (MM-Debiased). Default: the per-split val list.
    fn val_list(&self) -> Option<&'static str> {
        self.split_lists().map(|(_, val, _)| val)
    }

    /// Default single list (VGGSound's csv, MM-Debiased's json, UCF-101's class index); empty
    /// when the layout has none.
    fn list_file(&self) -> &'static str {
        ""
    }

    /// Modality names with their default source templates (`{id}`, and `{uv}` for flow).
    fn modalities(&self) -> &'static [(&'static str, &'static str)] {
        &[("audio", "audio/{id}.wav"), ("visual", "visual/{id}")]
    }

    /// Whether a missing val list is carved from train (the community has none).
    fn carves_val(&self) -> bool {
        true
    }

    /// The train and test entries (and val, for a layout without a val list), and the file
    /// that lists train (for messages about it). Default: the per-split train and test lists.
    fn train_and_test(&self, layout: &Layout, root: &Path) -> Result<(Vec<Entry>, PathBuf)> {
        let Some((train, _, test)) = self.split_lists() else {
            bail!("this layout has no per-split lists")
        };
        let train = root.join(Layout::pick(&layout.train, train));
        let test = root.join(Layout::pick(&layout.test, test));
        let mut e = self.parse_list(&train, Split::Train)?;
        e.extend(self.parse_list(&test, Split::Test)?);
        Ok((e, train))
    }

    /// The entries of the val list at `path`. Default: a per-split list.
    fn val(&self, path: &Path) -> Result<Vec<Entry>> {
        self.parse_list(path, Split::Val)
    }

    /// Every entry of the per-split list at `path`, all in `split`, line by line through
    /// [`CommunityLayout::parse_line`]; errors name the file and line.
    fn parse_list(&self, path: &Path, split: Split) -> Result<Vec<Entry>> {
        let text = read_text(path)?;
        let mut out = Vec::new();
        for (n, line) in numbered(&text) {
            let parsed = self
                .parse_line(n, line)
                .with_context(|| format!("{}:{n}", path.display()))?;
            let Some((id, label)) = parsed else {
                continue;
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

    /// The classes when the card lists none. Default: the sorted labels; when every label is
    /// a number, `0..=max` named by their index.
    fn default_classes(
        &self,
        _layout: &Layout,
        _root: &Path,
        entries: &[Entry],
    ) -> Result<Vec<String>> {
        let set: BTreeSet<&str> = entries.iter().map(|e| e.label.as_str()).collect();
        let indices: Option<Vec<usize>> = set.iter().map(|l| l.parse().ok()).collect();
        Ok(match indices {
            Some(ix) if !ix.is_empty() => (0..=*ix.iter().max().unwrap())
                .map(|i| i.to_string())
                .collect(),
            _ => set.into_iter().map(String::from).collect(),
        })
    }

    /// A label as a class index. Default: its class name, or a 0-based index.
    fn label_index(
        &self,
        label: &str,
        classes: &[String],
        class_of: &HashMap<&str, usize>,
    ) -> Result<usize> {
        label_by_name_or_index(label, classes, class_of)
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
    read_layout(card, layout, root, None)
}

/// The explicit step before a first load of a layout whose community has no validation split
/// (Kinetics-Sounds, CREMA-D, UCF-101, VGGSound): carves one from train (`val_fraction` of each
/// class, chosen by a hash of `val_seed` and the id) and writes it at the layout's val path, in
/// the layout's own line format. Returns what it wrote, or `None` when there is nothing to do
/// (the val list exists, or the layout has its own).
/// The list is written to a temporary file first and moved into place only once the whole
/// layout reads with it (classes, labels, sources), so a failed carve leaves nothing behind.
pub fn carve_val(card: &DatasetCard, layout: &Layout, root: &Path) -> Result<Option<String>> {
    let mut carved = None;
    let read = read_layout(card, layout, root, Some(&mut carved));
    let Some(path) = layout.val_path(root) else {
        return read.map(|_| None);
    };
    let tmp = carving_path(&path);
    if let Err(e) = read {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if carved.is_some() {
        std::fs::rename(&tmp, &path).with_context(|| {
            format!("{}: cannot move the carved list into place", path.display())
        })?;
    }
    Ok(carved)
}

/// Where a carved val list is written before it is checked.
fn carving_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".carving");
    path.with_file_name(name)
}

/// Reads the lists. A missing val list that the layout carves is carved into its temporary
/// file when `carved` is given (which then says what was carved), an error naming the step
/// otherwise.
fn read_layout(
    card: &DatasetCard,
    layout: &Layout,
    root: &Path,
    carved: Option<&mut Option<String>>,
) -> Result<(Manifest, PathBuf)> {
    if !(0.0..1.0).contains(&layout.val_fraction) {
        bail!(
            "[layout] val_fraction must be in [0, 1), got {}",
            layout.val_fraction
        );
    }
    let mut notes = Vec::new();
    let community = layout.community();
    let (mut entries, train_list) = community.train_and_test(layout, root)?;
    if let Some(val_path) = layout.val_path(root) {
        let val = val_entries(layout, &val_path, &entries, carved, |p| community.val(p))?;
        entries.extend(val);
    }
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
        let label = community
            .label_index(&e.label, &classes, &class_of)
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
/// `carved` is given, carved from train into `path`'s temporary file, with what was carved put
/// in `carved`.
fn val_entries(
    layout: &Layout,
    path: &Path,
    entries: &[Entry],
    carved: Option<&mut Option<String>>,
    parse: impl Fn(&Path) -> Result<Vec<Entry>>,
) -> Result<Vec<Entry>> {
    if path.exists() {
        return parse(path);
    }
    if !layout.community().carves_val() {
        return Err(anyhow!("{}: cannot read the val list", path.display()));
    }
    let Some(carved) = carved else {
        bail!(
            "{}: no val list, and this layout's community has none; write one carved from train \
             ({:.0}% of each class, seed {}) with `mmbal data carve-val --config <your config>` \
             (mmbal_dataset::layouts::carve_val), or set [layout] val to a list of your own",
            path.display(),
            100.0 * layout.val_fraction,
            layout.val_seed
        );
    };
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
    let tmp = carving_path(path);
    std::fs::write(&tmp, &text).with_context(|| {
        format!(
            "{}: cannot write the val split carved from train (set [layout] val to a writable path)",
            tmp.display()
        )
    })?;
    *carved = Some(format!(
        "carved a val split from train ({} of {} samples, {:.0}% of each class, seed {}) and wrote it to {}",
        chosen.len(),
        train.len(),
        100.0 * layout.val_fraction,
        layout.val_seed,
        path.display()
    ));
    parse(&tmp)
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
    layout.community().default_classes(layout, root, entries)
}

/// A label as a class index: its class name, or a 0-based index below the class count.
fn label_by_name_or_index(
    label: &str,
    classes: &[String],
    class_of: &HashMap<&str, usize>,
) -> Result<usize> {
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
    fn kind_names_are_the_cards_spelling() {
        use LayoutKind::*;
        for k in [KineticsSounds, CremaD, Ucf101, VggSound, Ave, MmDebiased] {
            let card: Layout = toml::from_str(&format!("kind = \"{}\"", k.name())).unwrap();
            assert_eq!(card.kind, k);
        }
    }

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
