//! Video frames: JPEG decoding, frame picking, resizing, cropping, ImageNet normalisation and the
//! train augmentation of the field (random resized crop, horizontal flip).
//!
//! Images are planar `f32` in `[0, 1]`, `(channels, height, width)`.

use anyhow::{bail, Context, Result};
use rand::Rng;
use std::path::{Path, PathBuf};

/// ImageNet's per-channel mean (R, G, B), for values in `[0, 1]` ([`Image::normalise`]).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation (R, G, B), for values in `[0, 1]`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A planar image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Number of planes: 3 for RGB, 1 for grey.
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// The values, planar `(channels, height, width)`: `channels * height * width` of them.
    pub data: Vec<f32>,
}

impl Image {
    /// The value at channel `c`, row `y`, column `x` (0-based).
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }
}

/// Decodes a JPEG (or PNG) file to RGB, or to one grey channel when `grey`. A JPEG must be
/// whole ([`check_jpeg`]): decoders fill a cut-off image with grey and report no error.
pub fn read_image(path: &Path, grey: bool) -> Result<Image> {
    let bytes =
        std::fs::read(path).with_context(|| format!("{}: cannot open image", path.display()))?;
    if let Err(e) = check_jpeg(&bytes) {
        bail!("{}: {e}", path.display());
    }
    let img = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read image", path.display()))?
        .decode()
        .with_context(|| format!("{}: corrupt or unsupported image", path.display()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (channels, raw) = if grey {
        (1, img.into_luma8().into_raw())
    } else {
        (3, img.into_rgb8().into_raw())
    };
    let mut data = vec![0f32; channels * h * w];
    for (i, px) in raw.chunks_exact(channels).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            data[c * h * w + i] = v as f32 / 255.0;
        }
    }
    Ok(Image {
        channels,
        height: h,
        width: w,
        data,
    })
}

/// Checks that JPEG data (bytes starting with the SOI marker `FFD8`; anything else passes) is
/// whole: every segment fits in the file and the entropy-coded data ends with the end-of-image
/// marker `FFD9`. A file cut short fails here, where the decoders of the `image` crate would
/// return a picture grey below the cut and no error. Bytes after `FFD9` are allowed.
pub fn check_jpeg(bytes: &[u8]) -> std::result::Result<(), String> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(());
    }
    let n = bytes.len();
    let truncated = |what: &str| {
        Err(format!(
            "truncated JPEG: the file ends after {n} bytes {what}, without the end-of-image marker FFD9"
        ))
    };
    let mut pos = 2;
    loop {
        // The next marker: 0xFF, any fill bytes 0xFF, then the marker code. Stray bytes before a
        // marker are skipped, as libjpeg does (with a warning).
        while pos < n && bytes[pos] != 0xFF {
            pos += 1;
        }
        while pos < n && bytes[pos] == 0xFF {
            pos += 1;
        }
        if pos >= n {
            return truncated("between segments");
        }
        let marker = bytes[pos];
        pos += 1;
        match marker {
            0xD9 => return Ok(()),
            // Standalone markers: restart markers, TEM.
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        if pos + 2 > n {
            return truncated(&format!("inside the length of segment FF{marker:02X}"));
        }
        let len = u16::from_be_bytes([bytes[pos], bytes[pos + 1]]) as usize;
        if len < 2 {
            return Err(format!(
                "corrupt JPEG: segment FF{marker:02X} at byte {} has length {len}",
                pos - 2
            ));
        }
        if pos + len > n {
            return truncated(&format!(
                "inside segment FF{marker:02X} (which needs {} bytes from byte {})",
                len,
                pos - 2
            ));
        }
        pos += len;
        if marker == 0xDA {
            // Entropy-coded data: runs until a marker other than a stuffed 0xFF00 or a restart.
            loop {
                match bytes[pos..].iter().position(|&b| b == 0xFF) {
                    None => return truncated("inside the entropy-coded image data"),
                    Some(k) => pos += k,
                }
                let mut next = pos + 1;
                while next < n && bytes[next] == 0xFF {
                    next += 1;
                }
                if next >= n {
                    return truncated("inside the entropy-coded image data");
                }
                match bytes[next] {
                    0x00 | 0xD0..=0xD7 => pos = next + 1,
                    _ => {
                        pos = next - 1;
                        break;
                    }
                }
            }
        }
    }
}

/// Missing numbers in a frame sequence: the frames of a folder named alike with a running number
/// (`frame_00001.jpg`, `frame_00002.jpg`, ...) should have no gap between the first and the
/// last. Returns the file names that would fill the gaps (at most `limit`) and how many there
/// are in all; nothing when the names do not follow one numbered pattern.
pub fn frame_gaps(frames: &[PathBuf], limit: usize) -> (Vec<String>, usize) {
    let mut pattern: Option<(String, String, usize)> = None;
    let mut numbers = Vec::with_capacity(frames.len());
    for f in frames {
        let Some(name) = f.file_name().and_then(|n| n.to_str()) else {
            return (Vec::new(), 0);
        };
        let (stem, ext) = match name.rfind('.') {
            Some(i) => (&name[..i], &name[i..]),
            None => (name, ""),
        };
        let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return (Vec::new(), 0);
        }
        let prefix = &stem[..stem.len() - digits];
        let Ok(number) = stem[stem.len() - digits..].parse::<u64>() else {
            return (Vec::new(), 0);
        };
        match &pattern {
            None => pattern = Some((prefix.to_string(), ext.to_string(), digits)),
            Some((p, e, _)) if p == prefix && e == ext => {}
            Some(_) => return (Vec::new(), 0),
        }
        numbers.push(number);
    }
    let Some((prefix, ext, width)) = pattern else {
        return (Vec::new(), 0);
    };
    numbers.sort_unstable();
    numbers.dedup();
    let mut missing = Vec::new();
    let mut total = 0u64;
    for w in numbers.windows(2) {
        total += w[1] - w[0] - 1;
        for k in (w[0] + 1..w[1]).take(limit - missing.len()) {
            missing.push(format!("{prefix}{k:0width$}{ext}"));
        }
    }
    (missing, total as usize)
}

/// The frame files of a clip folder, sorted by name. Errors when the folder is missing or empty.
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: frame folder missing", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension()
                    .and_then(|e| e.to_str())
                    .map(|e| e.to_ascii_lowercase())
                    .as_deref(),
                Some("jpg" | "jpeg" | "png")
            )
        })
        .collect();
    frames.sort();
    if frames.is_empty() {
        bail!("{}: frame folder holds no .jpg/.png frames", dir.display());
    }
    Ok(frames)
}

/// Which of `available` frames to use, `count` of them: the clip is cut into `count` equal
/// segments; training draws one frame uniformly inside each segment, evaluation takes each
/// segment's centre. Fewer frames than segments repeat frames.
pub fn pick_frames(available: usize, count: usize, rng: Option<&mut impl Rng>) -> Vec<usize> {
    assert!(available > 0 && count > 0);
    let seg = available as f64 / count as f64;
    match rng {
        None => (0..count)
            .map(|i| (((i as f64 + 0.5) * seg) as usize).min(available - 1))
            .collect(),
        Some(rng) => (0..count)
            .map(|i| {
                let lo = (i as f64 * seg) as usize;
                let hi = (((i + 1) as f64 * seg) as usize).max(lo + 1).min(available);
                rng.random_range(lo..hi.max(lo + 1)).min(available - 1)
            })
            .collect(),
    }
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    /// Top edge, in pixels from the top of the image; may be fractional.
    pub top: f64,
    /// Left edge, in pixels from the left of the image; may be fractional.
    pub left: f64,
    /// Height in pixels.
    pub height: f64,
    /// Width in pixels.
    pub width: f64,
}

impl Image {
    /// The rectangle covering the whole image.
    pub fn full(&self) -> Rect {
        Rect {
            top: 0.0,
            left: 0.0,
            height: self.height as f64,
            width: self.width as f64,
        }
    }

    /// Bilinear resampling of `rect` to `(out_h, out_w)` with half-pixel centres (as
    /// torchvision's antialias-free bilinear resize), optionally mirrored left-right.
    pub fn resample(&self, rect: Rect, out_h: usize, out_w: usize, flip: bool) -> Image {
        let mut data = vec![0f32; self.channels * out_h * out_w];
        let sy = rect.height / out_h as f64;
        let sx = rect.width / out_w as f64;
        let coord = |o: usize, s: f64, off: f64, n: usize| {
            let p = (off + (o as f64 + 0.5) * s - 0.5).clamp(0.0, (n - 1) as f64);
            let i0 = p.floor() as usize;
            let i1 = (i0 + 1).min(n - 1);
            (i0, i1, (p - i0 as f64) as f32)
        };
        let xs: Vec<_> = (0..out_w)
            .map(|x| {
                coord(
                    if flip { out_w - 1 - x } else { x },
                    sx,
                    rect.left,
                    self.width,
                )
            })
            .collect();
        for y in 0..out_h {
            let (y0, y1, fy) = coord(y, sy, rect.top, self.height);
            for c in 0..self.channels {
                for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
                    let top = self.at(c, y0, x0) * (1.0 - fx) + self.at(c, y0, x1) * fx;
                    let bot = self.at(c, y1, x0) * (1.0 - fx) + self.at(c, y1, x1) * fx;
                    data[(c * out_h + y) * out_w + x] = top * (1.0 - fy) + bot * fy;
                }
            }
        }
        Image {
            channels: self.channels,
            height: out_h,
            width: out_w,
            data,
        }
    }

    /// Subtracts the per-channel mean and divides by the std (ImageNet constants for RGB).
    pub fn normalise(&mut self, mean: &[f32], std: &[f32]) {
        let plane = self.height * self.width;
        for c in 0..self.channels {
            let (m, s) = (mean[c % mean.len()], std[c % std.len()]);
            self.data[c * plane..(c + 1) * plane]
                .iter_mut()
                .for_each(|v| *v = (*v - m) / s);
        }
    }
}

/// [`Image::resample`] straight from bytes `(c, h, w)` into `out` `(c, out_h, out_w)`, each
/// channel then mapped by `affine[c] = (bias, scale)`: `bias + scale * value` with the value in
/// 0..255 (normalisation fused in). The loader's hot path: no float copy of the whole frame.
pub fn resample_bytes(
    src: &[u8],
    (c, h, w): (usize, usize, usize),
    rect: Rect,
    (out_h, out_w): (usize, usize),
    flip: bool,
    affine: &[(f32, f32)],
    out: &mut [f32],
) {
    let coord = |o: usize, s: f64, off: f64, n: usize| {
        let p = (off + (o as f64 + 0.5) * s - 0.5).clamp(0.0, (n - 1) as f64);
        let i0 = p.floor() as usize;
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, (p - i0 as f64) as f32)
    };
    let (sy, sx) = (rect.height / out_h as f64, rect.width / out_w as f64);
    let xs: Vec<(usize, usize, f32)> = (0..out_w)
        .map(|x| coord(if flip { out_w - 1 - x } else { x }, sx, rect.left, w))
        .collect();
    for (ch, &(bias, scale)) in affine.iter().enumerate().take(c) {
        let plane = &src[ch * h * w..(ch + 1) * h * w];
        for y in 0..out_h {
            let (y0, y1, fy) = coord(y, sy, rect.top, h);
            let (r0, r1) = (&plane[y0 * w..(y0 + 1) * w], &plane[y1 * w..(y1 + 1) * w]);
            let row = &mut out[(ch * out_h + y) * out_w..(ch * out_h + y + 1) * out_w];
            for (o, &(x0, x1, fx)) in row.iter_mut().zip(&xs) {
                let top = r0[x0] as f32 * (1.0 - fx) + r0[x1] as f32 * fx;
                let bot = r1[x0] as f32 * (1.0 - fx) + r1[x1] as f32 * fx;
                *o = bias + scale * (top * (1.0 - fy) + bot * fy);
            }
        }
    }
}

/// torchvision's `RandomResizedCrop` box: area scale in (0.08, 1), aspect ratio in (3/4, 4/3)
/// drawn log-uniformly, ten attempts, then the centre crop with the ratio clamped.
pub fn random_resized_crop_box(h: usize, w: usize, scale: (f64, f64), rng: &mut impl Rng) -> Rect {
    let area = (h * w) as f64;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(scale.0..scale.1);
        let ratio = rng.random_range(lr0..lr1).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w as f64 && ch <= h as f64 {
            let top = rng.random_range(0..=(h - ch as usize)) as f64;
            let left = rng.random_range(0..=(w - cw as usize)) as f64;
            return Rect {
                top,
                left,
                height: ch,
                width: cw,
            };
        }
    }
    let ratio = w as f64 / h as f64;
    let (ch, cw) = if ratio < 0.75 {
        ((w as f64 / 0.75).round(), w as f64)
    } else if ratio > 4.0 / 3.0 {
        (h as f64, (h as f64 * 4.0 / 3.0).round())
    } else {
        (h as f64, w as f64)
    };
    Rect {
        top: ((h as f64 - ch) / 2.0).floor(),
        left: ((w as f64 - cw) / 2.0).floor(),
        height: ch,
        width: cw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn encoded(side: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(side, side, |x, y| {
            image::Rgb([
                (x * 7 % 256) as u8,
                (y * 13 % 256) as u8,
                ((x ^ y) % 256) as u8,
            ])
        });
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        bytes
    }

    #[test]
    fn whole_jpegs_pass_and_every_cut_fails() {
        let whole = encoded(40);
        assert_eq!(check_jpeg(&whole), Ok(()));
        // Bytes after the end-of-image marker are allowed; other formats are not checked.
        let mut padded = whole.clone();
        padded.extend_from_slice(b"\0\0trailer");
        assert_eq!(check_jpeg(&padded), Ok(()));
        assert_eq!(check_jpeg(b"\x89PNG\r\n"), Ok(()));
        for keep in (2..whole.len()).step_by(7).chain([whole.len() - 1]) {
            let e = check_jpeg(&whole[..keep]).unwrap_err();
            assert!(e.starts_with("truncated JPEG"), "{keep}: {e}");
        }
        // Stuffed 0xFF00 and restart markers inside the entropy-coded data are no end.
        let mut synthetic = vec![0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02];
        synthetic.extend_from_slice(&[0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD3, 0x56]);
        assert!(check_jpeg(&synthetic).is_err());
        synthetic.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(check_jpeg(&synthetic), Ok(()));
    }

    #[test]
    fn gaps_in_numbered_frames() {
        let names = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        let gaps = |v: &[&str]| frame_gaps(&names(v), 2);
        assert_eq!(
            gaps(&[
                "d/frame_00001.jpg",
                "d/frame_00002.jpg",
                "d/frame_00004.jpg"
            ]),
            (vec!["frame_00003.jpg".to_string()], 1)
        );
        assert_eq!(
            gaps(&["img1.png", "img5.png"]),
            (vec!["img2.png".to_string(), "img3.png".to_string()], 3)
        );
        assert_eq!(gaps(&["frame_00002.jpg", "frame_00003.jpg"]), (vec![], 0));
        // Names that do not follow one numbered pattern are not judged.
        assert_eq!(gaps(&["a1.jpg", "b3.jpg"]), (vec![], 0));
        assert_eq!(gaps(&["first.jpg", "second.jpg"]), (vec![], 0));
    }

    #[test]
    fn eval_frames_are_segment_centres() {
        assert_eq!(pick_frames(10, 3, None::<&mut ChaCha8Rng>), vec![1, 5, 8]);
        assert_eq!(pick_frames(3, 3, None::<&mut ChaCha8Rng>), vec![0, 1, 2]);
        assert_eq!(pick_frames(1, 3, None::<&mut ChaCha8Rng>), vec![0, 0, 0]);
    }

    #[test]
    fn train_frames_stay_in_their_segments_and_follow_the_seed() {
        let mut a = ChaCha8Rng::seed_from_u64(7);
        let mut b = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let p = pick_frames(30, 3, Some(&mut a));
            assert!(
                p[0] < 10 && (10..20).contains(&p[1]) && (20..30).contains(&p[2]),
                "{p:?}"
            );
            assert_eq!(p, pick_frames(30, 3, Some(&mut b)));
        }
    }

    #[test]
    fn resample_identity_flip_and_crop() {
        let img = Image {
            channels: 1,
            height: 2,
            width: 3,
            data: vec![1., 2., 3., 4., 5., 6.],
        };
        assert_eq!(img.resample(img.full(), 2, 3, false), img);
        assert_eq!(
            img.resample(img.full(), 2, 3, true).data,
            vec![3., 2., 1., 6., 5., 4.]
        );
        let crop = Rect {
            top: 1.0,
            left: 1.0,
            height: 1.0,
            width: 2.0,
        };
        assert_eq!(img.resample(crop, 1, 2, false).data, vec![5., 6.]);
        // Downscale by 2 with half-pixel centres averages neighbours.
        let wide = Image {
            channels: 1,
            height: 1,
            width: 4,
            data: vec![0., 2., 4., 6.],
        };
        assert_eq!(wide.resample(wide.full(), 1, 2, false).data, vec![1., 5.]);
    }

    #[test]
    fn random_resized_crop_is_inside_and_seeded() {
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..100 {
            let r = random_resized_crop_box(60, 80, (0.08, 1.0), &mut a);
            assert!(r.top >= 0.0 && r.left >= 0.0 && r.height >= 1.0 && r.width >= 1.0);
            assert!(r.top + r.height <= 60.0 && r.left + r.width <= 80.0);
            assert_eq!(r, random_resized_crop_box(60, 80, (0.08, 1.0), &mut b));
        }
    }

    #[test]
    fn resample_bytes_equals_float_resample_then_normalise() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (c, h, w) = (3, 17, 23);
        let bytes: Vec<u8> = (0..c * h * w).map(|_| rng.random::<u8>()).collect();
        let img = Image {
            channels: c,
            height: h,
            width: w,
            data: bytes.iter().map(|&b| b as f32 / 255.0).collect(),
        };
        let rect = Rect {
            top: 2.0,
            left: 3.5,
            height: 11.0,
            width: 15.0,
        };
        for flip in [false, true] {
            let mut want = img.resample(rect, 9, 7, flip);
            want.normalise(&IMAGENET_MEAN, &IMAGENET_STD);
            let affine: Vec<(f32, f32)> = (0..c)
                .map(|k| {
                    (
                        -IMAGENET_MEAN[k] / IMAGENET_STD[k],
                        1.0 / (255.0 * IMAGENET_STD[k]),
                    )
                })
                .collect();
            let mut got = vec![0f32; c * 9 * 7];
            resample_bytes(&bytes, (c, h, w), rect, (9, 7), flip, &affine, &mut got);
            let d = got
                .iter()
                .zip(&want.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-5, "flip {flip}: max diff {d}");
        }
    }

    #[test]
    fn normalise_uses_imagenet_constants() {
        let mut img = Image {
            channels: 3,
            height: 1,
            width: 1,
            data: vec![0.485, 0.456, 1.0],
        };
        img.normalise(&IMAGENET_MEAN, &IMAGENET_STD);
        assert!(img.data[0].abs() < 1e-7 && img.data[1].abs() < 1e-7);
        assert!((img.data[2] - (1.0 - 0.406) / 0.225).abs() < 1e-6);
    }
}
