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
    let mut ids: Vec<String> = std::fs::read_dir(shared.join("grid-s1"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".mpg").map(str::to_string))
        .collect();
    ids.sort();
    std::fs::write(out.join("grid-s1/split.csv"), grid_split(&ids, SPLIT_SEED)?)?;
    std::fs::write(
        out.join("avmnist/split.csv"),
        avmnist_split(&shared, SPLIT_SEED)?,
    )?;
    Ok(())
}
