//! Video frames: JPEG decoding, frame picking, resizing, cropping, ImageNet normalisation and the
//! train augmentation of the field (random resized crop, horizontal flip).
//!
//! Images are planar `f32` in `[0, 1]`, `(channels, height, width)`.

use anyhow::{bail, Context, Result};
use rand::Rng;
use std::path::{Path, PathBuf};

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A planar image.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

impl Image {
    pub fn at(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }
}

/// Decodes a JPEG (or PNG) file to RGB, or to one grey channel when `grey`.
pub fn read_image(path: &Path, grey: bool) -> Result<Image> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open image", path.display()))?
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
    pub top: f64,
    pub left: f64,
    pub height: f64,
    pub width: f64,
}

impl Image {
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
