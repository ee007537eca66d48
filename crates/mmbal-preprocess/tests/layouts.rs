//! The community layouts, each on a small layout built here from real clips (GRID and the
//! clips folder of MMBAL_SHARED_DATA), since the real corpora are not on this machine; the named
//! preprocessing recipes; and decoder robustness on the odd clips.

use mmbal_data::loader::Dataset;
use mmbal_data::recipe::{AudioRecipe, DecodedData, FramesRecipe, FrontEnd, Recipe};
use mmbal_dataset::manifest::{Manifest, Source, Split};
use mmbal_preprocess::preprocess::{
    preprocess_folder, preprocess_video, write_recipe, PreprocessRecipe,
};
use mmbal_transforms::audio::{Fbank, Stft};
use std::path::{Path, PathBuf};

mod common;

fn shared() -> Option<PathBuf> {
    common::shared("layout checks on real clips")
}

fn tmp(name: &str) -> PathBuf {
    common::scratch("layout", name)
}

/// Four GRID clips (digits two and three, two each) and one clip of the clips folder.
const GRID: [(&str, &str); 4] = [
    ("bbaf2n", "two"),
    ("bbaf3s", "three"),
    ("bbwg2p", "two"),
    ("bbwg3a", "three"),
];

fn videos(shared: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = GRID
        .iter()
        .map(|(id, _)| (id.to_string(), shared.join(format!("grid-s1/{id}.mpg"))))
        .collect();
    v.push(("chaplin".into(), shared.join("clips/chaplin.mp4")));
    for (_, p) in &v {
        assert!(p.is_file(), "{} missing from the shared data", p.display());
    }
    v
}

/// Preprocesses the clips with a named recipe into `root`.
fn prepare(shared: &Path, root: &Path, recipe: &str) {
    let r = PreprocessRecipe::named(recipe).unwrap();
    for (id, p) in videos(shared) {
        preprocess_video(&p, root, &id, &r).unwrap();
    }
    write_recipe(root, &r).unwrap();
}

fn card(dir: &Path, body: &str) -> PathBuf {
    let c = dir.join("card");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::write(c.join("dataset.toml"), body).unwrap();
    c
}

/// `mmbal data carve-val`: the val list carved from train and written, or None when there is
/// nothing to do.
fn carve(card: &Path, root: &Path) -> Option<String> {
    let (c, _) = mmbal_dataset::manifest::DatasetCard::read(card).unwrap();
    mmbal_dataset::layouts::carve_val(&c, c.layout.as_ref().unwrap(), root).unwrap()
}

fn load_err(card: &Path, root: &Path) -> String {
    format!("{:#}", Manifest::load(card, root).unwrap_err())
}

fn frames_recipe(count: usize) -> FramesRecipe {
    FramesRecipe {
        count,
        height: 32,
        width: 32,
        crop: None,
        cache_height: Some(36),
        cache_width: Some(36),
        span: None,
        grey: false,
        flow: false,
        crop_scale: (0.5, 1.0),
        flip: true,
        augment: true,
        word_window: None,
    }
}

fn audio_recipe(named: &str) -> AudioRecipe {
    PreprocessRecipe::named(named).unwrap().audio.unwrap()
}

#[test]
fn kinetics_sounds_reads_lists_carves_val_and_reports_bad_lines() {
    let Some(shared) = shared() else { return };
    let root = tmp("ks");
    prepare(&shared, &root, "ks-fbank");
    let (s, _) = mmbal_data::npy::read_f32(&root.join("audio/bbaf2n.npy")).unwrap();
    assert_eq!(s, vec![1024, 128], "ks-fbank gives (1024, 128)");
    // Labels by name; `chaplin` is a test clip of class "two".
    std::fs::write(
        root.join("train.txt"),
        "bbaf2n,10,two\nbbaf3s,10,three\nbbwg2p,10,two\nbbwg3a,10,three\n",
    )
    .unwrap();
    std::fs::write(root.join("test.txt"), "chaplin,10,two\n").unwrap();
    let c = card(
        &root,
        "name = \"ks\"\n[layout]\nkind = \"kinetics-sounds\"\n",
    );
    // Loading never writes: without a val list it names the step that carves one.
    let e = load_err(&c, &root);
    assert!(e.contains("mmbal data carve-val"), "{e}");
    assert!(!root.join("val.txt").exists());
    // A carve that cannot load (a listed sample without files) writes nothing.
    let train = std::fs::read_to_string(root.join("train.txt")).unwrap();
    std::fs::write(root.join("train.txt"), format!("{train}ghost,10,two\n")).unwrap();
    let (card_text, _) = mmbal_dataset::manifest::DatasetCard::read(&c).unwrap();
    let e =
        mmbal_dataset::layouts::carve_val(&card_text, card_text.layout.as_ref().unwrap(), &root)
            .unwrap_err();
    assert!(format!("{e:#}").contains("ghost"), "{e:#}");
    assert!(!root.join("val.txt").exists() && !root.join("val.txt.carving").exists());
    std::fs::write(root.join("train.txt"), train).unwrap();
    let wrote = carve(&c, &root).expect("a val list is carved");
    assert!(
        wrote.contains("carved a val split") && wrote.contains("val.txt"),
        "{wrote}"
    );
    let m = Manifest::load(&c, &root).unwrap();
    assert_eq!(
        m.classes,
        vec!["three", "two"],
        "sorted labels when the card lists none"
    );
    assert_eq!(m.modalities, vec!["audio", "visual"]);
    // 10% of two clips per class rounds to 0, at least one: one val clip per class.
    assert_eq!(
        (
            m.indices(Split::Train).len(),
            m.indices(Split::Val).len(),
            m.indices(Split::Test).len()
        ),
        (2, 2, 1)
    );
    assert!(m.notes.is_empty(), "{:?}", m.notes);
    let val = std::fs::read_to_string(root.join("val.txt")).unwrap();
    assert_eq!(val.lines().count(), 2);
    // Carved again: the written split stays, nothing is carved anew.
    assert_eq!(carve(&c, &root), None);
    let again = Manifest::load(&c, &root).unwrap();
    let ids = |m: &Manifest, s| {
        m.indices(s)
            .iter()
            .map(|&i| m.samples[i].id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&m, Split::Val), ids(&again, Split::Val));

    // The spectrograms and frames decode through the recipes of a config.
    let mut audio = audio_recipe("ks-fbank");
    audio.norm_mean = -4.503877;
    audio.norm_std = 10.282552;
    let recipes = vec![Recipe::Audio(audio), Recipe::Frames(frames_recipe(3))];
    let ds = std::sync::Arc::new(Dataset::new(m, recipes).unwrap());
    assert!(ds.check_all().is_empty(), "{:?}", ds.check_all());
    let b = ds.batch(&ds.rows(Split::Train), Some((0, 0, 0))).unwrap();
    assert_eq!(b.inputs[0].dims(), &[2, 1, 1024, 128]);
    assert_eq!(b.inputs[1].dims(), &[2, 3, 3, 32, 32]);

    // A config reading the spectrograms with other mel bins is told which recipe made them.
    let ex = mmbal_preprocess::doctor::examine(
        &Manifest::load(&c, &root).unwrap(),
        &[
            Recipe::Audio(AudioRecipe {
                front_end: FrontEnd::Fbank(Fbank {
                    num_mel_bins: 64,
                    ..Fbank::default()
                }),
                ..audio_recipe("ks-fbank")
            }),
            Recipe::Frames(frames_recipe(3)),
        ],
        &root,
    );
    let problems = ex.problems.join("\n");
    assert!(
        problems.contains("recipe.toml") && problems.contains("64 mel bins"),
        "{problems}"
    );
    let lines = ex.lines.join("\n");
    assert!(lines.contains("[1024, 128] x5"), "{lines}");
    assert!(lines.contains("[visual] frames per clip: min "), "{lines}");

    // A malformed line, an unknown label and a missing frame folder, each with path and line.
    std::fs::write(root.join("test.txt"), "chaplin,10,two\nchaplin two\n").unwrap();
    let e = load_err(&c, &root);
    assert!(
        e.contains("test.txt:2") && e.contains("name,10,label"),
        "{e}"
    );
    std::fs::write(root.join("test.txt"), "chaplin,10,seven\n").unwrap();
    let listed = card(
        &root,
        "name = \"ks\"\nclasses = [\"two\", \"three\"]\n[layout]\nkind = \"kinetics-sounds\"\n",
    );
    let e = load_err(&listed, &root);
    assert!(
        e.contains("test.txt:1") && e.contains("unknown label `seven`"),
        "{e}"
    );
    // Class indices work when the card lists the classes.
    std::fs::write(root.join("test.txt"), "chaplin,10,0\n").unwrap();
    let m = Manifest::load(&listed, &root).unwrap();
    let t = m.indices(Split::Test)[0];
    assert_eq!(m.samples[t].label, 0);
    std::fs::rename(root.join("visual/bbaf3s"), root.join("visual/gone")).unwrap();
    let e = load_err(&listed, &root);
    let line = std::fs::read_to_string(root.join("train.txt"))
        .unwrap()
        .lines()
        .position(|l| l.starts_with("bbaf3s"))
        .unwrap()
        + 1;
    let val_has_it = val.contains("bbaf3s");
    let list = if val_has_it { "val.txt" } else { "train.txt" };
    let want_line = if val_has_it {
        val.lines().position(|l| l.starts_with("bbaf3s")).unwrap() + 1
    } else {
        line
    };
    assert!(
        e.contains(&format!("{list}:{want_line}"))
            && e.contains("missing visual")
            && e.contains("visual/bbaf3s"),
        "{e}"
    );
    // allow_missing leaves the sample out and says so.
    let lenient = card(
        &root,
        "name = \"ks\"\nclasses = [\"two\", \"three\"]\n[layout]\nkind = \"kinetics-sounds\"\nallow_missing = true\n",
    );
    let m = Manifest::load(&lenient, &root).unwrap();
    assert_eq!(m.samples.len(), 4);
    assert!(
        m.notes.iter().any(|n| n.contains("left out 1 sample")),
        "{:?}",
        m.notes
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn crema_d_reads_wav_or_npy_audio_and_rejects_unknown_emotions() {
    let Some(shared) = shared() else { return };
    let root = tmp("cremad");
    prepare(&shared, &root, "cremad-stft");
    std::fs::write(
        root.join("train.csv"),
        "bbaf2n,HAP\nbbaf3s,SAD\nbbwg2p,HAP\nbbwg3a,SAD\n",
    )
    .unwrap();
    std::fs::write(root.join("test.csv"), "chaplin,NEU\n").unwrap();
    let c = card(&root, "name = \"cremad\"\n[layout]\nkind = \"crema-d\"\n");
    assert!(carve(&c, &root).is_some());
    // The six emotions are the classes: four of them without a training clip is an error.
    let e = load_err(&c, &root);
    assert!(
        e.contains("train.csv") && e.contains("`NEU` (only in test)") && e.contains("`ANG`"),
        "{e}"
    );
    // One more training clip per missing emotion (copies of a clip under new ids).
    std::fs::remove_file(root.join("val.csv")).unwrap();
    let mut train = std::fs::read_to_string(root.join("train.csv")).unwrap();
    for emo in ["NEU", "FEA", "DIS", "ANG"] {
        let id = format!("bbaf2n_{emo}");
        std::fs::copy(
            root.join("AudioWAV/bbaf2n.wav"),
            root.join(format!("AudioWAV/{id}.wav")),
        )
        .unwrap();
        std::fs::copy(
            root.join("spec/bbaf2n.npy"),
            root.join(format!("spec/{id}.npy")),
        )
        .unwrap();
        copy_frames(
            &root.join("Image-01-FPS/bbaf2n"),
            &root.join(format!("Image-01-FPS/{id}")),
        );
        train.push_str(&format!("{id},{emo}\n"));
    }
    std::fs::write(root.join("train.csv"), train).unwrap();
    assert!(carve(&c, &root).is_some());
    let m = Manifest::load(&c, &root).unwrap();
    assert_eq!(m.classes, vec!["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]);
    assert_eq!(m.indices(Split::Val).len(), 2, "carved from train");
    assert!(root.join("val.csv").is_file());
    let s = &m.samples[0];
    assert_eq!(
        s.sources[0],
        Source::Path(root.join(format!("AudioWAV/{}.wav", s.id)))
    );
    assert_eq!(
        s.sources[1],
        Source::Path(root.join(format!("Image-01-FPS/{}", s.id)))
    );
    // The WAV on the fly and the stored spectrogram give the same (257, 188) input.
    let stft = audio_recipe("cremad-stft");
    let wav = Recipe::Audio(stft.clone()).decode(&s.sources[0]).unwrap();
    let npy = Recipe::Audio(stft)
        .decode(&Source::Path(root.join(format!("spec/{}.npy", s.id))))
        .unwrap();
    assert_eq!(wav.shape, vec![1, 257, 188]);
    assert_eq!(wav, npy);
    // The layout's audio can point at the npy spectrograms instead.
    let c_npy = card(
        &root,
        "name = \"cremad\"\n[layout]\nkind = \"crema-d\"\naudio = \"spec/{id}.npy\"\n",
    );
    let m = Manifest::load(&c_npy, &root).unwrap();
    assert!(m.samples[0].sources[0]
        .path()
        .ends_with(format!("spec/{}.npy", m.samples[0].id)));

    std::fs::write(root.join("test.csv"), "chaplin,NEU\nbbaf2n,XYZ\n").unwrap();
    let e = load_err(&c, &root);
    assert!(
        e.contains("test.csv:2") && e.contains("unknown label `XYZ`"),
        "{e}"
    );
    std::fs::write(root.join("test.csv"), "chaplin;NEU\n").unwrap();
    let e = load_err(&c, &root);
    assert!(e.contains("test.csv:1") && e.contains("clip,EMO"), "{e}");
    let _ = std::fs::remove_dir_all(root);
}

/// Copies a clip's frames to `to` (as RGB, or as stand-in flow planes: real frames in grey).
fn copy_frames(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in std::fs::read_dir(from).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
    }
}

#[test]
fn ucf101_reads_class_index_lists_and_two_channel_flow() {
    let Some(shared) = shared() else { return };
    let root = tmp("ucf");
    let raw = root.join("raw");
    prepare(&shared, &raw, "plain");
    std::fs::write(root.join("classInd.txt"), "1 Two\n2 Three\n").unwrap();
    std::fs::write(
        root.join("trainlist01.txt"),
        "Two/v_bbaf2n.avi 1\nThree/v_bbaf3s.avi 2\nTwo/v_bbwg2p.avi 1\nThree/v_bbwg3a.avi 2\n",
    )
    .unwrap();
    std::fs::write(root.join("testlist01.txt"), "Two/v_chaplin.avi\n").unwrap();
    for (id, _) in videos(&shared) {
        let frames = raw.join(format!("visual/{id}"));
        copy_frames(&frames, &root.join(format!("rgb/v_{id}")));
        copy_frames(&frames, &root.join(format!("flow/u/v_{id}")));
        copy_frames(&frames, &root.join(format!("flow/v/v_{id}")));
    }
    let c = card(&root, "name = \"ucf\"\n[layout]\nkind = \"ucf-101\"\n");
    assert!(carve(&c, &root).is_some());
    let m = Manifest::load(&c, &root).unwrap();
    assert_eq!(m.classes, vec!["Two", "Three"]);
    assert_eq!(m.modalities, vec!["rgb", "flow"]);
    assert!(root.join("vallist01.txt").is_file());
    let t = m.indices(Split::Test)[0];
    assert_eq!(
        (m.samples[t].id.as_str(), m.samples[t].label),
        ("v_chaplin", 0)
    );
    let flow = FramesRecipe {
        flow: true,
        ..frames_recipe(2)
    };
    let ds = std::sync::Arc::new(
        Dataset::new(
            m,
            vec![
                Recipe::Frames(frames_recipe(2)),
                Recipe::Frames(flow.clone()),
            ],
        )
        .unwrap(),
    );
    let d = ds.decoded(t, 1).unwrap();
    assert_eq!(d.shape[1], 2, "u and v as two channels");
    // Channel 0 is the u plane: the grey of the first frame.
    let DecodedData::U8(bytes) = &d.data else {
        panic!()
    };
    let grey = Recipe::Frames(FramesRecipe {
        grey: true,
        ..frames_recipe(2)
    })
    .decode(&Source::Path(root.join("flow/u/v_chaplin")))
    .unwrap();
    let DecodedData::U8(g) = &grey.data else {
        panic!()
    };
    let plane = d.shape[2] * d.shape[3];
    assert_eq!(&bytes[..plane], &g[..plane]);
    let b = ds.batch(&ds.rows(Split::Train), Some((0, 0, 0))).unwrap();
    assert_eq!(b.inputs[1].dims(), &[2, 2, 2, 32, 32]);

    std::fs::write(
        root.join("testlist01.txt"),
        "Two/v_chaplin.avi\nTwo/v_bbaf2n.avi 2\n",
    )
    .unwrap();
    let e = load_err(&c, &root);
    assert!(
        e.contains("testlist01.txt:2") && e.contains("does not match"),
        "{e}"
    );
    std::fs::write(root.join("testlist01.txt"), "v_chaplin.avi\n").unwrap();
    let e = load_err(&c, &root);
    assert!(
        e.contains("testlist01.txt:1") && e.contains("Class/v_Name.avi"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn vggsound_ave_and_mm_debiased_read_their_lists() {
    let Some(shared) = shared() else { return };
    let root = tmp("vgg");
    let raw = root.join("raw");
    prepare(&shared, &raw, "plain");
    let place = |dir: &Path, id: &str, as_id: &str| {
        copy_frames(
            &raw.join(format!("visual/{id}")),
            &dir.join(format!("visual/{as_id}")),
        );
        std::fs::create_dir_all(dir.join("audio")).unwrap();
        std::fs::copy(
            raw.join(format!("audio/{id}.wav")),
            dir.join(format!("audio/{as_id}.wav")),
        )
        .unwrap();
    };

    // VGGSound: ids ytid_start, a quoted label with a comma, val carved into val.csv.
    let vgg = root.join("vggsound");
    for (id, _) in videos(&shared) {
        place(&vgg, &id, &format!("{id}_000030"));
    }
    std::fs::write(
        vgg.join("vggsound.csv"),
        "bbaf2n,30,\"two, spoken\",train\nbbaf3s,30,three,train\nbbwg2p,30,\"two, spoken\",train\nbbwg3a,30,three,train\nchaplin,30,three,test\n",
    )
    .unwrap();
    let c = card(&vgg, "name = \"vgg\"\n[layout]\nkind = \"vggsound\"\n");
    assert!(carve(&c, &vgg).is_some());
    let m = Manifest::load(&c, &vgg).unwrap();
    assert_eq!(m.classes, vec!["three", "two, spoken"]);
    assert_eq!(m.samples.len(), 5);
    assert_eq!(m.indices(Split::Val).len(), 2);
    assert!(m.samples.iter().any(|s| s.id == "bbaf2n_000030"));
    let val = std::fs::read_to_string(vgg.join("val.csv")).unwrap();
    assert!(
        val.lines().all(|l| l.ends_with(",train")),
        "carved lines keep their format"
    );
    std::fs::write(vgg.join("vggsound.csv"), "bbaf2n,30,two,holdout\n").unwrap();
    let e = load_err(&c, &vgg);
    assert!(
        e.contains("vggsound.csv:1") && e.contains("unknown split"),
        "{e}"
    );
    std::fs::write(vgg.join("vggsound.csv"), "bbaf2n,thirty,two,train\n").unwrap();
    let e = load_err(&c, &vgg);
    assert!(
        e.contains("vggsound.csv:1") && e.contains("whole number"),
        "{e}"
    );

    // AVE: `Class&ytid&quality&start&end`, its own val list, the Annotations header skipped.
    let ave = root.join("ave");
    for (id, _) in videos(&shared) {
        place(&ave, &id, &id);
    }
    std::fs::write(
        ave.join("trainSet.txt"),
        "Category&VideoID&Quality&StartTime&EndTime\nMale speech, man speaking&bbaf2n&good&0&3\nChurch bell&bbaf3s&good&0&3\n",
    )
    .unwrap();
    std::fs::write(ave.join("valSet.txt"), "Church bell&bbwg3a&good&0&3\n").unwrap();
    std::fs::write(
        ave.join("testSet.txt"),
        "Male speech, man speaking&chaplin&bad&1&2\n",
    )
    .unwrap();
    let c = card(&ave, "name = \"ave\"\n[layout]\nkind = \"ave\"\n");
    let m = Manifest::load(&c, &ave).unwrap();
    assert_eq!(m.classes, vec!["Church bell", "Male speech, man speaking"]);
    assert_eq!(
        (
            m.indices(Split::Train).len(),
            m.indices(Split::Val).len(),
            m.indices(Split::Test).len()
        ),
        (2, 1, 1)
    );
    std::fs::write(ave.join("valSet.txt"), "Church bell&bbwg3a&good&0\n").unwrap();
    let e = load_err(&c, &ave);
    assert!(
        e.contains("valSet.txt:1") && e.contains("Class&ytid"),
        "{e}"
    );
    std::fs::remove_file(ave.join("valSet.txt")).unwrap();
    let e = load_err(&c, &ave);
    assert!(
        e.contains("valSet.txt") && e.contains("cannot read"),
        "AVE has a val list: never carved: {e}"
    );

    // MM-Debiased: the JSON id list, labels as class indices with the names in the card.
    let mmd = root.join("mmd");
    for (id, _) in videos(&shared) {
        place(&mmd, &id, &id);
    }
    std::fs::write(
        mmd.join("mm-debiased.json"),
        "{\n  \"bbaf2n\": {\"subset\": \"train\", \"label\": 0},\n  \"bbaf3s\": {\"subset\": \"train\", \"label\": 1},\n  \"bbwg2p\": {\"subset\": \"val\", \"label\": 0},\n  \"chaplin\": {\"subset\": \"test\", \"label\": 1}\n}\n",
    )
    .unwrap();
    let c = card(
        &mmd,
        "name = \"mmd\"\nclasses = [\"two\", \"three\"]\n[layout]\nkind = \"mm-debiased\"\n",
    );
    let m = Manifest::load(&c, &mmd).unwrap();
    assert_eq!(m.samples.len(), 4);
    assert_eq!(m.indices(Split::Val).len(), 1);
    std::fs::write(
        mmd.join("mm-debiased.json"),
        "{\n  \"bbaf2n\": {\"subset\": \"train\", \"label\": 0},\n  \"bbaf3s\": {\"subset\": \"dev\", \"label\": 1}\n}\n",
    )
    .unwrap();
    let e = load_err(&c, &mmd);
    assert!(
        e.contains("mm-debiased.json:3") && e.contains("unknown subset `dev`"),
        "{e}"
    );
    std::fs::write(
        mmd.join("mm-debiased.json"),
        "{\n  \"bbaf2n\": {\"subset\": \"train\", \"label\": 7}\n}\n",
    )
    .unwrap();
    let e = load_err(&c, &mmd);
    assert!(
        e.contains("mm-debiased.json:2") && e.contains("unknown label `7`"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn named_recipes_give_documented_spectrogram_shapes_before_padding() {
    let Some(shared) = shared() else { return };
    let root = tmp("shapes");
    let wav = root.join("w");
    preprocess_video(
        &shared.join("grid-s1/bbaf2n.mpg"),
        &wav,
        "x",
        &PreprocessRecipe {
            wav_sample_rate: 22050,
            ..PreprocessRecipe::default()
        },
    )
    .unwrap();
    let w = mmbal_transforms::audio::read_wav(&wav.join("audio/x.wav")).unwrap();
    let tiled = |rate: u32, secs: f64| -> Vec<f32> {
        let x = mmbal_transforms::audio::resample(&w.samples, w.sample_rate, rate);
        let n = (secs * rate as f64).round() as usize;
        (0..n).map(|i| x[i % x.len()]).collect()
    };
    // The STFTs land on the documented frame counts without padding or cutting.
    let s = Stft {
        n_fft: 512,
        hop: 353,
        log_eps: 1e-7,
        reflect_pad: false,
    }
    .compute(&tiled(22050, 3.0))
    .unwrap();
    assert_eq!((s.rows, s.cols), (257, 188));
    let s = Stft {
        n_fft: 256,
        hop: 128,
        log_eps: 1e-7,
        reflect_pad: false,
    }
    .compute(&tiled(16000, 5.0))
    .unwrap();
    assert_eq!((s.rows, s.cols), (129, 626));
    // ks-fbank: 1024 frames of 10 ms with a 25 ms window need 10.255 s.
    let f = Fbank::default()
        .compute(&tiled(16000, 10.255), 16000)
        .unwrap();
    assert_eq!((f.rows, f.cols), (1024, 128));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn every_odd_clip_decodes_or_fails_with_a_clear_message() {
    let Some(shared) = shared() else { return };
    let out = tmp("clips");
    let clips = shared.join("clips");
    let report = preprocess_folder(&clips, &out, &PreprocessRecipe::default()).unwrap();
    let n_files = std::fs::read_dir(&clips).unwrap().count();
    assert_eq!(
        report.done.len() + report.failed.len() + report.ignored.len(),
        n_files,
        "every file is accounted for"
    );
    // The wav is no video: left alone, and said so.
    assert_eq!(report.ignored, vec![clips.join("test.wav")]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    for (id, frames) in &report.done {
        assert!(*frames >= 1, "{id}: no frames");
        let w = mmbal_transforms::audio::read_wav(&out.join(format!("audio/{id}.wav"))).unwrap();
        assert_eq!(w.sample_rate, 16000);
        assert!(w.samples.len() > 1600, "{id}: {} samples", w.samples.len());
    }
    // Forced through as a video, the wav fails naming the file and the missing stream.
    let e = format!(
        "{:#}",
        preprocess_video(
            &clips.join("test.wav"),
            &out,
            "wav",
            &PreprocessRecipe::default()
        )
        .unwrap_err()
    );
    assert!(
        e.contains("test.wav") && e.contains("no video stream"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(out);
}

#[test]
fn every_dataset_card_parses() {
    let datasets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets");
    let mut n = 0;
    for d in std::fs::read_dir(&datasets).unwrap() {
        let card = d.unwrap().path().join("dataset.toml");
        let text = std::fs::read_to_string(&card).unwrap();
        let c: mmbal_dataset::manifest::DatasetCard =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", card.display()));
        assert!(!c.description.is_empty(), "{}", card.display());
        n += 1;
    }
    assert!(n >= 8, "{n} cards");
}
