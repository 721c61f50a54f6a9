//! Tests of the chunked DCT: the chunk rule, both paths against an f64 reference and
//! against each other, layouts, padding, errors, and the exact trigonometry.

use super::dense::{dct_basis, transpose};
use super::lanes::{transpose4, V};
use super::*;
use crate::error::KernelError;
use proptest::prelude::*;

/// Sizes that exercise every branch of the chunk rule at chunk 64.
const SIZES: &[usize] = &[1, 7, 63, 64, 65, 67, 100, 127, 128, 131, 192, 1000];

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::rng::SplitMix64::new(seed);
    (0..n).map(|_| rng.next_unit_f32() * 2.0 - 1.0).collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    let diff: f64 =
        got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2)).sum();
    diff.sqrt() / norm(want).max(f64::MIN_POSITIVE)
}

fn round_trip(plan: &DctPlan, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![f32::NAN; plan.coeff_len()];
    plan.forward(x, &mut y).unwrap();
    let mut back = vec![f32::NAN; plan.input_len()];
    plan.inverse(&y, &mut back).unwrap();
    (y, back)
}

/// The f64 basis straight from the definition, independent of `dct_basis`.
fn reference_basis(n: usize) -> Vec<Vec<f64>> {
    let nf = n as f64;
    (0..n)
        .map(|k| {
            let s = if k == 0 { (1.0 / nf).sqrt() } else { (2.0 / nf).sqrt() };
            (0..n)
                .map(|i| {
                    s * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2.0 * nf)).cos()
                })
                .collect()
        })
        .collect()
}

/// Tile-by-tile `C_r · X · C_cᵀ` in f64 over the zero-padded input, laid out tile-major.
fn reference_forward(plan: &DctPlan, x: &[f32]) -> Vec<f64> {
    let (rows, cols) = (plan.rows(), plan.cols());
    let (cr, cc) = (rows.chunk, cols.chunk);
    let (br, bc) = (reference_basis(cr), reference_basis(cc));
    let at = |r: usize, c: usize| {
        if r < rows.len && c < cols.len {
            f64::from(x[r * cols.len + c])
        } else {
            0.0
        }
    };
    let mut out = Vec::with_capacity(plan.coeff_len());
    for ti in 0..rows.padded / cr {
        for tj in 0..cols.padded / cc {
            for br_k in &br {
                for bc_l in &bc {
                    let mut s = 0.0;
                    for (i, &ci) in br_k.iter().enumerate() {
                        for (j, &cj) in bc_l.iter().enumerate() {
                            s += ci * at(ti * cr + i, tj * cc + j) * cj;
                        }
                    }
                    out.push(s);
                }
            }
        }
    }
    out
}

/// `C_rᵀ · Y · C_c` per tile in f64, truncated to the real positions, row-major.
fn reference_inverse(plan: &DctPlan, y: &[f32]) -> Vec<f64> {
    let (rows, cols) = (plan.rows(), plan.cols());
    let (cr, cc) = (rows.chunk, cols.chunk);
    let (br, bc) = (reference_basis(cr), reference_basis(cc));
    let tiles_per_row = cols.padded / cc;
    let mut out = vec![0.0; plan.input_len()];
    for r in 0..rows.len {
        for c in 0..cols.len {
            let (ti, i, tj, j) = (r / cr, r % cr, c / cc, c % cc);
            let tile = &y[(ti * tiles_per_row + tj) * cr * cc..][..cr * cc];
            let mut s = 0.0;
            for (br_k, y_k) in br.iter().zip(tile.chunks_exact(cc)) {
                for (bc_l, &y) in bc.iter().zip(y_k) {
                    s += br_k[i] * f64::from(y) * bc_l[j];
                }
            }
            out[r * cols.len + c] = s;
        }
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (idx, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(g) - w).abs() <= tol, "at {idx}: got {g}, want {w}");
    }
}

#[test]
fn basis_is_orthonormal() {
    for n in [1, 2, 3, 5, 7, 8, 10, 33, 50, 63, 64, 67, 100, 128, 257] {
        let c = dct_basis(n);
        for a in 0..n {
            for b in 0..n {
                let dot: f64 =
                    (0..n).map(|i| f64::from(c[a * n + i]) * f64::from(c[b * n + i])).sum();
                let want = if a == b { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-6, "n={n} ({a},{b}): {dot}");
            }
        }
        assert_eq!(transpose(&transpose(&c, n), n), c);
    }
}

#[test]
fn basis_matches_definition() {
    for n in [1, 6, 64, 131] {
        let c = dct_basis(n);
        let r = reference_basis(n);
        for k in 0..n {
            for i in 0..n {
                assert!((f64::from(c[k * n + i]) - r[k][i]).abs() < 1e-7);
            }
        }
    }
}

#[test]
fn chunk_rule_explicit_cases() {
    let p = |len, chunk| plan_dim(len, chunk).unwrap();
    assert_eq!(p(4096, 64), DimPlan { len: 4096, chunk: 64, padded: 4096 });
    assert_eq!(p(100, 64), DimPlan { len: 100, chunk: 50, padded: 100 });
    assert_eq!(p(96, 64), DimPlan { len: 96, chunk: 48, padded: 96 });
    assert_eq!(p(67, 64), DimPlan { len: 67, chunk: 64, padded: 128 });
    assert_eq!(p(127, 64), DimPlan { len: 127, chunk: 64, padded: 128 });
    assert_eq!(p(131, 64), DimPlan { len: 131, chunk: 64, padded: 192 });
    assert_eq!(p(10, 64), DimPlan { len: 10, chunk: 10, padded: 10 });
    assert_eq!(p(64, 64), DimPlan { len: 64, chunk: 64, padded: 64 });
    assert_eq!(p(65, 64), DimPlan { len: 65, chunk: 64, padded: 128 });
    assert_eq!(p(1, 64), DimPlan { len: 1, chunk: 1, padded: 1 });
    assert_eq!(p(70, 64), DimPlan { len: 70, chunk: 35, padded: 70 });
    assert_eq!(p(1000, 64), DimPlan { len: 1000, chunk: 50, padded: 1000 });
    // Odd request: the lower bound is ⌈c/2⌉.
    assert_eq!(p(22, 21), DimPlan { len: 22, chunk: 11, padded: 22 });
    assert_eq!(p(20, 21), DimPlan { len: 20, chunk: 20, padded: 20 });
    // Large primes: padded, never chunk 1.
    assert_eq!(p(4099, 64), DimPlan { len: 4099, chunk: 64, padded: 4160 });
    assert_eq!(p(7919, 64).chunk, 64);
    assert_eq!(p(5, 1), DimPlan { len: 5, chunk: 1, padded: 5 });
}

#[test]
fn plan_sizes_and_flops() {
    let plan = DctPlan::new_2d(70, 130, 64).unwrap();
    assert_eq!(plan.rows(), DimPlan { len: 70, chunk: 35, padded: 70 });
    assert_eq!(plan.cols(), DimPlan { len: 130, chunk: 64, padded: 192 });
    assert_eq!(plan.input_len(), 70 * 130);
    assert_eq!(plan.coeff_len(), 70 * 192);
    assert_eq!(plan.tile_len(), 35 * 64);
    assert_eq!(plan.num_tiles(), 2 * 3);
    // Rows of 35 go through the matrix (35 multiply-adds per point), columns of 64
    // through the fast path (912 flops per line of 64).
    assert_eq!(plan.flops_forward(), 6 * (35 * 912 + 64 * 2 * 35 * 35));
    let matrix = DctPlan::from_dims_with(plan.rows(), plan.cols(), false).unwrap();
    assert_eq!(matrix.flops_forward(), 6 * 2 * (35 * 64 * 64 + 35 * 35 * 64));

    let big = DctPlan::new_2d(4096, 4096, 64).unwrap();
    assert_eq!(big.flops_forward(), 4096 * 2 * 64 * 912);
    let big_matrix = DctPlan::from_dims_with(big.rows(), big.cols(), false).unwrap();
    assert_eq!(big_matrix.flops_forward(), 4096 * 2 * 2 * 64 * 64 * 64);
    let line = DctPlan::new_1d(1 << 24, 64).unwrap();
    assert_eq!(line.rows(), DimPlan { len: 1, chunk: 1, padded: 1 });
    assert_eq!(line.num_tiles(), 1 << 18);
    assert_eq!(line.tile_len(), 64);
    assert_eq!(line.flops_forward(), (1 << 18) * 912);
}

#[test]
fn fast_flop_counts_by_hand() {
    // n = 4: one butterfly (4 adds), X[0] and X[2] (2 ops each), X[1] and X[3] (3 each).
    // n = 8: gathering radix-2 (2 butterflies, 8 adds); the last stage's two trivial
    // butterflies (8); post 4 + 6 + 26.
    // n = 64: gathering radix-4 (8 × 16), one radix-4 pass (2 × (16 + 3 × 34)), the last
    // stage (2 × 4 + 14 × 10), post (10 + 15 × 26).
    for (n, want) in [(4, 14), (8, 8 + 8 + 36), (64, 128 + 236 + 148 + 400)] {
        assert_eq!(FastDct::new(n).flops_per_line(), want, "n = {n}");
    }
    // At most half the matrix's 2n² from 16 points on, under an eighth at 64.
    for bits in 4..=10 {
        let n = 1usize << bits;
        let fast = FastDct::new(n).flops_per_line();
        assert!(fast < (n as u64).pow(2), "n = {n}: {fast}");
    }
    assert!(8 * FastDct::new(64).flops_per_line() < 2 * 64 * 64);
}

#[test]
fn for_shape_maps_ranks() {
    let scalar = DctPlan::for_shape(&[], 64).unwrap();
    assert_eq!((scalar.rows(), scalar.cols().len), (UNIT_DIM, 1));
    let vector = DctPlan::for_shape(&[300], 64).unwrap();
    assert_eq!((vector.rows(), vector.cols()), (UNIT_DIM, plan_dim(300, 64).unwrap()));
    let matrix = DctPlan::for_shape(&[96, 100], 64).unwrap();
    assert_eq!((matrix.rows().chunk, matrix.cols().chunk), (48, 50));
    let conv = DctPlan::for_shape(&[64, 32, 3, 3], 64).unwrap();
    assert_eq!((conv.rows().len, conv.cols().len), (64, 288));
    assert_eq!(conv.cols().chunk, 48);
}

#[test]
fn constant_puts_all_energy_in_the_first_coefficient() {
    let value = 0.75f32;
    for (shape, tol) in [
        (vec![200usize], 1e-5),
        (vec![4096], 1e-5),
        (vec![10], 1e-6),
        (vec![96, 100], 2e-5),
        (vec![1, 128], 1e-5),
    ] {
        let plan = DctPlan::for_shape(&shape, 64).unwrap();
        assert_eq!(plan.input_len(), plan.coeff_len(), "chosen without padding");
        let x = vec![value; plan.input_len()];
        let mut y = vec![0.0; plan.coeff_len()];
        plan.forward(&x, &mut y).unwrap();
        let dc = (plan.tile_len() as f64).sqrt() * f64::from(value);
        for tile in y.chunks_exact(plan.tile_len()) {
            assert!((f64::from(tile[0]) - dc).abs() < tol * dc, "{shape:?}: {} vs {dc}", tile[0]);
            assert!(tile[1..].iter().all(|v| v.abs() < tol as f32), "{shape:?}: energy leaked");
        }
    }
}

#[test]
fn two_d_layout_matches_reference_with_padding() {
    for (r, c, chunk) in
        [(70, 130, 64), (67, 131, 64), (5, 9, 4), (130, 1, 64), (1, 130, 64), (3, 3, 64)]
    {
        let plan = DctPlan::new_2d(r, c, chunk).unwrap();
        let x = pseudo_random(plan.input_len(), (r * 1000 + c) as u64);
        let mut y = vec![f32::NAN; plan.coeff_len()];
        plan.forward(&x, &mut y).unwrap();
        assert_close(&y, &reference_forward(&plan, &x), 1e-5);

        let coeffs = pseudo_random(plan.coeff_len(), 7);
        let mut back = vec![f32::NAN; plan.input_len()];
        plan.inverse(&coeffs, &mut back).unwrap();
        assert_close(&back, &reference_inverse(&plan, &coeffs), 1e-5);
    }
}

#[test]
fn one_d_matches_reference_with_padding() {
    for len in [131, 67, 100, 7] {
        let plan = DctPlan::new_1d(len, 64).unwrap();
        let x = pseudo_random(len, len as u64);
        let mut y = vec![f32::NAN; plan.coeff_len()];
        plan.forward(&x, &mut y).unwrap();
        assert_close(&y, &reference_forward(&plan, &x), 1e-5);
    }
}

#[test]
fn degenerate_dims_agree_with_one_d() {
    let x = pseudo_random(131, 3);
    let line = DctPlan::new_1d(131, 64).unwrap();
    let (want, _) = round_trip(&line, &x);
    for plan in [DctPlan::new_2d(1, 131, 64).unwrap(), DctPlan::new_2d(131, 1, 64).unwrap()] {
        assert_eq!(plan.coeff_len(), line.coeff_len());
        assert_eq!(plan.tile_len(), line.tile_len());
        let (y, back) = round_trip(&plan, &x);
        assert_eq!(y, want);
        assert!(rel_err(&back, &x) < 1e-6);
    }
}

#[test]
fn chunk_one_is_the_identity() {
    let plan = DctPlan::new_2d(5, 7, 1).unwrap();
    assert_eq!(plan.tile_len(), 1);
    let x = pseudo_random(35, 11);
    let (y, back) = round_trip(&plan, &x);
    assert_eq!(y, x);
    assert_eq!(back, x);
}

#[test]
fn inverse_writes_only_real_positions() {
    let plan = DctPlan::new_2d(67, 70, 64).unwrap();
    let x = pseudo_random(plan.input_len(), 5);
    let (_, back) = round_trip(&plan, &x);
    assert_eq!(back.len(), 67 * 70);
    assert!(rel_err(&back, &x) < 1e-6);
}

#[test]
fn rejects_bad_configuration() {
    assert!(matches!(plan_dim(0, 64), Err(KernelError::InvalidParameter { name: "len", .. })));
    assert!(matches!(plan_dim(5, 0), Err(KernelError::InvalidParameter { name: "chunk", .. })));
    assert!(matches!(
        plan_dim(5, MAX_CHUNK + 1),
        Err(KernelError::InvalidParameter { name: "chunk", .. })
    ));
    // A length near usize::MAX with no divisor in 32..=64 must be padded, which overflows.
    let huge =
        (usize::MAX - 62..=usize::MAX).rev().find(|l| (32..=64).all(|d| l % d != 0)).unwrap();
    assert!(matches!(plan_dim(huge, 64), Err(KernelError::InvalidParameter { name: "len", .. })));
    assert!(DctPlan::new_1d(0, 64).is_err());
    assert!(DctPlan::new_1d(10, 0).is_err());
    assert!(DctPlan::new_2d(0, 5, 64).is_err());
    assert!(DctPlan::new_2d(5, 0, 64).is_err());
    assert!(DctPlan::new_2d(5, 5, 0).is_err());
    assert!(DctPlan::new_2d(1 << 40, 1 << 40, 64).is_err());
    assert!(DctPlan::for_shape(&[3, 0, 2], 64).is_err());
    assert!(DctPlan::for_shape(&[0], 64).is_err());
    assert!(DctPlan::for_shape(&[2, usize::MAX, 2], 64).is_err());
    assert!(DctPlan::for_shape(&[4, 4], 0).is_err());
}

#[test]
fn rejects_bad_buffers() {
    let plan = DctPlan::new_2d(67, 10, 64).unwrap();
    let (n, m) = (plan.input_len(), plan.coeff_len());
    assert_ne!(n, m);
    let x = vec![1.0f32; n];
    let y = vec![1.0f32; m];
    let mut out_y = vec![0.0f32; m];
    let mut out_x = vec![0.0f32; n];

    let mismatch = |r: Result<()>, what: &str| {
        assert!(
            matches!(r, Err(KernelError::LengthMismatch { what: w, .. }) if w == what),
            "{what}"
        );
    };
    mismatch(plan.forward(&x[1..], &mut out_y), "input");
    mismatch(plan.forward(&x, &mut out_y[1..]), "coeffs");
    mismatch(plan.forward(&y, &mut out_y), "input");
    mismatch(plan.inverse(&y[1..], &mut out_x), "coeffs");
    mismatch(plan.inverse(&y, &mut out_x[1..]), "output");
    mismatch(plan.inverse(&x, &mut out_x), "coeffs");

    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut xb = x.clone();
        xb[42] = bad;
        assert!(matches!(
            plan.forward(&xb, &mut out_y),
            Err(KernelError::NonFinite { what: "input", index: 42, .. })
        ));
        let mut yb = y.clone();
        yb[m - 1] = bad;
        assert!(matches!(
            plan.inverse(&yb, &mut out_x),
            Err(KernelError::NonFinite { what: "coeffs", index, .. }) if index == m - 1
        ));
    }
}

/// The same plan with every dimension on the matrix path.
fn matrix_twin(plan: &DctPlan) -> DctPlan {
    DctPlan::from_dims_with(plan.rows(), plan.cols(), false).unwrap()
}

/// A length that the chunk rule cuts into chunks of exactly `n` with padding.
fn padded_len(n: usize) -> usize {
    (3 * n + 1..6 * n)
        .find(|&len| plan_dim(len, n).is_ok_and(|d| d.chunk == n && d.padded > len))
        .unwrap()
}

/// Forward of random points and inverse of random coefficients on both paths, which
/// must agree to `tol` relative to the norm.
fn assert_paths_agree(plan: &DctPlan, seed: u64, tol: f64) -> f64 {
    let matrix = matrix_twin(plan);
    let x = pseudo_random(plan.input_len(), seed);
    let (mut fast_y, mut slow_y) = (vec![0.0; plan.coeff_len()], vec![0.0; plan.coeff_len()]);
    plan.forward(&x, &mut fast_y).unwrap();
    matrix.forward(&x, &mut slow_y).unwrap();
    let y = pseudo_random(plan.coeff_len(), seed ^ 0x5eed);
    let (mut fast_x, mut slow_x) = (vec![0.0; plan.input_len()], vec![0.0; plan.input_len()]);
    plan.inverse(&y, &mut fast_x).unwrap();
    matrix.inverse(&y, &mut slow_x).unwrap();
    let err = rel_err(&fast_y, &slow_y).max(rel_err(&fast_x, &slow_x));
    let shape = (plan.rows(), plan.cols());
    assert!(err < tol, "{shape:?}: fast and matrix paths differ by {err:e}");
    err
}

/// Not a test: prints how far the two paths are from each other and from the f64
/// reference. `cargo test --release print_path_differences -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_path_differences() {
    for bits in 2..=10 {
        let n = 1usize << bits;
        let mut shapes = vec![(1, 9 * n), (1, padded_len(n))];
        if bits <= 8 {
            shapes.extend([(3 * n, 2 * n), (padded_len(n), padded_len(n))]);
        }
        let diffs: Vec<String> = shapes
            .iter()
            .map(|&(r, c)| DctPlan::new_2d(r, c, n).unwrap())
            .map(|plan| format!("{:.2e}", assert_paths_agree(&plan, 1, 1e-6)))
            .collect();
        println!("chunk {n:4}: fast vs matrix {diffs:?}");
    }
    for (r, c, n) in [(1, 64 * 40, 64), (128, 192, 64), (1, 1024 * 4, 1024)] {
        let plan = DctPlan::new_2d(r, c, n).unwrap();
        let x = pseudo_random(plan.input_len(), 3);
        let want = reference_forward(&plan, &x);
        let mut got = [vec![0.0; plan.coeff_len()], vec![0.0; plan.coeff_len()]];
        plan.forward(&x, &mut got[0]).unwrap();
        matrix_twin(&plan).forward(&x, &mut got[1]).unwrap();
        let max_abs = got[0].iter().zip(&got[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let err = |y: &[f32]| {
            let sq: f64 = y.iter().zip(&want).map(|(&a, b)| (f64::from(a) - b).powi(2)).sum();
            sq.sqrt() / want.iter().map(|v| v * v).sum::<f64>().sqrt()
        };
        println!(
            "{r} x {c}, chunk {n}: vs f64 fast {:.2e}, matrix {:.2e}; max |fast − matrix| {max_abs:.2e}",
            err(&got[0]),
            err(&got[1])
        );
    }
}

#[test]
fn power_of_two_chunks_take_the_fast_path() {
    for bits in 2..=10 {
        let n = 1usize << bits;
        let plan = DctPlan::new_2d(2 * n, n, n).unwrap();
        assert!(matches!(plan.row_t, DimTransform::Fast(_)), "n = {n}");
        assert!(matches!(plan.col_t, DimTransform::Fast(_)), "n = {n}");
    }
    for n in [1, 2, 3, 35, 50, 63, 67, 96] {
        let plan = DctPlan::new_1d(4 * n, n).unwrap();
        assert!(matches!(plan.col_t, DimTransform::Matrix(_)), "n = {n}");
    }
}

#[test]
fn fast_path_matches_matrix_path_1d() {
    for bits in 2..=10 {
        let n = 1usize << bits;
        // Whole chunks (more than one vector's worth of lines, and a partial vector),
        // a padded last chunk, and a single chunk.
        for len in [9 * n, padded_len(n), n] {
            let plan = DctPlan::new_1d(len, n).unwrap();
            assert_eq!(plan.cols().chunk, n);
            assert_paths_agree(&plan, (len + n) as u64, 1e-6);
        }
    }
}

#[test]
fn fast_path_matches_matrix_path_2d() {
    for bits in 2..=8 {
        let n = 1usize << bits;
        let p = padded_len(n);
        // Interior tiles; padded edge tiles in either or both dimensions; rows and
        // columns of different power-of-two chunks; and one fast dimension next to a
        // matrix one (50 and 3 are not powers of two).
        for (rows, cols, chunk) in [
            (3 * n, 2 * n, n),
            (p, 2 * n, n),
            (2 * n, p, n),
            (p, p, n),
            (n, 2 * n, n),
            (n / 2, 3 * n, n),
            (3 * n, 150, n.max(64)),
            (150, 3 * n, n.max(64)),
            (3, n, n),
        ] {
            let plan = DctPlan::new_2d(rows, cols, chunk).unwrap();
            assert_paths_agree(&plan, (rows * 7 + cols) as u64, 1e-6);
        }
    }
}

#[test]
fn fast_path_round_trips_large_chunks() {
    for n in [512, 1024] {
        let plan = DctPlan::new_2d(n + 3, 2 * n, n).unwrap();
        let x = pseudo_random(plan.input_len(), n as u64);
        let (y, back) = round_trip(&plan, &x);
        assert!(rel_err(&back, &x) < 1e-6, "n = {n}");
        assert!((norm(&y) - norm(&x)).abs() < 1e-6 * norm(&x), "n = {n}");
    }
}

#[test]
fn fast_path_lines_do_not_depend_on_their_neighbours() {
    // A line's bits must not depend on which lines share its vector, how many lines a
    // call has, or whether its tile is interior: compare chunks and tiles computed
    // inside big plans against the same data transformed alone.
    let n = 64;
    let x = pseudo_random(7 * n, 21);
    let plan = DctPlan::new_1d(7 * n, n).unwrap();
    let mut y = vec![0.0; plan.coeff_len()];
    plan.forward(&x, &mut y).unwrap();
    let single = DctPlan::new_1d(n, n).unwrap();
    for (chunk, want) in x.chunks_exact(n).zip(y.chunks_exact(n)) {
        let mut got = vec![0.0; n];
        single.forward(chunk, &mut got).unwrap();
        assert_eq!(got, want);
    }

    let (rows, cols) = (3 * n, 2 * n + 5);
    let big = DctPlan::new_2d(rows, cols, n).unwrap();
    let x = pseudo_random(big.input_len(), 22);
    let mut y = vec![0.0; big.coeff_len()];
    big.forward(&x, &mut y).unwrap();
    let alone = DctPlan::new_2d(n, n, n).unwrap();
    let tile = |ti: usize, tj: usize| -> Vec<f32> {
        (0..n).flat_map(|i| x[(ti * n + i) * cols + tj * n..][..n].to_vec()).collect()
    };
    for (ti, tj) in [(0, 0), (1, 1), (2, 0)] {
        let mut got = vec![0.0; n * n];
        alone.forward(&tile(ti, tj), &mut got).unwrap();
        let t = ti * big.cols().chunks() + tj;
        assert_eq!(got, y[t * n * n..][..n * n], "tile ({ti}, {tj})");
        let mut back = vec![0.0; n * n];
        alone.inverse(&got, &mut back).unwrap();
        let mut full = vec![0.0; big.input_len()];
        big.inverse(&y, &mut full).unwrap();
        assert_eq!(back, tile_of(&full, cols, ti * n, tj * n, n), "tile ({ti}, {tj})");
    }
}

fn tile_of(m: &[f32], cols: usize, r0: usize, c0: usize, n: usize) -> Vec<f32> {
    (0..n).flat_map(|i| m[(r0 + i) * cols + c0..][..n].to_vec()).collect()
}

#[test]
fn exact_sines_and_cosines() {
    for q in [1usize, 2, 3, 4, 7, 8, 16, 64, 100, 128, 1024, 2048] {
        for p in 0..5 * q {
            let (c, s) = cos_sin_pi(p, q);
            // The reference's own argument is rounded, by up to 2^-53 of it.
            let angle = std::f64::consts::PI * p as f64 / q as f64;
            let tol = 1e-15 * angle.max(1.0);
            assert!((c - angle.cos()).abs() < tol, "cos(π·{p}/{q}) = {c}");
            assert!((s - angle.sin()).abs() < tol, "sin(π·{p}/{q}) = {s}");
        }
    }
    assert_eq!(cos_sin_pi(0, 5), (1.0, 0.0));
    assert_eq!(cos_sin_pi(1, 2), (0.0, 1.0));
    assert_eq!(cos_sin_pi(2, 2), (-1.0, 0.0));
}

#[test]
fn transpose4_transposes() {
    let a: [V; 4] = std::array::from_fn(|i| std::array::from_fn(|j| (4 * i + j) as f32));
    let t = transpose4(a);
    for i in 0..4 {
        for j in 0..4 {
            assert_eq!(t[j][i], a[i][j]);
        }
    }
}

#[test]
fn finiteness_check_reports_the_first_bad_value() {
    let mut x = pseudo_random(10_000, 5);
    assert!(check_all_finite("x", &x).is_ok());
    for (at, bad) in [(9_999, f32::NAN), (4_096, f32::INFINITY), (17, f32::NEG_INFINITY)] {
        x[at] = bad;
        // NaN ≠ NaN, so compare the errors' descriptions.
        let (fast, slow) = (check_all_finite("x", &x), check_finite("x", &x));
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        assert!(matches!(
            check_all_finite("x", &x),
            Err(KernelError::NonFinite { index, .. }) if index == at
        ));
    }
    x[3] = f32::MAX;
    x[4] = f32::MIN_POSITIVE / 2.0;
    x[5] = -0.0;
    assert_eq!(check_all_finite("x", &x[..10]), Ok(()));
}

fn interesting_len() -> impl Strategy<Value = usize> {
    prop_oneof![proptest::sample::select(SIZES), 1usize..400]
}

fn requested_chunk() -> impl Strategy<Value = usize> {
    prop_oneof![Just(DEFAULT_CHUNK), 1usize..=80]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunk_rule_holds(len in 1usize..100_000, chunk in 1usize..=300) {
        let d = plan_dim(len, chunk).unwrap();
        prop_assert_eq!(d.len, len);
        prop_assert!(d.padded >= len && d.padded % d.chunk == 0 && d.padded - len < d.chunk);
        if len <= chunk {
            prop_assert_eq!((d.chunk, d.padded), (len, len));
        } else {
            prop_assert!(d.chunk >= chunk.div_ceil(2) && d.chunk <= chunk);
            if d.padded > len {
                prop_assert_eq!(d.chunk, chunk);
                prop_assert!((chunk.div_ceil(2)..=chunk).all(|c| len % c != 0));
            } else {
                prop_assert!((d.chunk + 1..=chunk).all(|c| len % c != 0), "not the largest divisor");
            }
        }
    }

    #[test]
    fn one_d_round_trip_and_norm(len in prop_oneof![interesting_len(), 1usize..5000], chunk in requested_chunk(), seed in any::<u64>(), scale in 1e-3f32..1e3) {
        let plan = DctPlan::new_1d(len, chunk).unwrap();
        let x: Vec<f32> = pseudo_random(len, seed).iter().map(|v| v * scale).collect();
        let (y, back) = round_trip(&plan, &x);
        prop_assert!(rel_err(&back, &x) < 1e-5);
        let (nx, ny) = (norm(&x), norm(&y));
        prop_assert!((nx - ny).abs() <= 1e-5 * nx, "{nx} vs {ny}");
    }

    #[test]
    fn two_d_round_trip_and_norm(rows in interesting_len(), cols in interesting_len(), chunk in requested_chunk(), seed in any::<u64>()) {
        let plan = DctPlan::new_2d(rows, cols, chunk).unwrap();
        let x = pseudo_random(plan.input_len(), seed);
        let (y, back) = round_trip(&plan, &x);
        prop_assert!(rel_err(&back, &x) < 1e-5);
        let (nx, ny) = (norm(&x), norm(&y));
        prop_assert!((nx - ny).abs() <= 1e-5 * nx, "{nx} vs {ny}");
    }

    #[test]
    fn higher_rank_round_trip(a in 1usize..40, b in 1usize..6, k in 1usize..4, seed in any::<u64>()) {
        let shape = [a, b, k, k];
        let plan = DctPlan::for_shape(&shape, DEFAULT_CHUNK).unwrap();
        prop_assert_eq!(plan.input_len(), a * b * k * k);
        let x = pseudo_random(plan.input_len(), seed);
        let (_, back) = round_trip(&plan, &x);
        prop_assert!(rel_err(&back, &x) < 1e-5);
    }
}

/// Inputs at `m` in magnitude whose signs follow patterns that push sums hardest: all one
/// sign (the DC coefficient), alternating along rows, columns or both (the highest
/// frequencies), each basis row's own signs (its coefficient at its largest), and random.
fn extreme_inputs(rows: usize, cols: usize, m: f32) -> Vec<Vec<f32>> {
    let n = rows * cols;
    let mut out = vec![
        vec![m; n],
        (0..n).map(|i| if i % 2 == 0 { m } else { -m }).collect(),
        (0..n).map(|i| if (i / cols) % 2 == 0 { m } else { -m }).collect(),
        (0..n).map(|i| if (i / cols + i % cols) % 2 == 0 { m } else { -m }).collect(),
        pseudo_random(n, 99).iter().map(|v| if *v < 0.0 { -m } else { m }).collect(),
    ];
    let line = cols.min(64);
    let basis = reference_basis(line);
    for k in [1, line / 3, line / 2, line - 1].into_iter().filter(|&k| k < line) {
        out.push((0..n).map(|i| if basis[k][i % cols % line] < 0.0 { -m } else { m }).collect());
    }
    out
}

#[test]
fn inputs_up_to_max_magnitude_never_overflow_on_either_path() {
    for (rows, cols) in [(1, 4096), (1, 100), (64, 64), (128, 192), (70, 130), (3, 5), (1, 1)] {
        let fast = DctPlan::new_2d(rows, cols, DEFAULT_CHUNK).unwrap();
        let limit = fast.max_magnitude();
        assert_eq!(limit, f32::MAX / (2.0 * fast.tile_len() as f32));
        for plan in [fast.clone(), fast.matrix_path_twin()] {
            for x in extreme_inputs(rows, cols, limit) {
                let (y, back) = round_trip(&plan, &x);
                assert!(y.iter().all(|v| v.is_finite()), "{rows}×{cols}: a coefficient overflowed");
                assert!(
                    back.iter().all(|v| v.is_finite()),
                    "{rows}×{cols}: the inverse overflowed"
                );
            }
        }
    }
}
