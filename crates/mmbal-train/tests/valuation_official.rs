//! Sample-level and modality-level valuation and resampling against the official code
//! (GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation at 7ed12b0): the values in
//! tests/fixtures/valuation_official.safetensors come from its own
//! `sample_level.execute_modulation`, `modality_level.execute_modulation` and the dataset
//! constructors `AV_KS_Dataset_sample_level` / `AV_KS_Dataset_modality_level`, run by
//! tests/fixtures/gen_valuation.py on the tiny model in the official `AVClassifier` and `ResNet`
//! slots (see that script's docstring for every key, and for why the constructors are called
//! directly: the committed code passes them a `loader=` argument they do not take).
//!
//! Checked: the logits of the three coalitions, mmbal's `value_batch` contributions (both
//! modalities, exactly), the means, mmbal's sample-level plan (`sample_level_plan`, entry by
//! entry and in the official order), and mmbal's modality-level copy count and kept modality from
//! the official part means, including the copy counts at the sample-level thresholds and the
//! truncation of the modality-level `d * N`.

use candle_core::{Device, Tensor};
use mmbal_data::Row;
use mmbal_fusion::{FusionKind, MultimodalModel};
use mmbal_resample::{copies_for, modality_level_copies, modality_level_plan, sample_level_plan};
use mmbal_valuation::{value_batch, Benefit, MaskRoute, Valuation};
use std::collections::HashMap;

mod common;
use common::{assert_close, av_model_from, fixture, floats, ints, max_abs, meta, TinyNames};

/// Relative tolerance of the logits (difference / max |official value|).
const TOL: f32 = 1e-5;

fn fixtures() -> HashMap<String, Tensor> {
    fixture("valuation_official")
}

/// `encoders.audio.4.weight` -> `model.audio_net.layer1.0.weight`, `head.fc.bias` ->
/// `model.fusion_module.fc_out.bias` (the official state_dict names, as the generator stores
/// them).
fn official_name(n: &str) -> String {
    if let Some(p) = n.strip_prefix("head.fc.") {
        return format!("model.fusion_module.fc_out.{p}");
    }
    let rest = n.strip_prefix("encoders.").unwrap();
    let (m, p) = rest.split_once('.').unwrap();
    let (layer, what) = p.split_once('.').unwrap();
    let slot = match layer {
        "0" => "conv1",
        "1" => "bn1",
        "4" => "layer1.0",
        "5" => "layer1.1",
        l => panic!("no layer {l}"),
    };
    format!("model.{m}_net.{slot}.{what}")
}

/// The official weights and BatchNorm statistics of modality `m`, looked up by their official
/// names.
/// The fixture's model with the official initial encoder weights.
fn fixture_model(f: &HashMap<String, Tensor>, kind: FusionKind) -> MultimodalModel {
    av_model_from(kind, TinyNames::Sequential, |m, k| {
        let key = official_name(&format!("encoders.{m}.{k}"));
        f.get(&key)
            .unwrap_or_else(|| panic!("fixture has no {key}"))
            .clone()
    })
}

/// The valued model: the official weights and BatchNorm statistics after its warm-up epochs,
/// concat head Linear(16, 5).
fn tiny_model(f: &HashMap<String, Tensor>) -> MultimodalModel {
    let model = fixture_model(f, FusionKind::Concat);
    for (n, v) in model.named_params() {
        v.set(&f[&official_name(&n)]).unwrap();
    }
    model
}

/// The official drop code of a row: 0 nothing zeroed, 1 audio zeroed, 2 visual zeroed.
fn drop_code(r: &Row) -> i64 {
    match r.zeroed.as_slice() {
        [false, false] => 0,
        [true, false] => 1,
        [false, true] => 2,
        z => panic!("row zeroes {z:?}"),
    }
}

/// The official plan (`<prefix>.plan.sample`, `<prefix>.plan.drop`) as (sample, drop) pairs.
fn official_plan(f: &HashMap<String, Tensor>, prefix: &str) -> Vec<(i64, i64)> {
    let s = ints(f, &format!("{prefix}.plan.sample"));
    let d = ints(f, &format!("{prefix}.plan.drop"));
    assert_eq!(s.len(), d.len());
    s.into_iter().zip(d).collect()
}

/// mmbal's contributions of the fixture's samples, batch by batch as the official loader
/// served them, with mmbal's defaults (feature route, |S| if correct).
fn mmbal_values(f: &HashMap<String, Tensor>, model: &MultimodalModel) -> Vec<f32> {
    let labels: Vec<u32> = ints(f, "label").iter().map(|&l| l as u32).collect();
    let n = labels.len();
    let b = meta(f, "meta.batch_size") as usize;
    let mut out = Vec::new();
    for start in (0..n).step_by(b) {
        let len = b.min(n - start);
        let inputs = [
            f["input_audio"].narrow(0, start, len).unwrap(),
            f["input_visual"].narrow(0, start, len).unwrap(),
        ];
        out.extend(
            value_batch(
                model,
                &inputs,
                &labels[start..start + len],
                MaskRoute::Features,
                Benefit::SizeIfCorrect,
            )
            .unwrap(),
        );
    }
    out
}

#[test]
fn fixture_covers_every_contribution_and_outcome() {
    let f = fixtures();
    let phi = floats(&f, "sample_level.phi");
    for m in 0..2 {
        for v in [-0.5, 0.0, 0.5, 1.0, 1.5] {
            assert!(
                phi.iter().skip(m).step_by(2).any(|&p| p == v),
                "modality {m}: no contribution {v}"
            );
        }
    }
    // [value_a, value_v, value_all] per sample: right with every subset, with none, and with
    // one modality only.
    let value = floats(&f, "valuation.value");
    let outcomes: Vec<&[f64]> = value.chunks(3).collect();
    for want in [
        [1.0, 1.0, 2.0],
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 1.0, 0.0],
    ] {
        assert!(outcomes.contains(&&want[..]), "no sample with {want:?}");
    }
    // Both kinds of plan have copies, and the modality-level one copies one modality only.
    let n = ints(&f, "label").len();
    assert!(official_plan(&f, "sample_level").len() > n);
    let m = official_plan(&f, "modality_level");
    assert!(m.len() > n);
    assert!(m[n..].iter().all(|&(_, d)| d == m[n].1));
}

#[test]
fn contributions_match_official_execute_modulation() {
    let f = fixtures();
    let model = tiny_model(&f);
    let dev = Device::Cpu;
    let inputs = [f["input_audio"].clone(), f["input_visual"].clone()];
    let n = inputs[0].dim(0).unwrap();
    // The three predictions execute_modulation makes: out, exec_drop(drop="visual") (audio
    // only) and exec_drop(drop="audio") (visual only), eval mode.
    let features = model.encode(&inputs, false).unwrap();
    for (keep, key) in [
        ([1f32, 1.], "valuation.out"),
        ([1., 0.], "valuation.out_a"),
        ([0., 1.], "valuation.out_v"),
    ] {
        let keep = Tensor::new(&keep, &dev)
            .unwrap()
            .reshape((1, 2))
            .unwrap()
            .broadcast_as((n, 2))
            .unwrap()
            .contiguous()
            .unwrap();
        let logits = model.head.forward(&features, Some(&keep)).unwrap().fused;
        let d = max_abs(&(&logits - &f[key]).unwrap());
        println!(
            "{key}: max |mmbal - official| {d:e} (max |official| {})",
            max_abs(&f[key])
        );
        assert_close(key, &logits, &f[key], TOL);
    }
    let got = mmbal_values(&f, &model);
    for key in ["sample_level.phi", "modality_level.phi"] {
        let want: Vec<f32> = floats(&f, key).iter().map(|&v| v as f32).collect();
        assert_eq!(got, want, "{key}: mmbal (left) vs official (right)");
    }
    // execute_modulation's cona / conv: means over the dataset.
    let valuation = Valuation {
        samples: (0..n).collect(),
        modalities: 2,
        values: got,
    };
    assert_eq!(valuation.means(), floats(&f, "sample_level.mean"));
    // Valuation is in eval mode: the running statistics are untouched.
    for (name, t) in model.buffers().unwrap() {
        assert_close(&name, &t, &f[&official_name(&name)], 0.0);
    }
}

#[test]
fn sample_level_plan_matches_official_dataset() {
    let f = fixtures();
    let phi: Vec<f32> = floats(&f, "sample_level.phi")
        .iter()
        .map(|&v| v as f32)
        .collect();
    let n = phi.len() / 2;
    let samples: Vec<usize> = (0..n).collect();
    let rows = sample_level_plan(&samples, &phi, 2).unwrap();
    let got: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r.sample as i64, drop_code(r)))
        .collect();
    // Same entries in the same order: originals, then per sample its audio-kept copies (drop 2)
    // and its visual-kept copies (drop 1).
    assert_eq!(got, official_plan(&f, "sample_level"));
}

#[test]
fn sample_level_copies_match_official_away_from_the_thresholds() {
    let f = fixtures();
    let phi = floats(&f, "boundary.sample_level.phi");
    let official = official_copies(&f, phi.len() / 2);
    let mut checked = 0;
    for (i, &p) in phi.iter().enumerate() {
        // mmbal takes f32; 0.4 and -0.1 (as decimals or as their nearest f32) are the
        // thresholds themselves, checked by the test below.
        if [0.4f32, -0.1f32].contains(&(p as f32)) {
            continue;
        }
        assert_eq!(
            copies_for(p as f32),
            official[i],
            "contribution {p} (sample {}, modality {})",
            i / 2,
            i % 2
        );
        checked += 1;
    }
    assert!(checked >= 20);
}

/// Official copies per (sample, modality) of the boundary plan, indexed `k * 2 + m`.
fn official_copies(f: &HashMap<String, Tensor>, n: usize) -> Vec<usize> {
    let plan = official_plan(f, "boundary.sample_level");
    assert!(plan[..n]
        .iter()
        .enumerate()
        .all(|(k, &(s, d))| s == k as i64 && d == 0));
    let mut copies = vec![0usize; 2 * n];
    for &(s, d) in &plan[n..] {
        // drop 2 zeroes visual: a copy of the audio modality (0); drop 1 the visual one.
        let m = if d == 2 { 0 } else { 1 };
        copies[s as usize * 2 + m] += 1;
    }
    copies
}

/// At the thresholds: the official constructor's strict bounds (`0.4 < c < 1`, `-0.1 < c < 0.4`,
/// `c < -0.1`, dataloader.py:156-186) give one copy for the float32 nearest 0.4
/// (0.4000000059604645 > 0.4) and three for the one nearest -0.1; exactly 0.4 or -0.1 (which no
/// f32, mmbal's contribution type, can hold) fall through every branch.
#[test]
fn sample_level_copies_at_the_thresholds_as_official() {
    let f = fixtures();
    let phi = floats(&f, "boundary.sample_level.phi");
    let official = official_copies(&f, phi.len() / 2);
    let mut failures = Vec::new();
    let mut checked = 0;
    for (i, &p) in phi.iter().enumerate() {
        if (p as f32) as f64 != p {
            continue; // not a value mmbal's f32 contributions can take
        }
        checked += 1;
        let got = copies_for(p as f32);
        if got != official[i]
            && !failures
                .iter()
                .any(|s: &String| s.starts_with(&format!("{p:?}:")))
        {
            failures.push(format!("{p:?}: mmbal {got}, official {}", official[i]));
        }
    }
    assert!(
        checked >= 4,
        "the fixture must hold f32 values at the thresholds"
    );
    assert!(
        failures.is_empty(),
        "copies differ:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn modality_level_plan_matches_official_part_means() {
    let f = fixtures();
    let model = tiny_model(&f);
    let n = ints(&f, "label").len();
    let alpha = meta(&f, "meta.alpha");
    // The part means over the official draw Z (with replacement) from mmbal's contributions.
    let values = mmbal_values(&f, &model);
    let choice: Vec<usize> = ints(&f, "modality_level.choice")
        .iter()
        .map(|&i| i as usize)
        .collect();
    assert_eq!(
        choice.len(),
        (n as f64 * meta(&f, "meta.part_ratio")) as usize
    );
    let part = Valuation {
        samples: choice.clone(),
        modalities: 2,
        values: choice
            .iter()
            .flat_map(|&s| [values[2 * s], values[2 * s + 1]])
            .collect(),
    };
    let means = floats(&f, "modality_level.part_mean");
    assert_eq!(part.means(), means);
    // Copies from those means: how many, and which modality they keep.
    let official = official_plan(&f, "modality_level");
    let count = official.len() - n;
    let keep = if official[n].1 == 2 { 0 } else { 1 };
    let mut want = vec![0, 0];
    want[keep] = count;
    assert_eq!(modality_level_copies(&means, alpha, n), want);
    let train: Vec<usize> = (0..n).collect();
    let rows = modality_level_plan(&train, &means, alpha, 0, 0);
    assert_eq!(rows.len(), official.len());
    for (k, r) in rows.iter().enumerate() {
        if k < n {
            assert_eq!((r.sample, drop_code(r)), (k, 0));
        } else {
            // Which samples are drawn is each side's own generator; the modality is not.
            assert_eq!(drop_code(r), official[n].1, "row {k}");
        }
    }
    // The official difference, for the record: (2/3) alpha |gap_a - gap_v|.
    let d = floats(&f, "modality_level.difference")[0];
    assert!(((2.0 / 3.0) * alpha * (means[0] - means[1]).abs() - d).abs() < 1e-12);
}

/// The official modality-level cases of the boundary grid, as
/// (means, n, alpha, official copies per modality).
fn modality_cases(f: &HashMap<String, Tensor>) -> Vec<([f64; 2], usize, f64, [usize; 2])> {
    let means = floats(f, "boundary.modality_level.means");
    let n = ints(f, "boundary.modality_level.n");
    let alpha = floats(f, "boundary.modality_level.alpha");
    let count = ints(f, "boundary.modality_level.count");
    let keep = ints(f, "boundary.modality_level.keep");
    (0..n.len())
        .map(|i| {
            let mut c = [0, 0];
            if keep[i] >= 0 {
                c[keep[i] as usize] = count[i] as usize;
            }
            ([means[2 * i], means[2 * i + 1]], n[i] as usize, alpha[i], c)
        })
        .collect()
}

#[test]
fn modality_level_copies_keep_the_official_modality() {
    let f = fixtures();
    let cases = modality_cases(&f);
    assert!(cases.len() > 1000);
    for (means, n, alpha, official) in cases {
        let got = modality_level_copies(&means, alpha, n);
        // The modality that gets copies is the official one (equal gaps: none on either side).
        for m in 0..2 {
            if official[m] > 0 {
                assert_eq!(got[1 - m], 0, "means {means:?} n {n} alpha {alpha}");
            }
        }
        if means[0] == means[1] {
            assert_eq!(got, [0, 0]);
        }
    }
}

/// The official count is `int(abs(gap_a - gap_v) / 3 * 2 * alpha * length)`
/// (dataloader.py:297-307), truncated as it falls in floating point (means 0.4 and 1.0, N = 30:
/// 11, not 12); mmbal computes it in the same order.
#[test]
fn modality_level_copies_as_official() {
    let f = fixtures();
    let cases = modality_cases(&f);
    let total = cases.len();
    let mut failures = Vec::new();
    let (mut more, mut fewer) = (0, 0);
    for (means, n, alpha, official) in cases {
        let got = modality_level_copies(&means, alpha, n);
        let (g, o): (usize, usize) = (got.iter().sum(), official.iter().sum());
        more += (g > o) as usize;
        fewer += (g < o) as usize;
        if got[..] != official[..] {
            failures.push(format!(
                "means {means:?} n {n} alpha {alpha}: mmbal {got:?}, official {official:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} cases differ ({more} with more copies than the official, {fewer} with \
         fewer), e.g.:\n  {}",
        failures.len(),
        failures[..failures.len().min(10)].join("\n  ")
    );
}
