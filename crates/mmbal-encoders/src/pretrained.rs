//! ImageNet weights for a [`crate::ResNet18`] from a safetensors file or a PyTorch `.pth` /
//! `.pt` / `.bin` state dict (candle's pickle reader): torchvision and timm names (the same
//! scheme, with or without a `module.` / `model.` prefix) and Hugging Face transformers names
//! (`resnet.embedder...`, `resnet.encoder.stages...`) are mapped to torchvision names, which are
//! the encoder's own names in the model's `VarMap` (see [`crate::ModelVars::named_under`]). The
//! classifier (`fc`, `classifier`) and `num_batches_tracked` are not used. A 3-channel stem is
//! adapted to 1 or 2 input channels as timm does (summed for 1; repeated, cut and scaled by
//! `3 / C` otherwise).
//!
//! Files come from a plain path or from the Hugging Face cache (`hf:owner/name[/file]`), which
//! hf-hub fills from the Hub when the file is not there yet; offline machines use the cache,
//! and an error says what was looked for, where, and why the download failed.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor, Var};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a load did: tensors set, and checkpoint tensors that were not used (classifier etc.).
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Encoder tensors set from the checkpoint.
    pub loaded: usize,
    /// Checkpoint tensors with no place in the encoder (the classifier, for one).
    pub unused: Vec<String>,
}

/// Maps one checkpoint name to its torchvision name; `None` for tensors the encoder has no use for.
pub fn torchvision_name(name: &str) -> Option<String> {
    let mut n = name;
    for prefix in ["module.", "model.", "backbone."] {
        n = n.strip_prefix(prefix).unwrap_or(n);
    }
    if n.ends_with("num_batches_tracked") || n.starts_with("fc.") || n.starts_with("classifier.") {
        return None;
    }
    if let Some(rest) = n.strip_prefix("resnet.embedder.embedder.") {
        return Some(match rest.strip_prefix("convolution.") {
            Some(p) => format!("conv1.{p}"),
            None => format!("bn1.{}", rest.strip_prefix("normalization.")?),
        });
    }
    if let Some(rest) = n.strip_prefix("resnet.encoder.stages.") {
        // {s}.layers.{b}.layer.{i}.{convolution|normalization}.{p} or {s}.layers.{b}.shortcut...
        let parts: Vec<&str> = rest.split('.').collect();
        let stage: usize = parts.first()?.parse().ok()?;
        let block = parts.get(2)?;
        let prefix = format!("layer{}.{block}", stage + 1);
        return match parts.get(3..)? {
            ["layer", i, kind, p] => {
                let i: usize = i.parse().ok()?;
                let what = if *kind == "convolution" { "conv" } else { "bn" };
                Some(format!("{prefix}.{what}{}.{p}", i + 1))
            }
            ["shortcut", kind, p] => {
                let idx = if *kind == "convolution" { 0 } else { 1 };
                Some(format!("{prefix}.downsample.{idx}.{p}"))
            }
            _ => None,
        };
    }
    if n.starts_with("resnet.") || n.starts_with("pooler") {
        return None;
    }
    Some(n.to_string())
}

/// Adapts a `(O, 3, K, K)` stem kernel to `channels` inputs (timm's `adapt_input_conv`).
fn adapt_stem(w: &Tensor, channels: usize) -> Result<Tensor> {
    let (_, c, _, _) = w.dims4()?;
    if c == channels {
        return Ok(w.clone());
    }
    if c != 3 {
        bail!("stem kernel has {c} input channels; only 3-channel kernels are adapted");
    }
    if channels == 1 {
        return Ok(w.sum_keepdim(1)?);
    }
    let reps = channels.div_ceil(3);
    let rep = Tensor::cat(&vec![w.clone(); reps], 1)?.narrow(1, 0, channels)?;
    Ok((rep * (3.0 / channels as f64))?)
}

/// Sets every variable of `vars` (an encoder's variables named relative to it, torchvision's
/// names) from `tensors` (any of the supported naming schemes). Every variable must be present
/// with its shape, except the `buffers` (running statistics), which are set when present.
pub fn load_torchvision_weights(
    vars: &[(String, Var)],
    buffers: &[Var],
    tensors: &HashMap<String, Tensor>,
) -> Result<LoadReport> {
    let mut by_name = HashMap::new();
    let mut report = LoadReport::default();
    for (k, v) in tensors {
        match torchvision_name(k) {
            Some(n) => {
                by_name.insert(n, v);
            }
            None => report.unused.push(k.clone()),
        }
    }
    let is_buffer = |v: &Var| buffers.iter().any(|b| b.id() == v.id());
    for (name, var) in vars {
        let Some(src) = by_name.remove(name) else {
            if is_buffer(var) {
                continue;
            }
            bail!("pretrained weights have no tensor for `{name}`")
        };
        let mut t = src.to_dtype(DType::F32)?.to_device(var.device())?;
        if name == "conv1.weight" {
            t = adapt_stem(&t, var.dim(1)?)?;
        }
        if t.dims() != var.dims() {
            bail!(
                "pretrained `{name}` has shape {:?}, the model {:?} (width multiplier must be 1)",
                t.dims(),
                var.dims()
            );
        }
        var.set(&t)?;
        report.loaded += 1;
    }
    report.unused.extend(by_name.into_keys());
    report.unused.sort();
    Ok(report)
}

/// Every tensor of a weights file: safetensors, or a PyTorch state dict (`.pth`, `.pt`, `.bin`;
/// a bare state dict, or one under `state_dict` or `model` as training scripts save it).
pub fn read_weights(path: &Path) -> Result<HashMap<String, Tensor>> {
    let pickled = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("pth" | "pt" | "bin")
    );
    if !pickled {
        return candle_core::safetensors::load(path, &candle_core::Device::Cpu)
            .with_context(|| format!("reading {} as safetensors", path.display()));
    }
    for key in [None, Some("state_dict"), Some("model")] {
        let tensors = candle_core::pickle::read_all_with_key(path, key)
            .with_context(|| format!("reading {} as a PyTorch state dict", path.display()))?;
        if !tensors.is_empty() {
            return Ok(tensors.into_iter().collect());
        }
    }
    bail!(
        "{} holds no tensors at the top level, under `state_dict` or under `model`",
        path.display()
    )
}

/// Where a weights file is: an existing path, or `hf:owner/name[/file]` in hf-hub's local cache
/// (`HF_HOME` / `~/.cache/huggingface/hub`, or `cache_dir` when given), downloaded into it from
/// the Hub (`HF_ENDPOINT`, default huggingface.co) when missing, unless `HF_HUB_OFFLINE=1`. The
/// file defaults to `model.safetensors`.
pub fn resolve_weights(spec: &str, cache_dir: Option<&Path>) -> Result<PathBuf> {
    resolve_weights_from(spec, cache_dir, &Hub::FromEnv)
}

/// Where a missing `hf:` file is downloaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hub {
    /// `HF_ENDPOINT` (default huggingface.co); nothing when `HF_HUB_OFFLINE=1`.
    FromEnv,
    /// Never download: the cache only.
    Offline,
    /// This endpoint (a mirror, a test server).
    Endpoint(String),
}

/// [`resolve_weights`] with the hub to download a missing `hf:` file from.
pub fn resolve_weights_from(spec: &str, cache_dir: Option<&Path>, hub: &Hub) -> Result<PathBuf> {
    let Some(repo_spec) = spec.strip_prefix("hf:") else {
        let p = PathBuf::from(spec);
        if !p.is_file() {
            bail!("weights file {} does not exist", p.display());
        }
        return Ok(p);
    };
    let parts: Vec<&str> = repo_spec.splitn(3, '/').collect();
    let (repo, file) = match parts.as_slice() {
        [o, n] => (format!("{o}/{n}"), "model.safetensors"),
        [o, n, f] => (format!("{o}/{n}"), *f),
        _ => bail!("`{spec}`: expected hf:owner/name or hf:owner/name/file"),
    };
    let cache = match cache_dir {
        Some(d) => hf_hub::Cache::new(d.to_path_buf()),
        None => hf_hub::Cache::from_env(),
    };
    if let Some(p) = cache.model(repo.clone()).get(file) {
        return Ok(p);
    }
    let where_ = cache.path().display().to_string();
    let by_hand = format!(
        "on a machine with a network, `huggingface-cli download {repo} {file}`, then copy its \
         Hugging Face cache folder to {where_}; or give the weights file's path instead"
    );
    let offline = match hub {
        Hub::Offline => true,
        _ => std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1"),
    };
    if offline {
        bail!(
            "{file} of {repo} is not in the Hugging Face cache at {where_}, and downloads are off \
             (HF_HUB_OFFLINE=1); {by_hand}"
        );
    }
    // Not cached: hf-hub downloads it into the same cache.
    let builder = match hub {
        Hub::Endpoint(e) => hf_hub::api::sync::ApiBuilder::new().with_endpoint(e.clone()),
        _ => hf_hub::api::sync::ApiBuilder::from_env(),
    };
    let api = builder
        .with_cache_dir(cache.path().clone())
        .with_progress(false)
        .build()
        .with_context(|| format!("{file} of {repo}: cannot set up the download"))?;
    api.model(repo.clone()).get(file).map_err(|e| {
        anyhow::anyhow!(
            "{file} of {repo} is not in the Hugging Face cache at {where_}, and downloading it \
             failed ({e}); {by_hand}"
        )
    })
}

/// Loads ImageNet weights from `spec` (see [`resolve_weights`]) into a ResNet-18's `vars`
/// (named relative to the encoder; `buffers` may be absent from the file).
pub fn load_resnet18_weights(
    vars: &[(String, Var)],
    buffers: &[Var],
    spec: &str,
) -> Result<LoadReport> {
    let path = resolve_weights(spec, None)?;
    let tensors = read_weights(&path)?;
    load_torchvision_weights(vars, buffers, &tensors)
        .with_context(|| format!("loading {}", path.display()))
}
