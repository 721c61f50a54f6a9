//! Codebook quantization in the style of SparseLoCo: equal-width bins over the block's
//! `μ ± c·σ`, each reconstructed by the mean of the values that fell into it.
//!
//! Per block, with `μ` the mean, `σ` the population standard deviation, `c` the clip width
//! in sigmas and `K = 2^b`:
//! - bins have width `w = 2cσ/K` and start at `lo = μ − cσ`;
//! - `code = clamp(floor((x − lo)/w), 0, K−1)`, so values beyond `μ ± cσ` join the edge bins;
//! - entry `j` is the mean of the values with code `j`, clamped to bin `j`'s interval
//!   `[lo + j·w, lo + (j+1)·w]`, or the bin centre if no value has code `j`.
//!
//! The clamp only ever moves the two edge bins, which are the ones that also hold clipped
//! outliers: without it a single far outlier drags its edge bin's mean outside the bin and
//! every in-range value sharing that bin loses the `w` guarantee. With it, every entry lies
//! in its bin, hence
//!
//! `|x − x̂| ≤ w + max(0, |x − μ| − cσ)`
//!
//! in exact arithmetic ([`super::QuantConfig::error_bound`] adds f32 rounding slack). When
//! `σ = 0` every value equals `μ` and the block decodes exactly.
//!
//! The bins are symmetric about `μ` on purpose: the reference's `round(c/scale) + 2`
//! mapping is asymmetric and can leave bins unused on the bimodal values top-k produces.
//! [`bin_occupancy`] measures how well a payload uses its bins.
//!
//! All statistics are accumulated sequentially in f64, so the same block gives the same
//! bytes on every machine.

use super::bits::Codes;
use super::{round_up_f32, rounding_slack, Bits, Quantized};

/// Most bins any width has (b = 8); lets the per-bin sums live on the stack.
const MAX_LEVELS: usize = 256;

struct Stats {
    mean: f64,
    std: f64,
    min: f32,
    max: f32,
}

/// Requires a non-empty block of finite values.
fn stats(block: &[f32]) -> Stats {
    let n = block.len() as f64;
    let (mut sum, mut min, mut max) = (0.0f64, f32::INFINITY, f32::NEG_INFINITY);
    for &x in block {
        sum += f64::from(x);
        // Plain comparisons, not `f32::min`/`max`, which may return either zero of
        // `min(+0, −0)`: the first of equal extremes wins, as in the CUDA kernel, so a block
        // of mixed-sign zeros gets the same bits on every backend.
        if x < min {
            min = x;
        }
        if x > max {
            max = x;
        }
    }
    let mean = sum / n;
    // Two passes rather than E[x²] − μ²: no cancellation when |μ| ≫ σ. A plain product,
    // not `powi`, whose rounding LLVM leaves unspecified and could differ between targets.
    let var = block
        .iter()
        .map(|&x| {
            let d = f64::from(x) - mean;
            d * d
        })
        .sum::<f64>()
        / n;
    Stats { mean, std: var.sqrt(), min, max }
}

/// Quantizes one non-empty block, pushing one code per value onto `codes` (packed later)
/// and its `2^b` entries onto `params`.
pub(super) fn quantize_block(
    block: &[f32],
    bits: Bits,
    clip_sigmas: f32,
    codes: &mut Vec<u8>,
    params: &mut Vec<f32>,
) {
    let k = 1usize << bits.count();
    let st = stats(block);
    let c = f64::from(clip_sigmas);
    let lo = st.mean - c * st.std;
    let w = 2.0 * c * st.std / k as f64;
    if !(st.std > 0.0 && w > 0.0) {
        // σ = 0 means every value equals the mean; `min` is that value without rounding.
        codes.extend(std::iter::repeat_n(0u8, block.len()));
        params.extend(std::iter::repeat_n(st.min, k));
        return;
    }
    let mut sums = [0.0f64; MAX_LEVELS];
    let mut counts = [0u64; MAX_LEVELS];
    let last = (k - 1) as f64;
    for &x in block {
        let x = f64::from(x);
        let t = (x - lo) / w;
        let j = if t < 1.0 {
            0
        } else if t >= last {
            k - 1
        } else {
            t as usize
        };
        sums[j] += x;
        counts[j] += 1;
        codes.push(j as u8);
    }
    let (min, max) = (f64::from(st.min), f64::from(st.max));
    for j in 0..k {
        let (left, right) = (lo + j as f64 * w, lo + (j + 1) as f64 * w);
        let entry = if counts[j] > 0 {
            // The outer clamp to [min, max] is a no-op in exact arithmetic (a non-empty
            // bin's clamped mean lies between data values); it keeps rounding from pushing
            // an entry past f32::MAX.
            at_most(at_least(at_most(at_least(sums[j] / counts[j] as f64, left), right), min), max)
        } else {
            // An empty bin's entry is never read back; keeping it inside the data range
            // keeps it finite when μ ± cσ exceeds the f32 range.
            at_most(at_least(lo + (j as f64 + 0.5) * w, min), max)
        };
        params.push(entry as f32);
    }
}

/// `v` raised to `floor`; `v` itself when they compare equal (either zero), as the CUDA
/// kernel's `at_least`.
pub(super) fn at_least(v: f64, floor: f64) -> f64 {
    if v < floor {
        floor
    } else {
        v
    }
}

/// `v` lowered to `ceiling`; `v` itself when they compare equal, as the CUDA `at_most`.
pub(super) fn at_most(v: f64, ceiling: f64) -> f64 {
    if v > ceiling {
        ceiling
    } else {
        v
    }
}

/// Writes the reconstruction of one block, reading `out.len()` codes from `codes`.
pub(super) fn dequantize_block(codes: &mut Codes<'_>, entries: &[f32], out: &mut [f32]) {
    for (slot, code) in out.iter_mut().zip(codes) {
        // Codes are below 2^b by construction and `entries` holds 2^b values.
        *slot = entries.get(usize::from(code)).copied().unwrap_or(0.0);
    }
}

/// Worst case of `w + max(0, |x − μ| − cσ)` over `block`, plus rounding slack.
pub(super) fn error_bound(block: &[f32], bits: Bits, clip_sigmas: f32) -> f32 {
    if block.is_empty() {
        return 0.0;
    }
    let st = stats(block);
    let absmax = f64::from(st.min.abs().max(st.max.abs()));
    let c = f64::from(clip_sigmas);
    let k = (1u32 << bits.count()) as f64;
    let exact = if st.std > 0.0 {
        let spread = (f64::from(st.max) - st.mean).max(st.mean - f64::from(st.min));
        2.0 * c * st.std / k + (spread - c * st.std).max(0.0)
    } else {
        0.0
    };
    round_up_f32(exact + rounding_slack(absmax))
}

/// How many of the payload's `len` values carry each code, indexed by code (`2^b` counts).
///
/// For a codebook payload an empty entry is a bin that no value used; a payload whose codes
/// are shorter than `len` says counts only the codes present.
pub fn bin_occupancy(q: &Quantized) -> Vec<usize> {
    let mut counts = vec![0usize; 1 << q.bits.count()];
    for code in Codes::new(&q.codes, q.bits, q.len) {
        if let Some(c) = counts.get_mut(usize::from(code)) {
            *c += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(block: &[f32], bits: Bits, c: f32) -> (Vec<u8>, Vec<f32>) {
        let (mut codes, mut params) = (Vec::new(), Vec::new());
        quantize_block(block, bits, c, &mut codes, &mut params);
        (codes, params)
    }

    #[test]
    fn a_block_of_mixed_zeros_keeps_the_first_zeros_sign() {
        for (block, sign) in [([0.0f32, -0.0, 0.0], 0u32), ([-0.0, 0.0, -0.0], 1 << 31)] {
            let (codes, params) = run(&block, Bits::B2, 2.0);
            assert_eq!(codes, vec![0; 3]);
            assert!(params.iter().all(|p| p.to_bits() == sign), "{block:?}: {params:?}");
        }
        // Entries clamped to a zero extreme keep the entry's own zero, not the bound's.
        assert_eq!(at_least(-0.0, 0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!(at_most(0.0, -0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!((at_least(-1.0, 0.5), at_most(2.0, 0.5)), (0.5, 0.5));
    }

    #[test]
    fn entries_are_bin_means() {
        // μ = 0, σ = 1, c = 1 → bins [−1, 0), [0, 1].
        let (codes, params) = run(&[-1.0, 1.0, -1.0, 1.0], Bits::B1, 1.0);
        assert_eq!(codes, vec![0, 1, 0, 1]);
        assert_eq!(params, vec![-1.0, 1.0]);
    }

    #[test]
    fn empty_bins_get_their_centre() {
        // μ = 0, σ = 1, c = 2 → 4 bins of width 1 over [−2, 2]; ±1 fill bins 1 and 3.
        let (codes, params) = run(&[-1.0, 1.0], Bits::B2, 2.0);
        assert_eq!(codes, vec![1, 3]);
        assert_eq!(params, vec![-1.0, -1.0, 0.5, 1.0]);
    }

    #[test]
    fn clipped_values_do_not_drag_in_range_values_of_their_bin() {
        // With a narrow clip most values lie beyond μ ± cσ and share the edge bins with
        // in-range values; an unclamped edge mean would sit far outside the bin.
        let mut x: Vec<f32> = (0..=400).map(|i| (i as f32 - 200.0) / 200.0).collect();
        x.push(-40.0);
        for c in [0.25f32, 1.0, 3.0] {
            for bits in [Bits::B1, Bits::B2, Bits::B4, Bits::B8] {
                let (codes, params) = run(&x, bits, c);
                let bound = error_bound(&x, bits, c);
                let st = stats(&x);
                let cs = f64::from(c) * st.std;
                let w = 2.0 * cs / f64::from(1u32 << bits.count());
                for (i, &v) in x.iter().enumerate() {
                    let err = (f64::from(v) - f64::from(params[usize::from(codes[i])])).abs();
                    assert!(err <= f64::from(bound), "{bits:?} c {c}: {v} err {err} > {bound}");
                    let excess = ((f64::from(v) - st.mean).abs() - cs).max(0.0);
                    assert!(err <= w + excess + 1e-6, "{bits:?} c {c}: {v} err {err}");
                }
            }
        }
    }

    #[test]
    fn constant_blocks_decode_exactly() {
        for v in [0.1f32, -7.25e30, 3.0e-30, 0.0] {
            let (codes, params) = run(&[v; 37], Bits::B4, 3.0);
            assert!(codes.iter().all(|&c| c == 0));
            assert!(params.iter().all(|&p| p == v));
        }
    }

    #[test]
    fn huge_spread_keeps_entries_finite() {
        let x = [f32::MAX, -f32::MAX, f32::MAX, 0.0];
        let (_, params) = run(&x, Bits::B8, 1e30);
        assert!(params.iter().all(|p| p.is_finite()));
    }
}
