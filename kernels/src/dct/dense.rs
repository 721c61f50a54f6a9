//! The matrix path: dense products with the cached orthonormal basis `C`, for every chunk
//! length that the fast path does not factor (the chunk rule also yields lengths like 35,
//! 48 or 50). It is separate from `fast.rs` because the two share nothing but the basis
//! definition; the CUDA kernels' dense product replays this file's summation order.

use super::{cos_sin_pi, DimPlan};

/// Orthonormal DCT-II basis of size `n`, row-major (`[k * n + i]` is basis vector `k` at
/// point `i`), computed in f64 so that the only error is the final rounding to f32, and
/// with no libm call so that every machine builds the same bits.
pub(super) fn dct_basis(n: usize) -> Vec<f32> {
    let nf = n as f64;
    let s0 = (1.0 / nf).sqrt();
    let sk = (2.0 / nf).sqrt();
    let mut out = Vec::with_capacity(n * n);
    for k in 0..n {
        let scale = if k == 0 { s0 } else { sk };
        for i in 0..n {
            // cos(π·(2i+1)·k / 2n) from basic arithmetic only (see `cos_sin_pi`): the
            // platform's libm could round a last bit differently on another machine, and
            // every replica must invert with the same basis.
            let (c, _) = cos_sin_pi((2 * i + 1) * k, 2 * n);
            out.push((scale * c) as f32);
        }
    }
    out
}

/// The orthonormal DCT-II basis of size `n` that the dense path uses (row-major, `f32`),
/// for the CUDA kernels, which compute with the same matrices.
#[cfg(feature = "cuda")]
pub(crate) fn basis(n: usize) -> Vec<f32> {
    dct_basis(n)
}

/// Transpose of a square row-major `n × n` matrix.
pub(super) fn transpose(m: &[f32], n: usize) -> Vec<f32> {
    let mut t = vec![0.0; n * n];
    for (i, row) in m.chunks_exact(n).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            t[j * n + i] = v;
        }
    }
    t
}

/// One dimension's basis in both orientations, so that every product reads its right
/// operand row by row.
#[derive(Debug, Clone)]
pub(super) struct Basis {
    /// `C`, row-major.
    pub(super) c: Vec<f32>,
    /// `Cᵀ`, row-major.
    pub(super) ct: Vec<f32>,
}

impl Basis {
    pub(super) fn new(n: usize) -> Self {
        let c = dct_basis(n);
        let ct = transpose(&c, n);
        Self { c, ct }
    }
}

/// 1-D transform of `input` (`dim.len` points) into `out` (`dim.padded` coefficients) with
/// `ct = Cᵀ`: every chunk is a row of a `chunks × chunk` matrix, so all full chunks go through
/// one matrix product that reuses each basis row across several chunks.
pub(super) fn line_apply(dim: DimPlan, ct: &[f32], input: &[f32], out: &mut [f32]) {
    let n = dim.chunk;
    let full = dim.len / n;
    let (head_in, tail_in) = input.split_at(full * n);
    let (head_out, tail_out) = out.split_at_mut(full * n);
    matmul(Mat { data: head_in, ld: n }, ct, head_out, n, Dims { m: full, q: n, p: n });
    if !tail_in.is_empty() {
        let mut padded = vec![0.0f32; n];
        padded[..tail_in.len()].copy_from_slice(tail_in);
        matmul(Mat { data: &padded, ld: n }, ct, tail_out, n, Dims { m: 1, q: n, p: n });
    }
}

/// Inverse of [`line_apply`], with `c = C`; the padded tail is transformed into scratch and
/// truncated.
pub(super) fn line_apply_inverse(dim: DimPlan, c: &[f32], coeffs: &[f32], out: &mut [f32]) {
    let n = dim.chunk;
    let full = dim.len / n;
    let (head_in, tail_in) = coeffs.split_at(full * n);
    let (head_out, tail_out) = out.split_at_mut(full * n);
    matmul(Mat { data: head_in, ld: n }, c, head_out, n, Dims { m: full, q: n, p: n });
    if !tail_out.is_empty() {
        let mut scratch = vec![0.0f32; n];
        matmul(Mat { data: tail_in, ld: n }, c, &mut scratch, n, Dims { m: 1, q: n, p: n });
        tail_out.copy_from_slice(&scratch[..tail_out.len()]);
    }
}

/// A row-major matrix operand with row stride `ld` (which may exceed its width).
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) ld: usize,
}

/// Sizes of a product `(m × q) · (q × p)`.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub(super) m: usize,
    pub(super) q: usize,
    pub(super) p: usize,
}

/// Rows of the left operand that share each loaded row of the right operand. With the
/// 8-column blocks of [`row_block`], 4 × 8 accumulators fill half the 16 SSE registers of
/// baseline x86-64; 16-column or 6-row blocks spilled and measured slower.
const MR: usize = 4;

/// `out[i·ldo + j] = Σ_l a[i·a.ld + l] · b[l·p + j]`, summed in increasing `l`.
///
/// The right operand `b` is dense (`q × p`). The work is split into blocks of `MR` rows ×
/// `W` columns whose accumulators live in registers for the whole sum over `l`; the column
/// loop inside a block is what vectorizes.
pub(super) fn matmul(a: Mat<'_>, b: &[f32], out: &mut [f32], ldo: usize, d: Dims) {
    let b = &b[..d.q * d.p];
    let mut i = 0;
    while i + MR <= d.m {
        row_block::<MR>(a.data, a.ld, i, b, out, ldo, d);
        i += MR;
    }
    while i < d.m {
        row_block::<1>(a.data, a.ld, i, b, out, ldo, d);
        i += 1;
    }
}

/// Rows `i .. i + R` of the product, all columns.
fn row_block<const R: usize>(
    a: &[f32],
    lda: usize,
    i: usize,
    b: &[f32],
    out: &mut [f32],
    ldo: usize,
    d: Dims,
) {
    let a_rows: [&[f32]; R] = std::array::from_fn(|r| &a[(i + r) * lda..(i + r) * lda + d.q]);
    let mut j = 0;
    while j + 8 <= d.p {
        store(&col_block::<R, 8>(&a_rows, b, d.p, j), out, ldo, i, j);
        j += 8;
    }
    if j + 4 <= d.p {
        store(&col_block::<R, 4>(&a_rows, b, d.p, j), out, ldo, i, j);
        j += 4;
    }
    while j < d.p {
        store(&col_block::<R, 1>(&a_rows, b, d.p, j), out, ldo, i, j);
        j += 1;
    }
}

/// The `R × W` block of the product at column `j`, accumulated in registers over all of `b`.
#[inline(always)]
fn col_block<const R: usize, const W: usize>(
    a_rows: &[&[f32]; R],
    b: &[f32],
    p: usize,
    j: usize,
) -> [[f32; W]; R] {
    let mut acc = [[0.0f32; W]; R];
    for (l, b_row) in b.chunks_exact(p).enumerate() {
        let bv = &b_row[j..j + W];
        for (acc_r, a_r) in acc.iter_mut().zip(a_rows) {
            let x = a_r[l];
            for (s, &bb) in acc_r.iter_mut().zip(bv) {
                *s += x * bb;
            }
        }
    }
    acc
}

/// Writes an accumulator block back to rows `i..` at column `j` of a strided output.
#[inline(always)]
fn store<const R: usize, const W: usize>(
    acc: &[[f32; W]; R],
    out: &mut [f32],
    ldo: usize,
    i: usize,
    j: usize,
) {
    for (r, acc_r) in acc.iter().enumerate() {
        let at = (i + r) * ldo + j;
        out[at..at + W].copy_from_slice(acc_r);
    }
}
