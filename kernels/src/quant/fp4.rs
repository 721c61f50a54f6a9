//! FP4 (E2M1) quantization, the 4-bit floating point Streaming DiLoCo sends its outer
//! gradients in (Douillard et al. 2025): a sign bit and one of eight magnitudes
//! `{0, 0.5, 1, 1.5, 2, 3, 4, 6}`, scaled per block so that the block's largest magnitude
//! `a` maps to 6 (`s = a/6`, stored as f32, as OCP's MX formats scale FP4 per block).
//!
//! Against absmax int4 (sixteen evenly spaced levels over `±a`), FP4 spends its levels
//! near zero, where most values of a pseudo-gradient are: steps of `a/12` below `a/3`
//! against int4's `2a/15` everywhere, at the cost of steps of `a/3` between `2a/3` and `a`.
//!
//! Codes: bit 3 is the sign, bits 0–2 index the magnitude. Zero is code 0 only: the
//! encoder never writes a negative zero (code 8) and the decoder rejects it, so every
//! reconstruction has one encoding. Nearest rounding (ties to the smaller magnitude):
//! `|x − x̂| ≤ s`, half the widest gap (4 to 6); an all-zero block has scale 0.

use super::bits::Codes;
use super::{round_up_f32, rounding_slack};
use crate::error::{malformed, Result};

/// The E2M1 magnitudes, in units of the block scale.
pub(super) const LEVELS: [f32; 8] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];

/// The code of negative zero, which no encoder writes.
const NEGATIVE_ZERO: u8 = 8;

fn absmax(block: &[f32]) -> f32 {
    block.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

/// The block scale `a/6`, nudged down (by ulps) where `6·s` would overflow f32.
fn scale(a: f32) -> f32 {
    let mut s = (f64::from(a) / 6.0) as f32;
    while s > 0.0 && !(s * 6.0).is_finite() {
        s = f32::from_bits(s.to_bits() - 1);
    }
    s
}

/// The index of the nearest level to `t ≥ 0` (in scale units), ties to the smaller.
fn nearest(t: f64) -> u8 {
    let mut best = 0u8;
    for (i, &l) in LEVELS.iter().enumerate().skip(1) {
        let mid = (f64::from(LEVELS[i - 1]) + f64::from(l)) / 2.0;
        if t > mid {
            best = i as u8;
        }
    }
    best
}

/// Quantizes one block, pushing one code per value onto `codes` (packed later) and
/// returning the block's scale.
pub(super) fn quantize_block(block: &[f32], codes: &mut Vec<u8>) -> f32 {
    let s = scale(absmax(block));
    if s == 0.0 {
        codes.extend(std::iter::repeat_n(0u8, block.len()));
        return 0.0;
    }
    let s64 = f64::from(s);
    for &x in block {
        let m = nearest(f64::from(x).abs() / s64);
        codes.push(if x < 0.0 && m > 0 { m | NEGATIVE_ZERO } else { m });
    }
    s
}

/// Writes the reconstruction of one block, reading `out.len()` codes from `codes`.
pub(super) fn dequantize_block(codes: &mut Codes<'_>, scale: f32, out: &mut [f32]) {
    for (slot, code) in out.iter_mut().zip(codes) {
        let m = LEVELS[usize::from(code & 7)] * scale;
        *slot = if code & NEGATIVE_ZERO != 0 { -m } else { m };
    }
}

/// Rejects a scale no quantizer produces (negative, non-finite, or one whose top level
/// overflows).
pub(super) fn check_scale(scale: f32) -> Result<()> {
    if !(scale >= 0.0 && (scale * 6.0).is_finite()) {
        return Err(malformed("quantized params", format!("fp4 scale {scale} out of range")));
    }
    Ok(())
}

/// Rejects negative zero, the one code no encoder writes.
pub(super) fn check_codes(codes: Codes<'_>) -> Result<()> {
    match codes.enumerate().find(|&(_, c)| c == NEGATIVE_ZERO) {
        Some((i, _)) => {
            Err(malformed("quantized codes", format!("fp4 code {i} is a negative zero")))
        }
        None => Ok(()),
    }
}

/// Worst-case `|x − x̂|` over `block`: the scale (half the gap between 4 and 6), plus
/// rounding slack.
pub(super) fn error_bound(block: &[f32]) -> f32 {
    let a = absmax(block);
    round_up_f32(f64::from(scale(a)) + rounding_slack(f64::from(a)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::bits::pack_in_place;
    use crate::quant::Bits;

    fn round_trip(block: &[f32]) -> Vec<f32> {
        let mut codes = Vec::new();
        let s = quantize_block(block, &mut codes);
        pack_in_place(&mut codes, Bits::B4);
        let mut out = vec![f32::NAN; block.len()];
        dequantize_block(&mut Codes::new(&codes, Bits::B4, block.len()), s, &mut out);
        out
    }

    #[test]
    fn every_e2m1_value_times_the_scale_comes_back_exactly() {
        // absmax 12 → s = 2: the representable values are ±2·{0, 0.5, …, 6}.
        let x: Vec<f32> = LEVELS.iter().flat_map(|&l| [2.0 * l, -2.0 * l]).collect();
        assert_eq!(round_trip(&x), x);
    }

    #[test]
    fn values_round_to_the_nearest_level_ties_down() {
        // s = 1 (absmax 6): 0.2 → 0, 0.25 → 0 (tie), 0.3 → 0.5, 2.4 → 2, 2.6 → 3, 5.1 → 6, −4.9 → −4.
        let y = round_trip(&[6.0, 0.2, 0.25, 0.3, 2.4, 2.6, 5.1, -4.9, -0.1]);
        assert_eq!(y, vec![6.0, 0.0, 0.0, 0.5, 2.0, 3.0, 6.0, -4.0, 0.0]);
        assert!(y[8].is_sign_positive(), "small negatives become +0, never −0");
    }

    #[test]
    fn the_error_stays_within_the_bound_and_finer_than_int4_near_zero() {
        let mut rng = crate::rng::SplitMix64::new(4);
        let x: Vec<f32> = (0..4096).map(|_| (rng.next_unit_f32() - 0.5).powi(3) * 8.0).collect();
        let y = round_trip(&x);
        let bound = error_bound(&x);
        assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() <= bound));
        // Heavy-tailed (cubed) values: most sit near zero, where FP4's steps are finer.
        let cfg = crate::quant::QuantConfig::int4();
        let int4 = crate::quant::quantize(&x, &cfg).unwrap().dequantize().unwrap();
        let err = |z: &[f32]| x.iter().zip(z).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>();
        assert!(err(&y) < err(&int4), "fp4 {} against int4 {}", err(&y), err(&int4));
    }

    #[test]
    fn zero_blocks_and_bad_scales() {
        assert_eq!(round_trip(&[0.0, -0.0, 0.0]), vec![0.0; 3]);
        assert!(check_scale(-1.0).is_err() && check_scale(f32::NAN).is_err());
        assert!(check_scale(f32::MAX).is_err(), "6·s overflows");
        assert!(check_scale(0.0).is_ok() && check_scale(1.0).is_ok());
        let y = round_trip(&[f32::MAX, -f32::MAX]);
        assert!(y.iter().all(|v| v.is_finite()), "{y:?}");
    }
}
