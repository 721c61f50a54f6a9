//! Sign plus Lloyd-Max magnitude levels: a codebook fitted to the values top-k keeps.
//!
//! Top-k selects by magnitude, so the kept values of a chunk are bimodal: nothing between
//! `−t` and `t` (the chunk's threshold), a tail beyond. A grid of equal bins over the
//! block's `μ ± cσ` ([`super::codebook`]) puts two of four 2-bit bins around the empty
//! middle and two on the sparse tails; on a model's pseudo-gradients it used two of its
//! four bins (occupancy `[0, 530, 494, 0]`). Here the sign is one bit and the remaining
//! `b − 1` bits pick one of `M = 2^(b−1)` magnitude levels fitted to that sign's own values.
//!
//! Per block and per sign (`x < 0` negative; `x ≥ 0`, either zero, non-negative), on the
//! magnitudes `a = |x|` of that sign's values, in f64:
//! 1. **Start** by splitting at means: one cell `[0, ∞)`; each of `log2 M` rounds splits
//!    every cell at the mean magnitude of its values (at its lower edge if it has none).
//!    This is the splitting start of Linde–Buzo–Gray; it needs no sort.
//! 2. **Lloyd–Max iterations**, at most [`MAX_ITERATIONS`]: a value's cell is the number of
//!    thresholds `≤ a`; each level is its cell's mean magnitude, clamped into the cell (a
//!    no-op in exact arithmetic, it keeps levels ordered whatever f64 rounding does), or
//!    the cell's lower edge if the cell is empty; the next thresholds are the midpoints of
//!    adjacent levels. The loop stops early when no value changes cell, since the levels
//!    would then repeat. Each iteration lowers the squared error or leaves it equal.
//! 3. Each level is clamped into the sign's `[min a, max a]` (so entries stay finite and
//!    inside the data's range), then stored with its sign.
//!
//! Codes run from the most negative entry to the most positive: a negative value in
//! magnitude cell `i` has code `M − 1 − i`, a non-negative one `M + i`. At `b = 1` that is
//! code 0 = negative, 1 = non-negative, each decoded to its sign's mean, and at `b = 2`
//! codes 0..3 are large negative, small negative, small positive, large positive.
//!
//! Lloyd–Max finds a local optimum: at 4 and 8 bits a far outlier can leave a cell between
//! it and the bulk empty (its level unused); at 2 bits both cells of a sign are used
//! whenever the sign has two distinct magnitudes.
//!
//! Guarantees: the sign is never wrong (a zero may come back as a small positive), the
//! entries are non-decreasing with the first `M` at most 0 and the last `M` at least 0
//! (checked on decode by [`check_entries`]), and `|x − x̂| ≤ max a − min a` over the
//! value's sign, plus f32 rounding ([`error_bound`]).
//!
//! The CUDA kernel (`kernels/cuda/quant.cu`) runs the same steps, one thread per sign,
//! with the same f64 operations in the same order, so its bytes are the CPU's.

use super::bits::Codes;
use super::codebook::{at_least, at_most};
use super::{round_up_f32, rounding_slack, Bits};
use crate::error::{malformed, Result};

/// Most Lloyd–Max iterations per sign and block. One iteration is one pass over the
/// block; measured on top-k values of Gaussian, Laplace, Student-t (ν = 3) and Cauchy
/// tensors, the 2-bit levels stop moving within 8–12, the worst case (Cauchy) needing 8 to
/// reach its final error.
pub const MAX_ITERATIONS: usize = 16;

/// Most magnitude levels per sign (b = 8).
const MAX_LEVELS: usize = 128;

/// Magnitude levels per sign, `2^(b−1)`.
fn levels_per_sign(bits: Bits) -> usize {
    1usize << (bits.count() - 1)
}

/// Number of thresholds in `t[..n]` that are `≤ a`: the cell of magnitude `a`. The
/// thresholds are sorted, so this is a binary search; any method gives the same count.
fn cell_of(t: &[f64], a: f64) -> usize {
    let (mut lo, mut hi) = (0usize, t.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if t[mid] <= a {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Whether `x` belongs to the sign `negative` (−0.0 counts as non-negative).
fn on_side(x: f32, negative: bool) -> bool {
    (x < 0.0) == negative
}

/// Fits one sign's `m` levels to the magnitudes of `block`'s values of that sign, with at
/// most `max_iterations` (at least 1) assignment passes, and writes their codes into
/// `codes` (one per value of the block, positions of the other sign untouched). Returns the
/// levels, ascending in magnitude.
fn fit_side(
    block: &[f32],
    negative: bool,
    m: usize,
    max_iterations: usize,
    codes: &mut [u8],
) -> [f64; MAX_LEVELS] {
    let mut levels = [0.0f64; MAX_LEVELS];
    let mut thresholds = [0.0f64; MAX_LEVELS];
    let mut sums = [0.0f64; MAX_LEVELS];
    let mut counts = [0u32; MAX_LEVELS];
    let (mut min, mut max, mut any) = (0.0f64, 0.0f64, false);
    for &x in block.iter().filter(|&&x| on_side(x, negative)) {
        let a = f64::from(x.abs());
        if !any || a < min {
            min = a;
        }
        if !any || a > max {
            max = a;
        }
        any = true;
    }

    // 1. Split every cell at its mean, log2(m) times: `cells` cells, `cells − 1` thresholds.
    let mut cells = 1usize;
    while cells < m {
        sums[..cells].fill(0.0);
        counts[..cells].fill(0);
        for &x in block.iter().filter(|&&x| on_side(x, negative)) {
            let a = f64::from(x.abs());
            let j = cell_of(&thresholds[..cells - 1], a);
            sums[j] += a;
            counts[j] += 1;
        }
        // Interleave each cell's split point with the old thresholds, from the top down so
        // that no old threshold is overwritten before it is moved.
        for j in (0..cells).rev() {
            let lower = if j == 0 { 0.0 } else { thresholds[j - 1] };
            let split = if counts[j] > 0 {
                let upper = if j + 1 < cells { thresholds[j] } else { f64::INFINITY };
                at_most(at_least(sums[j] / f64::from(counts[j]), lower), upper)
            } else {
                lower
            };
            if j + 1 < cells {
                thresholds[2 * j + 1] = thresholds[j];
            }
            thresholds[2 * j] = split;
        }
        cells *= 2;
    }

    // 2. Lloyd–Max: assign, average, move the thresholds to the midpoints.
    for iteration in 0..max_iterations.max(1) {
        sums[..m].fill(0.0);
        counts[..m].fill(0);
        let mut changed = false;
        for (&x, code) in block.iter().zip(codes.iter_mut()) {
            if !on_side(x, negative) {
                continue;
            }
            let a = f64::from(x.abs());
            let j = cell_of(&thresholds[..m - 1], a);
            sums[j] += a;
            counts[j] += 1;
            let c = if negative { m - 1 - j } else { m + j } as u8;
            changed |= *code != c;
            *code = c;
        }
        if iteration > 0 && !changed {
            // Same cells as the last pass, hence the same levels.
            break;
        }
        for j in 0..m {
            let lower = if j == 0 { 0.0 } else { thresholds[j - 1] };
            levels[j] = if counts[j] > 0 {
                let upper = if j + 1 < m { thresholds[j] } else { f64::INFINITY };
                at_most(at_least(sums[j] / f64::from(counts[j]), lower), upper)
            } else {
                lower
            };
        }
        for j in 0..m - 1 {
            thresholds[j] = (levels[j] + levels[j + 1]) / 2.0;
        }
    }

    // 3. Inside the data's range: finite, and the documented bound holds.
    if any {
        for level in &mut levels[..m] {
            *level = at_most(at_least(*level, min), max);
        }
    }
    levels
}

/// Quantizes one non-empty block of finite values, pushing one code per value onto
/// `codes` (packed later) and its `2^b` entries onto `params`.
pub(super) fn quantize_block(
    block: &[f32],
    bits: Bits,
    codes: &mut Vec<u8>,
    params: &mut Vec<f32>,
) {
    let m = levels_per_sign(bits);
    let start = codes.len();
    // Every position is overwritten by its sign's fit (the first pass never stops early,
    // so the fill value is never compared against).
    codes.resize(start + block.len(), 0);
    let out = &mut codes[start..];
    let negative = fit_side(block, true, m, MAX_ITERATIONS, out);
    let positive = fit_side(block, false, m, MAX_ITERATIONS, out);
    for j in (0..m).rev() {
        params.push((-negative[j]) as f32);
    }
    for level in &positive[..m] {
        params.push(*level as f32);
    }
}

/// Writes the reconstruction of one block, reading `out.len()` codes from `codes`.
pub(super) fn dequantize_block(codes: &mut Codes<'_>, entries: &[f32], out: &mut [f32]) {
    super::codebook::dequantize_block(codes, entries, out);
}

/// Rejects a block's entries that this scheme cannot have produced: not non-decreasing, a
/// negative-code entry above 0 or a non-negative-code entry below 0. `entries` has `2^b`
/// finite values.
pub(super) fn check_entries(block: usize, entries: &[f32]) -> Result<()> {
    let m = entries.len() / 2;
    let signs_ok = m == 0 || (entries[m - 1] <= 0.0 && entries[m] >= 0.0);
    let ordered = entries.windows(2).all(|w| w[0] <= w[1]);
    if signs_ok && ordered {
        return Ok(());
    }
    Err(malformed(
        "quantized params",
        format!(
            "block {block}: sign/magnitude entries must ascend from negative to non-negative, \
             got {entries:?}"
        ),
    ))
}

/// Worst case of `max a − min a` over the two signs of `block`, plus rounding slack.
pub(super) fn error_bound(block: &[f32]) -> f32 {
    let mut worst = 0.0f64;
    let mut absmax = 0.0f64;
    for negative in [true, false] {
        let mags = block.iter().filter(|&&x| on_side(x, negative)).map(|x| f64::from(x.abs()));
        let (lo, hi) = mags.fold((f64::INFINITY, 0.0f64), |(lo, hi), a| (lo.min(a), hi.max(a)));
        if hi >= lo {
            worst = worst.max(hi - lo);
        }
        absmax = absmax.max(hi);
    }
    round_up_f32(worst + rounding_slack(absmax))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(block: &[f32], bits: Bits) -> (Vec<u8>, Vec<f32>) {
        let (mut codes, mut params) = (Vec::new(), Vec::new());
        quantize_block(block, bits, &mut codes, &mut params);
        (codes, params)
    }

    #[test]
    fn cell_of_counts_thresholds_at_or_below() {
        let t = [1.0, 2.0, 2.0, 5.0];
        let got: Vec<usize> = [0.5, 1.0, 1.5, 2.0, 4.9, 5.0, 9.0].map(|a| cell_of(&t, a)).into();
        assert_eq!(got, vec![0, 1, 1, 3, 3, 4, 4]);
        assert_eq!(cell_of(&[], 3.0), 0);
    }

    #[test]
    fn two_clusters_per_sign_get_a_level_each() {
        // Magnitudes 1 and 3 on each side: the 2-bit fit must find both, exactly.
        let x = [1.0f32, 3.0, -1.0, -3.0, 1.0, 3.0, -3.0, -1.0];
        let (codes, params) = run(&x, Bits::B2);
        assert_eq!(params, vec![-3.0, -1.0, 1.0, 3.0]);
        assert_eq!(codes, vec![2, 3, 1, 0, 2, 3, 0, 1]);
    }

    #[test]
    fn one_bit_is_the_sign_with_each_signs_mean() {
        let x = [1.0f32, 2.0, -4.0, 3.0, -0.0];
        let (codes, params) = run(&x, Bits::B1);
        assert_eq!(codes, vec![1, 1, 0, 1, 1]);
        assert_eq!(params, vec![-4.0, 1.5]);
    }

    /// Squared error of one sign's fit with at most `iterations` passes.
    fn side_error(x: &[f32], m: usize, iterations: usize) -> f64 {
        let mut codes = vec![0u8; x.len()];
        let levels = fit_side(x, false, m, iterations, &mut codes);
        x.iter()
            .zip(&codes)
            .map(|(&v, &c)| (f64::from(v) - levels[usize::from(c) - m]).powi(2))
            .sum()
    }

    #[test]
    fn lloyd_iterations_improve_on_the_mean_split_start() {
        // Cauchy magnitudes: the mean is dragged far above most values, so the start puts
        // nearly everything in the low cell; the iterations must move the threshold down.
        let mut rng = crate::rng::SplitMix64::new(7);
        let x: Vec<f32> = (0..4096)
            .map(|_| {
                (std::f64::consts::PI * (f64::from(rng.next_unit_f32()) - 0.5)).tan().abs() as f32
            })
            .collect();
        let (start, fitted) = (side_error(&x, 2, 1), side_error(&x, 2, MAX_ITERATIONS));
        assert!(fitted < 0.5 * start, "{fitted} vs {start}");
        // More levels never hurt the fit.
        assert!(side_error(&x, 4, MAX_ITERATIONS) < fitted);
    }

    #[test]
    fn a_far_outlier_gets_its_own_level() {
        let mut x: Vec<f32> = (0..400).map(|i| 1.0 + (i % 100) as f32 / 100.0).collect();
        x.push(1.0e4);
        let (codes, params) = run(&x, Bits::B2);
        assert_eq!(params[3], 1.0e4);
        assert_eq!(codes[400], 3);
        assert!(codes[..400].iter().all(|&c| c == 2), "{params:?}");
    }

    #[test]
    fn empty_sides_and_cells_give_ordered_entries() {
        let cases =
            [vec![2.0f32; 9], vec![-2.0; 9], vec![0.0, -0.0, 0.0], vec![5.0, 5.0, -7.0, 7.0]];
        for x in cases {
            for bits in [Bits::B1, Bits::B2, Bits::B4, Bits::B8] {
                let (codes, params) = run(&x, bits);
                assert_eq!(params.len(), 1 << bits.count());
                check_entries(0, &params).unwrap();
                // At most two magnitudes per sign: exact from 2 bits on.
                let exact = bits != Bits::B1 || x.iter().all(|v| v.abs() == x[0].abs());
                for (&v, &c) in x.iter().zip(&codes).filter(|_| exact) {
                    assert_eq!(params[usize::from(c)], v, "{x:?} {bits:?}");
                }
            }
        }
    }

    #[test]
    fn unordered_or_wrongly_signed_entries_are_rejected() {
        check_entries(0, &[-2.0, -1.0, 0.0, 3.0]).unwrap();
        check_entries(0, &[-0.0, 0.0]).unwrap();
        assert!(check_entries(3, &[-1.0, -2.0, 1.0, 2.0]).is_err());
        assert!(check_entries(3, &[-2.0, 0.5, 1.0, 2.0]).is_err());
        assert!(check_entries(3, &[-2.0, -1.0, -0.5, 2.0]).is_err());
        assert!(check_entries(3, &[1.0, 2.0]).is_err());
    }

    #[test]
    fn huge_magnitudes_stay_finite() {
        let x = [f32::MAX, -f32::MAX, f32::MAX, f32::MIN_POSITIVE, -1e-45];
        for bits in [Bits::B1, Bits::B2, Bits::B8] {
            let (_, params) = run(&x, bits);
            assert!(params.iter().all(|p| p.is_finite()), "{params:?}");
            check_entries(0, &params).unwrap();
        }
    }
}
