//! Tests of the configured compressor: round trips of every preset, the byte format, the
//! DCT path, error feedback, the fused aggregate, and rejected configurations, inputs and
//! bytes.

use super::*;
use crate::quant::Bits;
use proptest::prelude::*;

fn signal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.next_unit_f32() * 2.0 - 1.0).collect()
}

fn presets() -> Vec<(&'static str, CompressorConfig)> {
    vec![
        ("sparseloco", CompressorConfig::sparseloco()),
        ("demo", CompressorConfig::demo()),
        ("demo-2bit", CompressorConfig::demo_2bit()),
        ("demo-sign", CompressorConfig::demo_sign()),
        (
            "global-int8",
            CompressorConfig {
                selection: Selection::Global { fraction: 0.02 },
                values: Some(QuantConfig::int8()),
                ..CompressorConfig::sparseloco()
            },
        ),
    ]
}

#[test]
fn every_preset_round_trips_exactly_what_was_sent() {
    for shape in [vec![8192], vec![130, 67], vec![64, 64, 3], vec![5]] {
        let n: usize = shape.iter().product();
        let x = signal(n, 1);
        for (name, cfg) in presets() {
            let mut c = Compressor::new(cfg, &shape).unwrap();
            let out = c.compress(&x).unwrap();
            assert_eq!(out.sent.len(), c.kept(), "{name} {shape:?}");
            let decoded = c.decode_sparse(&out.bytes).unwrap();
            assert_eq!(decoded, out.sent, "{name} {shape:?}: receiver must see what was sent");
            let dense = c.decompress(&out.bytes).unwrap();
            assert_eq!(dense, c.sparse_to_dense(&out.sent).unwrap());
        }
    }
}

#[test]
fn sparseloco_bytes_are_what_the_format_says() {
    let n = 4096 * 16;
    let mut c = Compressor::new(CompressorConfig::sparseloco(), &[n]).unwrap();
    let out = c.compress(&signal(n, 2)).unwrap();
    let kept: usize = 64 * 16;
    // Rice codes with r = 6: per gap g between kept offsets, (g >> 6) + 1 + 6 bits.
    let mut bits = 0usize;
    let mut next = 0usize;
    for &i in &out.sent.indices {
        let i = i as usize;
        // Each chunk's first gap counts from the chunk's start.
        next = next.max(i / 4096 * 4096);
        bits += ((i - next) >> 6) + 7;
        next = i + 1;
    }
    assert_eq!(out.sent.indices.len(), kept);
    let indices = 1 + bits.div_ceil(8);
    let q = QuantConfig::sparseloco_2bit();
    let blocks = kept.div_ceil(q.block);
    let values = 1 + 1 + 4 + 4 + blocks * 4 * 4 + kept * 2 / 8;
    assert_eq!(out.bytes.len(), HEADER_LEN + indices + values);
    // 1.56 % density at about 10 bits per entry (8 for the index, 2 for the value):
    // over 180× smaller than fp32.
    assert!(n * 4 / out.bytes.len() > 180, "{} bytes", out.bytes.len());
}

#[test]
fn last_selection_and_quantized_are_what_the_values_were_made_from() {
    let n = 4096 * 8;
    let x = signal(n, 3);
    let mut c = Compressor::new(CompressorConfig::sparseloco(), &[n]).unwrap();
    assert!(c.last_selection().is_empty());
    let out = c.compress(&x).unwrap();
    let sel = c.last_selection();
    assert_eq!(sel.indices, out.sent.indices);
    assert!(sel.indices.iter().zip(&sel.values).all(|(&i, &v)| x[i as usize] == v));
    let q = c.last_quantized().unwrap();
    assert_eq!(q.dequantize().unwrap(), out.sent.values);
    // Kept values of uniform noise sit just below ±1: every 2-bit level is used.
    let occupancy = crate::quant::bin_occupancy(q);
    assert!(occupancy.iter().all(|&k| k > sel.len() / 10), "{occupancy:?}");
    let raw = CompressorConfig { values: None, ..CompressorConfig::sparseloco() };
    let mut c = Compressor::new(raw, &[n]).unwrap();
    c.compress(&x).unwrap();
    assert!(c.last_quantized().is_none());
}

#[test]
fn unquantized_selection_is_the_exact_top_k() {
    let x = signal(4096 * 2, 3);
    let cfg = CompressorConfig { values: None, ..CompressorConfig::sparseloco() };
    let mut c = Compressor::new(cfg, &[x.len()]).unwrap();
    let out = c.compress(&x).unwrap();
    for (&i, &v) in out.sent.indices.iter().zip(&out.sent.values) {
        assert_eq!(v, x[i as usize]);
    }
    for (chunk, kept) in x.chunks(4096).zip(out.sent.values.chunks(64)) {
        let min_kept = kept.iter().map(|v| v.abs()).fold(f32::INFINITY, f32::min);
        assert!(chunk.iter().filter(|v| v.abs() > min_kept).count() < 64);
    }
}

#[test]
fn dct_concentrates_a_smooth_signal() {
    // A smooth ramp is nearly all low-frequency: 32 of 4096 DCT coefficients per tile
    // recover it far better than 32 of 4096 raw values could.
    let (r, c) = (128, 128);
    let x: Vec<f32> =
        (0..r * c).map(|i| ((i / c) as f32 * 0.01).sin() + (i % c) as f32 * 0.001).collect();
    let mut comp = Compressor::new(CompressorConfig::demo(), &[r, c]).unwrap();
    let out = comp.compress(&x).unwrap();
    let back = comp.decompress(&out.bytes).unwrap();
    let err: f32 = x.iter().zip(&back).map(|(a, b)| (a - b).powi(2)).sum::<f32>().sqrt();
    let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
    assert!(err / norm < 0.05, "relative error {}", err / norm);
}

#[test]
fn error_feedback_carries_everything_forward() {
    // Over rounds, what was sent plus what is left equals what went in, and the
    // residual stays bounded instead of growing.
    let n = 4096 * 4;
    let mut c = Compressor::new(CompressorConfig::sparseloco(), &[n]).unwrap();
    let mut residual = vec![0.0f32; n];
    let mut total_in = vec![0.0f64; n];
    let mut total_sent = vec![0.0f64; n];
    for round in 0..20 {
        let g = signal(n, 10 + round);
        for i in 0..n {
            residual[i] += g[i];
            total_in[i] += f64::from(g[i]);
        }
        let out = c.compress(&residual).unwrap();
        c.subtract_sent(&mut residual, &out.sent).unwrap();
        for (&i, &v) in out.sent.indices.iter().zip(&out.sent.values) {
            total_sent[i as usize] += f64::from(v);
        }
    }
    for i in 0..n {
        let gap = (total_in[i] - total_sent[i] - f64::from(residual[i])).abs();
        assert!(gap < 1e-4, "element {i}: gap {gap}");
    }
}

#[test]
fn decoder_rejects_bytes_that_disagree_with_its_configuration() {
    let x = signal(8192, 4);
    let mut c = Compressor::new(CompressorConfig::sparseloco(), &[8192]).unwrap();
    let good = c.compress(&x).unwrap().bytes;
    for cut in 0..good.len() {
        assert!(c.decode_sparse(&good[..cut]).is_err(), "truncated at {cut}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(c.decode_sparse(&trailing).is_err());
    let mut version = good.clone();
    version[0] = 9;
    assert!(c.decode_sparse(&version).unwrap_err().to_string().contains("version"));
    let mut tag = good.clone();
    tag[1] = TAG_GLOBAL;
    assert!(c.decode_sparse(&tag).is_err());
    let other = Compressor::new(CompressorConfig::sparseloco(), &[4096 * 3]).unwrap();
    assert!(other.decode_sparse(&good).unwrap_err().to_string().contains("elements"));
    let unquantized = Compressor::new(
        CompressorConfig { values: None, ..CompressorConfig::sparseloco() },
        &[8192],
    )
    .unwrap();
    assert!(unquantized.decode_sparse(&good).is_err());
}

#[test]
fn bad_configurations_and_inputs_are_errors() {
    assert!(Compressor::new(CompressorConfig::sparseloco(), &[0]).is_err());
    assert!(Compressor::new(CompressorConfig::sparseloco(), &[usize::MAX, 2]).is_err());
    let k_too_big = CompressorConfig {
        selection: Selection::PerChunk { k: 5000 },
        ..CompressorConfig::sparseloco()
    };
    assert!(Compressor::new(k_too_big, &[8192]).is_err());
    let bad_fraction = CompressorConfig {
        selection: Selection::Global { fraction: 1.5 },
        ..CompressorConfig::sparseloco()
    };
    assert!(Compressor::new(bad_fraction, &[8192]).is_err());
    let bad_quant = CompressorConfig {
        values: Some(QuantConfig { block: 0, ..QuantConfig::int8() }),
        ..CompressorConfig::sparseloco()
    };
    assert!(Compressor::new(bad_quant, &[8192]).is_err());
    let mut c = Compressor::new(CompressorConfig::demo(), &[64, 64]).unwrap();
    assert!(c.compress(&[0.0; 10]).is_err());
    let mut x = vec![0.0f32; 4096];
    x[17] = f32::NAN;
    assert!(matches!(c.compress(&x), Err(crate::KernelError::NonFinite { .. })));
}

#[test]
fn fused_aggregate_equals_scatter_mean_then_inverse_bit_for_bit() {
    let shapes = [vec![128, 192], vec![70, 130], vec![4096 + 100], vec![64, 64, 3], vec![7]];
    for shape in shapes {
        let n: usize = shape.iter().product();
        for cfg in [
            CompressorConfig::demo(),
            CompressorConfig::demo_sign(),
            CompressorConfig::sparseloco(),
        ] {
            let mut c = Compressor::new(cfg, &shape).unwrap();
            let sent: Vec<Sparse> =
                (0..4).map(|w| c.compress(&signal(n, 30 + w)).unwrap().sent).collect();
            let contribs: Vec<Contribution<'_>> = [3u32, 0, 2, 1]
                .iter()
                .zip(&sent)
                .map(|(&w, s)| Contribution { worker: w, sparse: s })
                .collect();
            for mode in [MeanOver::Contributors, MeanOver::AllWorkers(5)] {
                let mut scratch = ScatterScratch::new();
                let mut coeffs = vec![0.0f32; c.transform_len()];
                scatter_mean_with(&mut scratch, &contribs, mode, &mut coeffs).unwrap();
                let mut want = vec![0.0f32; n];
                c.inverse_transform(&coeffs, &mut want).unwrap();
                let mut got = vec![f32::NAN; n];
                c.aggregate(&mut scratch, &contribs, mode, &mut got).unwrap();
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{shape:?} {mode:?}"
                );
            }
            // Bad contributions are refused as by scatter_mean.
            let bad = Sparse { indices: vec![c.transform_len() as u32], values: vec![1.0] };
            let one = [Contribution { worker: 9, sparse: &bad }];
            let mut out = vec![0.0f32; n];
            assert!(c
                .aggregate(&mut ScatterScratch::new(), &one, MeanOver::Contributors, &mut out)
                .is_err());
            assert!(c
                .aggregate(
                    &mut ScatterScratch::new(),
                    &[],
                    MeanOver::Contributors,
                    &mut out[..n - 1]
                )
                .is_err());
        }
    }
}

#[test]
fn any_non_finite_input_is_refused_through_the_dct() {
    // The DCT path relies on top-k to see non-finite coefficients: every bad input
    // value, in any tile, of either transform path, must surface as an error.
    for shape in [vec![128, 192], vec![70, 130], vec![4096], vec![100], vec![3, 5]] {
        let n: usize = shape.iter().product();
        let mut c = Compressor::new(CompressorConfig::demo(), &shape).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, n / 3, n / 2 + 1, n - 1] {
                let mut x = signal(n, 9);
                x[at] = bad;
                let r = c.compress(&x);
                assert!(
                    matches!(r, Err(crate::KernelError::NonFinite { .. })),
                    "{shape:?} {bad} at {at}: {r:?}"
                );
            }
        }
        // Finite but so large that the transform overflows: refused, not sent as inf.
        let mut x = signal(n, 9);
        x.iter_mut().take(64).for_each(|v| *v = f32::MAX);
        assert!(c.compress(&x).is_err(), "{shape:?}: overflow");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_configs_round_trip(
        rows in 1usize..90, cols in 1usize..300, k in 1usize..8,
        dct in any::<bool>(), bits in 0usize..5, seed in any::<u64>(),
    ) {
        let values = match bits {
            0 => None,
            1 => Some(QuantConfig::sign_1bit()),
            2 => Some(QuantConfig::sparseloco_2bit()),
            3 => Some(QuantConfig { bits: Bits::B4, ..QuantConfig::int4() }),
            _ => Some(QuantConfig::int8()),
        };
        let cfg = CompressorConfig {
            transform: if dct { Transform::Dct { chunk: 16 } } else { Transform::None },
            chunk_len: 64,
            selection: Selection::PerChunk { k },
            values,
        };
        let Ok(mut c) = Compressor::new(cfg, &[rows, cols]) else {
            // Only possible when k exceeds a small DCT tile.
            prop_assert!(dct);
            return Ok(());
        };
        let x = signal(rows * cols, seed);
        let out = c.compress(&x).unwrap();
        prop_assert_eq!(c.decode_sparse(&out.bytes).unwrap(), out.sent);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let c = Compressor::new(CompressorConfig::sparseloco(), &[300]).unwrap();
        let _ = c.decode_sparse(&bytes);
    }
}

#[test]
fn finite_input_too_large_for_the_dct_is_reported_as_an_overflow() {
    for shape in [vec![4096], vec![128, 192], vec![70, 130]] {
        let n: usize = shape.iter().product();
        for cfg in
            [CompressorConfig::demo(), CompressorConfig::demo_2bit(), CompressorConfig::demo_sign()]
        {
            let mut c = Compressor::new(cfg, &shape).unwrap();
            let limit = c.dct.as_ref().unwrap().max_magnitude();
            // Finite ±3e38 (the sweep's input): an overflow, named as one, with the limit.
            let mut x = signal(n, 4);
            x[0] = 3e38;
            x[1] = -3e38;
            match c.compress(&x) {
                Err(KernelError::TransformOverflow { max_abs, limit: l, .. }) => {
                    assert_eq!((max_abs, l), (3e38, limit), "{shape:?}");
                }
                other => panic!("{shape:?}: {other:?}"),
            }
            let e = c.compress(&x).unwrap_err().to_string();
            assert!(e.contains("too large for the DCT in f32") && e.contains("3.000e38"), "{e}");
            // The largest magnitude it claims to handle goes through, every value finite.
            let x: Vec<f32> = signal(n, 5).iter().map(|v| v.signum() * limit).collect();
            let out = c.compress(&x).unwrap();
            assert!(out.sent.values.iter().all(|v| v.is_finite()), "{shape:?}");
            let back = c.decompress(&out.bytes).unwrap();
            assert!(back.iter().all(|v| v.is_finite()), "{shape:?}");
            // A NaN or infinity is still that, at its position in the input.
            let mut x = signal(n, 6);
            x[n / 2] = f32::NEG_INFINITY;
            assert!(
                matches!(c.compress(&x), Err(KernelError::NonFinite { index, .. }) if index == n / 2),
                "{shape:?}"
            );
        }
    }
}

#[test]
fn quantizer_scales_stay_finite_for_the_largest_finite_inputs() {
    // No transform: ±f32::MAX itself reaches the quantizers, whose scales and levels must
    // stay finite (absmax nudges its step down, the codebook clamps to the data range).
    let n = 8192;
    let patterns: [Vec<f32>; 3] = [
        (0..n).map(|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX }).collect(),
        (0..n)
            .map(|i| if i < 2 { f32::MAX * if i == 0 { 1.0 } else { -1.0 } } else { 0.0 })
            .collect(),
        vec![f32::MAX; n],
    ];
    let quants = [
        QuantConfig::sparseloco_2bit(),
        QuantConfig::int8(),
        QuantConfig::int4(),
        QuantConfig::sign_1bit(),
    ];
    for q in quants {
        let cfg = CompressorConfig { values: Some(q), ..CompressorConfig::sparseloco() };
        let mut c = Compressor::new(cfg, &[n]).unwrap();
        for x in &patterns {
            let out = c.compress(x).unwrap();
            let back = c.decompress(&out.bytes).unwrap();
            assert!(back.iter().all(|v| v.is_finite()), "{q:?}");
        }
    }
}
