//! Classification metrics: accuracy and macro-F1 (sklearn's definition: the unweighted mean of
//! per-class F1 over the classes that occur in the labels or the predictions).

use anyhow::Result;
use candle_core::Tensor;

/// Top-1 predictions of `(N, C)` logits.
pub fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(1)?.to_vec1::<u32>()?)
}

/// Fraction of `pred` equal to `labels`, position by position; 0 when there are no labels.
pub fn accuracy(pred: &[u32], labels: &[u32]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let right = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    right as f64 / labels.len() as f64
}

/// Macro-F1 of `pred` against `labels` (see the module docs); 0 when both are empty.
pub fn macro_f1(pred: &[u32], labels: &[u32]) -> f64 {
    let mut classes: Vec<u32> = pred.iter().chain(labels).copied().collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return 0.0;
    }
    let mut total = 0.0;
    for &c in &classes {
        let tp = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == c && **l == c)
            .count() as f64;
        let fp = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == c && **l != c)
            .count() as f64;
        let fne = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p != c && **l == c)
            .count() as f64;
        let denom = 2.0 * tp + fp + fne;
        total += if denom == 0.0 { 0.0 } else { 2.0 * tp / denom };
    }
    total / classes.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_and_macro_f1_by_hand() {
        let labels = [0, 0, 1, 1, 2];
        let pred = [0, 1, 1, 1, 0];
        assert_eq!(accuracy(&pred, &labels), 0.6);
        // class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: 0.
        assert!((macro_f1(&pred, &labels) - (0.5 + 0.8 + 0.0) / 3.0).abs() < 1e-12);
        assert_eq!(macro_f1(&labels, &labels), 1.0);
    }

    #[test]
    fn argmax_takes_the_top_logit() {
        let t = Tensor::new(
            &[[0.1f32, 2.0, -1.0], [3.0, 0.0, 0.5]],
            &candle_core::Device::Cpu,
        )
        .unwrap();
        assert_eq!(argmax(&t).unwrap(), vec![1, 0]);
    }
}
