//! Recipes: how one modality's source becomes the model's input tensor.
//!
//! Each recipe has two stages. [`Recipe::decode`] is deterministic (WAV to spectrogram, JPEG
//! frames to a fixed crop and size) and its result is what the packed cache stores.
//! [`Recipe::finish`] turns a decoded item into the input of one sample, with the per-sample
//! random stream for training augmentation (frame picking, random resized crop, flip).

use crate::audio::{self, Fbank, Spectrogram, Stft};
use crate::manifest::Source;
use crate::video::{self, Image, Rect};
use anyhow::{bail, Context, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

/// A decoded item, what the cache stores. Frames are kept as bytes (0..255) to keep the cache small.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub shape: Vec<usize>,
    pub data: DecodedData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DecodedData {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FrontEnd {
    Stft(Stft),
    Fbank(Fbank),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioRecipe {
    /// Audio is resampled to this rate first.
    pub sample_rate: u32,
    /// Skip this many seconds at the start (a fixed time window, with `clip_seconds`).
    #[serde(default)]
    pub offset_seconds: f64,
    /// Tile (repeat) or cut the waveform to this many seconds before the front end.
    #[serde(default)]
    pub clip_seconds: Option<f64>,
    /// Subtract the waveform mean first (the Kaldi fbank recipes do).
    #[serde(default)]
    pub remove_mean: bool,
    /// `[... .front_end]` table with `kind = "stft"` or `"fbank"` and its parameters.
    pub front_end: FrontEnd,
    /// Subtract each frequency bin's mean over the clip's frames before padding (per-utterance
    /// mean normalisation, as CMN; helps across speakers).
    #[serde(default)]
    pub bin_mean_norm: bool,
    /// Pad with zeros or cut the time axis to this many frames.
    pub frames: usize,
    /// `(x - mean) / std` after the log.
    #[serde(default)]
    pub norm_mean: f32,
    #[serde(default = "one")]
    pub norm_std: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramesRecipe {
    /// Frames per clip given to the model (T).
    pub count: usize,
    /// Output size.
    pub height: usize,
    pub width: usize,
    /// Fixed crop of every source frame, as fractions `[top, left, height, width]` (a lower-face
    /// box for a single speaker); the whole frame when absent.
    #[serde(default)]
    pub crop: Option<[f64; 4]>,
    /// Stored size in the cache, before training augmentation (defaults to the output size
    /// enlarged by 8/7, as Resize(256) before a 224 crop).
    #[serde(default)]
    pub cache_height: Option<usize>,
    #[serde(default)]
    pub cache_width: Option<usize>,
    /// Keep only the frames in this part of the clip, as fractions `[start, end)` of its frame
    /// count (a fixed time window, e.g. around a spoken word); the whole clip when absent.
    #[serde(default)]
    pub span: Option<[f64; 2]>,
    /// Use one grey channel instead of RGB.
    #[serde(default)]
    pub grey: bool,
    /// Train augmentation: random resized crop with this area range, then horizontal flip.
    #[serde(default = "default_scale")]
    pub crop_scale: (f64, f64),
    #[serde(default = "yes")]
    pub flip: bool,
    #[serde(default = "yes")]
    pub augment: bool,
}

fn default_scale() -> (f64, f64) {
    (0.08, 1.0)
}
fn yes() -> bool {
    true
}

impl FramesRecipe {
    fn cache_size(&self) -> (usize, usize) {
        let up = |v: usize| (v * 8).div_ceil(7);
        (
            self.cache_height.unwrap_or(up(self.height)),
            self.cache_width.unwrap_or(up(self.width)),
        )
    }
    fn channels(&self) -> usize {
        if self.grey {
            1
        } else {
            3
        }
    }
}

/// A single still image (MNIST), scaled to `[0, 1]` then normalised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    pub height: usize,
    pub width: usize,
    #[serde(default)]
    pub mean: f32,
    #[serde(default = "one")]
    pub std: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Recipe {
    Audio(AudioRecipe),
    Frames(FramesRecipe),
    Image(ImageRecipe),
}

impl Recipe {
    /// The input shape of one sample, without the batch axis.
    pub fn input_shape(&self) -> Vec<usize> {
        match self {
            Recipe::Audio(a) => {
                let bins = match &a.front_end {
                    FrontEnd::Fbank(f) => f.num_mel_bins,
                    FrontEnd::Stft(s) => s.n_fft / 2 + 1,
                };
                match &a.front_end {
                    // Kaldi fbank: time along height, (1, frames, bins).
                    FrontEnd::Fbank(_) => vec![1, a.frames, bins],
                    // librosa STFT: frequency along height, (1, bins, frames).
                    FrontEnd::Stft(_) => vec![1, bins, a.frames],
                }
            }
            Recipe::Frames(f) => vec![f.count, f.channels(), f.height, f.width],
            Recipe::Image(i) => vec![1, i.height, i.width],
        }
    }

    /// The deterministic stage: source to cacheable item.
    pub fn decode(&self, source: &Source) -> Result<Decoded> {
        match self {
            Recipe::Audio(a) => decode_audio(a, source.path()),
            Recipe::Frames(f) => decode_frames(f, source.path()),
            Recipe::Image(r) => {
                let img = match source {
                    Source::IdxImage { path, index } => {
                        let (h, w, pixels) = read_idx_image(path, *index)?;
                        let data = pixels.iter().map(|&p| p as f32 / 255.0).collect();
                        Image {
                            channels: 1,
                            height: h,
                            width: w,
                            data,
                        }
                    }
                    Source::Path(p) => video::read_image(p, true)?,
                };
                let img = if (img.height, img.width) == (r.height, r.width) {
                    img
                } else {
                    img.resample(img.full(), r.height, r.width, false)
                };
                Ok(Decoded {
                    shape: vec![1, r.height, r.width],
                    data: DecodedData::U8(to_bytes(&img.data)),
                })
            }
        }
    }

    /// The per-sample stage: a decoded item to the model input, `input_shape()` floats.
    /// `rng` is `Some` for training (augmentation), `None` for evaluation.
    pub fn finish(&self, item: &Decoded, rng: Option<&mut impl Rng>) -> Result<Vec<f32>> {
        match (self, &item.data) {
            (Recipe::Audio(_), DecodedData::F32(d)) => Ok(d.clone()),
            (Recipe::Image(r), DecodedData::U8(d)) => Ok(d
                .iter()
                .map(|&v| (v as f32 / 255.0 - r.mean) / r.std)
                .collect()),
            (Recipe::Frames(f), DecodedData::U8(d)) => finish_frames(f, &item.shape, d, rng),
            _ => bail!("cached item does not match the recipe (rebuild the cache)"),
        }
    }
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

fn decode_audio(a: &AudioRecipe, path: &Path) -> Result<Decoded> {
    let wave = match path.extension().and_then(|e| e.to_str()) {
        Some("wav") | Some("WAV") => audio::read_wav(path)?,
        _ => bail!("{}: audio sources must be .wav files", path.display()),
    };
    if wave.samples.is_empty() {
        bail!("{}: WAV file holds no samples", path.display());
    }
    let mut x = audio::resample(&wave.samples, wave.sample_rate, a.sample_rate);
    if a.offset_seconds > 0.0 {
        let skip = (a.offset_seconds * a.sample_rate as f64).round() as usize;
        if skip >= x.len() {
            bail!(
                "{}: {:.3} s long, shorter than the recipe's offset_seconds {}",
                path.display(),
                x.len() as f64 / a.sample_rate as f64,
                a.offset_seconds
            );
        }
        x.drain(..skip);
    }
    if let Some(secs) = a.clip_seconds {
        let n = (secs * a.sample_rate as f64).round() as usize;
        x = (0..n).map(|i| x[i % x.len()]).collect();
    }
    if a.remove_mean {
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / x.len() as f64;
        x.iter_mut().for_each(|v| *v -= mean as f32);
    }
    let spec: Spectrogram = match &a.front_end {
        FrontEnd::Fbank(fb) => {
            let mut s = fb.compute(&x, a.sample_rate)?;
            if a.bin_mean_norm {
                subtract_bin_means(&mut s, true);
            }
            audio::fix_rows(&s, a.frames)
        }
        FrontEnd::Stft(st) => {
            let x: Vec<f32> = x.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
            let mut s = st.compute(&x)?;
            if a.bin_mean_norm {
                subtract_bin_means(&mut s, false);
            }
            audio::fix_cols(&s, a.frames)
        }
    };
    let data = spec
        .data
        .iter()
        .map(|&v| (v - a.norm_mean) / a.norm_std)
        .collect();
    Ok(Decoded {
        shape: vec![1, spec.rows, spec.cols],
        data: DecodedData::F32(data),
    })
}

/// Removes each frequency bin's mean over time; time runs along rows (fbank) or columns (STFT).
fn subtract_bin_means(s: &mut Spectrogram, time_along_rows: bool) {
    let (rows, cols) = (s.rows, s.cols);
    let (bins, frames) = if time_along_rows {
        (cols, rows)
    } else {
        (rows, cols)
    };
    let at = |t: usize, b: usize| {
        if time_along_rows {
            t * cols + b
        } else {
            b * cols + t
        }
    };
    for b in 0..bins {
        let mean = (0..frames).map(|t| s.data[at(t, b)] as f64).sum::<f64>() / frames.max(1) as f64;
        for t in 0..frames {
            s.data[at(t, b)] -= mean as f32;
        }
    }
}

fn decode_frames(f: &FramesRecipe, dir: &Path) -> Result<Decoded> {
    let mut files = video::list_frames(dir)?;
    if let Some([start, end]) = f.span {
        let n = files.len() as f64;
        let (a, b) = (
            (start * n).floor() as usize,
            ((end * n).ceil() as usize).min(files.len()),
        );
        if !(0.0..1.0).contains(&start) || b <= a {
            bail!(
                "{}: span [{start}, {end}] keeps no frames of {}",
                dir.display(),
                files.len()
            );
        }
        files = files[a..b].to_vec();
    }
    let (ch, cw) = f.cache_size();
    let c = f.channels();
    let mut data = Vec::with_capacity(files.len() * c * ch * cw);
    for file in &files {
        let img = video::read_image(file, f.grey)?;
        let rect = match f.crop {
            None => img.full(),
            Some([t, l, h, w]) => Rect {
                top: t * img.height as f64,
                left: l * img.width as f64,
                height: h * img.height as f64,
                width: w * img.width as f64,
            },
        };
        data.extend(to_bytes(&img.resample(rect, ch, cw, false).data));
    }
    Ok(Decoded {
        shape: vec![files.len(), c, ch, cw],
        data: DecodedData::U8(data),
    })
}

fn finish_frames(
    f: &FramesRecipe,
    shape: &[usize],
    d: &[u8],
    mut rng: Option<&mut impl Rng>,
) -> Result<Vec<f32>> {
    let &[n, c, h, w] = shape else {
        bail!("cached frames must be 4-D, got {shape:?}")
    };
    let picks = video::pick_frames(n, f.count, rng.as_deref_mut());
    let train_aug = f.augment && rng.is_some();
    let mut out = Vec::with_capacity(f.count * c * f.height * f.width);
    // One crop box and flip per clip, shared by its frames (as the reference transforms do per clip).
    let (rect, flip) = match rng {
        Some(r) if train_aug => {
            let rect = video::random_resized_crop_box(h, w, f.crop_scale, r);
            let flip = f.flip && r.random_bool(0.5);
            (rect, flip)
        }
        _ => (
            Rect {
                top: 0.0,
                left: 0.0,
                height: h as f64,
                width: w as f64,
            },
            false,
        ),
    };
    let plane = c * h * w;
    for &p in &picks {
        let img = Image {
            channels: c,
            height: h,
            width: w,
            data: d[p * plane..(p + 1) * plane]
                .iter()
                .map(|&v| v as f32 / 255.0)
                .collect(),
        };
        let mut img = img.resample(rect, f.height, f.width, flip);
        if c == 3 {
            img.normalise(&video::IMAGENET_MEAN, &video::IMAGENET_STD);
        } else {
            img.normalise(&[0.449], &[0.226]);
        }
        out.extend(img.data);
    }
    Ok(out)
}

/// Reads image `index` of an IDX3 file (optionally gzip-compressed): `(rows, cols, pixels)`.
pub fn read_idx_image(path: &Path, index: usize) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = read_maybe_gz(path)?;
    let be = |o: usize| {
        u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
    };
    if bytes.len() < 16 || be(0) != 0x0803 {
        bail!(
            "{}: not an IDX3 image file (magic 0x00000803 expected)",
            path.display()
        );
    }
    let (n, rows, cols) = (be(4), be(8), be(12));
    if index >= n {
        bail!(
            "{}: image index {index} out of range ({n} images)",
            path.display()
        );
    }
    let start = 16 + index * rows * cols;
    let end = start + rows * cols;
    if bytes.len() < end {
        bail!("{}: truncated IDX file", path.display());
    }
    Ok((rows, cols, bytes[start..end].to_vec()))
}

/// Reads the labels of an IDX1 file (optionally gzip-compressed).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    if bytes.len() < 8 || bytes[..4] != [0, 0, 8, 1] {
        bail!(
            "{}: not an IDX1 label file (magic 0x00000801 expected)",
            path.display()
        );
    }
    let n = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    if bytes.len() < 8 + n {
        bail!("{}: truncated IDX label file", path.display());
    }
    Ok(bytes[8..8 + n].to_vec())
}

fn read_maybe_gz(path: &Path) -> Result<std::sync::Arc<Vec<u8>>> {
    // IDX files are read once per process and shared: decompressing 47 MB per image would be absurd.
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static FILES: OnceLock<Mutex<HashMap<std::path::PathBuf, Arc<Vec<u8>>>>> = OnceLock::new();
    let files = FILES.get_or_init(Default::default);
    if let Some(b) = files.lock().unwrap().get(path) {
        return Ok(b.clone());
    }
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: corrupt gzip data", path.display()))?;
        out
    } else {
        raw
    };
    let bytes = Arc::new(bytes);
    files
        .lock()
        .unwrap()
        .insert(path.to_path_buf(), bytes.clone());
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_means_are_removed_along_time() {
        // fbank layout: 3 frames x 2 bins; bin 0 = [1, 2, 3] -> [-1, 0, 1], bin 1 constant -> 0.
        let mut s = Spectrogram {
            rows: 3,
            cols: 2,
            data: vec![1.0, 5.0, 2.0, 5.0, 3.0, 5.0],
        };
        subtract_bin_means(&mut s, true);
        assert_eq!(s.data, vec![-1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        // STFT layout: 2 bins x 3 frames.
        let mut s = Spectrogram {
            rows: 2,
            cols: 3,
            data: vec![1.0, 2.0, 3.0, 4.0, 4.0, 4.0],
        };
        subtract_bin_means(&mut s, false);
        assert_eq!(s.data, vec![-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }
}
