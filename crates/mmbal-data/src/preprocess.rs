//! `mmbal preprocess`: video files to the field's layout, `visual/<id>/frame_00001.jpg` at a
//! given frame rate and `audio/<id>.wav` (mono 16-bit PCM at a given rate), using the `ffmpeg`
//! program as a subprocess.

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone)]
pub struct PreprocessOptions {
    /// Frames per second to extract.
    pub fps: f64,
    /// Audio sample rate.
    pub sample_rate: u32,
    /// JPEG quality for ffmpeg's `-q:v` (2 = high).
    pub jpeg_quality: u32,
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        PreprocessOptions {
            fps: 1.0,
            sample_rate: 16000,
            jpeg_quality: 2,
        }
    }
}

fn run_ffmpeg(args: &[&str], input: &Path) -> Result<()> {
    let out = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-threads",
            "1",
        ])
        .args(args)
        .output()
        .context("cannot run `ffmpeg`: install it (Debian: apt-get install ffmpeg)")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{}: ffmpeg failed: {}", input.display(), err.trim());
    }
    Ok(())
}

/// Converts one video into `out/visual/<id>/` frames and `out/audio/<id>.wav`.
pub fn preprocess_video(
    input: &Path,
    out: &Path,
    id: &str,
    opts: &PreprocessOptions,
) -> Result<()> {
    if !input.is_file() {
        bail!("{}: no such video file", input.display());
    }
    let frames = out.join("visual").join(id);
    std::fs::create_dir_all(&frames)?;
    std::fs::create_dir_all(out.join("audio"))?;
    let pattern = frames.join("frame_%05d.jpg");
    let wav = out.join("audio").join(format!("{id}.wav"));
    let inp = input.to_string_lossy();
    run_ffmpeg(
        &[
            "-i",
            &inp,
            "-an",
            "-vf",
            &format!("fps={}", opts.fps),
            "-q:v",
            &opts.jpeg_quality.to_string(),
            &pattern.to_string_lossy(),
        ],
        input,
    )?;
    crate::video::list_frames(&frames)
        .with_context(|| format!("{}: ffmpeg wrote no frames", input.display()))?;
    run_ffmpeg(
        &[
            "-i",
            &inp,
            "-vn",
            "-ac",
            "1",
            "-ar",
            &opts.sample_rate.to_string(),
            "-acodec",
            "pcm_s16le",
            &wav.to_string_lossy(),
        ],
        input,
    )
    .with_context(|| format!("{}: no decodable audio stream", input.display()))?;
    Ok(())
}

/// Preprocesses every video file of `input_dir` (by extension) in parallel; ids are file stems.
/// Returns the ids done and one error per file that failed (never skipped silently).
pub fn preprocess_folder(
    input_dir: &Path,
    out: &Path,
    opts: &PreprocessOptions,
) -> Result<(Vec<String>, Vec<String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(input_dir)
        .with_context(|| format!("{}: cannot list input folder", input_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(|e| e.to_ascii_lowercase())
                    .as_deref(),
                Some("mp4" | "mpg" | "mpeg" | "avi" | "webm" | "mkv" | "mov" | "flv")
            )
        })
        .collect();
    files.sort();
    let results: Vec<(String, Result<()>)> = files
        .par_iter()
        .map(|f| {
            let id = f.file_stem().unwrap().to_string_lossy().into_owned();
            let r = preprocess_video(f, out, &id, opts);
            (id, r)
        })
        .collect();
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (id, r) in results {
        match r {
            Ok(()) => ok.push(id),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    Ok((ok, failed))
}
