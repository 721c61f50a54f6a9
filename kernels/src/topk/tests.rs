//! Tests of exact top-k: against a sorting reference, per chunk and global (the sampled
//! path included), ties and zeros to the lower index, scratch reuse, and bad input.

use super::*;
use crate::rng::SplitMix64;
use proptest::prelude::*;

/// Positions of the top k by (|x| descending, index ascending), in index order.
fn reference_positions(x: &[f32], k: usize) -> Vec<usize> {
    let mut pos: Vec<usize> = (0..x.len()).collect();
    pos.sort_by(|&a, &b| x[b].abs().total_cmp(&x[a].abs()).then(a.cmp(&b)));
    pos.truncate(k);
    pos.sort_unstable();
    pos
}

fn reference_global(x: &[f32], k: usize) -> Sparse {
    let pos = reference_positions(x, k);
    Sparse {
        indices: pos.iter().map(|&i| i as u32).collect(),
        values: pos.iter().map(|&i| x[i]).collect(),
    }
}

fn reference_per_chunk(x: &[f32], spec: &ChunkSpec) -> Sparse {
    let mut out = Sparse::default();
    for c in 0..spec.num_chunks() {
        let range = spec.chunk_range(c);
        for p in reference_positions(&x[range.clone()], spec.k_for(range.len())) {
            out.indices.push((range.start + p) as u32);
            out.values.push(x[range.start + p]);
        }
    }
    out
}

/// Equality that tells -0.0 from +0.0, since the original signed values must come back.
fn assert_same(got: &Sparse, want: &Sparse) {
    assert_eq!(got.indices, want.indices);
    let bits = |s: &Sparse| s.values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(got), bits(want));
}

fn check_global(x: &[f32], k: usize) {
    let mut out = Sparse::default();
    topk_global(x, k, &mut out).unwrap();
    assert_same(&out, &reference_global(x, k));
    assert!(out.indices.windows(2).all(|w| w[0] < w[1]));
}

fn check_per_chunk(x: &[f32], chunk_len: usize, k: usize) {
    let spec = ChunkSpec::new(x.len(), chunk_len, k).unwrap();
    let mut out = Sparse::default();
    topk_per_chunk(x, &spec, &mut out).unwrap();
    assert_same(&out, &reference_per_chunk(x, &spec));
    assert_eq!(out.len(), spec.total_k());
}

fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let u1 = r.next_unit_f32().max(1e-7);
            let u2 = r.next_unit_f32();
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn tiny_set(n: usize, seed: u64) -> Vec<f32> {
    const SET: [f32; 6] = [-2.0, -1.0, -0.0, 0.0, 1.0, 2.0];
    let mut r = SplitMix64::new(seed);
    (0..n).map(|_| SET[(r.next_u64() % 6) as usize]).collect()
}

/// Finite values of every class: normal, subnormal, signed zeros, both signs.
fn finite_f32() -> impl Strategy<Value = f32> {
    use proptest::num::f32::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// Inputs with many ties, a few distinct values, or wide-ranging magnitudes; each element
/// scaled by a per-segment factor so that chunk statistics shift along the buffer.
fn input(max_len: usize) -> impl Strategy<Value = Vec<f32>> {
    let values = prop_oneof![
        prop::collection::vec(finite_f32(), 1..max_len),
        prop::collection::vec(
            prop::sample::select(vec![-2.0f32, -1.0, -0.0, 0.0, 1.0, 2.0]),
            1..max_len
        ),
        prop::collection::vec(-1000i32..1000, 1..max_len)
            .prop_map(|v| v.into_iter().map(|i| i as f32 * 0.01).collect()),
        (1..max_len).prop_map(|n| vec![0.0f32; n]),
    ];
    let scales = prop::collection::vec(prop::sample::select(vec![1e-3f32, 1.0, 1e3]), 1..4);
    (values, scales, 1usize..400).prop_map(|(mut x, scales, segment)| {
        for (i, v) in x.iter_mut().enumerate() {
            let scaled = *v * scales[(i / segment) % scales.len()];
            if scaled.is_finite() {
                *v = scaled;
            }
        }
        x
    })
}

proptest! {
    #[test]
    fn global_matches_reference(x in input(1500), k_seed in any::<usize>()) {
        let k = 1 + k_seed % x.len();
        check_global(&x, k);
    }

    #[test]
    fn per_chunk_matches_reference(
        x in input(3000),
        chunk_len in 1usize..300,
        k_seed in any::<usize>(),
    ) {
        let k = 1 + k_seed % chunk_len;
        check_per_chunk(&x, chunk_len, k);
    }

    #[test]
    fn mask_matches_portable(
        block in prop::array::uniform16(any::<u32>()),
        floor in prop_oneof![0u32..=INF_BITS, Just(0), Just(INF_BITS)],
    ) {
        let block = block.map(f32::from_bits);
        prop_assert_eq!(block_mask(&block, floor as i32), block_mask_portable(&block, floor as i32));
    }
}

#[test]
fn per_chunk_gaussian_with_shifting_scale() {
    // Whole 4096-element chunks whose scale jumps both ways, so that the carried-over
    // floor is sometimes far too low and sometimes too high (forcing the fallback).
    let mut x = gaussian(4096 * 24 + 1000, 1);
    for (c, chunk) in x.chunks_mut(4096).enumerate() {
        let scale = [1.0, 1e-3, 1e3, 1.0, 0.5, 2.0][c % 6];
        chunk.iter_mut().for_each(|v| *v *= scale);
    }
    check_per_chunk(&x, 4096, 64);
    check_per_chunk(&x, 1000, 7);
    check_per_chunk(&x, 4096, 4096);
}

#[test]
fn per_chunk_many_ties_and_zeros() {
    check_per_chunk(&tiny_set(50_000, 2), 4096, 64);
    check_per_chunk(&tiny_set(50_000, 3), 333, 100);
    check_per_chunk(&vec![0.0; 10_000], 4096, 64);
    check_per_chunk(&vec![-0.0; 10_000], 999, 1);
}

#[test]
fn ragged_tail_keeps_k_for_its_length() {
    let x = gaussian(4096 * 3 + 100, 4);
    let spec = ChunkSpec::new(x.len(), 4096, 64).unwrap();
    let mut out = Sparse::default();
    topk_per_chunk(&x, &spec, &mut out).unwrap();
    for c in 0..spec.num_chunks() {
        let range = spec.chunk_range(c);
        let here = out.indices.iter().filter(|&&i| range.contains(&(i as usize))).count();
        assert_eq!(here, spec.k_for(range.len()));
    }
    assert_eq!(spec.k_for(100), 2);
    assert_eq!(out.len(), 3 * 64 + 2);
}

#[test]
fn global_sampled_path_matches_reference() {
    let n = (1 << 20) + 37;
    let x = gaussian(n, 5);
    check_global(&x, k_for_fraction(n, 0.0156).unwrap());
    check_global(&x, 1);
    check_global(&x, n / 3);
}

#[test]
fn global_large_ties_and_zeros() {
    let n = (1 << 20) + 5;
    let x = tiny_set(n, 6);
    check_global(&x, 1000);
    check_global(&x, n / 2);
    check_global(&vec![0.0; n], 12_345);
}

#[test]
fn global_sample_misleads_both_ways() {
    let n = 1 << 20;
    let stride = n / SAMPLE_BLOCKS;
    let in_sample = |i: usize| i % stride < SAMPLE_BLOCK_LEN;
    let base = gaussian(n, 7);
    // Sampled runs large, the rest small: the estimated floor admits too few.
    let x: Vec<f32> = (0..n).map(|i| if in_sample(i) { base[i] * 1e3 } else { base[i] }).collect();
    check_global(&x, 100_000);
    // Sampled runs small, the rest large: the floor admits nearly everything, over the cap.
    let x: Vec<f32> = (0..n).map(|i| if in_sample(i) { base[i] * 1e-3 } else { base[i] }).collect();
    check_global(&x, 5_000);
    // Magnitudes growing along the buffer.
    let x: Vec<f32> = (0..n).map(|i| base[i] * (1.0 + i as f32 * 1e-3)).collect();
    check_global(&x, 20_000);
}

#[test]
fn signed_values_come_back() {
    let x = [0.5, -3.0, 2.0, -0.0, 0.0, -2.0, 1.0, -3.0];
    let mut out = Sparse::default();
    topk_global(&x, 4, &mut out).unwrap();
    assert_eq!(out.indices, vec![1, 2, 5, 7]);
    assert_eq!(out.values, vec![-3.0, 2.0, -2.0, -3.0]);
    // Among equal magnitudes the lower index wins, and -0.0 equals +0.0.
    topk_global(&x, 7, &mut out).unwrap();
    assert_eq!(out.indices, vec![0, 1, 2, 3, 5, 6, 7]);
    assert_eq!(out.values[3].to_bits(), (-0.0f32).to_bits());
    let spec = ChunkSpec::new(8, 3, 2).unwrap();
    topk_per_chunk(&x, &spec, &mut out).unwrap();
    // Chunks [0.5, -3, 2], [-0, 0, -2], [1, -3]; the short last chunk keeps
    // ceil(2 · 2 / 3) = 2.
    assert_eq!(out.indices, vec![1, 2, 3, 5, 6, 7]);
    assert_eq!(out.values, vec![-3.0, 2.0, -0.0, -2.0, 1.0, -3.0]);
    assert_eq!(out.values[2].to_bits(), (-0.0f32).to_bits());
}

#[test]
fn scratch_reuse_across_shapes() {
    let mut scratch = TopkScratch::new();
    let mut out = Sparse::default();
    let big = gaussian(200_000, 8);
    let small = tiny_set(777, 9);
    for x in [&big, &small, &big] {
        topk_global_with(&mut scratch, x, 100, &mut out).unwrap();
        assert_same(&out, &reference_global(x, 100));
        let spec = ChunkSpec::new(x.len(), 500, 20).unwrap();
        topk_per_chunk_with(&mut scratch, x, &spec, &mut out).unwrap();
        assert_same(&out, &reference_per_chunk(x, &spec));
    }
}

#[test]
fn non_finite_is_reported_at_its_first_position() {
    let lens = [1usize, 17, 5000, (1 << 20) + 3];
    for &n in &lens {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
            let mut positions = vec![0, n / 2, n - 1];
            if n > 4096 {
                // Inside a later chunk, inside a sampled run, and in the ragged tail.
                positions.extend([4096 + 5, n / SAMPLE_BLOCKS + 3, n - 2]);
            }
            for &p in &positions {
                let mut x = gaussian(n, p as u64);
                x[p] = bad;
                if p + 1 < n {
                    x[n - 1] = f32::NAN;
                }
                let spec = ChunkSpec::new(n, 4096.min(n), 64.min(n)).unwrap();
                let mut out = Sparse { indices: vec![9], values: vec![9.0] };
                match topk_per_chunk(&x, &spec, &mut out) {
                    Err(KernelError::NonFinite { index, .. }) => assert_eq!(index, p),
                    other => panic!("per chunk, n {n}, pos {p}: {other:?}"),
                }
                assert!(out.is_empty());
                out.indices.push(9);
                out.values.push(9.0);
                match topk_global(&x, 10.min(n), &mut out) {
                    Err(KernelError::NonFinite { index, .. }) => assert_eq!(index, p),
                    other => panic!("global, n {n}, pos {p}: {other:?}"),
                }
                assert!(out.is_empty());
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let x = [1.0f32, 2.0, 3.0];
    let mut out = Sparse::default();
    let spec = ChunkSpec::new(4, 2, 1).unwrap();
    assert!(matches!(
        topk_per_chunk(&x, &spec, &mut out),
        Err(KernelError::LengthMismatch { expected: 4, actual: 3, .. })
    ));
    let empty_spec = ChunkSpec { len: 0, chunk_len: 4, k: 1 };
    assert!(matches!(topk_per_chunk(&[], &empty_spec, &mut out), Err(KernelError::Empty { .. })));
    for (chunk_len, k) in [(0, 1), (2, 0), (2, 3)] {
        let spec = ChunkSpec { len: 3, chunk_len, k };
        assert!(matches!(
            topk_per_chunk(&x, &spec, &mut out),
            Err(KernelError::InvalidParameter { .. })
        ));
    }
    assert!(matches!(topk_global(&[], 1, &mut out), Err(KernelError::Empty { .. })));
    assert!(matches!(topk_global(&x, 0, &mut out), Err(KernelError::InvalidParameter { .. })));
    assert!(matches!(topk_global(&x, 4, &mut out), Err(KernelError::InvalidParameter { .. })));
    topk_global(&x, 3, &mut out).unwrap();
    assert_eq!(out.indices, vec![0, 1, 2]);
}

#[cfg(target_pointer_width = "64")]
#[test]
fn lengths_beyond_u32_indices_are_rejected() {
    assert!(check_index_range(u32::MAX as usize).is_ok());
    assert!(matches!(
        check_index_range(u32::MAX as usize + 1),
        Err(KernelError::InvalidParameter { .. })
    ));
}

#[test]
fn fraction_to_k() {
    assert_eq!(k_for_fraction(100, 0.07).unwrap(), 7);
    assert_eq!(k_for_fraction(100, 0.071).unwrap(), 8);
    assert_eq!(k_for_fraction(1 << 24, 0.0156).unwrap(), 261_725);
    assert_eq!(k_for_fraction(10, 1.0).unwrap(), 10);
    assert_eq!(k_for_fraction(3, 1e-9).unwrap(), 1);
    assert_eq!(k_for_fraction(1, 0.5).unwrap(), 1);
    assert_eq!(k_for_fraction(usize::MAX, 1.0).unwrap(), usize::MAX);
    for bad in [0.0, -0.1, 1.0 + 1e-12, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(matches!(k_for_fraction(100, bad), Err(KernelError::InvalidParameter { .. })));
    }
    assert!(matches!(k_for_fraction(0, 0.5), Err(KernelError::Empty { .. })));
}
