//! Recipes cut to a word of the clip's alignment: a tone spoken only during the fifth word of a
//! GRID alignment is inside the word window and not in a fixed window elsewhere; the frames kept
//! are those of the word's time; a recipe with both kinds of window, or a clip without its
//! alignment, is refused with the file named; and a changed alignment makes a cache stale.

mod common;

use mmbal_data::cache::PackedCache;
use mmbal_data::recipe::{AudioRecipe, DecodedData, FramesRecipe, Recipe, WordWindow};
use mmbal_dataset::manifest::Source;
use mmbal_transforms::audio::{write_wav, Waveform};
use std::path::{Path, PathBuf};

/// GRID's bbaf2n.align: the digit ("twoe") from 1.64 to 1.89 s, the clip 2.98 s long.
const ALIGN: &str = "0 23750 sil\n23750 29500 bine\n29500 34000 blue\n34000 35500 at\n\
                     35500 41000 f\n41000 47250 twoe\n47250 53000 nowe\n53000 74500 sil\n";

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mmbal-word-window-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("align")).unwrap();
    std::fs::write(d.join("align/clip.align"), ALIGN).unwrap();
    d
}

fn window(dir: &Path) -> WordWindow {
    WordWindow {
        alignments: dir.join("align").display().to_string(),
        word: 5,
        seconds: 0.6,
    }
}

fn audio(word_window: Option<WordWindow>, offset: f64, clip: Option<f64>) -> AudioRecipe {
    AudioRecipe {
        offset_seconds: offset,
        clip_seconds: clip,
        word_window,
        ..common::fbank_recipe()
    }
}

fn max(d: &DecodedData) -> f32 {
    match d {
        DecodedData::F32(v) => v.iter().cloned().fold(f32::MIN, f32::max),
        DecodedData::U8(_) => panic!("audio is floats"),
    }
}

#[test]
fn audio_and_frames_are_cut_around_the_word() {
    let dir = tmp("cut");
    // 3 s of near-silence with a loud 1 kHz tone during the digit only.
    let sr = 16000u32;
    let samples = (0..3 * sr)
        .map(|i| {
            let t = i as f64 / sr as f64;
            if (1.64..1.89).contains(&t) {
                (0.5 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as f32
            } else {
                1e-4 * ((i % 7) as f32 - 3.0)
            }
        })
        .collect();
    let wav = dir.join("clip.wav");
    write_wav(
        &wav,
        &Waveform {
            samples,
            sample_rate: sr,
        },
    )
    .unwrap();
    let src = Source::Path(wav.clone());
    let word = Recipe::Audio(audio(Some(window(&dir)), 0.0, None))
        .decode(&src)
        .unwrap();
    let early = Recipe::Audio(audio(None, 0.2, Some(0.6)))
        .decode(&src)
        .unwrap();
    // The tone's mel bins rise far above the log floor (-15.9) in the word window only; rows
    // past the clip are padded with zeros.
    assert!(max(&word.data) > 3.0, "the word window holds the tone");
    assert!(
        max(&early.data) <= 0.0,
        "a fixed window before the word does not"
    );
    // Frames: 75 grey frames, frame i of brightness 3 i.
    let frames = dir.join("clip");
    std::fs::create_dir_all(&frames).unwrap();
    for i in 0..75u8 {
        let img = image::GrayImage::from_pixel(8, 8, image::Luma([3 * i]));
        img.save(frames.join(format!("frame_{:05}.png", i as usize + 1)))
            .unwrap();
    }
    let recipe = |word_window, span| FramesRecipe {
        count: 4,
        height: 8,
        width: 8,
        crop: None,
        cache_height: Some(8),
        cache_width: Some(8),
        span,
        word_window,
        grey: true,
        flow: false,
        crop_scale: (0.5, 1.0),
        flip: false,
        augment: false,
    };
    let fr = Recipe::Frames(recipe(Some(window(&dir)), None))
        .decode(&Source::Path(frames.clone()))
        .unwrap();
    // The window 1.465-2.065 s of 2.98 s: frames 36 to 51 of 75.
    assert_eq!(fr.shape[0], 16, "{:?}", fr.shape);
    let DecodedData::U8(v) = &fr.data else {
        panic!("frames are bytes")
    };
    assert_eq!((v[0], v[v.len() - 1]), (3 * 36, 3 * 51));
    // Both windows, or no alignment: refused, naming the file.
    let both = Recipe::Frames(recipe(Some(window(&dir)), Some([0.1, 0.5])))
        .decode(&Source::Path(frames.clone()))
        .unwrap_err();
    assert!(
        format!("{both:#}").contains("word_window and a span"),
        "{both:#}"
    );
    let both = Recipe::Audio(audio(Some(window(&dir)), 1.0, None))
        .decode(&src)
        .unwrap_err();
    assert!(format!("{both:#}").contains("fixed window"), "{both:#}");
    std::fs::copy(&wav, dir.join("other.wav")).unwrap();
    let missing = Recipe::Audio(audio(Some(window(&dir)), 0.0, None))
        .decode(&Source::Path(dir.join("other.wav")))
        .unwrap_err();
    assert!(
        format!("{missing:#}").contains("other.align"),
        "{missing:#}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_changed_alignment_makes_the_cache_stale() {
    let dir = tmp("cache");
    let sr = 16000u32;
    let samples: Vec<f32> = (0..3 * sr)
        .map(|i| ((i % 50) as f32 - 25.0) / 100.0)
        .collect();
    write_wav(
        &dir.join("clip.wav"),
        &Waveform {
            samples,
            sample_rate: sr,
        },
    )
    .unwrap();
    std::fs::write(dir.join("split.csv"), "id,label,split\nclip,two,train\n").unwrap();
    std::fs::write(
        dir.join("dataset.toml"),
        "name = \"w\"\nclasses = [\"two\"]\nsplit_file = \"split.csv\"\n\n[[modality]]\nname = \"audio\"\nsource = \"{id}.wav\"\n",
    )
    .unwrap();
    let manifest = mmbal_dataset::manifest::Manifest::load(&dir, &dir).unwrap();
    let recipes = [Recipe::Audio(audio(Some(window(&dir)), 0.0, None))];
    let cache = dir.join("inputs.mmbc");
    PackedCache::build(&cache, &manifest, &recipes).unwrap();
    let c = PackedCache::open(&cache, &manifest, &recipes).unwrap();
    assert!(c.source_changes(&manifest, &recipes).unwrap().is_empty());
    drop(c);
    // The word moves: the cached window is stale, and the alignment is named.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(
        dir.join("align/clip.align"),
        ALIGN.replace("41000 47250", "40000 47250"),
    )
    .unwrap();
    let err = PackedCache::open(&cache, &manifest, &recipes)
        .err()
        .expect("stale");
    assert!(format!("{err:#}").contains("clip.align"), "{err:#}");
    let _ = std::fs::remove_dir_all(dir);
}
