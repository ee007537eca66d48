//! Writes the committed split files under `datasets/` from the shared data folder:
//! `cargo run -p mmbal-data --example make_splits -- ../shared/data datasets`.

use anyhow::{Context, Result};
use mmbal_data::datasets::{avmnist_split, grid_split, SPLIT_SEED};
use std::path::PathBuf;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let shared = PathBuf::from(
        args.get(1)
            .context("usage: make_splits SHARED_DATA OUT_DIR")?,
    );
    let out = PathBuf::from(
        args.get(2)
            .context("usage: make_splits SHARED_DATA OUT_DIR")?,
    );
    // The clip ids of a GRID folder (any video container).
    let ids_in = |folder: &str| -> Result<Vec<String>> {
        let mut ids: Vec<String> = std::fs::read_dir(shared.join(folder))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|f| {
                [".mpg", ".mp4"]
                    .iter()
                    .find_map(|ext| f.strip_suffix(ext).map(str::to_string))
            })
            .collect();
        ids.sort();
        Ok(ids)
    };
    let ids = ids_in("grid-s1")?;
    std::fs::write(out.join("grid-s1/split.csv"), grid_split(&ids, SPLIT_SEED)?)?;
    // GRID-800: both folders as one dataset (56 / 12 / 12 clips per digit).
    let mut all = ids;
    all.extend(ids_in("grid-s1-more")?);
    all.sort();
    std::fs::write(
        out.join("grid-s1-800/split.csv"),
        grid_split(&all, SPLIT_SEED)?,
    )?;
    std::fs::write(
        out.join("avmnist/split.csv"),
        avmnist_split(&shared, SPLIT_SEED)?,
    )?;
    Ok(())
}
