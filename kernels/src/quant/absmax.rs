//! Absmax quantization: a per-block scale derived from the block's largest magnitude.
//!
//! Widths 2, 4 and 8 use a uniform *midrise* grid symmetric about zero, `K = 2^b` levels
//! `(q − (K−1)/2)·s` for `q ∈ [0, K−1]` with step `s = 2·absmax/(K−1)`, so the outermost
//! levels are exactly `±absmax` and no level is wasted on a sign that never occurs. Zero is
//! not a level (midrise), which is why an all-zero block is special-cased to scale 0.
//!
//! Width 1 is sign quantization. With nearest rounding the scale is the block's mean
//! magnitude `m`, which minimises the squared error of `sign(x)·m`; with stochastic rounding
//! the levels are `±absmax` and `+absmax` is drawn with probability `(x/absmax + 1)/2`, which
//! makes the reconstruction unbiased (a mean-magnitude scale could not be: `E[x̂]` would be
//! `x·m/absmax`).
//!
//! Error bounds (exact arithmetic; [`super::QuantConfig::error_bound`] adds f32 rounding
//! slack of a few ulps of absmax):
//! - b ≥ 2, nearest: `|x − x̂| ≤ s/2`.
//! - b ≥ 2, stochastic: `|x − x̂| < s` (x̂ is one of the two levels around x).
//! - b = 1, nearest: `|x − x̂| = ||x| − m| ≤ max(absmax − m, m) ≤ absmax`.
//! - b = 1, stochastic: `|x − x̂| ≤ absmax + |x| ≤ 2·absmax`.

use super::bits::Codes;
use super::{round_up_f32, rounding_slack, Bits};
use crate::error::{malformed, Result};
use crate::rng::SplitMix64;

fn absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// Half the number of steps between the outermost levels, `(K−1)/2`.
fn half_span(bits: Bits) -> f32 {
    ((1u32 << bits.count()) - 1) as f32 / 2.0
}

/// The step `s = 2·absmax/(K−1)` as stored, nudged down (by ulps) in the rare case where
/// the outermost level `(K−1)/2 · s` would overflow f32 after rounding: decoding must
/// always produce finite values.
fn step(absmax: f32, bits: Bits) -> f32 {
    let h = half_span(bits);
    let mut s = (f64::from(absmax) / f64::from(h)) as f32;
    while s > 0.0 && !(s * h).is_finite() {
        s = f32::from_bits(s.to_bits() - 1);
    }
    s
}

/// The stored parameter for a 1-bit block: the mean magnitude for nearest rounding (the
/// L2-optimal scale for `sign(x)·m`), the absmax for stochastic rounding (required for an
/// unbiased two-level draw).
fn sign_scale(block: &[f32], stochastic: bool) -> f32 {
    if stochastic || block.is_empty() {
        return absmax(block);
    }
    let sum: f64 = block.iter().map(|x| f64::from(x.abs())).sum();
    (sum / block.len() as f64) as f32
}

/// Quantizes one block, pushing one code per value onto `codes` (packed later) and
/// returning the block's scale. With `rng`, rounds stochastically and draws exactly one
/// number per value, so the stream position of an element is its index in the call.
pub(super) fn quantize_block(
    block: &[f32],
    bits: Bits,
    mut rng: Option<&mut SplitMix64>,
    codes: &mut Vec<u8>,
) -> f32 {
    if bits == Bits::B1 {
        let scale = sign_scale(block, rng.is_some());
        for &x in block {
            let positive = match rng.as_deref_mut() {
                None => x >= 0.0,
                Some(r) => {
                    let u = f64::from(r.next_unit_f32());
                    // A zero block decodes to ±0 whatever the code, so the draw is only
                    // consumed to keep later elements on their stream position.
                    scale == 0.0 || u < (f64::from(x) / f64::from(scale) + 1.0) / 2.0
                }
            };
            codes.push(u8::from(positive));
        }
        return scale;
    }

    let top = f64::from((1u32 << bits.count()) - 1);
    let s = step(absmax(block), bits);
    if s == 0.0 {
        // Every level is 0 when the scale is 0; any code decodes exactly.
        let mid = 1u8 << (bits.count() - 1);
        for _ in block {
            if let Some(r) = rng.as_deref_mut() {
                r.next_unit_f32();
            }
            codes.push(mid);
        }
        return 0.0;
    }
    let h = f64::from(half_span(bits));
    let s64 = f64::from(s);
    for &x in block {
        let t = f64::from(x) / s64 + h;
        let q = match rng.as_deref_mut() {
            None => t.round(),
            Some(r) => {
                let lower = t.floor();
                let u = f64::from(r.next_unit_f32());
                if u < t - lower {
                    lower + 1.0
                } else {
                    lower
                }
            }
        };
        // t can leave [0, K−1] only by rounding error (|x| ≤ absmax), so clamping costs at
        // most a few ulps of error and of bias.
        codes.push(q.clamp(0.0, top) as u8);
    }
    s
}

/// Writes the reconstruction of one block, reading `out.len()` codes from `codes`.
pub(super) fn dequantize_block(codes: &mut Codes<'_>, scale: f32, bits: Bits, out: &mut [f32]) {
    if bits == Bits::B1 {
        for (slot, code) in out.iter_mut().zip(codes) {
            *slot = if code == 1 { scale } else { -scale };
        }
        return;
    }
    let h = half_span(bits);
    for (slot, code) in out.iter_mut().zip(codes) {
        *slot = (f32::from(code) - h) * scale;
    }
}

/// Rejects a scale that no quantizer produces and that could decode to non-finite or
/// sign-flipped values.
pub(super) fn check_scale(scale: f32, bits: Bits) -> Result<()> {
    let h = if bits == Bits::B1 { 1.0 } else { half_span(bits) };
    if !(scale >= 0.0 && (scale * h).is_finite()) {
        return Err(malformed("quantized params", format!("absmax scale {scale} out of range")));
    }
    Ok(())
}

/// Worst-case `|x − x̂|` over `block` (see the module doc), plus rounding slack.
pub(super) fn error_bound(block: &[f32], bits: Bits, stochastic: bool) -> f32 {
    let a = absmax(block);
    let exact = match (bits, stochastic) {
        (Bits::B1, false) => {
            let m = f64::from(sign_scale(block, false));
            (f64::from(a) - m).max(m)
        }
        (Bits::B1, true) => 2.0 * f64::from(a),
        (_, false) => f64::from(step(a, bits)) / 2.0,
        (_, true) => f64::from(step(a, bits)),
    };
    round_up_f32(exact + rounding_slack(f64::from(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(block: &[f32], bits: Bits, seed: Option<u64>) -> Vec<f32> {
        let mut rng = seed.map(SplitMix64::new);
        let mut codes = Vec::new();
        let s = quantize_block(block, bits, rng.as_mut(), &mut codes);
        let mut packed = codes.clone();
        super::super::bits::pack_in_place(&mut packed, bits);
        let mut out = vec![f32::NAN; block.len()];
        dequantize_block(&mut Codes::new(&packed, bits, block.len()), s, bits, &mut out);
        out
    }

    #[test]
    fn outermost_levels_are_exactly_plus_minus_absmax() {
        for bits in [Bits::B2, Bits::B4, Bits::B8] {
            let x = [-3.0, 1.0, 3.0, 0.5];
            let y = round_trip(&x, bits, None);
            assert_eq!(y[0], -3.0, "{bits:?}");
            assert_eq!(y[2], 3.0, "{bits:?}");
        }
    }

    #[test]
    fn two_bit_grid_is_midrise() {
        // absmax 3 → s = 2, levels −3, −1, 1, 3.
        let y = round_trip(&[-3.0, -1.2, 0.1, 2.2, 3.0], Bits::B2, None);
        assert_eq!(y, vec![-3.0, -1.0, 1.0, 3.0, 3.0]);
    }

    #[test]
    fn sign_uses_mean_magnitude() {
        let y = round_trip(&[1.0, -3.0, 2.0, -2.0], Bits::B1, None);
        assert_eq!(y, vec![2.0, -2.0, 2.0, -2.0]);
    }

    #[test]
    fn zero_blocks_decode_to_zero_under_every_mode() {
        for bits in [Bits::B1, Bits::B2, Bits::B4, Bits::B8] {
            for seed in [None, Some(3)] {
                let y = round_trip(&[0.0, -0.0, 0.0], bits, seed);
                assert!(y.iter().all(|&v| v == 0.0), "{bits:?} {seed:?} {y:?}");
            }
        }
    }

    #[test]
    fn scale_near_f32_max_stays_decodable() {
        for bits in [Bits::B2, Bits::B4, Bits::B8] {
            let x = [f32::MAX, -f32::MAX, 1.0];
            let y = round_trip(&x, bits, None);
            assert!(y.iter().all(|v| v.is_finite()), "{bits:?} {y:?}");
            let bound = error_bound(&x, bits, false);
            for (a, b) in x.iter().zip(&y) {
                assert!((f64::from(*a) - f64::from(*b)).abs() <= f64::from(bound));
            }
            let mut codes = Vec::new();
            let s = quantize_block(&x, bits, None, &mut codes);
            assert!(check_scale(s, bits).is_ok());
        }
    }

    #[test]
    fn bad_scales_are_rejected() {
        assert!(check_scale(-1.0, Bits::B4).is_err());
        assert!(check_scale(f32::MAX, Bits::B8).is_err());
        assert!(check_scale(f32::NAN, Bits::B2).is_err());
        assert!(check_scale(f32::MAX, Bits::B1).is_ok());
        assert!(check_scale(0.0, Bits::B8).is_ok());
    }

    #[test]
    fn one_bit_stochastic_levels_are_absmax() {
        let y = round_trip(&[0.5, -2.0, 1.0], Bits::B1, Some(9));
        assert!(y.iter().all(|v| v.abs() == 2.0), "{y:?}");
        assert_eq!(y[1], -2.0);
    }
}
