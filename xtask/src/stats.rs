//! Paired comparisons for the results tables: runs of two methods under one seed share initial
//! weights and data order, so their difference is measured per seed, and its mean gets a 95%
//! confidence interval from Student's t with `n - 1` degrees of freedom.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// The mean of the per-seed differences `a[i] - b[i]` and its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedDifference {
    /// Seeds paired.
    pub n: usize,
    /// Mean difference.
    pub mean: f64,
    /// Lower end of the 95% interval.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
}

impl PairedDifference {
    /// Whether the interval leaves zero out: the difference is distinguishable from none.
    pub fn excludes_zero(&self) -> bool {
        self.lo > 0.0 || self.hi < 0.0
    }

    /// `+2.3 [-1.0, +5.6]` in points of `scale` (100 for accuracies), `*` when the interval
    /// excludes zero.
    pub fn display(&self, scale: f64) -> String {
        format!(
            "{:+.1} [{:+.1}, {:+.1}]{}",
            scale * self.mean,
            scale * self.lo,
            scale * self.hi,
            if self.excludes_zero() { " *" } else { "" }
        )
    }
}

/// `None` with fewer than two pairs (no interval) or unequal lengths (not paired).
pub fn paired_difference(a: &[f64], b: &[f64]) -> Option<PairedDifference> {
    let n = a.len();
    if n < 2 || b.len() != n {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = StudentsT::new(0.0, 1.0, (n - 1) as f64)
        .ok()?
        .inverse_cdf(0.975);
    let half = t * (var / n as f64).sqrt();
    Some(PairedDifference {
        n,
        mean,
        lo: mean - half,
        hi: mean + half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against scipy 1.17.1: `stats.t.ppf(0.975, 4)` = 2.7764451051977934; differences
    /// [0.1, -0.05, 0.2, 0.0, 0.15] give mean 0.08 and the interval
    /// [-0.048738463396453865, 0.20873846339645385].
    #[test]
    fn interval_is_scipys() {
        let a = [0.6, 0.45, 0.7, 0.5, 0.65];
        let b = [0.5, 0.5, 0.5, 0.5, 0.5];
        let d = paired_difference(&a, &b).unwrap();
        assert!((d.mean - 0.08).abs() < 1e-12);
        assert!((d.lo - -0.048738463396453865).abs() < 1e-9, "{d:?}");
        assert!((d.hi - 0.20873846339645385).abs() < 1e-9, "{d:?}");
        assert!(!d.excludes_zero());
        assert_eq!(d.display(100.0), "+8.0 [-4.9, +20.9]");
        // Two seeds: t(1) = 12.706204736174694 (scipy).
        let d = paired_difference(&[0.3, 0.5], &[0.1, 0.2]).unwrap();
        let half = 12.706204736174694 * (0.005f64 / 2.0).sqrt();
        assert!((d.hi - (0.25 + half)).abs() < 1e-9, "{d:?}");
        // A clear difference is marked.
        let d = paired_difference(&[0.9, 0.91, 0.92], &[0.5, 0.5, 0.52]).unwrap();
        assert!(d.excludes_zero() && d.display(100.0).ends_with(" *"));
        assert!(paired_difference(&[0.5], &[0.4]).is_none());
        assert!(paired_difference(&[0.5, 0.6], &[0.4]).is_none());
    }
}
