//! # mmbal-dataset
//!
//! What a multimodal dataset is, without decoding any of it: a card (`dataset.toml`) and a split
//! file list samples (id, label, split) with a source per named modality ([`manifest`]); a card
//! with a `[layout]` table reads one of the field's community layouts as it is on disk
//! ([`layouts`]). [`csv_line`] is the CSV line reader and writer both use.
//!
//! ```
//! let dir = std::env::temp_dir().join(format!("mmbal-dataset-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! std::fs::write(dir.join("dataset.toml"), "name = \"tiny\"\nclasses = [\"a\", \"b\"]\n\
//!     split_file = \"split.csv\"\n[[modality]]\nname = \"audio\"\nsource = \"{id}.wav\"\n").unwrap();
//! std::fs::write(dir.join("split.csv"), "id,label,split\nx,a,train\ny,b,train\nz,b,test\n").unwrap();
//! for id in ["x", "y", "z"] {
//!     std::fs::write(dir.join(format!("{id}.wav")), b"").unwrap();
//! }
//! let m = mmbal_dataset::Manifest::load(&dir, &dir).unwrap();
//! assert_eq!((m.samples.len(), m.modalities.len()), (3, 1));
//! assert_eq!(m.samples[2].split, mmbal_dataset::Split::Test);
//! ```

#![warn(missing_docs)]

pub mod alignment;
pub mod csv_line;
pub mod layouts;
pub mod manifest;

pub use manifest::{Manifest, Split};
