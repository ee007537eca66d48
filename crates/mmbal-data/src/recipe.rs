//! Recipes: how one modality's source becomes the model's input tensor.
//!
//! Each recipe has two stages. [`Recipe::decode`] is deterministic (WAV to spectrogram, JPEG
//! frames to a fixed crop and size) and its result is what the packed cache stores.
//! [`Recipe::finish`] turns a decoded item into the input of one sample, with the per-sample
//! random stream for training augmentation (frame picking, random resized crop, flip).

use anyhow::{bail, Context, Result};
use mmbal_dataset::manifest::Source;
use mmbal_transforms::audio::{self, Fbank, Spectrogram, Stft};
use mmbal_transforms::video::{self, Image, Rect};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A decoded item, what the cache stores. Frames are kept as bytes (0..255) to keep the cache small.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// Its shape: `(1, rows, cols)` for audio and images, `(frames, channels, height, width)`
    /// for frames.
    pub shape: Vec<usize>,
    /// The values, row-major in `shape`.
    pub data: DecodedData,
}

/// The values of a [`Decoded`] item.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodedData {
    /// Floats: audio spectrograms, already normalised.
    F32(Vec<f32>),
    /// Bytes standing for `[0, 1]` (0..255): frames and images.
    U8(Vec<u8>),
}

/// The spectrogram an audio recipe computes, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum FrontEnd {
    /// `kind = "stft"`: librosa-style log-magnitude STFT, `(bins, frames)`.
    Stft(Stft),
    /// `kind = "fbank"`: Kaldi log-mel filterbank, `(frames, bins)`.
    Fbank(Fbank),
}

/// An audio modality: a WAV file (or a precomputed `.npy` spectrogram) to a normalised log
/// spectrogram with a fixed number of frames.
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
    /// The `std` of that normalisation (default 1).
    #[serde(default = "one")]
    pub norm_std: f32,
    /// A window around one word of each clip's alignment instead of the fixed
    /// `offset_seconds` / `clip_seconds` window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_window: Option<WordWindow>,
    /// White Gaussian noise added to the waveform at this signal-to-noise ratio in dB (against
    /// the clip's mean power at the recipe's rate), before any window; drawn from a generator
    /// seeded by the clip's file name, so a clip gets the same noise in every run: a degraded
    /// dataset (a weaker audio modality), not an augmentation. See [`add_noise`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_snr_db: Option<f64>,
}

/// Adds white Gaussian noise to `x` at `snr_db` dB below its mean power, from a generator seeded
/// by `key` (FNV-1a of its bytes): the same `x` and `key` always get the same noise. Silence
/// (zero power) is left as it is.
pub fn add_noise(x: &mut [f32], snr_db: f64, key: &str) {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let power = x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64;
    let sigma = (power / 10f64.powf(snr_db / 10.0)).sqrt();
    let Ok(normal) = rand_distr::Normal::new(0.0, sigma) else {
        return;
    };
    if sigma == 0.0 {
        return;
    }
    let seed = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    for v in x.iter_mut() {
        *v += normal.sample(&mut rng) as f32;
    }
}

/// A time window around one word of each clip's word alignment (GRID's `.align` files, read with
/// `mmbal_dataset::alignment`): the recipe keeps `seconds` centred on the middle of the `word`-th
/// spoken word, moved to stay inside the clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WordWindow {
    /// Folder of the alignments, one `<id>.align` per clip, `<id>` being the source's file name
    /// without its extension (or its folder's name, for frames); `${VAR}` is read from the
    /// environment (`${MMBAL_SHARED_DATA}/grid-s1-align`).
    pub alignments: String,
    /// Which word, 1-based among those that are not silence (GRID's digit: 5).
    pub word: usize,
    /// The window's length in seconds.
    pub seconds: f64,
}

impl WordWindow {
    /// The alignment file of `source` (a clip's WAV or frame folder).
    pub fn alignment_path(&self, source: &Path) -> Result<PathBuf> {
        let id = source
            .file_stem()
            .with_context(|| {
                format!(
                    "{}: no file name to find its alignment by",
                    source.display()
                )
            })?
            .to_string_lossy()
            .into_owned();
        Ok(PathBuf::from(expand_env(&self.alignments)?).join(format!("{id}.align")))
    }

    /// `(start, end, length)` in seconds: the window around the word, and the clip's length as
    /// the alignment gives it.
    pub fn window(&self, source: &Path) -> Result<(f64, f64, f64)> {
        use mmbal_dataset::alignment::{nth_word, read_alignment, window_around};
        if !(self.seconds.is_finite() && self.seconds > 0.0) {
            bail!("word_window: seconds = {} must be positive", self.seconds);
        }
        let path = self.alignment_path(source)?;
        let words = read_alignment(&path)?;
        let (word, length) = nth_word(&words, self.word, &path)?;
        let (a, b) = window_around(&word, length, self.seconds);
        Ok((a, b, length))
    }
}

/// `${VAR}` replaced from the environment; an unset variable is an error naming it.
fn expand_env(text: &str) -> Result<String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('}') else {
            bail!("`{text}`: an unclosed ${{");
        };
        let var = &rest[i + 2..i + j];
        out.push_str(
            &std::env::var(var).with_context(|| format!("`{text}`: ${{{var}}} is not set"))?,
        );
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn one() -> f32 {
    1.0
}

/// A video modality: a folder of JPEG/PNG frames (or a u/v pair of optical-flow folders) to
/// `count` frames of `(channels, height, width)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramesRecipe {
    /// Frames per clip given to the model (T).
    pub count: usize,
    /// Output size.
    pub height: usize,
    /// Output width, in pixels.
    pub width: usize,
    /// Fixed crop of every source frame, as fractions `[top, left, height, width]` (a lower-face
    /// box for a single speaker); the whole frame when absent.
    #[serde(default)]
    pub crop: Option<[f64; 4]>,
    /// Stored size in the cache, before training augmentation (defaults to the output size
    /// enlarged by 8/7, as Resize(256) before a 224 crop).
    #[serde(default)]
    pub cache_height: Option<usize>,
    /// Stored width in the cache (see `cache_height`; defaults to `width` enlarged by 8/7).
    #[serde(default)]
    pub cache_width: Option<usize>,
    /// Keep only the frames in this part of the clip, as fractions `[start, end)` of its frame
    /// count (a fixed time window, e.g. around a spoken word); the whole clip when absent.
    #[serde(default)]
    pub span: Option<[f64; 2]>,
    /// Keep the frames of a window around one word of each clip's alignment instead of the
    /// fixed `span` (the frames taken to cover the clip's length evenly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_window: Option<WordWindow>,
    /// Use one grey channel instead of RGB.
    #[serde(default)]
    pub grey: bool,
    /// Optical flow: the source is a u/v pair of grey frame folders, two channels, normalised
    /// to `(x - 0.5) / 0.5`; a horizontal flip also mirrors u.
    #[serde(default)]
    pub flow: bool,
    /// Train augmentation: random resized crop with this area range, then horizontal flip.
    #[serde(default = "default_scale")]
    pub crop_scale: (f64, f64),
    /// Train augmentation: mirror the clip left-right with probability 0.5 (default true).
    #[serde(default = "yes")]
    pub flip: bool,
    /// Whether training applies the random resized crop and flip at all (default true); frames
    /// are still picked at random in training when false.
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
    /// The frames of a clip of `n` frames that decoding reads: those inside `span` (all without
    /// one); `None` when the span keeps none.
    pub fn span_range(&self, n: usize) -> Option<std::ops::Range<usize>> {
        let Some([start, end]) = self.span else {
            return (n > 0).then_some(0..n);
        };
        let (a, b) = (
            (start * n as f64).floor() as usize,
            ((end * n as f64).ceil() as usize).min(n),
        );
        ((0.0..1.0).contains(&start) && b > a).then_some(a..b)
    }
    fn channels(&self) -> usize {
        if self.flow {
            2
        } else if self.grey {
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
    /// Output height in pixels; a source of another size is resized bilinearly.
    pub height: usize,
    /// Output width in pixels.
    pub width: usize,
    /// Subtracted after scaling to `[0, 1]` (default 0).
    #[serde(default)]
    pub mean: f32,
    /// Divides after `mean` is subtracted (default 1).
    #[serde(default = "one")]
    pub std: f32,
}

/// How one modality's source becomes the model's input; chosen by `kind` (`"audio"`,
/// `"frames"` or `"image"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Recipe {
    /// A sound clip to a log spectrogram: `(1, frames, bins)` (fbank), `(1, bins, frames)` (STFT).
    Audio(AudioRecipe),
    /// Video frames to `(count, channels, height, width)`.
    Frames(FramesRecipe),
    /// A single still image to `(1, height, width)`.
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

    /// The word window the recipe cuts to, if any (audio and frames recipes).
    pub fn word_window(&self) -> Option<&WordWindow> {
        match self {
            Recipe::Audio(a) => a.word_window.as_ref(),
            Recipe::Frames(f) => f.word_window.as_ref(),
            _ => None,
        }
    }

    /// The deterministic stage: source to cacheable item.
    pub fn decode(&self, source: &Source) -> Result<Decoded> {
        match self {
            Recipe::Audio(a) => decode_audio(a, source.path()),
            Recipe::Frames(f) => match source {
                Source::Flow { u, v } => decode_flow(f, u, v),
                other => decode_frames(f, other.path()),
            },
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
                    Source::Flow { u, .. } => {
                        bail!("{}: an image recipe cannot read a flow source", u.display())
                    }
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
        let mut out = vec![0f32; self.input_shape().iter().product()];
        self.finish_into(item, rng, &mut out)?;
        Ok(out)
    }

    /// [`Recipe::finish`] into `out` (`input_shape()` floats), the loader's path: one batch
    /// buffer, no per-sample allocation.
    pub fn finish_into(
        &self,
        item: &Decoded,
        rng: Option<&mut impl Rng>,
        out: &mut [f32],
    ) -> Result<()> {
        let n: usize = self.input_shape().iter().product();
        let len = match &item.data {
            DecodedData::F32(d) => d.len(),
            DecodedData::U8(d) => d.len(),
        };
        if out.len() != n {
            bail!("output holds {} values, the recipe gives {n}", out.len());
        }
        match (self, &item.data) {
            (Recipe::Audio(_) | Recipe::Image(_), _) if len != n => {
                bail!("cached item has {len} values, the recipe gives {n} (rebuild the cache)")
            }
            (Recipe::Audio(_), DecodedData::F32(d)) => out.copy_from_slice(d),
            (Recipe::Image(r), DecodedData::U8(d)) => {
                for (o, &v) in out.iter_mut().zip(d) {
                    *o = (v as f32 / 255.0 - r.mean) / r.std;
                }
            }
            (Recipe::Frames(f), DecodedData::U8(d)) => finish_frames(f, &item.shape, d, rng, out)?,
            _ => bail!("cached item does not match the recipe (rebuild the cache)"),
        }
        Ok(())
    }
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .map(|&x| (x * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// A precomputed spectrogram (`.npy`, as the layout stores it: fbank `(frames, bins)`, STFT
/// `(bins, frames)`): only `frames`, `bin_mean_norm` and the normalisation of the recipe apply.
fn decode_audio_npy(a: &AudioRecipe, path: &Path) -> Result<Decoded> {
    if let Some(snr) = a.noise_snr_db {
        bail!(
            "{}: noise_snr_db = {snr} needs the waveform, and this source is a precomputed spectrogram",
            path.display()
        );
    }
    let (shape, data) = crate::npy::read_f32(path)?;
    let (rows, cols) = match shape[..] {
        [r, c] | [1, r, c] => (r, c),
        _ => bail!(
            "{}: expected a 2-D spectrogram, found shape {shape:?}",
            path.display()
        ),
    };
    let mut spec = Spectrogram { rows, cols, data };
    let spec = match &a.front_end {
        FrontEnd::Fbank(fb) => {
            if cols != fb.num_mel_bins {
                bail!(
                    "{}: {rows}x{cols} spectrogram, but the recipe's fbank has {} mel bins (frames x bins expected)",
                    path.display(),
                    fb.num_mel_bins
                );
            }
            if a.bin_mean_norm {
                subtract_bin_means(&mut spec, true);
            }
            audio::fix_rows(&spec, a.frames)
        }
        FrontEnd::Stft(st) => {
            if rows != st.n_fft / 2 + 1 {
                bail!(
                    "{}: {rows}x{cols} spectrogram, but the recipe's STFT has {} bins (bins x frames expected)",
                    path.display(),
                    st.n_fft / 2 + 1
                );
            }
            if a.bin_mean_norm {
                subtract_bin_means(&mut spec, false);
            }
            audio::fix_cols(&spec, a.frames)
        }
    };
    Ok(normalised(a, spec))
}

fn normalised(a: &AudioRecipe, spec: Spectrogram) -> Decoded {
    let data = spec
        .data
        .iter()
        .map(|&v| (v - a.norm_mean) / a.norm_std)
        .collect();
    Decoded {
        shape: vec![1, spec.rows, spec.cols],
        data: DecodedData::F32(data),
    }
}

/// The recipe's front end on a waveform already at the recipe's rate: offset, tiling or cut,
/// mean removal, spectrogram, bin means, frames. Not normalised (what preprocessing stores).
pub fn audio_spectrogram(a: &AudioRecipe, mut x: Vec<f32>, what: &Path) -> Result<Spectrogram> {
    if x.is_empty() {
        bail!("{}: no audio samples", what.display());
    }
    if a.offset_seconds > 0.0 {
        let skip = (a.offset_seconds * a.sample_rate as f64).round() as usize;
        if skip >= x.len() {
            bail!(
                "{}: {:.3} s long, shorter than the recipe's offset_seconds {}",
                what.display(),
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
    Ok(match &a.front_end {
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
    })
}

fn decode_audio(a: &AudioRecipe, path: &Path) -> Result<Decoded> {
    let wave = match path.extension().and_then(|e| e.to_str()) {
        Some("wav") | Some("WAV") => audio::read_wav(path)?,
        Some("npy") => return decode_audio_npy(a, path),
        _ => bail!(
            "{}: audio sources must be .wav files or .npy spectrograms",
            path.display()
        ),
    };
    if wave.samples.is_empty() {
        bail!("{}: WAV file holds no samples", path.display());
    }
    let mut x = audio::resample(&wave.samples, wave.sample_rate, a.sample_rate);
    if let Some(snr) = a.noise_snr_db {
        let key = path.file_stem().unwrap_or_default().to_string_lossy();
        add_noise(&mut x, snr, &key);
    }
    let Some(w) = &a.word_window else {
        return Ok(normalised(a, audio_spectrogram(a, x, path)?));
    };
    if a.offset_seconds > 0.0 || a.clip_seconds.is_some() {
        bail!("{}: the audio recipe has both a word_window and a fixed window (offset_seconds / clip_seconds); keep one", path.display());
    }
    // The fixed window's machinery, placed on the word.
    let (start, end, _) = w.window(path)?;
    let placed = AudioRecipe {
        offset_seconds: start,
        clip_seconds: Some(end - start),
        ..a.clone()
    };
    Ok(normalised(a, audio_spectrogram(&placed, x, path)?))
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
    let placed;
    let f = match &f.word_window {
        None => f,
        Some(w) => {
            if f.span.is_some() {
                bail!(
                    "{}: the frames recipe has both a word_window and a span; keep one",
                    dir.display()
                );
            }
            // The window as a span of the clip, its frames covering the clip evenly.
            let (start, end, length) = w.window(dir)?;
            placed = FramesRecipe {
                span: Some([start / length, end / length]),
                ..f.clone()
            };
            &placed
        }
    };
    match f.span_range(files.len()) {
        Some(r) => files = files[r].to_vec(),
        None => bail!(
            "{}: span {:?} keeps no frames of {}",
            dir.display(),
            f.span.unwrap_or([0.0, 1.0]),
            files.len()
        ),
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

/// Optical flow: the u and v folders' frames as two grey channels, aligned by index.
fn decode_flow(f: &FramesRecipe, u: &Path, v: &Path) -> Result<Decoded> {
    if !f.flow {
        bail!(
            "{}: a flow source needs a frames recipe with flow = true",
            u.display()
        );
    }
    let grey = FramesRecipe {
        grey: true,
        flow: false,
        ..f.clone()
    };
    let (du, dv) = (decode_frames(&grey, u)?, decode_frames(&grey, v)?);
    if du.shape != dv.shape {
        bail!(
            "{}: {} u frames but {} has {} v frames",
            u.display(),
            du.shape[0],
            v.display(),
            dv.shape[0]
        );
    }
    let (DecodedData::U8(a), DecodedData::U8(b)) = (du.data, dv.data) else {
        unreachable!("frames decode to bytes")
    };
    let (n, plane) = (du.shape[0], du.shape[2] * du.shape[3]);
    let mut data = Vec::with_capacity(2 * a.len());
    for t in 0..n {
        data.extend_from_slice(&a[t * plane..(t + 1) * plane]);
        data.extend_from_slice(&b[t * plane..(t + 1) * plane]);
    }
    Ok(Decoded {
        shape: vec![n, 2, du.shape[2], du.shape[3]],
        data: DecodedData::U8(data),
    })
}

fn finish_frames(
    f: &FramesRecipe,
    shape: &[usize],
    d: &[u8],
    mut rng: Option<&mut impl Rng>,
    out: &mut [f32],
) -> Result<()> {
    let &[n, c, h, w] = shape else {
        bail!("cached frames must be 4-D, got {shape:?}")
    };
    if c != f.channels() || d.len() != n * c * h * w {
        bail!("cached frames {shape:?} do not match the recipe (rebuild the cache)");
    }
    let picks = video::pick_frames(n, f.count, rng.as_deref_mut());
    let train_aug = f.augment && rng.is_some();
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
    // Per channel, value in [0, 1] is `a + b * byte / 255`, then `(value - mean) / std`.
    let (mean, std): (&[f32], &[f32]) = if f.flow {
        (&[0.5, 0.5], &[0.5, 0.5])
    } else if c == 3 {
        (&video::IMAGENET_MEAN, &video::IMAGENET_STD)
    } else {
        (&[0.449], &[0.226])
    };
    let affine: Vec<(f32, f32)> = (0..c)
        .map(|ch| {
            // A mirrored flow field moves the other way horizontally: u -> 1 - u.
            let (a, b) = if f.flow && flip && ch == 0 {
                (1.0, -1.0)
            } else {
                (0.0, 1.0)
            };
            ((a - mean[ch]) / std[ch], b / (255.0 * std[ch]))
        })
        .collect();
    let plane_in = c * h * w;
    let plane_out = c * f.height * f.width;
    for (k, &p) in picks.iter().enumerate() {
        video::resample_bytes(
            &d[p * plane_in..(p + 1) * plane_in],
            (c, h, w),
            rect,
            (f.height, f.width),
            flip,
            &affine,
            &mut out[k * plane_out..(k + 1) * plane_out],
        );
    }
    Ok(())
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
