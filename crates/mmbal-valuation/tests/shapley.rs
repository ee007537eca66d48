use candle_core::{Device, Tensor};
use mmbal_fusion::{FusionHead, FusionKind, LinearInit};
use mmbal_valuation::{shapley_values, values_from_logits, Benefit, Valuation};

/// Logits of one sample that predict `class` out of 2.
fn predicting(class: usize) -> Vec<f32> {
    if class == 0 {
        vec![1.0, 0.0]
    } else {
        vec![0.0, 1.0]
    }
}

#[test]
fn two_modalities_all_eight_cases() {
    // (fused right, audio right, visual right) -> (phi_audio, phi_visual), by hand from
    // phi_a = (v(a) + v(av) - v(v)) / 2 with v(S) = |S| * correct.
    let table = [
        ((1, 1, 1), (1.0, 1.0)),
        ((1, 1, 0), (1.5, 0.5)),
        ((1, 0, 1), (0.5, 1.5)),
        ((1, 0, 0), (1.0, 1.0)),
        ((0, 1, 1), (0.0, 0.0)),
        ((0, 1, 0), (0.5, -0.5)),
        ((0, 0, 1), (-0.5, 0.5)),
        ((0, 0, 0), (0.0, 0.0)),
    ];
    // All eight as one batch of 8 samples with label 0.
    let pick = |right: i32| predicting(if right == 1 { 0 } else { 1 });
    let mut logits = vec![Vec::new(); 4];
    for ((f, a, v), _) in table {
        logits[1].push(pick(a)); // {audio}
        logits[2].push(pick(v)); // {visual}
        logits[3].push(pick(f)); // {audio, visual}
    }
    let phi = values_from_logits(&logits, &[0; 8], 2, Benefit::SizeIfCorrect).unwrap();
    for (k, (case, (pa, pv))) in table.iter().enumerate() {
        assert_eq!((phi[2 * k], phi[2 * k + 1]), (*pa, *pv), "case {case:?}");
        // Efficiency: the values add up to v(all).
        assert_eq!(phi[2 * k] + phi[2 * k + 1], 2.0 * case.0 as f32);
    }
}

#[test]
fn three_modalities_by_hand() {
    // Subset masks: bit 0 = a, bit 1 = b, bit 2 = c.
    let size = |s: usize| s.count_ones() as f64;
    // Only the full set is right: each gets 1.
    let mut v = vec![0.0; 8];
    v[7] = 3.0;
    assert_eq!(shapley_values(&v, 3).unwrap(), vec![1.0, 1.0, 1.0]);
    // Right exactly when a is present: phi_a = 1/3 + 1/3 + 1/3 + 1 = 2, phi_b = phi_c = 1/2.
    let v: Vec<f64> = (0..8)
        .map(|s| if s & 1 == 1 { size(s) } else { 0.0 })
        .collect();
    let phi = shapley_values(&v, 3).unwrap();
    for (got, want) in phi.iter().zip([2.0, 0.5, 0.5]) {
        assert!((got - want).abs() < 1e-12, "{phi:?}");
    }
    // Right whenever b or c is present, wrong with a alone.
    let v: Vec<f64> = (0..8)
        .map(|s| if s & 6 != 0 { size(s) } else { 0.0 })
        .collect();
    // phi_a: {}->a 0; {b}->ab (2-1)/6; {c}->ac (2-1)/6; {bc}->abc (3-2)/3 = 2/3.
    // phi_b: {}->b 1/3; {a}->ab 2/6; {c}->bc (2-1)/6; {ac}->abc (3-2)/3: 1/3+1/3+1/6+1/3 = 7/6.
    let phi = shapley_values(&v, 3).unwrap();
    for (got, want) in phi.iter().zip([2.0 / 3.0, 7.0 / 6.0, 7.0 / 6.0]) {
        assert!((got - want).abs() < 1e-12, "{phi:?}");
    }
}

#[test]
fn efficiency_and_symmetry_on_random_benefits() {
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    for m in 2..=5 {
        for _ in 0..20 {
            let mut v: Vec<f64> = (0..1usize << m).map(|_| next()).collect();
            v[0] = 0.0;
            // Make players 0 and 1 interchangeable: v(S) depends on them only through the count.
            for s in 0..1usize << m {
                let swapped = (s & !3) | ((s & 1) << 1) | ((s >> 1) & 1);
                if swapped < s {
                    v[s] = v[swapped];
                }
            }
            let phi = shapley_values(&v, m).unwrap();
            let total: f64 = phi.iter().sum();
            assert!(
                (total - v[(1 << m) - 1]).abs() < 1e-9,
                "efficiency, M = {m}"
            );
            assert!((phi[0] - phi[1]).abs() < 1e-9, "symmetry, M = {m}: {phi:?}");
        }
    }
}

#[test]
fn feature_masking_through_the_concat_head_by_hand() {
    // Head W = [[1, 0 | 0], [0, 1 | 2]], b = [0.5, 0]; audio feature 2-d, visual 1-d.
    let dev = Device::Cpu;
    // The weights given by name through candle-nn's tensor-backed builder.
    let weights = std::collections::HashMap::from([
        (
            "fc.weight".to_string(),
            Tensor::new(&[[1f32, 0., 0.], [0., 1., 2.]], &dev).unwrap(),
        ),
        (
            "fc.bias".to_string(),
            Tensor::new(&[0.5f32, 0.], &dev).unwrap(),
        ),
    ]);
    let vb = candle_nn::VarBuilder::from_tensors(weights, candle_core::DType::F32, &dev);
    let head = FusionHead::new(FusionKind::Concat, &[2, 1], 2, LinearInit::Pytorch, vb).unwrap();
    // Sample: a = [1, 0.2], v = [0.4], label 1.
    // {a}: [1 + 0.5, 0.2] -> class 0 (wrong); {v}: [0.5, 0.8] -> 1 (right);
    // {a, v}: [1.5, 1.0] -> 0 (wrong). phi_a = (0 + 0 - 1) / 2 = -0.5, phi_v = (1 + 0 - 0) / 2.
    let a = Tensor::new(&[[1f32, 0.2]], &dev).unwrap();
    let v = Tensor::new(&[[0.4f32]], &dev).unwrap();
    let mut logits = vec![Vec::new(); 4];
    for (mask, slot) in logits.iter_mut().enumerate().skip(1) {
        let keep = Tensor::new(&[[(mask & 1) as f32, (mask >> 1) as f32]], &dev).unwrap();
        *slot = head
            .forward(&[a.clone(), v.clone()], Some(&keep))
            .unwrap()
            .fused
            .to_vec2::<f32>()
            .unwrap();
    }
    assert_eq!(logits[2], vec![vec![0.5, 0.8]]);
    let phi = values_from_logits(&logits, &[1], 2, Benefit::SizeIfCorrect).unwrap();
    assert_eq!(phi, vec![-0.5, 0.5]);
    // The other benefits on the same predictions.
    let phi = values_from_logits(&logits, &[1], 2, Benefit::Correct).unwrap();
    assert_eq!(phi, vec![-0.5, 0.5]);
}

#[test]
fn values_write_as_npy() {
    let val = Valuation {
        samples: vec![4, 9, 2],
        modalities: 2,
        values: vec![1.5, 0.5, 0.0, 0.0, -0.5, 0.5],
    };
    assert_eq!(val.means(), vec![1.0 / 3.0, 1.0 / 3.0]);
    let path = std::env::temp_dir().join(format!("mmbal-val-{}.npy", std::process::id()));
    val.write_npy(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!((10 + header_len) % 64, 0);
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'") && header.contains("'shape': (3, 2"),
        "{header}"
    );
    let data: Vec<f32> = bytes[10 + header_len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(data, val.values);
    let (shape, back) = mmbal_data::npy::read_f32(&path).unwrap();
    assert_eq!((shape, back), (vec![3, 2], val.values.clone()));
    let ids = std::fs::read(path.with_extension("samples.npy")).unwrap();
    let h = u16::from_le_bytes([ids[8], ids[9]]) as usize;
    let ids_header = std::str::from_utf8(&ids[10..10 + h]).unwrap();
    assert!(
        ids_header.contains("'descr': '<i8'") && ids_header.contains("'shape': (3,"),
        "{ids_header}"
    );
    assert_eq!(
        i64::from_le_bytes(ids[10 + h + 8..10 + h + 16].try_into().unwrap()),
        9
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(path.with_extension("samples.npy"));
}
