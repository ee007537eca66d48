//! Reproductions of silent failures ("Runs that never lie"): each test builds the bad input
//! itself (or takes it from MMBAL_SHARED_DATA) and checks that it is an error naming the file.

use mmbal_data::loader::Dataset;
use mmbal_data::recipe::{FramesRecipe, Recipe};
use mmbal_dataset::manifest::{Manifest, Split};
use mmbal_preprocess::preprocess::{
    preprocess_folder, preprocess_video, read_labels, PreprocessRecipe,
};
use mmbal_transforms::audio::{write_wav, Waveform};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::fbank_recipe;

fn shared() -> Option<PathBuf> {
    common::shared("real-data checks")
}

fn tmp(name: &str) -> PathBuf {
    common::scratch("silent", name)
}

fn frames_recipe(count: usize, span: Option<[f64; 2]>) -> FramesRecipe {
    FramesRecipe {
        count,
        height: 32,
        width: 32,
        crop: None,
        cache_height: None,
        cache_width: None,
        span,
        grey: false,
        flow: false,
        crop_scale: (0.5, 1.0),
        flip: true,
        augment: true,
        word_window: None,
    }
}

fn synthetic_recipes() -> Vec<Recipe> {
    vec![
        fbank_recipe(8000, 48),
        Recipe::Frames(frames_recipe(3, None)),
    ]
}

fn err_text<T>(r: anyhow::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error, got Ok"),
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!("error text: {text}");
            text
        }
    }
}

/// A noise image (JPEG compresses noise badly, so the file is several KB).
fn noise_jpeg(path: &Path, side: u32, seed: u32) {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        let mut px = [0u8; 3];
        for p in &mut px {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            *p = (s >> 24) as u8;
        }
        image::Rgb(px)
    });
    img.save(path).unwrap();
}

// ---------------------------------------------------------------- 1. the packed cache goes stale

#[test]
fn cache_serves_the_changed_source_not_the_stale_input() {
    let dir = tmp("cache-changed");
    mmbal_data::datasets::generate_synthetic(&dir, 2, 5, 1, 2).unwrap();
    let m = Manifest::load(&dir, &dir).unwrap();
    let cache = dir.join("inputs.mmbc");
    let i = m.samples.iter().position(|s| s.id == "c0_000").unwrap();
    let ds = Dataset::with_cache(m.clone(), synthetic_recipes(), &cache).unwrap();
    let before = ds.decoded(i, 0).unwrap();
    drop(ds);
    // Rewrite the WAV (same length) and one frame (same name).
    let samples: Vec<f32> = (0..4000).map(|k| 0.4 * (k as f32 * 0.37).sin()).collect();
    write_wav(
        &dir.join("audio/c0_000.wav"),
        &Waveform {
            samples,
            sample_rate: 8000,
        },
    )
    .unwrap();
    noise_jpeg(&dir.join("visual/c0_000/frame_00002.jpg"), 32, 9);
    let ds = Dataset::with_cache(m.clone(), synthetic_recipes(), &cache).unwrap();
    let live = Dataset::new(m.clone(), synthetic_recipes()).unwrap();
    assert!(before != live.decoded(i, 0).unwrap(), "the WAV did change");
    assert!(
        ds.decoded(i, 0).unwrap() == live.decoded(i, 0).unwrap(),
        "the cache served the audio decoded before the WAV changed"
    );
    assert!(
        ds.decoded(i, 1).unwrap() == live.decoded(i, 1).unwrap(),
        "the cache served frames decoded before a frame changed"
    );
    // The rebuild says which files changed (shown at training start with the manifest's notes).
    let notes = ds.manifest.notes.join("\n");
    eprintln!("notes: {notes}");
    assert!(
        notes.contains("rebuilt")
            && notes.contains("audio/c0_000.wav")
            && notes.contains("visual/c0_000/frame_00002.jpg"),
        "{notes}"
    );
    // Opened again with nothing changed: used as it is, no note.
    let ds = Dataset::with_cache(m, synthetic_recipes(), &cache).unwrap();
    assert!(ds.manifest.notes.is_empty(), "{:?}", ds.manifest.notes);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cache_sees_a_rewrite_that_keeps_size_and_time() {
    let dir = tmp("cache-racy");
    mmbal_data::datasets::generate_synthetic(&dir, 2, 5, 1, 2).unwrap();
    let m = Manifest::load(&dir, &dir).unwrap();
    let cache = dir.join("inputs.mmbc");
    let wav = dir.join("audio/c1_002.wav");
    let time = std::fs::metadata(&wav).unwrap().modified().unwrap();
    Dataset::with_cache(m.clone(), synthetic_recipes(), &cache).unwrap();
    // Same length, other samples, and the old modification time put back (as a second write
    // in the same clock tick would leave it).
    let mut bytes = std::fs::read(&wav).unwrap();
    let n = bytes.len();
    bytes[n - 2000..]
        .iter_mut()
        .for_each(|b| *b = b.wrapping_add(77));
    std::fs::write(&wav, &bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&wav)
        .unwrap()
        .set_modified(time)
        .unwrap();
    let ds = Dataset::with_cache(m.clone(), synthetic_recipes(), &cache).unwrap();
    let i = m.samples.iter().position(|s| s.id == "c1_002").unwrap();
    let live = Dataset::new(m, synthetic_recipes()).unwrap();
    assert!(
        ds.decoded(i, 0).unwrap() == live.decoded(i, 0).unwrap(),
        "the cache served the audio decoded before the rewrite"
    );
    let notes = ds.manifest.notes.join("\n");
    assert!(
        notes.contains("audio/c1_002.wav (content differs"),
        "{notes}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cache_refuses_a_deleted_source_naming_it() {
    let dir = tmp("cache-deleted");
    mmbal_data::datasets::generate_synthetic(&dir, 2, 5, 1, 2).unwrap();
    let m = Manifest::load(&dir, &dir).unwrap();
    let cache = dir.join("inputs.mmbc");
    Dataset::with_cache(m.clone(), synthetic_recipes(), &cache).unwrap();
    // One frame of a clip's folder disappears: the folder still decodes, with fewer frames.
    std::fs::remove_file(dir.join("visual/c1_001/frame_00002.jpg")).unwrap();
    let e = err_text(Dataset::with_cache(m.clone(), synthetic_recipes(), &cache));
    assert!(
        e.contains("inputs.mmbc") && e.contains("visual/c1_001/frame_00002.jpg"),
        "{e}"
    );
    // A cache made with another recipe is still refused, with its own message.
    let mut other = synthetic_recipes();
    other[0] = fbank_recipe(8000, 64);
    let e = err_text(Dataset::with_cache(m, other, &cache));
    assert!(e.contains("another recipe"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn cache_of_the_old_format_is_refused_with_a_message_to_delete_it() {
    let dir = tmp("cache-format");
    mmbal_data::datasets::generate_synthetic(&dir, 2, 5, 1, 2).unwrap();
    let m = Manifest::load(&dir, &dir).unwrap();
    let cache = dir.join("inputs.mmbc");
    Dataset::with_cache(m.clone(), synthetic_recipes(), &cache).unwrap();
    // The format before source stamps: magic MMBALC01.
    let mut bytes = std::fs::read(&cache).unwrap();
    bytes[..8].copy_from_slice(b"MMBALC01");
    std::fs::write(&cache, bytes).unwrap();
    let e = err_text(Dataset::with_cache(m, synthetic_recipes(), &cache));
    assert!(
        e.contains("inputs.mmbc") && e.contains("MMBALC01") && e.contains("delete"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------------------------ 2. truncated JPEG frames

/// Cuts a JPEG to `keep` bytes.
fn cut(path: &Path, keep: usize) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > keep,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    std::fs::write(path, &bytes[..keep]).unwrap();
}

#[test]
fn truncated_jpeg_frame_is_an_error_naming_it() {
    let dir = tmp("jpeg-cut");
    let f = dir.join("frame_00001.jpg");
    noise_jpeg(&f, 96, 1);
    let size = std::fs::metadata(&f).unwrap().len();
    assert!(size > 6000, "{size} bytes");
    // Past the headers, inside the entropy-coded data.
    cut(&f, 1200);
    let e = err_text(mmbal_transforms::video::read_image(&f, false));
    assert!(
        e.contains("frame_00001.jpg") && e.contains("truncated"),
        "{e}"
    );
    // And through a dataset: check_all (data doctor) and a batch (train).
    let split = "id,label,split\nclip,a,train\n";
    std::fs::create_dir_all(dir.join("visual/clip")).unwrap();
    std::fs::rename(&f, dir.join("visual/clip/frame_00001.jpg")).unwrap();
    let card: mmbal_dataset::manifest::DatasetCard = toml::from_str(
        "name = \"t\"\nclasses = [\"a\"]\nsplit_file = \"split.csv\"\n[[modality]]\nname = \"visual\"\nsource = \"visual/{id}\"\n",
    )
    .unwrap();
    let m = Manifest::from_split_text(&card, split, Path::new("split.csv"), &dir).unwrap();
    let ds = Dataset::new(m, vec![Recipe::Frames(frames_recipe(1, None))]).unwrap();
    let problems = ds.check_all();
    assert!(
        problems.len() == 1 && problems[0].contains("visual/clip/frame_00001.jpg"),
        "{problems:?}"
    );
    let e = err_text(ds.batch(&ds.rows(Split::Train), None));
    assert!(e.contains("frame_00001.jpg"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn grid_frame_cut_to_600_bytes_is_an_error() {
    let Some(shared) = shared() else { return };
    let out = tmp("jpeg-grid");
    let opts = PreprocessRecipe {
        fps: 2.0,
        ..PreprocessRecipe::default()
    };
    preprocess_video(&shared.join("grid-s1/bbaf2n.mpg"), &out, "bbaf2n", &opts).unwrap();
    let f = out.join("visual/bbaf2n/frame_00002.jpg");
    mmbal_transforms::video::read_image(&f, false).unwrap();
    cut(&f, 600);
    let e = err_text(mmbal_transforms::video::read_image(&f, false));
    assert!(e.contains("visual/bbaf2n/frame_00002.jpg"), "{e}");
    let _ = std::fs::remove_dir_all(out);
}

/// A manifest of one clip whose frames are `frame_{n}.jpg` for each n of `numbers`.
fn one_clip(dir: &Path, numbers: &[usize]) -> Manifest {
    let clip = dir.join("visual/clip");
    std::fs::create_dir_all(&clip).unwrap();
    for &n in numbers {
        noise_jpeg(&clip.join(format!("frame_{n:05}.jpg")), 48, n as u32);
    }
    let card: mmbal_dataset::manifest::DatasetCard = toml::from_str(
        "name = \"t\"\nclasses = [\"a\"]\nsplit_file = \"split.csv\"\n[[modality]]\nname = \"visual\"\nsource = \"visual/{id}\"\n",
    )
    .unwrap();
    Manifest::from_split_text(
        &card,
        "id,label,split\nclip,a,train\n",
        Path::new("split.csv"),
        dir,
    )
    .unwrap()
}

#[test]
fn doctor_checks_frames_outside_the_recipe_span() {
    let dir = tmp("doctor-span");
    let m = one_clip(&dir, &[1, 2, 3, 4, 5, 6]);
    cut(&dir.join("visual/clip/frame_00005.jpg"), 900);
    // The recipe keeps the first half of the clip: frames 1-3.
    let recipes = vec![Recipe::Frames(frames_recipe(2, Some([0.0, 0.5])))];
    let ds = Dataset::new(m.clone(), recipes.clone()).unwrap();
    assert!(ds.check_all().is_empty(), "the span never reads frame 5");
    let ex = mmbal_preprocess::doctor::examine(&m, &recipes, &dir);
    eprintln!("problems: {:#?}", ex.problems);
    assert!(
        ex.problems
            .iter()
            .any(|p| p.contains("visual/clip/frame_00005.jpg") && p.contains("truncated")),
        "{:#?}",
        ex.problems
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn doctor_reports_a_gap_in_a_frame_sequence() {
    let dir = tmp("doctor-gap");
    let m = one_clip(&dir, &[1, 2, 4]);
    let recipes = vec![Recipe::Frames(frames_recipe(3, None))];
    let ex = mmbal_preprocess::doctor::examine(&m, &recipes, &dir);
    eprintln!("problems: {:#?}", ex.problems);
    assert!(
        ex.problems
            .iter()
            .any(|p| p.contains("visual/clip") && p.contains("frame_00003.jpg")),
        "{:#?}",
        ex.problems
    );
    // A complete sequence is no problem.
    let dir2 = tmp("doctor-nogap");
    let m = one_clip(&dir2, &[1, 2, 3]);
    let ex = mmbal_preprocess::doctor::examine(&m, &recipes, &dir2);
    assert!(
        !ex.problems.iter().any(|p| p.contains("visual/clip")),
        "{:#?}",
        ex.problems
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(dir2);
}

// ------------------------------------------------------------ 3. a byte-order mark in a split file

#[test]
fn byte_order_mark_at_the_start_of_a_split_file_is_stripped() {
    let dir = tmp("bom");
    std::fs::write(
        dir.join("dataset.toml"),
        "\u{feff}name = \"t\"\nclasses = [\"a\", \"b\"]\nsplit_file = \"split.csv\"\n[[modality]]\nname = \"audio\"\nsource = \"audio/{id}.wav\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("split.csv"),
        "\u{feff}id,label,split\nx1,a,train\nx2,b,train\n",
    )
    .unwrap();
    let m = Manifest::load(&dir, &dir).unwrap();
    assert_eq!(m.samples[0].id, "x1");
    // Without a header line the first id would carry it: a layout's list.
    let ks = dir.join("ks");
    for id in ["k1", "k2"] {
        std::fs::create_dir_all(ks.join(format!("visual/{id}"))).unwrap();
        std::fs::create_dir_all(ks.join("audio")).unwrap();
        std::fs::write(ks.join(format!("audio/{id}.npy")), b"").unwrap();
    }
    std::fs::write(ks.join("train.txt"), "\u{feff}k1,10,one\n").unwrap();
    std::fs::write(ks.join("val.txt"), "").unwrap();
    std::fs::write(ks.join("test.txt"), "\u{feff}k2,10,one\n").unwrap();
    let card = ks.join("card");
    std::fs::create_dir_all(&card).unwrap();
    std::fs::write(
        card.join("dataset.toml"),
        "name = \"ks\"\n[layout]\nkind = \"kinetics-sounds\"\n",
    )
    .unwrap();
    let m = Manifest::load(&card, &ks).unwrap();
    let ids: Vec<&str> = m.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, vec!["k1", "k2"]);
    // The label file of preprocessing.
    std::fs::write(dir.join("labels.csv"), "\u{feff}clip1,one,train\n").unwrap();
    let l = read_labels(&dir.join("labels.csv")).unwrap();
    assert_eq!(l[0].id, "clip1");
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------------- 4. a class without training samples

#[test]
fn class_without_training_samples_is_an_error_naming_it_and_the_split_file() {
    let dir = tmp("empty-class");
    std::fs::write(
        dir.join("dataset.toml"),
        "name = \"t\"\nclasses = [\"a\", \"b\", \"c\"]\nsplit_file = \"split.csv\"\n[[modality]]\nname = \"audio\"\nsource = \"audio/{id}.wav\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("split.csv"),
        "id,label,split\nx1,a,train\nx2,b,train\nx3,c,test\nx4,a,val\n",
    )
    .unwrap();
    let e = err_text(Manifest::load(&dir, &dir));
    assert!(e.contains("split.csv") && e.contains("`c`"), "{e}");
    // A layout: the class `three` is only in the test list.
    let ks = dir.join("ks");
    for id in ["k1", "k2", "k3"] {
        std::fs::create_dir_all(ks.join(format!("visual/{id}"))).unwrap();
        std::fs::create_dir_all(ks.join("audio")).unwrap();
        std::fs::write(ks.join(format!("audio/{id}.npy")), b"").unwrap();
    }
    std::fs::write(ks.join("train.txt"), "k1,10,two\n").unwrap();
    std::fs::write(ks.join("val.txt"), "k2,10,two\n").unwrap();
    std::fs::write(ks.join("test.txt"), "k3,10,three\n").unwrap();
    let card = ks.join("card");
    std::fs::create_dir_all(&card).unwrap();
    std::fs::write(
        card.join("dataset.toml"),
        "name = \"ks\"\n[layout]\nkind = \"kinetics-sounds\"\n",
    )
    .unwrap();
    let e = err_text(Manifest::load(&card, &ks));
    assert!(e.contains("train.txt") && e.contains("`three`"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

// ------------------------------------------------------------------------------ 5. preprocess

/// Whether `ffmpeg` runs here; without it the preprocessing tests are skipped with a message,
/// except under CI (`CI=true`), where they fail.
fn have_ffmpeg() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "ffmpeg is not installed: under CI the preprocessing tests must run"
        );
        eprintln!("ffmpeg is not installed: preprocessing checks not run");
    }
    ok
}

fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg");
    assert!(
        o.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A small clip with picture and sound, `seconds` long, MPEG-4 part 2 and AAC.
fn make_clip(path: &Path, seconds: u32, faststart: bool) {
    let d = format!("duration={seconds}");
    let mut args = vec![
        "-f".to_string(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc={d}:size=160x120:rate=25"),
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("sine=frequency=440:{d}"),
        "-c:v".into(),
        "mpeg4".into(),
        "-q:v".into(),
        "2".into(),
        "-c:a".into(),
        "aac".into(),
        "-shortest".into(),
    ];
    if faststart {
        args.extend(["-movflags".into(), "+faststart".into()]);
    }
    args.push(path.to_string_lossy().into_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ffmpeg(&args);
}

#[test]
fn preprocess_refuses_two_videos_with_one_id() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tmp("dup-ids");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    make_clip(&input.join("test.mp4"), 2, false);
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=2:size=160x120:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=220:duration=2",
        "-c:v",
        "mpeg4",
        "-c:a",
        "mp3",
        "-shortest",
        &input.join("test.avi").to_string_lossy(),
    ]);
    let out = dir.join("out");
    let e = err_text(preprocess_folder(
        &input,
        &out,
        &PreprocessRecipe::default(),
    ));
    assert!(
        e.contains("test.avi") && e.contains("test.mp4") && e.contains("`test`"),
        "{e}"
    );
    assert!(!out.join("visual/test").exists(), "nothing was written");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn failed_video_leaves_no_partial_folder() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tmp("partial");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    // Picture but no sound: frames are extracted, then the audio step fails.
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=duration=2:size=160x120:rate=25",
        "-c:v",
        "mpeg4",
        &input.join("mute.mp4").to_string_lossy(),
    ]);
    make_clip(&input.join("fine.mp4"), 2, false);
    let out = dir.join("out");
    let report = preprocess_folder(&input, &out, &PreprocessRecipe::default()).unwrap();
    assert_eq!(report.done.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].contains("mute.mp4"), "{:?}", report.failed);
    assert!(
        !out.join("visual/mute").exists(),
        "a failed video left its frames in visual/mute"
    );
    assert!(out.join("visual/fine/frame_00001.jpg").is_file());
    assert!(out.join("audio/fine.wav").is_file());
    // Nothing else is left in the output folder (no staging folder).
    let mut top: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, vec!["audio", "recipe.toml", "visual"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn preprocess_refuses_an_output_folder_made_with_another_recipe() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tmp("other-recipe");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    make_clip(&input.join("clip.mp4"), 3, false);
    let out = dir.join("out");
    let one = PreprocessRecipe::default();
    let report = preprocess_folder(&input, &out, &one).unwrap();
    assert_eq!(report.done, vec![("clip".to_string(), 3)]);
    // Again with the same recipe: fine.
    preprocess_folder(&input, &out, &one).unwrap();
    let two = PreprocessRecipe {
        fps: 2.0,
        ..PreprocessRecipe::default()
    };
    let e = err_text(preprocess_folder(&input, &out, &two));
    assert!(e.contains("recipe.toml") && e.contains("fps"), "{e}");
    // The folder is as the first recipe left it.
    assert_eq!(
        std::fs::read_dir(out.join("visual/clip")).unwrap().count(),
        3
    );
    // Asked to replace it: the old recipe's outputs go (also those of clips not in this run),
    // the new ones come, and recipe.toml says so.
    std::fs::create_dir_all(out.join("visual/gone")).unwrap();
    std::fs::write(out.join("visual/gone/frame_00001.jpg"), b"x").unwrap();
    std::fs::write(out.join("audio/gone.wav"), b"x").unwrap();
    let two = PreprocessRecipe {
        replace: true,
        ..two
    };
    let report = preprocess_folder(&input, &out, &two).unwrap();
    assert_eq!(report.done, vec![("clip".to_string(), 6)]);
    let mut removed = report.removed.clone();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            out.join("audio/clip.wav"),
            out.join("audio/gone.wav"),
            out.join("visual/clip"),
            out.join("visual/gone"),
        ]
    );
    assert!(!out.join("visual/gone").exists() && !out.join("audio/gone.wav").exists());
    assert_eq!(
        std::fs::read_dir(out.join("visual/clip")).unwrap().count(),
        6
    );
    let made = PreprocessRecipe::load(&out.join("recipe.toml")).unwrap();
    assert_eq!(made.fps, 2.0);
    // The flag survives --set overrides and is never part of recipe.toml.
    assert!(
        two.with_overrides(&["jpeg_quality=3".into()])
            .unwrap()
            .replace
    );
    let text = std::fs::read_to_string(out.join("recipe.toml")).unwrap();
    assert!(!text.contains("replace"), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn video_cut_short_is_reported_naming_the_file() {
    if !have_ffmpeg() {
        return;
    }
    let dir = tmp("cut-video");
    let whole = dir.join("whole.mp4");
    make_clip(&whole, 10, true);
    let bytes = std::fs::read(&whole).unwrap();
    let cut_path = dir.join("cut.mp4");
    std::fs::write(&cut_path, &bytes[..bytes.len() / 4]).unwrap();
    let out = dir.join("out");
    let opts = PreprocessRecipe::default();
    assert_eq!(preprocess_video(&whole, &out, "whole", &opts).unwrap(), 10);
    let e = err_text(preprocess_video(&cut_path, &out, "cut", &opts));
    assert!(e.contains("cut.mp4") && e.contains("short"), "{e}");
    assert!(!out.join("visual/cut").exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn real_clip_cut_to_300_kb_is_reported() {
    let Some(shared) = shared() else { return };
    let dir = tmp("cut-cup");
    let bytes = std::fs::read(shared.join("clips/cup.mp4")).unwrap();
    let cut_path = dir.join("cup.mp4");
    std::fs::write(&cut_path, &bytes[..300_000]).unwrap();
    let e = err_text(preprocess_video(
        &cut_path,
        &dir.join("out"),
        "cup",
        &PreprocessRecipe::default(),
    ));
    assert!(e.contains("cup.mp4") && e.contains("short"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
