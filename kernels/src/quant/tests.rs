//! Tests of the quantizers: the documented error bound, round trips and golden bytes,
//! stochastic rounding, the codebooks, and the rejection of bad configurations, input and
//! bytes.

use super::*;
use crate::error::KernelError;
use proptest::collection::vec;
use proptest::prelude::*;

const ALL_BITS: [Bits; 4] = [Bits::B1, Bits::B2, Bits::B4, Bits::B8];

fn cfg(bits: Bits, scheme: Scheme, block: usize, rounding: Rounding) -> QuantConfig {
    QuantConfig { bits, scheme, block, rounding }
}

fn encode(q: &Quantized) -> Vec<u8> {
    let mut buf = Vec::new();
    q.encode_into(&mut buf);
    buf
}

/// Blocks of the shapes that stress a quantizer: plain, with outliers, constant, all
/// zero, negative-only, bimodal, mixed 1e30/1e-30 magnitudes, values on exact ties.
fn values() -> impl Strategy<Value = Vec<f32>> {
    let magnitude =
        prop_oneof![Just(1.0f32), Just(1e-30), Just(1e30), Just(3.5e-3), Just(7e5), Just(1e-40)];
    (0u8..8, magnitude, vec(-1.0f32..1.0, 0..160), 1usize..20).prop_map(
        |(kind, mag, base, stride)| {
            let n = base.len();
            match kind {
                0 => base.iter().map(|x| x * mag).collect(),
                1 => base
                    .iter()
                    .enumerate()
                    .map(|(i, x)| if i % stride == 0 { x * mag * 1000.0 } else { x * mag })
                    .collect(),
                2 => vec![base.first().copied().unwrap_or(0.5) * mag; n],
                3 => vec![0.0; n],
                4 => base.iter().map(|x| -(x.abs() * mag)).collect(),
                5 => base.iter().map(|x| (x.signum() + 0.05 * x) * mag).collect(),
                6 => base
                    .iter()
                    .enumerate()
                    .map(|(i, x)| if i % stride == 0 { x * 1e30 } else { x * 1e-30 })
                    .collect(),
                _ => base.iter().map(|x| (x * 4.0).round() / 4.0 * mag).collect(),
            }
        },
    )
}

fn config() -> impl Strategy<Value = QuantConfig> {
    let scheme = prop_oneof![
        Just(Scheme::Absmax),
        prop_oneof![Just(0.25f32), Just(1.0), Just(3.0), Just(10.0)]
            .prop_map(|c| Scheme::Codebook { clip_sigmas: c }),
        Just(Scheme::SignLloyd),
        Just(Scheme::Fp4),
    ];
    (0usize..4, scheme, 1usize..70, any::<u64>(), any::<bool>()).prop_map(
        |(b, scheme, block, seed, stochastic)| {
            let rounding = if stochastic && scheme == Scheme::Absmax {
                Rounding::Stochastic { seed }
            } else {
                Rounding::Nearest
            };
            // FP4 exists only at 4 bits.
            let bits = if scheme == Scheme::Fp4 { Bits::B4 } else { ALL_BITS[b] };
            cfg(bits, scheme, block, rounding)
        },
    )
}

/// The codebook's per-element bound `w + max(0, |x − μ| − cσ)`, recomputed here
/// independently of the quantizer, plus the documented slack.
fn codebook_element_bound(block: &[f32], x: f32, bits: Bits, c: f32) -> f64 {
    let n = block.len() as f64;
    let mean = block.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = block.iter().map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean)).sum::<f64>() / n;
    let cs = f64::from(c) * var.sqrt();
    let absmax = block.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
    let w = 2.0 * cs / f64::from(1u32 << bits.count());
    w + ((f64::from(x) - mean).abs() - cs).max(0.0) + rounding_slack(absmax)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]
    #[test]
    fn every_element_is_within_the_documented_bound(x in values(), cfg in config()) {
        let q = quantize(&x, &cfg).unwrap();
        let y = q.dequantize().unwrap();
        prop_assert_eq!(y.len(), x.len());
        for (xb, yb) in x.chunks(cfg.block).zip(y.chunks(cfg.block)) {
            let bound = f64::from(cfg.error_bound(xb));
            for (&a, &b) in xb.iter().zip(yb) {
                prop_assert!(b.is_finite());
                let err = (f64::from(a) - f64::from(b)).abs();
                prop_assert!(err <= bound, "{cfg:?}: {a} -> {b}, err {err} > {bound}");
                if let Scheme::Codebook { clip_sigmas } = cfg.scheme {
                    let own = codebook_element_bound(xb, a, cfg.bits, clip_sigmas);
                    prop_assert!(err <= own, "{cfg:?}: {a} -> {b}, err {err} > {own}");
                }
                if cfg.scheme == Scheme::SignLloyd {
                    // The sign is kept: a negative never decodes above 0, nor the rest below.
                    prop_assert!(if a < 0.0 { b <= 0.0 } else { b >= 0.0 }, "{a} -> {b}");
                }
            }
        }
        let occupancy = bin_occupancy(&q);
        prop_assert_eq!(occupancy.len(), 1 << cfg.bits.count());
        prop_assert_eq!(occupancy.iter().sum::<usize>(), x.len());
    }

    #[test]
    fn encode_decode_round_trips(x in values(), cfg in config(), junk in vec(any::<u8>(), 0..5)) {
        let q = quantize(&x, &cfg).unwrap();
        let mut buf = junk.clone();
        q.encode_into(&mut buf);
        prop_assert_eq!(buf.len() - junk.len(), q.encoded_len());
        buf.extend_from_slice(&junk);
        let (back, used) = Quantized::decode(&buf[junk.len()..], x.len()).unwrap();
        prop_assert_eq!(used, q.encoded_len());
        prop_assert_eq!(&back, &q);
        prop_assert_eq!(back.dequantize().unwrap(), q.dequantize().unwrap());
        // Same input, same configuration: same bytes.
        prop_assert_eq!(encode(&quantize(&x, &cfg).unwrap()), encode(&q));
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..300), max_len in 0usize..1000) {
        let _ = Quantized::decode(&bytes, max_len);
    }

    #[test]
    fn plausible_headers_never_panic_and_accepted_payloads_are_canonical(
        tag in 0u8..4, bits in 0u8..10, len in 0u32..40, block in 0u32..12,
        tail in vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = vec![tag, bits];
        bytes.extend_from_slice(&len.to_le_bytes());
        bytes.extend_from_slice(&block.to_le_bytes());
        bytes.extend_from_slice(&tail);
        if let Ok((q, used)) = Quantized::decode(&bytes, 64) {
            let y = q.dequantize().unwrap();
            prop_assert!(y.iter().all(|v| v.is_finite()));
            prop_assert_eq!(encode(&q), bytes[..used].to_vec());
        }
    }
}

#[test]
fn golden_bytes() {
    let q = quantize(
        &[-3.0, -1.2, 0.1, 2.2, 3.0],
        &cfg(Bits::B2, Scheme::Absmax, 64, Rounding::Nearest),
    )
    .unwrap();
    let mut expected = vec![0, 2, 5, 0, 0, 0, 64, 0, 0, 0];
    expected.extend_from_slice(&2.0f32.to_le_bytes());
    expected.extend_from_slice(&[0b11_10_01_00, 0b11]);
    assert_eq!(encode(&q), expected);
    assert_eq!(q.dequantize().unwrap(), vec![-3.0, -1.0, 1.0, 3.0, 3.0]);
}

#[test]
fn config_validation() {
    for preset in [
        QuantConfig::sparseloco_2bit(),
        QuantConfig::sparseloco_2bit_equal_bins(),
        QuantConfig::int8(),
        QuantConfig::int4(),
        QuantConfig::fp4(),
        QuantConfig::sign_1bit(),
    ] {
        preset.validate().unwrap();
    }
    assert!(QuantConfig { bits: Bits::B2, ..QuantConfig::fp4() }.validate().is_err());
    let stochastic = Rounding::Stochastic { seed: 1 };
    assert!(QuantConfig { rounding: stochastic, ..QuantConfig::fp4() }.validate().is_err());
    let ok = QuantConfig::int8();
    assert!(QuantConfig { block: 0, ..ok }.validate().is_err());
    for c in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let bad = QuantConfig { scheme: Scheme::Codebook { clip_sigmas: c }, ..ok };
        assert!(bad.validate().is_err(), "{c}");
    }
    let stochastic_codebook = QuantConfig {
        rounding: Rounding::Stochastic { seed: 1 },
        ..QuantConfig::sparseloco_2bit()
    };
    assert!(matches!(
        stochastic_codebook.validate(),
        Err(KernelError::InvalidParameter { name: "rounding", .. })
    ));
    assert!(quantize(&[1.0, 2.0], &stochastic_codebook).is_err());
    let stochastic_equal_bins = QuantConfig {
        rounding: Rounding::Stochastic { seed: 1 },
        ..QuantConfig::sparseloco_2bit_equal_bins()
    };
    assert!(stochastic_equal_bins.validate().is_err());
    for b in ALL_BITS {
        assert_eq!(Bits::from_count(b.count()).unwrap(), b);
    }
    for n in [0, 3, 5, 16, u32::MAX] {
        assert!(Bits::from_count(n).is_err());
    }
}

#[test]
fn non_finite_input_is_rejected_and_output_untouched() {
    let mut out = quantize(&[1.0, 2.0], &QuantConfig::int8()).unwrap();
    let before = out.clone();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let err = quantize_into(&[1.0, bad, 3.0], &QuantConfig::int4(), &mut out).unwrap_err();
        assert!(matches!(err, KernelError::NonFinite { index: 1, .. }), "{err:?}");
        assert_eq!(out, before);
    }
}

#[test]
fn empty_input_round_trips() {
    for preset in [QuantConfig::sparseloco_2bit(), QuantConfig::int8(), QuantConfig::sign_1bit()] {
        let q = quantize(&[], &preset).unwrap();
        assert!(q.codes.is_empty() && q.params.is_empty());
        let bytes = encode(&q);
        assert_eq!(bytes.len(), q.encoded_len());
        let (back, used) = Quantized::decode(&bytes, 0).unwrap();
        assert_eq!((back.clone(), used), (q, bytes.len()));
        assert!(back.dequantize().unwrap().is_empty());
    }
    let default = Quantized::default();
    let (back, _) = Quantized::decode(&encode(&default), 0).unwrap();
    assert_eq!(back, default);
}

#[test]
fn quantize_into_reuses_allocations() {
    let x: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
    for preset in [QuantConfig::sparseloco_2bit(), QuantConfig::int4()] {
        let mut q = Quantized::default();
        quantize_into(&x, &preset, &mut q).unwrap();
        let (codes, params) = (q.codes.as_ptr(), q.params.as_ptr());
        quantize_into(&x, &preset, &mut q).unwrap();
        assert_eq!((q.codes.as_ptr(), q.params.as_ptr()), (codes, params));
        assert_eq!(q, quantize(&x, &preset).unwrap());
    }
}

#[test]
fn dequantize_checks_the_output_length_and_the_fields() {
    let q = quantize(&[1.0, -2.0, 3.0], &QuantConfig::int4()).unwrap();
    assert!(q.dequantize_into(&mut [0.0; 2]).is_err());
    assert!(q.dequantize_into(&mut [0.0; 4]).is_err());
    let mut short = q.clone();
    short.codes.pop();
    assert!(short.dequantize().is_err());
    let mut extra = q.clone();
    extra.params.push(1.0);
    assert!(extra.dequantize().is_err());
    let mut zero_block = q.clone();
    zero_block.block = 0;
    assert!(zero_block.dequantize().is_err());
    let mut nan = q;
    nan.params[0] = f32::NAN;
    assert!(matches!(nan.dequantize(), Err(KernelError::NonFinite { .. })));
}

fn stochastic(bits: Bits, seed: u64, block: usize) -> QuantConfig {
    cfg(bits, Scheme::Absmax, block, Rounding::Stochastic { seed })
}

#[test]
fn stochastic_rounding_is_reproducible_and_seed_dependent() {
    let x: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1013) as f32 - 506.3) / 97.0).collect();
    for bits in ALL_BITS {
        let a = encode(&quantize(&x, &stochastic(bits, 42, 128)).unwrap());
        let b = encode(&quantize(&x, &stochastic(bits, 42, 128)).unwrap());
        let c = encode(&quantize(&x, &stochastic(bits, 43, 128)).unwrap());
        assert_eq!(a, b, "{bits:?}");
        assert_ne!(a, c, "{bits:?}");
    }
}

#[test]
fn stochastic_rounding_is_unbiased() {
    let x: Vec<f32> = (0..64).map(|i| ((i * 29 % 64) as f32 - 31.7) / 32.0).collect();
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let trials = 2000;
    for bits in ALL_BITS {
        let mut sum = vec![0.0f64; x.len()];
        let mut nearest_differs = false;
        for seed in 0..trials {
            let y = quantize(&x, &stochastic(bits, seed, 64)).unwrap().dequantize().unwrap();
            for (s, v) in sum.iter_mut().zip(&y) {
                *s += f64::from(*v);
            }
        }
        // One draw has spread at most one step (2·absmax at 1 bit); the mean of
        // `trials` draws, ~step/(2·√trials), must sit well inside 5% of a step.
        let step = if bits == Bits::B1 {
            2.0 * f64::from(absmax)
        } else {
            2.0 * f64::from(absmax) / f64::from((1u32 << bits.count()) - 1)
        };
        let nearest = quantize(&x, &cfg(bits, Scheme::Absmax, 64, Rounding::Nearest))
            .unwrap()
            .dequantize()
            .unwrap();
        for ((&v, s), n) in x.iter().zip(&sum).zip(&nearest) {
            let mean = s / trials as f64;
            assert!((mean - f64::from(v)).abs() < 0.05 * step, "{bits:?}: {v} mean {mean}");
            nearest_differs |= (f64::from(*n) - f64::from(v)).abs() > 0.05 * step;
        }
        // The test has teeth: nearest rounding would fail it.
        assert!(nearest_differs, "{bits:?}");
    }
}

#[test]
fn one_bit_codebook_recovers_two_modes() {
    let x: Vec<f32> = (0..999)
        .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 } + ((i * 13 % 21) as f32 - 10.0) / 200.0)
        .collect();
    let q =
        quantize(&x, &cfg(Bits::B1, Scheme::Codebook { clip_sigmas: 3.0 }, 333, Rounding::Nearest))
            .unwrap();
    let y = q.dequantize().unwrap();
    for (a, b) in x.iter().zip(&y) {
        assert!((b - a.signum()).abs() < 0.06, "{a} -> {b}");
    }
    assert_eq!(bin_occupancy(&q), vec![333, 666]);
}

/// Kept values of a top-64-of-4096 selection of `n_chunks` chunks drawn by `draw`.
fn top_k_values(n_chunks: usize, mut draw: impl FnMut() -> f32) -> Vec<f32> {
    let mut kept = Vec::new();
    for _ in 0..n_chunks {
        let mut chunk: Vec<f32> = (0..4096).map(|_| draw()).collect();
        chunk.sort_by(|a, b| b.abs().total_cmp(&a.abs()));
        kept.extend_from_slice(&chunk[..64]);
    }
    kept
}

fn rel_error(x: &[f32], cfg: &QuantConfig) -> (f64, Vec<usize>) {
    let q = quantize(x, cfg).unwrap();
    let y = q.dequantize().unwrap();
    let err: f64 = x.iter().zip(&y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let norm: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    ((err / norm).sqrt(), bin_occupancy(&q))
}

#[test]
fn two_bit_preset_uses_every_bin_on_top_k_values() {
    // Top-k of bounded, light-tailed values (AdamW's updates summed over a round look like
    // this): the kept magnitudes crowd just above the threshold, the equal bins over
    // μ ± 3σ leave the outer two empty, and the sign/Lloyd levels use all four.
    let mut rng = SplitMix64::new(5);
    let mut uniform = || 2.0 * rng.next_unit_f32() - 1.0;
    let x = top_k_values(256, || uniform() + uniform() + uniform());
    let (lloyd, occupancy) = rel_error(&x, &QuantConfig::sparseloco_2bit());
    let (equal, equal_occupancy) = rel_error(&x, &QuantConfig::sparseloco_2bit_equal_bins());
    assert_eq!(occupancy.iter().sum::<usize>(), x.len());
    assert!(occupancy.iter().all(|&n| n > x.len() / 10), "{occupancy:?}");
    assert!(equal_occupancy[0] + equal_occupancy[3] < x.len() / 100, "{equal_occupancy:?}");
    assert!(lloyd < 0.75 * equal, "sign/Lloyd {lloyd} vs equal bins {equal}");
    // Heavy tails (Laplace): still every bin, and no worse.
    let mut rng = SplitMix64::new(6);
    let x = top_k_values(256, || {
        let e = -(1.0 - rng.next_unit_f32()).ln();
        if rng.next_unit_f32() < 0.5 {
            -e
        } else {
            e
        }
    });
    let (lloyd, occupancy) = rel_error(&x, &QuantConfig::sparseloco_2bit());
    let (equal, _) = rel_error(&x, &QuantConfig::sparseloco_2bit_equal_bins());
    assert!(occupancy.iter().all(|&n| n > x.len() / 20), "{occupancy:?}");
    assert!(lloyd < equal, "sign/Lloyd {lloyd} vs equal bins {equal}");
}

#[test]
fn sign_lloyd_golden_bytes() {
    // Magnitudes {1, 3} per sign: two exact levels each.
    let q = quantize(
        &[1.0, -3.0, 3.0, -1.0, 1.0],
        &cfg(Bits::B2, Scheme::SignLloyd, 64, Rounding::Nearest),
    )
    .unwrap();
    let mut expected = vec![2, 2, 5, 0, 0, 0, 64, 0, 0, 0];
    for e in [-3.0f32, -1.0, 1.0, 3.0] {
        expected.extend_from_slice(&e.to_le_bytes());
    }
    expected.extend_from_slice(&[0b01_11_00_10, 0b10]);
    assert_eq!(encode(&q), expected);
    assert_eq!(q.dequantize().unwrap(), vec![1.0, -3.0, 3.0, -1.0, 1.0]);
    // Entries out of order or of the wrong sign are refused.
    for (at, v) in [(14, -4.0f32), (22, -0.5)] {
        let mut bad = expected.clone();
        bad[at..at + 4].copy_from_slice(&v.to_le_bytes());
        let err = Quantized::decode(&bad, 5).unwrap_err();
        assert!(err.to_string().contains("ascend"), "{err}");
    }
}

#[test]
fn every_truncation_is_rejected() {
    let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 3.0).collect();
    for preset in [
        QuantConfig::sparseloco_2bit(),
        QuantConfig::sparseloco_2bit_equal_bins(),
        QuantConfig { block: 8, ..QuantConfig::sparseloco_2bit() },
        QuantConfig { block: 5, ..QuantConfig::int4() },
        QuantConfig { block: 16, ..QuantConfig::sign_1bit() },
        QuantConfig { block: 10, ..QuantConfig::int8() },
    ] {
        let bytes = encode(&quantize(&x, &preset).unwrap());
        assert!(Quantized::decode(&bytes, 37).is_ok());
        for cut in 0..bytes.len() {
            assert!(Quantized::decode(&bytes[..cut], 37).is_err(), "{preset:?} cut {cut}");
        }
    }
}

#[test]
fn corrupt_headers_and_params_are_rejected() {
    let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 3.0).collect();
    let absmax = encode(&quantize(&x, &QuantConfig { block: 8, ..QuantConfig::int4() }).unwrap());
    let codebook = encode(
        &quantize(&x, &QuantConfig { block: 8, ..QuantConfig::sparseloco_2bit_equal_bins() })
            .unwrap(),
    );
    let sign_lloyd =
        encode(&quantize(&x, &QuantConfig { block: 8, ..QuantConfig::sparseloco_2bit() }).unwrap());
    for bytes in [&absmax, &codebook, &sign_lloyd] {
        for tag in [3u8, 7, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[0] = tag;
            assert!(Quantized::decode(&b, 37).is_err(), "tag {tag}");
        }
        for bits in [0u8, 3, 5, 7, 16, 0xff] {
            let mut b = bytes.clone();
            b[1] = bits;
            assert!(Quantized::decode(&b, 37).is_err(), "bits {bits}");
        }
        assert!(Quantized::decode(bytes, 36).is_err());
        let mut b = bytes.clone();
        b[6..10].copy_from_slice(&0u32.to_le_bytes());
        assert!(Quantized::decode(&b, 37).is_err(), "block 0");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut b = bytes.clone();
            b[14..18].copy_from_slice(&bad.to_le_bytes());
            assert!(
                matches!(Quantized::decode(&b, 37), Err(KernelError::NonFinite { index: 1, .. })),
                "{bad}"
            );
        }
        // 37 codes of 2 or 4 bits leave padding in the last byte.
        let mut b = bytes.clone();
        *b.last_mut().unwrap() |= 0x80;
        assert!(Quantized::decode(&b, 37).is_err(), "padding");
    }
    for bad_scale in [-1.0f32, f32::MAX] {
        let mut b = absmax.clone();
        b[10..14].copy_from_slice(&bad_scale.to_le_bytes());
        assert!(Quantized::decode(&b, 37).is_err(), "scale {bad_scale}");
    }
}

#[test]
fn huge_len_is_rejected_before_allocating() {
    for tag in [0u8, 1, 2] {
        let mut b = vec![tag, 8];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[0; 16]);
        let err = Quantized::decode(&b, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        // Even when the caller allows it, the header's ~1 TiB claim is checked against
        // the bytes present before anything is allocated.
        let err = Quantized::decode(&b, usize::MAX).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}
