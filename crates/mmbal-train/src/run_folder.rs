//! The run folder: one training at a time (a lock file), no earlier results replaced without
//! being asked, and what a run writes beside its log (the resolved config, the data recipe).

use crate::config::TrainConfig;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Files a finished or interrupted run leaves in its folder (the input cache stays).
const RUN_OUTPUTS: [&str; 10] = [
    "metrics.jsonl",
    "summary.json",
    "last.safetensors",
    "best.safetensors",
    "contributions",
    "data-recipe.toml",
    "accuracy.svg",
    "method.svg",
    "contributions.svg",
    "contributions_hist.svg",
];

/// Takes the run folder's lock file, so two trainings never write the same folder.
pub(crate) fn lock_run_dir(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create run folder", dir.display()))?;
    let path = dir.join("run.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open the run's lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{}: another training is writing this run folder (it holds {}); pick another run \
             name",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
}

/// Before a fresh run's first epoch: refuses a folder holding an earlier run's results unless
/// `overwrite`, and then removes them.
pub(crate) fn clear_earlier_results(dir: &Path, overwrite: bool) -> Result<()> {
    let mut earlier: Vec<String> = RUN_OUTPUTS
        .iter()
        .filter(|f| dir.join(f).exists())
        .map(|f| f.to_string())
        .collect();
    // TensorBoard event files (one per training session of the run).
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut events: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("events.out.tfevents."))
            .collect();
        events.sort();
        earlier.extend(events);
    }
    if !earlier.is_empty() && !overwrite {
        bail!(
            "{}: holds the results of an earlier run ({}); resume it with --resume \
             {}, choose another run name, or replace it with --overwrite",
            dir.display(),
            earlier.join(", "),
            dir.join("last.safetensors").display()
        );
    }
    for f in earlier {
        let p = dir.join(&f);
        let removed = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed.with_context(|| format!("{}: cannot remove", p.display()))?;
    }
    Ok(())
}

/// The resolved `config.toml` and, when `mmbal preprocess` recorded how the data was made, its
/// `recipe.toml` as `data-recipe.toml`.
pub(crate) fn write_run_files(dir: &Path, config: &TrainConfig) -> Result<()> {
    let config_path = dir.join("config.toml");
    std::fs::write(&config_path, config.to_toml())
        .with_context(|| format!("{}: cannot write", config_path.display()))?;
    if let Ok((_, root)) = config.dataset_location() {
        let made = root.join("recipe.toml");
        if made.is_file() {
            std::fs::copy(&made, dir.join("data-recipe.toml"))
                .with_context(|| format!("{}: cannot copy into the run", made.display()))?;
        }
    }
    Ok(())
}
