//! `mmbal preprocess`: videos to the field's layouts with the `ffmpeg` program as a subprocess:
//! frames at a given rate, audio resampled to WAV, and (for the named recipes) spectrograms
//! written as `.npy`. The recipe used is written next to the data as `recipe.toml`, so every
//! result can name it.
//!
//! Named recipes ([`PreprocessRecipe::named`]), every parameter overridable:
//!
//! | name | layout | frames | audio | spectrogram |
//! |---|---|---|---|---|
//! | `plain` (default) | - | `visual/{id}` at 1 fps | `audio/{id}.wav`, 16 kHz | none |
//! | `ks-fbank` | kinetics-sounds | `visual/{id}` at 1 fps | `audio/{id}.wav`, 16 kHz | `audio/{id}.npy`: Kaldi fbank 128 mel, 25/10 ms, mean removed, 1024 frames -> (1024, 128) |
//! | `cremad-stft` | crema-d | `Image-01-FPS/{id}` at 1 fps | `AudioWAV/{id}.wav`, 22.05 kHz | `spec/{id}.npy`: tiled to 3 s, STFT 512/353 centred, log(\|S\| + 1e-7) -> (257, 188) |
//! | `vggsound-stft` | vggsound | `visual/{id}` at 1 fps | `audio/{id}.wav`, 16 kHz | `spec/{id}.npy`: tiled to 5 s, STFT 256/128 centred, log(\|S\| + 1e-7) -> (129, 626) |
//!
//! The stored spectrograms are not normalised; the training recipe normalises them.

use anyhow::{bail, Context, Result};
use mmbal_data::recipe::{audio_spectrogram, AudioRecipe, FrontEnd};
use mmbal_dataset::csv_line;
use mmbal_dataset::layouts::LayoutKind;
use mmbal_transforms::audio::{Fbank, Stft};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How videos become a dataset folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessRecipe {
    /// The recipe's name, as written to `recipe.toml` (`plain` by default).
    pub name: String,
    /// The community layout the output follows (for the lists written from a label file).
    #[serde(default)]
    pub layout: Option<LayoutKind>,
    /// Frames per second to extract.
    pub fps: f64,
    /// JPEG quality for ffmpeg's `-q:v` (2 = high).
    pub jpeg_quality: u32,
    /// Output templates under the output folder (`{id}`: the video's file stem).
    pub frames: String,
    /// Template of the WAV file under the output folder (`{id}`: the video's file stem).
    pub wav: String,
    /// Sample rate of the stored WAV (mono, 16-bit).
    pub wav_sample_rate: u32,
    /// Where the spectrogram goes, and how it is computed; none when absent.
    #[serde(default)]
    pub spectrogram: Option<String>,
    /// The audio recipe that computes the spectrogram from the stored WAV (resampled to its own
    /// `sample_rate` first); a spectrogram is written only when this and `spectrogram` are set.
    #[serde(default)]
    pub audio: Option<AudioRecipe>,
    /// Not part of the recipe (never written to `recipe.toml`): whether an output folder made
    /// with another recipe may be replaced ([`prepare_output`]); refused when false.
    #[serde(skip)]
    pub replace: bool,
}

impl Default for PreprocessRecipe {
    fn default() -> Self {
        PreprocessRecipe {
            name: "plain".into(),
            layout: None,
            fps: 1.0,
            jpeg_quality: 2,
            frames: "visual/{id}".into(),
            wav: "audio/{id}.wav".into(),
            wav_sample_rate: 16000,
            spectrogram: None,
            audio: None,
            replace: false,
        }
    }
}

impl PreprocessRecipe {
    /// The names [`PreprocessRecipe::named`] knows.
    pub const NAMES: [&'static str; 4] = ["plain", "ks-fbank", "cremad-stft", "vggsound-stft"];

    /// A named recipe (table in the module docs).
    pub fn named(name: &str) -> Result<PreprocessRecipe> {
        let stft = |sample_rate, clip_seconds, n_fft, hop, frames| AudioRecipe {
            sample_rate,
            offset_seconds: 0.0,
            clip_seconds: Some(clip_seconds),
            remove_mean: false,
            front_end: FrontEnd::Stft(Stft {
                n_fft,
                hop,
                log_eps: 1e-7,
                reflect_pad: false,
            }),
            bin_mean_norm: false,
            frames,
            norm_mean: 0.0,
            norm_std: 1.0,
            word_window: None,
            noise_snr_db: None,
        };
        let base = PreprocessRecipe {
            name: name.to_string(),
            ..PreprocessRecipe::default()
        };
        Ok(match name {
            "plain" => base,
            "ks-fbank" => PreprocessRecipe {
                layout: Some(LayoutKind::KineticsSounds),
                spectrogram: Some("audio/{id}.npy".into()),
                audio: Some(AudioRecipe {
                    sample_rate: 16000,
                    offset_seconds: 0.0,
                    clip_seconds: None,
                    remove_mean: true,
                    front_end: FrontEnd::Fbank(Fbank::default()),
                    bin_mean_norm: false,
                    frames: 1024,
                    norm_mean: 0.0,
                    norm_std: 1.0,
                    word_window: None,
                    noise_snr_db: None,
                }),
                ..base
            },
            "cremad-stft" => PreprocessRecipe {
                layout: Some(LayoutKind::CremaD),
                frames: "Image-01-FPS/{id}".into(),
                wav: "AudioWAV/{id}.wav".into(),
                wav_sample_rate: 22050,
                spectrogram: Some("spec/{id}.npy".into()),
                audio: Some(stft(22050, 3.0, 512, 353, 188)),
                ..base
            },
            "vggsound-stft" => PreprocessRecipe {
                layout: Some(LayoutKind::VggSound),
                spectrogram: Some("spec/{id}.npy".into()),
                audio: Some(stft(16000, 5.0, 256, 128, 626)),
                ..base
            },
            _ => bail!(
                "no preprocessing recipe named `{name}` (known: {})",
                Self::NAMES.join(", ")
            ),
        })
    }

    /// Applies `key=value` overrides (dotted keys into the TOML form, values as TOML: `fps=2`,
    /// `audio.front_end.num_mel_bins=64`, `frames="img/{id}"`; a bare word is a string).
    pub fn with_overrides(&self, sets: &[String]) -> Result<PreprocessRecipe> {
        let mut table = toml::Table::try_from(self)?;
        for set in sets {
            mmbal_data::overrides::apply(&mut table, set, "the recipe")?;
        }
        let text = toml::to_string(&table)?;
        let recipe: PreprocessRecipe = toml::from_str(&text)
            .with_context(|| format!("recipe after --set {}", sets.join(" ")))?;
        Ok(PreprocessRecipe {
            replace: self.replace,
            ..recipe
        })
    }

    fn path(&self, out: &Path, template: &str, id: &str) -> PathBuf {
        out.join(template.replace("{id}", id))
    }

    /// Reads a `recipe.toml` written by preprocessing.
    pub fn load(path: &Path) -> Result<PreprocessRecipe> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read", path.display()))?;
        toml::from_str(mmbal_dataset::manifest::strip_bom(&text))
            .with_context(|| format!("{}: not a preprocessing recipe", path.display()))
    }

    /// Where this recipe and `other` differ, one `key: this -> other` per field (dotted keys
    /// into the TOML form); empty when they make the same outputs.
    pub fn differences(&self, other: &PreprocessRecipe) -> Result<Vec<String>> {
        fn flat(prefix: &str, t: &toml::Table, out: &mut BTreeMap<String, String>) {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(inner) => flat(&key, inner, out),
                    other => {
                        out.insert(key, other.to_string());
                    }
                }
            }
        }
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        flat("", &toml::Table::try_from(self)?, &mut a);
        flat("", &toml::Table::try_from(other)?, &mut b);
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let absent = "(absent)".to_string();
        Ok(keys
            .into_iter()
            .filter_map(|k| {
                let (x, y) = (a.get(k).unwrap_or(&absent), b.get(k).unwrap_or(&absent));
                (x != y).then(|| format!("{k}: {x} -> {y}"))
            })
            .collect())
    }
}

fn run_ffmpeg(args: &[&str], input: &Path, what: &str) -> Result<()> {
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
        let last = err.trim().lines().last().unwrap_or("").to_string();
        let hint = if last.contains("does not contain any stream") {
            format!(" (the file has no {what} stream)")
        } else {
            String::new()
        };
        bail!(
            "{}: ffmpeg could not extract {what}{hint}: {}",
            input.display(),
            err.trim()
        );
    }
    Ok(())
}

/// Converts one video: frames, WAV and (if the recipe has one) the spectrogram. Returns the
/// number of frames written. Everything is written into a staging folder inside `out` and moved
/// into place only when the whole clip succeeded (replacing that clip's earlier outputs whole),
/// so a failed video leaves nothing behind. A video whose decoded length falls short of the
/// length its container header claims (a file cut short) is an error naming it.
pub fn preprocess_video(
    input: &Path,
    out: &Path,
    id: &str,
    recipe: &PreprocessRecipe,
) -> Result<usize> {
    if !input.is_file() {
        bail!("{}: no such video file", input.display());
    }
    let staging = out.join(format!(".mmbal-partial-{id}-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("{}: cannot remove", staging.display()))?;
    }
    std::fs::create_dir_all(&staging)
        .with_context(|| format!("{}: cannot create", staging.display()))?;
    let result = convert_video(input, &staging, id, recipe)
        .and_then(|n| move_into_place(&staging, out, id, recipe).map(|_| n));
    let cleanup = std::fs::remove_dir_all(&staging);
    match (result, cleanup) {
        (Ok(n), Ok(())) => Ok(n),
        (Ok(_), Err(e)) => Err(e).with_context(|| {
            format!(
                "{}: cannot remove the staging folder (the clip itself is complete)",
                staging.display()
            )
        }),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!(
            "and the staging folder {} could not be removed: {c}",
            staging.display()
        ))),
    }
}

/// The outputs of one clip, relative to the output folder: the frame folder, then the files.
fn outputs(recipe: &PreprocessRecipe, id: &str) -> Vec<PathBuf> {
    let mut v = vec![
        PathBuf::from(recipe.frames.replace("{id}", id)),
        PathBuf::from(recipe.wav.replace("{id}", id)),
    ];
    if let (Some(t), Some(_)) = (&recipe.spectrogram, &recipe.audio) {
        v.push(PathBuf::from(t.replace("{id}", id)));
    }
    v
}

/// Moves a complete clip from `staging` into `out`; an earlier frame folder of the clip is
/// removed first (never merged: another frame rate would leave stale frames in it).
fn move_into_place(staging: &Path, out: &Path, id: &str, recipe: &PreprocessRecipe) -> Result<()> {
    for rel in outputs(recipe, id) {
        let (from, to) = (staging.join(&rel), out.join(&rel));
        if to.is_dir() && !to.is_symlink() {
            std::fs::remove_dir_all(&to)
                .with_context(|| format!("{}: cannot remove the earlier frames", to.display()))?;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("{}: cannot create", parent.display()))?;
        }
        std::fs::rename(&from, &to).with_context(|| {
            format!(
                "{}: cannot move into place as {}",
                from.display(),
                to.display()
            )
        })?;
    }
    Ok(())
}

/// The conversion of one video into `out` (the staging folder).
fn convert_video(input: &Path, out: &Path, id: &str, recipe: &PreprocessRecipe) -> Result<usize> {
    let frames = recipe.path(out, &recipe.frames, id);
    let wav = recipe.path(out, &recipe.wav, id);
    std::fs::create_dir_all(&frames)
        .with_context(|| format!("{}: cannot create", frames.display()))?;
    if let Some(parent) = wav.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let pattern = frames.join("frame_%05d.jpg");
    let inp = input.to_string_lossy();
    run_ffmpeg(
        &[
            "-i",
            &inp,
            "-an",
            "-vf",
            &format!("fps={}", recipe.fps),
            "-q:v",
            &recipe.jpeg_quality.to_string(),
            &pattern.to_string_lossy(),
        ],
        input,
        "video",
    )?;
    let count = mmbal_transforms::video::list_frames(&frames)
        .with_context(|| format!("{}: ffmpeg wrote no frames", input.display()))?
        .len();
    run_ffmpeg(
        &[
            "-i",
            &inp,
            "-vn",
            "-ac",
            "1",
            "-ar",
            &recipe.wav_sample_rate.to_string(),
            "-acodec",
            "pcm_s16le",
            &wav.to_string_lossy(),
        ],
        input,
        "audio",
    )?;
    check_decoded_length(input, &wav, count, recipe.fps)?;
    if let (Some(template), Some(a)) = (&recipe.spectrogram, &recipe.audio) {
        let w = mmbal_transforms::audio::read_wav(&wav)?;
        if w.samples.is_empty() {
            bail!(
                "{}: the audio stream decoded to no samples",
                input.display()
            );
        }
        let x = mmbal_transforms::audio::resample(&w.samples, w.sample_rate, a.sample_rate);
        let spec = audio_spectrogram(a, x, input)?;
        let path = recipe.path(out, template, id);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        mmbal_data::npy::write_f32(&path, &[spec.rows, spec.cols], &spec.data)?;
    }
    Ok(count)
}

/// How long the container header says the video is, in seconds (`ffprobe`): the format's
/// duration, and for a video stream that states its frame count, that count at its average
/// rate (an AVI header keeps the count of the whole file when the file is cut). `None` when the
/// header states no length (a live-recorded WebM).
pub fn claimed_duration(input: &Path) -> Result<Option<f64>> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration:stream=codec_type,nb_frames,avg_frame_rate",
            "-of",
            "json",
        ])
        .arg(input)
        .output()
        .context(
            "cannot run `ffprobe` (part of ffmpeg): install it (Debian: apt-get install ffmpeg)",
        )?;
    if !out.status.success() {
        bail!(
            "{}: ffprobe cannot read the container header: {}",
            input.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{}: unreadable ffprobe output", input.display()))?;
    let number = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
    let mut claims: Vec<f64> = v["format"]["duration"]
        .as_str()
        .into_iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    for s in v["streams"].as_array().into_iter().flatten() {
        if s["codec_type"] != "video" {
            continue;
        }
        let rate = s["avg_frame_rate"].as_str().and_then(|r| {
            let (n, d) = r.split_once('/')?;
            let (n, d) = (n.parse::<f64>().ok()?, d.parse::<f64>().ok()?);
            (n > 0.0 && d > 0.0).then_some(n / d)
        });
        if let (Some(n), Some(rate)) = (number(&s["nb_frames"]), rate) {
            claims.push(n / rate);
        }
    }
    Ok(claims
        .into_iter()
        .filter(|c| c.is_finite() && *c > 0.0)
        .reduce(f64::max))
}

/// Errors when what decoded (the WAV's length, or the frames at `fps`, whichever is longer)
/// falls short of the header's length by more than 0.5 s or 2%: the file was cut short.
fn check_decoded_length(input: &Path, wav: &Path, frames: usize, fps: f64) -> Result<()> {
    let Some(claimed) = claimed_duration(input)? else {
        return Ok(());
    };
    let reader = hound::WavReader::open(wav)
        .with_context(|| format!("{}: cannot read the extracted audio", wav.display()))?;
    let audio = reader.duration() as f64 / reader.spec().sample_rate as f64;
    let video = frames as f64 / fps;
    let tolerance = (0.02 * claimed).max(0.5);
    if audio.max(video) + tolerance < claimed {
        bail!(
            "{}: cut short or damaged: its header claims {claimed:.2} s, but only {audio:.2} s of \
             audio and {frames} frame(s) at {fps} fps ({video:.2} s) decode",
            input.display()
        );
    }
    Ok(())
}

/// What preprocessing a folder did: every file is in exactly one list.
#[derive(Debug, Default)]
pub struct FolderReport {
    /// Ids done, with the number of frames written.
    pub done: Vec<(String, usize)>,
    /// One message per video that failed, naming the file.
    pub failed: Vec<String>,
    /// Files that are not videos (by extension), left alone.
    pub ignored: Vec<PathBuf>,
    /// Outputs of another recipe removed from the output folder before (only when
    /// [`PreprocessRecipe::replace`] was set and its `recipe.toml` differed).
    pub removed: Vec<PathBuf>,
}

const VIDEO_EXTENSIONS: [&str; 8] = ["mp4", "mpg", "mpeg", "avi", "webm", "mkv", "mov", "flv"];

/// Preprocesses every video file of `input_dir` (by extension) in parallel (ids are file
/// stems) and writes `recipe.toml` into `out` ([`prepare_output`]: an output folder made with
/// another recipe is refused unless [`PreprocessRecipe::replace`]). Two videos with one id
/// (`test.avi` and `test.mp4`) are refused before anything is written.
pub fn preprocess_folder(
    input_dir: &Path,
    out: &Path,
    recipe: &PreprocessRecipe,
) -> Result<FolderReport> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(input_dir)
        .with_context(|| format!("{}: cannot list input folder", input_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let (videos, ignored): (Vec<PathBuf>, Vec<PathBuf>) = files.into_iter().partition(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            .unwrap_or(false)
    });
    let mut by_id: BTreeMap<String, Vec<&PathBuf>> = BTreeMap::new();
    for v in &videos {
        by_id.entry(id_of(v)).or_default().push(v);
    }
    let shared: Vec<String> = by_id
        .iter()
        .filter(|(_, files)| files.len() > 1)
        .map(|(id, files)| {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            format!("`{id}`: {}", names.join(" and "))
        })
        .collect();
    if !shared.is_empty() {
        bail!(
            "{}: {} id(s) shared by several videos (the id is the file name without its \
             extension, and their outputs would mix): {}; rename or move all but one",
            input_dir.display(),
            shared.len(),
            shared.join("; ")
        );
    }
    let removed = prepare_output(out, recipe)?;
    let progress = mmbal_data::progress::task("preprocessing videos", videos.len());
    let results: Vec<(String, Result<usize>)> = videos
        .par_iter()
        .map(|f| {
            let id = id_of(f);
            let r = preprocess_video(f, out, &id, recipe);
            progress.advance(1);
            (id, r)
        })
        .collect();
    drop(progress);
    let mut report = FolderReport {
        ignored,
        removed,
        ..FolderReport::default()
    };
    for (id, r) in results {
        match r {
            Ok(n) => report.done.push((id, n)),
            Err(e) => report.failed.push(format!("{e:#}")),
        }
    }
    Ok(report)
}

fn id_of(video: &Path) -> String {
    video
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Makes `out` ready for the outputs of `recipe`: creates it, checks the `recipe.toml` an
/// earlier run left there, and writes this recipe's. A folder made with another recipe is
/// refused, naming the differing fields (its clips would be made two ways, and `recipe.toml`
/// would describe only some), unless [`PreprocessRecipe::replace`]: then every output of the old
/// recipe (the frame folders and files its templates name) is removed first, and returned.
pub fn prepare_output(out: &Path, recipe: &PreprocessRecipe) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let path = out.join("recipe.toml");
    let mut removed = Vec::new();
    if path.exists() {
        match PreprocessRecipe::load(&path) {
            Ok(old) => {
                let diff = old.differences(recipe)?;
                if !diff.is_empty() && !recipe.replace {
                    bail!(
                        "{}: the output folder was made with another recipe (`{}`, which differs \
                         from the requested one in {}); use another output folder, or replace the \
                         folder's outputs (--replace)",
                        path.display(),
                        old.name,
                        diff.join(", ")
                    );
                }
                if !diff.is_empty() {
                    removed = remove_outputs(out, &old)?;
                }
            }
            Err(e) if !recipe.replace => {
                return Err(e.context(format!(
                    "{}: the output folder's recipe cannot be read, so its outputs may have been \
                     made another way; use another output folder, or replace it (--replace)",
                    path.display()
                )))
            }
            Err(_) => {}
        }
    }
    write_recipe_file(out, recipe)?;
    Ok(removed)
}

/// The outputs of `old` in `out`: every frame folder and file its templates name, found by
/// listing the folder where each template's `{id}` is.
fn remove_outputs(out: &Path, old: &PreprocessRecipe) -> Result<Vec<PathBuf>> {
    let mut templates = vec![(old.frames.as_str(), true), (old.wav.as_str(), false)];
    if let Some(t) = &old.spectrogram {
        templates.push((t.as_str(), false));
    }
    let mut removed = Vec::new();
    for (template, is_dir) in templates {
        let parts: Vec<&str> = template.split('/').collect();
        let Some(at) = parts.iter().position(|p| p.contains("{id}")) else {
            continue;
        };
        let Some((prefix, suffix)) = parts[at].split_once("{id}") else {
            continue;
        };
        let dir = out.join(parts[..at].join("/"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("{}: cannot list", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name
                .strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                .filter(|id| !id.is_empty() && !id.starts_with('.'));
            if let Some(id) = id {
                let p = out.join(template.replace("{id}", id));
                let kind_matches = if is_dir { p.is_dir() } else { p.is_file() };
                if kind_matches {
                    found.push(p);
                }
            }
        }
        found.sort();
        for p in found {
            if is_dir {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("{}: cannot remove", p.display()))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Writes `out/recipe.toml`, refusing a folder made with another recipe unless
/// [`PreprocessRecipe::replace`] ([`prepare_output`], whose list of removed outputs this drops).
pub fn write_recipe(out: &Path, recipe: &PreprocessRecipe) -> Result<()> {
    prepare_output(out, recipe).map(|_| ())
}

fn write_recipe_file(out: &Path, recipe: &PreprocessRecipe) -> Result<()> {
    let path = out.join("recipe.toml");
    let text = format!(
        "# Written by mmbal {} (mmbal preprocess): how this folder was made.\n{}",
        env!("CARGO_PKG_VERSION"),
        toml::to_string(recipe)?
    );
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))
}

/// One line of a label file: `id,label[,split]`.
#[derive(Debug, Clone)]
pub struct LabelLine {
    /// The clip's id: the video's file stem, as `{id}` in the output templates.
    pub id: String,
    /// The class name.
    pub label: String,
    /// The split the clip goes to (train when the line names none).
    pub split: mmbal_dataset::Split,
}

/// Reads a label file (`id,label[,split]` per line, split train when absent; `#` comments).
pub fn read_labels(path: &Path) -> Result<Vec<LabelLine>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read label file", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in mmbal_dataset::manifest::strip_bom(&text)
        .lines()
        .enumerate()
    {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let f = mmbal_dataset::csv_line::fields(line).with_context(|| at.clone())?;
        if !(2..=3).contains(&f.len()) || f[0].is_empty() || f[1].is_empty() {
            bail!("{at}: expected `id,label[,split]`, found `{line}`");
        }
        let split = match f.get(2) {
            None => mmbal_dataset::Split::Train,
            Some(s) => mmbal_dataset::Split::parse(s)
                .with_context(|| format!("{at}: unknown split `{s}` (train, val or test)"))?,
        };
        out.push(LabelLine {
            id: f[0].to_string(),
            label: f[1].to_string(),
            split,
        });
    }
    Ok(out)
}

/// Writes the split lists of `layout` for the preprocessed clips `done`, from `labels`.
/// Every done clip needs a label; labelled clips that were not done are returned (they are in
/// no list) so that the caller reports them.
pub fn write_lists(
    layout: LayoutKind,
    out: &Path,
    labels: &[LabelLine],
    done: &[(String, usize)],
) -> Result<Vec<String>> {
    use mmbal_dataset::Split;
    let frames: std::collections::HashMap<&str, usize> =
        done.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    let unlabelled: Vec<&str> = done
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !labels.iter().any(|l| l.id == *id))
        .collect();
    if !unlabelled.is_empty() {
        bail!(
            "{} preprocessed clip(s) have no line in the label file: {}",
            unlabelled.len(),
            unlabelled.join(", ")
        );
    }
    let mut lists: std::collections::BTreeMap<String, String> = Default::default();
    let mut left_out = Vec::new();
    for l in labels {
        let Some(&n) = frames.get(l.id.as_str()) else {
            left_out.push(l.id.clone());
            continue;
        };
        let split = l.split.name();
        let (file, line) = match layout {
            LayoutKind::KineticsSounds => (
                format!("{split}.txt"),
                // The middle field is not read back; the frame count is what it held.
                csv_line::line(&[&l.id, &n.to_string(), &l.label])?,
            ),
            LayoutKind::CremaD => (format!("{split}.csv"), csv_line::line(&[&l.id, &l.label])?),
            LayoutKind::VggSound => {
                let (ytid, start) =
                    l.id.rsplit_once('_')
                        .filter(|(_, s)| s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()))
                        .with_context(|| {
                            format!(
                                "clip `{}`: VGGSound ids are `ytid_start` with 6 digits",
                                l.id
                            )
                        })?;
                let file = if l.split == Split::Val {
                    "val.csv"
                } else {
                    "vggsound.csv"
                };
                (
                    file.to_string(),
                    csv_line::line(&[ytid, &start.parse::<u64>()?.to_string(), &l.label, split])?,
                )
            }
            other => bail!(
                "writing split lists for the {other:?} layout is not supported: write them by hand"
            ),
        };
        let text = lists.entry(file).or_default();
        text.push_str(&line);
        text.push('\n');
    }
    for (file, text) in lists {
        let path = out.join(&file);
        std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    }
    Ok(left_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mmbal_data::recipe::Recipe;

    #[test]
    fn named_recipes_give_the_documented_shapes() {
        let shape = |name: &str| {
            let r = PreprocessRecipe::named(name).unwrap();
            Recipe::Audio(r.audio.unwrap()).input_shape()
        };
        assert_eq!(shape("ks-fbank"), vec![1, 1024, 128]);
        assert_eq!(shape("cremad-stft"), vec![1, 257, 188]);
        assert_eq!(shape("vggsound-stft"), vec![1, 129, 626]);
        assert!(PreprocessRecipe::named("ks").is_err());
    }

    #[test]
    fn overrides_reach_nested_fields_and_reject_typos() {
        let r = PreprocessRecipe::named("ks-fbank").unwrap();
        let o = r
            .with_overrides(&["fps=2".into(), "audio.front_end.num_mel_bins=64".into()])
            .unwrap();
        assert_eq!(o.fps, 2.0);
        match o.audio.clone().unwrap().front_end {
            FrontEnd::Fbank(f) => assert_eq!(f.num_mel_bins, 64),
            _ => panic!("fbank expected"),
        }
        assert!(r.with_overrides(&["fsp=2".into()]).is_err());
        assert!(r.with_overrides(&["nothing.here=2".into()]).is_err());
        // `replace` is no recipe field: not settable, not written, not a difference.
        assert!(r.with_overrides(&["replace=true".into()]).is_err());
        assert_eq!(
            r.differences(&o).unwrap(),
            vec![
                "audio.front_end.num_mel_bins: 128 -> 64".to_string(),
                "fps: 1.0 -> 2.0".to_string()
            ]
        );
        let replacing = PreprocessRecipe {
            replace: true,
            ..r.clone()
        };
        assert!(r.differences(&replacing).unwrap().is_empty());
    }
}
