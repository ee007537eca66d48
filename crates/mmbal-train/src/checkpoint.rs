//! Checkpoints: one safetensors file with the model's parameters (`model.*`), BatchNorm buffers
//! (`buffer.*`), optimizer state (`optim.*`) and method state (`method.*`); the epoch count,
//! the resolved config and the selection state go into the file's string metadata.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{Dtype, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

/// The format id in every checkpoint's `format` metadata; [`Checkpoint::load`] refuses others.
pub const FORMAT: &str = "mmbal-checkpoint-1";

struct RawView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for RawView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Writes tensors and metadata to `path` (through a temporary file, so a crash never leaves a
/// half-written checkpoint): f64 tensors as f64 (method state kept in f64, restored exactly),
/// every other dtype as f32.
pub fn save(
    path: &Path,
    tensors: Vec<(String, Tensor)>,
    meta: HashMap<String, String>,
) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
        let (dtype, bytes) = if t.dtype() == DType::F64 {
            let values = flat.to_vec1::<f64>()?;
            (
                Dtype::F64,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        } else {
            let values = flat.to_dtype(DType::F32)?.to_vec1::<f32>()?;
            (
                Dtype::F32,
                values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        };
        views.push((
            name,
            RawView {
                dtype,
                shape: t.dims().to_vec(),
                bytes,
            },
        ));
    }
    let mut meta = meta;
    meta.insert("format".into(), FORMAT.into());
    let tmp = path.with_extension("tmp");
    safetensors::tensor::serialize_to_file(views, Some(meta), &tmp)
        .with_context(|| format!("{}: cannot write checkpoint", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot write checkpoint", path.display()))?;
    Ok(())
}

/// A checkpoint read back: tensors on the CPU, and the metadata.
pub struct Checkpoint {
    /// Every tensor by its full name (`model.*`, `buffer.*`, `optim.*`, `method.*`), on the CPU.
    pub tensors: HashMap<String, Tensor>,
    /// The string metadata: `format`, the epoch count, the resolved config, the selection state.
    pub meta: HashMap<String, String>,
}

impl Checkpoint {
    /// Reads the checkpoint at `path`; a file without this [`FORMAT`] is refused.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("{}: cannot read checkpoint", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            bail!(
                "{}: not an mmbal checkpoint (format {FORMAT} expected)",
                path.display()
            );
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .with_context(|| format!("{}: cannot read tensors", path.display()))?;
        Ok(Checkpoint { tensors, meta })
    }

    /// Tensors whose names start with `prefix.`, with the prefix removed.
    pub fn section(&self, prefix: &str) -> HashMap<String, Tensor> {
        let p = format!("{prefix}.");
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|k| (k.to_string(), v.clone())))
            .collect()
    }

    /// The metadata value of `key`; an error naming it when absent.
    pub fn meta(&self, key: &str) -> Result<&str> {
        self.meta
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("checkpoint has no `{key}` metadata"))
    }
}
