//! Tests on real data from the shared folder (MMBAL_SHARED_DATA) and on bad inputs.

use mmbal_data::loader::{batches, Dataset, Row};
use mmbal_data::recipe::{FramesRecipe, Recipe};
use mmbal_dataset::manifest::{DatasetCard, Manifest, Split};
use mmbal_preprocess::preprocess::{preprocess_video, PreprocessRecipe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;
use common::fbank_recipe;

fn shared() -> Option<PathBuf> {
    common::shared("real-data checks")
}

fn tmp(name: &str) -> PathBuf {
    common::scratch("test", name)
}

fn av_card() -> DatasetCard {
    toml::from_str(
        "name = \"t\"\nclasses = [\"zero\", \"one\", \"two\", \"three\", \"four\", \"five\", \"six\", \"seven\", \"eight\", \"nine\"]\nsplit_file = \"split.csv\"\n[[modality]]\nname = \"audio\"\nsource = \"audio/{id}.wav\"\n[[modality]]\nname = \"visual\"\nsource = \"visual/{id}\"\n",
    )
    .unwrap()
}

fn recipes() -> Vec<Recipe> {
    vec![
        fbank_recipe(16000, 300),
        Recipe::Frames(FramesRecipe {
            count: 4,
            height: 32,
            width: 48,
            crop: Some([0.5, 0.25, 0.5, 0.5]),
            span: None,
            cache_height: None,
            cache_width: None,
            grey: false,
            flow: false,
            crop_scale: (0.5, 1.0),
            flip: true,
            augment: true,
            word_window: None,
        }),
    ]
}

#[test]
fn grid_clip_preprocessed_cached_and_batched() {
    let Some(shared) = shared() else { return };
    let out = tmp("grid");
    let opts = PreprocessRecipe {
        fps: 5.0,
        jpeg_quality: 3,
        ..PreprocessRecipe::default()
    };
    let ids = ["bbaf2n", "bbaf3s"];
    for id in ids {
        preprocess_video(&shared.join(format!("grid-s1/{id}.mpg")), &out, id, &opts).unwrap();
    }
    // 3 s at 5 fps.
    let n = std::fs::read_dir(out.join("visual/bbaf2n"))
        .unwrap()
        .count();
    assert!((14..=16).contains(&n), "{n} frames");
    let split = "id,label,split\nbbaf2n,two,train\nbbaf3s,three,val\n";
    let m = Manifest::from_split_text(&av_card(), split, Path::new("split.csv"), &out).unwrap();
    let cache = out.join("cache.mmbc");
    let ds = Arc::new(Dataset::with_cache(m.clone(), recipes(), &cache).unwrap());
    let rows = vec![
        Row::full(0, 2),
        Row {
            sample: 1,
            zeroed: vec![false, true],
        },
    ];
    let b = ds.batch(&rows, None).unwrap();
    assert_eq!(b.inputs[0].dims(), &[2, 1, 300, 40]);
    assert_eq!(b.inputs[1].dims(), &[2, 4, 3, 32, 48]);
    assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![2, 3]);
    assert_eq!(
        b.keep.to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 1.0], vec![1.0, 0.0]]
    );
    // Speech is present: the fbank is not flat.
    let a = b.inputs[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (lo, hi) = a
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(hi - lo > 5.0, "fbank range {lo}..{hi}");
    // Cached equals decoded on the fly, and augmentation follows the seed.
    let live = Dataset::new(m.clone(), recipes()).unwrap();
    let x = |d: &Dataset, key| {
        d.batch(&rows, key).unwrap().inputs[1]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(x(&ds, None), x(&live, None));
    assert_eq!(x(&ds, Some((1, 0, 0))), x(&ds, Some((1, 0, 0))));
    assert_ne!(x(&ds, Some((1, 0, 0))), x(&ds, Some((1, 1, 0))));
    // The prefetching iterator serves every row once, in order.
    let served: Vec<usize> = batches(
        ds.clone(),
        vec![Row::full(1, 2), Row::full(0, 2), Row::full(1, 2)],
        2,
        None,
        2,
    )
    .flat_map(|b| b.unwrap().rows.into_iter().map(|r| r.sample))
    .collect();
    assert_eq!(served, vec![1, 0, 1]);
    // A cache made with another recipe is refused.
    let mut other = recipes();
    if let Recipe::Frames(f) = &mut other[1] {
        f.count = 3;
    }
    let err = format!("{:#}", Dataset::with_cache(m, other, &cache).err().unwrap());
    assert!(err.contains("another recipe"), "{err}");
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn bad_files_are_reported_with_their_path() {
    let dir = tmp("bad");
    std::fs::create_dir_all(dir.join("visual/ok")).unwrap();
    std::fs::create_dir_all(dir.join("visual/corrupt")).unwrap();
    std::fs::create_dir_all(dir.join("audio")).unwrap();
    let wave = mmbal_transforms::audio::Waveform {
        samples: vec![0.1; 8000],
        sample_rate: 16000,
    };
    mmbal_transforms::audio::write_wav(&dir.join("audio/ok.wav"), &wave).unwrap();
    // A truncated WAV: header of the good file, half its data.
    let bytes = std::fs::read(dir.join("audio/ok.wav")).unwrap();
    std::fs::write(dir.join("audio/corrupt.wav"), &bytes[..bytes.len() / 2 + 1]).unwrap();
    image::RgbImage::new(20, 20)
        .save(dir.join("visual/ok/frame_00001.jpg"))
        .unwrap();
    std::fs::write(
        dir.join("visual/corrupt/frame_00001.jpg"),
        b"\xff\xd8\xff not a jpeg",
    )
    .unwrap();
    let split = "id,label,split\nok,one,train\ncorrupt,two,train\nmissing,three,test\n";
    let m = Manifest::from_split_text(&av_card(), split, Path::new("split.csv"), &dir).unwrap();
    let ds = Dataset::new(m, recipes()).unwrap();
    let problems = ds.check_all();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
    assert!(has("audio/corrupt.wav"), "{problems:#?}");
    assert!(has("visual/corrupt/frame_00001.jpg"), "{problems:#?}");
    assert!(
        has("audio/missing.wav") && has("visual/missing"),
        "{problems:#?}"
    );
    assert_eq!(ds.manifest.indices(Split::Test), vec![2]);
    let _ = std::fs::remove_dir_all(dir);
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn committed_splits_are_reproducible() {
    let Some(shared) = shared() else { return };
    let mut ids: Vec<String> = std::fs::read_dir(shared.join("grid-s1"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|f| f.strip_suffix(".mpg").map(str::to_string))
        .collect();
    ids.sort();
    let grid = mmbal_data::datasets::grid_split(&ids, mmbal_data::datasets::SPLIT_SEED).unwrap();
    let committed =
        std::fs::read_to_string(workspace().join("datasets/grid-s1/split.csv")).unwrap();
    assert_eq!(
        grid, committed,
        "datasets/grid-s1/split.csv is not what make_splits writes"
    );
    let av =
        mmbal_data::datasets::avmnist_split(&shared, mmbal_data::datasets::SPLIT_SEED).unwrap();
    let committed =
        std::fs::read_to_string(workspace().join("datasets/avmnist/split.csv")).unwrap();
    assert_eq!(
        av, committed,
        "datasets/avmnist/split.csv is not what make_splits writes"
    );
}

#[test]
fn avmnist_pairs_decode_with_matching_labels() {
    let Some(shared) = shared() else { return };
    let m = Manifest::load(&workspace().join("datasets/avmnist"), &shared).unwrap();
    assert_eq!(m.modalities, vec!["audio", "image"]);
    assert_eq!(m.indices(Split::Test).len(), 500);
    assert!(m
        .samples
        .iter()
        .filter(|s| s.split == Split::Test)
        .all(|s| s.id.contains("_yweweler_")));
    let recipes = vec![
        fbank_recipe(8000, 64),
        Recipe::Image(mmbal_data::recipe::ImageRecipe {
            height: 28,
            width: 28,
            mean: 0.1307,
            std: 0.3081,
        }),
    ];
    let ds = Dataset::new(m, recipes).unwrap();
    let rows: Vec<Row> = ds.rows(Split::Test).into_iter().take(8).collect();
    let b = ds.batch(&rows, None).unwrap();
    assert_eq!(b.inputs[0].dims(), &[8, 1, 64, 40]);
    assert_eq!(b.inputs[1].dims(), &[8, 1, 28, 28]);
    // The paired MNIST image carries the recording's digit (checked against the IDX labels).
    let labels =
        mmbal_data::recipe::read_idx_labels(&shared.join("mnist/t10k-labels-idx1-ubyte.gz"))
            .unwrap();
    for r in &rows {
        let s = &ds.manifest.samples[r.sample];
        let mmbal_dataset::manifest::Source::IdxImage { index, .. } = &s.sources[1] else {
            panic!()
        };
        assert_eq!(labels[*index] as usize, s.label, "{}", s.id);
    }
}

#[test]
fn synthetic_dataset_generates_and_loads() {
    let dir = tmp("synthetic");
    mmbal_data::datasets::generate_synthetic(&dir, 4, 10, 5, 2).unwrap();
    let m = Manifest::load(&dir, &dir).unwrap();
    assert_eq!((m.samples.len(), m.classes.len()), (40, 4));
    assert_eq!(m.indices(Split::Train).len(), 24);
    let mut r = recipes();
    r[0] = fbank_recipe(8000, 48);
    let ds = Dataset::new(m, r).unwrap();
    assert!(ds.check_all().is_empty());
    let b = ds.batch(&ds.rows(Split::Val), Some((1, 0, 0))).unwrap();
    assert_eq!(b.inputs[1].dims(), &[8, 4, 3, 32, 48]);
    // Generation is deterministic.
    let again = tmp("synthetic2");
    mmbal_data::datasets::generate_synthetic(&again, 4, 10, 5, 2).unwrap();
    assert_eq!(
        std::fs::read(dir.join("audio/c1_003.wav")).unwrap(),
        std::fs::read(again.join("audio/c1_003.wav")).unwrap()
    );
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(again);
}
