use mmbal_resample::{
    copies_for, modality_level_copies, modality_level_plan, sample_level_plan, subset_for_valuation,
};

#[test]
fn copy_counts_for_the_attainable_values() {
    // Two modalities: phi in {-0.5, 0, 0.5, 1, 1.5} -> max(0, 2 (1 - phi)) = 3, 2, 1, 0, 0.
    for (phi, n) in [(-0.5, 3), (0.0, 2), (0.5, 1), (1.0, 0), (1.5, 0)] {
        assert_eq!(copies_for(phi), n, "phi {phi}");
    }
    // The reference's strict bounds, compared in f64: 0.4 < phi < 1 -> 1; -0.1 < phi < 0.4 -> 2;
    // phi < -0.1 -> 3; otherwise (phi >= 1, NaN, exactly 0.4 or -0.1) none. No f32 is exactly
    // 0.4 or -0.1: the one nearest 0.4 lies above it, the one nearest -0.1 below.
    for (phi, n) in [
        (0.41, 1),
        (0.4, 1),
        (0.39, 2),
        (-0.09, 2),
        (-0.1, 3),
        (-0.11, 3),
        (0.999, 1),
        (f32::NAN, 0),
    ] {
        assert_eq!(copies_for(phi), n, "phi {phi}");
    }
}

#[test]
fn sample_level_rows_carry_the_right_masks() {
    // Three samples, two modalities: (1, 1) -> none; (1.5, 0.5) -> 1 visual copy;
    // (-0.5, 0.5) -> 3 audio copies and 1 visual copy.
    let samples = [10, 11, 12];
    let phi = [1.0, 1.0, 1.5, 0.5, -0.5, 0.5];
    let rows = sample_level_plan(&samples, &phi, 2).unwrap();
    assert_eq!(rows.len(), 3 + 1 + 4);
    for (k, r) in rows[..3].iter().enumerate() {
        assert_eq!(
            (r.sample, r.zeroed.clone()),
            (samples[k], vec![false, false])
        );
    }
    let copies: Vec<(usize, Vec<bool>)> = rows[3..]
        .iter()
        .map(|r| (r.sample, r.zeroed.clone()))
        .collect();
    let audio_only = vec![false, true];
    let visual_only = vec![true, false];
    assert_eq!(
        copies,
        vec![
            (11, visual_only.clone()),
            (12, audio_only.clone()),
            (12, audio_only.clone()),
            (12, audio_only),
            (12, visual_only),
        ]
    );
    assert!(sample_level_plan(&samples, &phi[..5], 2).is_err());
    // Three modalities: a copy keeps exactly one.
    let rows = sample_level_plan(&[0], &[1.0, 0.5, 1.5], 3).unwrap();
    assert_eq!(rows[1].zeroed, vec![true, false, true]);
}

#[test]
fn modality_level_values_a_part_and_adds_truncated_d_n_copies() {
    let train: Vec<usize> = (100..200).collect();
    let z = subset_for_valuation(&train, 0.2, 3, 5);
    assert_eq!(z.len(), 20);
    let mut dedup = z.clone();
    dedup.dedup();
    assert_eq!(dedup.len(), 20, "Z is drawn without replacement");
    assert!(z.iter().all(|s| train.contains(s)));
    assert_eq!(z, subset_for_valuation(&train, 0.2, 3, 5));
    assert_ne!(z, subset_for_valuation(&train, 0.2, 3, 6));
    // Means 1.2 (audio) and 0.45 (visual): gaps -0.2 and 0.55, d = (2/3) * 0.75 = 0.5 -> 50 copies.
    assert_eq!(modality_level_copies(&[1.2, 0.45], 1.0, 100), vec![0, 50]);
    assert_eq!(modality_level_copies(&[1.2, 0.45], 0.5, 100), vec![0, 25]);
    let rows = modality_level_plan(&train, &[1.2, 0.45], 1.0, 3, 5);
    assert_eq!(rows.len(), 150);
    assert!(rows[100..].iter().all(|r| r.zeroed == vec![true, false]));
    assert!(rows[100..].iter().all(|r| train.contains(&r.sample)));
    // Three modalities: each gets copies by its gap over the smallest. 0.6 / 3 * 2 * 30 falls at
    // 11.999... in floating point and truncates to 11, as the reference's expression does.
    assert_eq!(
        modality_level_copies(&[1.5, 0.9, 0.6], 1.0, 30),
        vec![0, 11, 18]
    );
}
