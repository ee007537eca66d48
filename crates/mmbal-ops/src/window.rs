//! Where a sliding window (convolution, pooling) reads along one axis: output `o`, window
//! offset `j`, stride `s` and padding `p` read input index `o * s + j - p`, when it lies
//! inside `0..n`. Shared by the convolution's column matrix and the max-pool kernels.

/// The input index output `o` reads at window offset `j`, or `None` in the padding.
pub(crate) fn input_at(o: usize, j: usize, s: usize, p: usize, n: usize) -> Option<usize> {
    (o * s + j).checked_sub(p).filter(|&i| i < n)
}

/// The outputs `lo..hi` (of `out`) whose read at window offset `j` lies inside `0..n`.
pub(crate) fn outputs_inside(j: usize, s: usize, p: usize, n: usize, out: usize) -> (usize, usize) {
    let lo = if p > j { (p - j).div_ceil(s) } else { 0 };
    let hi = (n + p).checked_sub(j).map_or(0, |e| e.div_ceil(s)).min(out);
    (lo.min(hi), hi)
}
