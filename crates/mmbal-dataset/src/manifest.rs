//! Dataset manifests: samples (id, label, split) with any number of named modalities.
//!
//! A dataset on disk is a folder with a `dataset.toml` card and a split file:
//!
//! ```toml
//! name = "grid-s1"
//! classes = ["zero", "one"]
//! split_file = "split.csv"          # lines: id,label,split[,source per modality]
//! [[modality]]
//! name = "audio"
//! source = "audio/{id}.wav"         # template under the data root, or a column of the split file
//! [[modality]]
//! name = "visual"
//! source = "visual/{id}"            # a folder of frames
//! ```
//!
//! A source is a WAV file, a folder of frames, an `.npy` array, or an image inside an IDX file
//! written `file.gz#index`.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which part of a dataset a sample belongs to; only `Val` ever selects a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Trained on.
    Train,
    /// Selects the epoch and tunes; never trained on.
    Val,
    /// Reported only.
    Test,
}

impl Split {
    /// Every split, in this order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];
    /// `train`, `val` or `test`, as split files write it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
    /// The split a split file names (`train`, `val`, `test`), else `None`.
    pub fn parse(s: &str) -> Option<Split> {
        Split::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Where one modality of one sample comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Source {
    /// A WAV file, an `.npy` array, or a folder of frames.
    Path(PathBuf),
    /// Image `index` of an IDX image file (MNIST).
    IdxImage {
        /// The IDX file (gzipped or not).
        path: PathBuf,
        /// 0-based image index in it.
        index: usize,
    },
    /// Optical flow as two folders of grey frames, horizontal (u) and vertical (v) (UCF-101).
    Flow {
        /// Horizontal flow frames.
        u: PathBuf,
        /// Vertical flow frames.
        v: PathBuf,
    },
}

impl Source {
    fn parse(root: &Path, text: &str) -> Result<Source> {
        if let Some((file, idx)) = text.rsplit_once('#') {
            let index = idx
                .parse()
                .map_err(|_| anyhow!("`{text}`: expected FILE#INDEX with a number after #"))?;
            return Ok(Source::IdxImage {
                path: root.join(file),
                index,
            });
        }
        Ok(Source::Path(root.join(text)))
    }

    /// The file or folder (for flow: the u folder) that names this source in messages.
    pub fn path(&self) -> &Path {
        match self {
            Source::Path(p) => p,
            Source::IdxImage { path, .. } => path,
            Source::Flow { u, .. } => u,
        }
    }

    /// Every file or folder this source needs.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            Source::Flow { u, v } => vec![u, v],
            other => vec![other.path()],
        }
    }
}

/// One sample: its id, label and split, and where each modality comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The id the lists and source templates use (`{id}`).
    pub id: String,
    /// 0-based index into the manifest's `classes`.
    pub label: usize,
    /// The split it belongs to.
    pub split: Split,
    /// One source per modality, in the manifest's modality order.
    pub sources: Vec<Source>,
}

/// One `[[modality]]` of a card.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModalityCard {
    /// The modality's name (the key of its recipe and encoder in a training config).
    pub name: String,
    /// `{id}` template relative to the data root; when absent, the split file has a column
    /// named after the modality.
    #[serde(default)]
    pub source: Option<String>,
}

/// The `dataset.toml` card: either mmbal's own split file and modalities, or a community
/// `[layout]` read as it is on disk ([`crate::layouts`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetCard {
    /// The dataset's name, shown in logs and summaries.
    pub name: String,
    /// Class names in label order. A layout may leave it empty: its default list, or the
    /// sorted labels found in its lists (see [`crate::layouts`]).
    #[serde(default)]
    pub classes: Vec<String>,
    /// The split file (`id,label,split[,source per modality]`), relative to the card's folder;
    /// absent with a `[layout]`.
    #[serde(default)]
    pub split_file: Option<String>,
    /// The `[[modality]]` tables, in the order the model takes them; absent with a `[layout]`.
    #[serde(default, rename = "modality")]
    pub modalities: Vec<ModalityCard>,
    /// Free text: where the data comes from, its licence.
    #[serde(default)]
    pub description: String,
    /// A community layout to read instead of a split file.
    #[serde(default)]
    pub layout: Option<crate::layouts::Layout>,
}

impl DatasetCard {
    /// Reads `card_dir/dataset.toml`; returns the card and its path.
    pub fn read(card_dir: &Path) -> Result<(DatasetCard, PathBuf)> {
        let card_path = card_dir.join("dataset.toml");
        let text = std::fs::read_to_string(&card_path)
            .with_context(|| format!("{}: cannot read dataset card", card_path.display()))?;
        let card: DatasetCard = toml::from_str(strip_bom(&text))
            .with_context(|| format!("{}: invalid dataset card", card_path.display()))?;
        if card.layout.is_some() && (card.split_file.is_some() || !card.modalities.is_empty()) {
            bail!(
                "{}: a card with a [layout] takes its splits and modalities from the layout; \
                 remove split_file and [[modality]]",
                card_path.display()
            );
        }
        Ok((card, card_path))
    }
}

/// A dataset as read from its card: classes, modalities and every sample with its sources.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The card's name.
    pub name: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    /// Modality names, in the order of every sample's `sources`.
    pub modalities: Vec<String>,
    /// Every sample of every split, in list order.
    pub samples: Vec<Sample>,
    /// What loading did besides reading (a val split carved and written, samples left out
    /// because `allow_missing` was set): shown by `mmbal data doctor` and at training start.
    pub notes: Vec<String>,
}

impl Manifest {
    /// Reads `card_dir/dataset.toml` and its split file; sources resolve under `data_root`.
    pub fn load(card_dir: &Path, data_root: &Path) -> Result<Manifest> {
        let (card, card_path) = DatasetCard::read(card_dir)?;
        if let Some(layout) = &card.layout {
            let (manifest, train_list) =
                crate::layouts::load_with_train_list(&card, layout, data_root)
                    .with_context(|| format!("dataset card {}", card_path.display()))?;
            manifest.check_training_classes(&train_list)?;
            return Ok(manifest);
        }
        let Some(split_file) = &card.split_file else {
            bail!(
                "{}: the card needs split_file (or a [layout])",
                card_path.display()
            );
        };
        let split_path = card_dir.join(split_file);
        let split_text = std::fs::read_to_string(&split_path)
            .with_context(|| format!("{}: cannot read split file", split_path.display()))?;
        let manifest = Manifest::from_split_text(&card, &split_text, &split_path, data_root)?;
        manifest.check_training_classes(&split_path)?;
        Ok(manifest)
    }

    /// Every class needs training samples: a class the model never sees in training cannot be
    /// learnt, and its accuracy would read as a property of the method. `file` is where the
    /// train split is listed (named in the error). [`Manifest::load`] calls this.
    pub fn check_training_classes(&self, file: &Path) -> Result<()> {
        let mut count = vec![[0usize; 3]; self.classes.len()];
        for s in &self.samples {
            if let Some(c) = count.get_mut(s.label) {
                c[Split::ALL.iter().position(|&x| x == s.split).unwrap()] += 1;
            }
        }
        if count.iter().all(|c| c[0] == 0) {
            bail!(
                "{}: the train split is empty: none of the {} classes has a training sample",
                file.display(),
                self.classes.len()
            );
        }
        let empty: Vec<String> = count
            .iter()
            .zip(&self.classes)
            .filter(|(c, _)| c[0] == 0)
            .map(|(c, name)| {
                let elsewhere: Vec<&str> = [Split::Val, Split::Test]
                    .iter()
                    .zip(&c[1..])
                    .filter(|(_, &n)| n > 0)
                    .map(|(s, _)| s.name())
                    .collect();
                if elsewhere.is_empty() {
                    format!("`{name}` (no sample in any split)")
                } else {
                    format!("`{name}` (only in {})", elsewhere.join(" and "))
                }
            })
            .collect();
        if !empty.is_empty() {
            bail!(
                "{}: {} class(es) of dataset {} have no training sample: {}; a class never seen in \
                 training cannot be learnt: add training samples for it, or leave it out of the \
                 card's `classes` (and its samples out of the splits)",
                file.display(),
                empty.len(),
                self.name,
                empty.join(", ")
            );
        }
        Ok(())
    }

    /// Parses split lines `id,label,split[,extra columns]`; the first line is the header.
    /// Every error names the file and line.
    pub fn from_split_text(
        card: &DatasetCard,
        text: &str,
        file: &Path,
        data_root: &Path,
    ) -> Result<Manifest> {
        if card.modalities.is_empty() {
            bail!("{}: dataset card lists no modality", file.display());
        }
        let mut lines = strip_bom(text)
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, header) = lines
            .next()
            .ok_or_else(|| anyhow!("{}: empty split file", file.display()))?;
        let cols = crate::csv_line::fields(header)
            .with_context(|| format!("{}:1: bad header `{header}`", file.display()))?;
        let cols: Vec<&str> = cols.iter().map(String::as_str).collect();
        if cols.len() < 3 || cols[..3] != ["id", "label", "split"] {
            bail!(
                "{}:1: header must start with `id,label,split`, found `{header}`",
                file.display()
            );
        }
        let column_of = |name: &str| cols.iter().position(|c| *c == name);
        let mut modality_cols = Vec::new();
        for m in &card.modalities {
            match (&m.source, column_of(&m.name)) {
                (Some(t), _) => modality_cols.push(Err(t.clone())),
                (None, Some(c)) => modality_cols.push(Ok(c)),
                (None, None) => bail!(
                    "{}:1: modality `{}` has no source template and no column of that name",
                    file.display(),
                    m.name
                ),
            }
        }
        let mut samples = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, line) in lines {
            let at = || format!("{}:{}", file.display(), i + 1);
            let owned = crate::csv_line::fields(line).with_context(at)?;
            let fields: Vec<&str> = owned.iter().map(String::as_str).collect();
            if fields.len() != cols.len() {
                bail!(
                    "{}: expected {} comma-separated fields ({}), found {}",
                    at(),
                    cols.len(),
                    header,
                    fields.len()
                );
            }
            let id = fields[0].to_string();
            if id.is_empty() {
                bail!("{}: empty id", at());
            }
            if !seen.insert(id.clone()) {
                bail!("{}: duplicate id `{id}`", at());
            }
            let label = card
                .classes
                .iter()
                .position(|c| c == fields[1])
                .ok_or_else(|| {
                    anyhow!(
                        "{}: unknown label `{}` (classes: {})",
                        at(),
                        fields[1],
                        card.classes.join(" ")
                    )
                })?;
            let split = Split::parse(fields[2]).ok_or_else(|| {
                anyhow!(
                    "{}: unknown split `{}` (train, val or test)",
                    at(),
                    fields[2]
                )
            })?;
            let sources = modality_cols
                .iter()
                .map(|c| match c {
                    Err(t) => Source::parse(data_root, &t.replace("{id}", &id)),
                    Ok(c) => Source::parse(data_root, fields[*c]),
                })
                .collect::<Result<Vec<_>>>()
                .with_context(at)?;
            samples.push(Sample {
                id,
                label,
                split,
                sources,
            });
        }
        Ok(Manifest {
            name: card.name.clone(),
            classes: card.classes.clone(),
            modalities: card.modalities.iter().map(|m| m.name.clone()).collect(),
            samples,
            notes: Vec::new(),
        })
    }

    /// Indices into `samples` of one split, in order.
    pub fn indices(&self, split: Split) -> Vec<usize> {
        (0..self.samples.len())
            .filter(|&i| self.samples[i].split == split)
            .collect()
    }

    /// Keeps only the modalities `names`, in that order (every sample's sources alike): a
    /// unimodal or smaller multimodal view of the card. An unknown or repeated name is an error
    /// listing the modalities there are.
    pub fn keep_modalities(&mut self, names: &[String]) -> Result<()> {
        if names.is_empty() {
            bail!("no modality kept (the card has {:?})", self.modalities);
        }
        let mut positions = Vec::with_capacity(names.len());
        for n in names {
            let i = self.modality_index(n)?;
            if positions.contains(&i) {
                bail!("modality `{n}` is named twice");
            }
            positions.push(i);
        }
        for s in &mut self.samples {
            s.sources = positions.iter().map(|&i| s.sources[i].clone()).collect();
        }
        self.modalities = names.to_vec();
        Ok(())
    }

    /// The position of the modality `name`; an error lists the modalities there are.
    pub fn modality_index(&self, name: &str) -> Result<usize> {
        self.modalities
            .iter()
            .position(|m| m == name)
            .ok_or_else(|| {
                anyhow!(
                    "dataset {} has no modality `{name}` ({:?})",
                    self.name,
                    self.modalities
                )
            })
    }
}

/// The text without a leading byte-order mark (U+FEFF), which editors on Windows write at the
/// start of UTF-8 files and which would otherwise stick to the first header or id.
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> DatasetCard {
        toml::from_str(
            r#"
            name = "t"
            classes = ["a", "b"]
            split_file = "split.csv"
            [[modality]]
            name = "audio"
            source = "audio/{id}.wav"
            [[modality]]
            name = "image"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn parses_templates_and_columns() {
        let text = "id,label,split,image\nx1,a,train,m.gz#3\nx2,b,test,m.gz#4\n";
        let m =
            Manifest::from_split_text(&card(), text, Path::new("s.csv"), Path::new("/r")).unwrap();
        assert_eq!(m.samples.len(), 2);
        assert_eq!(m.samples[1].label, 1);
        assert_eq!(
            m.samples[0].sources[0],
            Source::Path("/r/audio/x1.wav".into())
        );
        assert_eq!(
            m.samples[1].sources[1],
            Source::IdxImage {
                path: "/r/m.gz".into(),
                index: 4
            }
        );
        assert_eq!(m.indices(Split::Test), vec![1]);
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let err = |t: &str| {
            format!(
                "{:#}",
                Manifest::from_split_text(&card(), t, Path::new("s.csv"), Path::new("/r"))
                    .unwrap_err()
            )
        };
        let e = err("id,label,split,image\nx1,a,train,m#1\nx2,zebra,train,m#2\n");
        assert!(
            e.contains("s.csv:3") && e.contains("unknown label `zebra`"),
            "{e}"
        );
        let e = err("id,label,split,image\nx1,a,train\n");
        assert!(e.contains("s.csv:2") && e.contains("expected 4"), "{e}");
        let e = err("id,label,split,image\nx1,a,holdout,m#1\n");
        assert!(e.contains("s.csv:2") && e.contains("unknown split"), "{e}");
        let e = err("id,label,split,image\nx1,a,train,m#one\n");
        assert!(e.contains("s.csv:2") && e.contains("FILE#INDEX"), "{e}");
        let e = err("id,label,split,image\nx1,a,train,m#1\nx1,a,train,m#1\n");
        assert!(e.contains("s.csv:3") && e.contains("duplicate"), "{e}");
        let e = err("name,label,split\n");
        assert!(e.contains("s.csv:1"), "{e}");
    }
}
