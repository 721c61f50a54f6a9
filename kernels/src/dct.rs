//! Chunked orthonormal DCT-II and its inverse (DCT-III), 1-D and 2-D.
//!
//! This is the transform applied before per-chunk top-k: each dimension is cut into chunks,
//! and each chunk (1-D) or tile of chunk × chunk (2-D) is transformed on its own with the
//! orthonormal DCT-II basis `C`, `C[k][n] = s_k · cos(π (2n + 1) k / 2N)` with
//! `s_0 = √(1/N)` and `s_k = √(2/N)` otherwise, so `y = C·x` per chunk and `Y = C_r·X·C_cᵀ`
//! per tile. `C` is orthogonal, so the inverse is `x = Cᵀ·y` and norms are preserved.
//!
//! # Chunk rule
//!
//! For a dimension of length `len` and a requested chunk `c` ([`DEFAULT_CHUNK`] = 64):
//! 1. `len ≤ c`: one chunk spanning the whole dimension (chunk = `len`, no padding).
//! 2. otherwise the largest divisor `d` of `len` with `⌈c/2⌉ ≤ d ≤ c`: chunk `d`, no padding.
//! 3. otherwise chunk `c`, and the dimension is zero-padded to `⌈len/c⌉·c`; the coefficients
//!    are those of the padded vector, and the inverse drops the padded positions.
//!
//! Taking "the largest divisor ≤ c" without the lower bound would give a prime dimension
//! chunk 1, where the transform is the identity and compression by top-k degrades to
//! plain top-k on raw values. The lower bound keeps every chunk at least half the requested
//! size; padding instead costs at most `c − 1` extra coefficients per dimension, and since
//! padded positions are zeros the round trip stays exact and the norm is preserved.
//! See [`plan_dim`].
//!
//! # Coefficient layout
//!
//! Coefficients are stored tile-major: tiles are enumerated row-major over the tile grid
//! (tile `(ti, tj)` has index `ti · tiles_per_row + tj`), each tile's
//! [`DctPlan::tile_len`] coefficients are contiguous and row-major inside the tile. In 1-D,
//! tile `t` is chunk `t`. So `coeffs[t·tile_len .. (t+1)·tile_len]` is exactly the unit of a
//! per-chunk top-k.
//!
//! # Reproducibility
//!
//! Every output element is a sum accumulated in a fixed order with separate multiplies and
//! adds (never fused), and vectorization only runs across independent outputs. The bits of
//! the result therefore do not depend on the CPU's vector width, which matters because all
//! replicas must decode the same aggregated coefficients to the same update.

use crate::error::{check_finite, check_len, invalid, Result};

/// The chunk length used when callers have no reason to pick another (DeMo's choice).
pub const DEFAULT_CHUNK: usize = 64;

/// The largest chunk a plan accepts. A plan caches chunk × chunk basis matrices, so an
/// unbounded chunk would turn a configuration mistake into a huge allocation; transforms
/// over more than this many points per chunk are not what per-chunk compression wants.
pub const MAX_CHUNK: usize = 1024;

/// How one dimension is chunked (see the module doc for the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DimPlan {
    /// Length of the dimension in the input.
    pub len: usize,
    /// Points per chunk along this dimension.
    pub chunk: usize,
    /// Length in coefficient space: `len` rounded up to a multiple of `chunk`.
    pub padded: usize,
}

impl DimPlan {
    /// Number of chunks along this dimension.
    fn chunks(&self) -> usize {
        self.padded / self.chunk
    }
}

/// Chunks a dimension of `len` points with requested chunk `chunk` by the rule in the
/// module doc.
///
/// Errors if `len` or `chunk` is zero, if `chunk` exceeds [`MAX_CHUNK`], or if the padded
/// length overflows `usize`.
pub fn plan_dim(len: usize, chunk: usize) -> Result<DimPlan> {
    if len == 0 {
        return Err(invalid("len", "a dimension must hold at least one element"));
    }
    if chunk == 0 {
        return Err(invalid("chunk", "must be positive"));
    }
    if chunk > MAX_CHUNK {
        return Err(invalid("chunk", format!("{chunk} exceeds the maximum {MAX_CHUNK}")));
    }
    if len <= chunk {
        return Ok(DimPlan { len, chunk: len, padded: len });
    }
    let lower = chunk.div_ceil(2);
    if let Some(d) = (lower..=chunk).rev().find(|d| len % d == 0) {
        return Ok(DimPlan { len, chunk: d, padded: len });
    }
    let padded = len.div_ceil(chunk).checked_mul(chunk).ok_or_else(|| {
        invalid("len", format!("{len} padded to a multiple of {chunk} overflows"))
    })?;
    Ok(DimPlan { len, chunk, padded })
}

/// Orthonormal DCT-II basis of size `n`, row-major (`[k * n + i]` is basis vector `k` at
/// point `i`), computed in f64 so that the only error is the final rounding to f32.
fn dct_basis(n: usize) -> Vec<f32> {
    let nf = n as f64;
    let s0 = (1.0 / nf).sqrt();
    let sk = (2.0 / nf).sqrt();
    let mut out = Vec::with_capacity(n * n);
    for k in 0..n {
        let scale = if k == 0 { s0 } else { sk };
        for i in 0..n {
            // Reduce the argument's integer numerator modulo the period 4n before scaling,
            // so large chunks lose no accuracy to a big argument in `cos`.
            let num = ((2 * i + 1) * k) % (4 * n);
            let angle = std::f64::consts::PI * num as f64 / (2.0 * nf);
            out.push((scale * angle.cos()) as f32);
        }
    }
    out
}

/// Transpose of a square row-major `n × n` matrix.
fn transpose(m: &[f32], n: usize) -> Vec<f32> {
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
struct Basis {
    /// `C`, row-major.
    c: Vec<f32>,
    /// `Cᵀ`, row-major.
    ct: Vec<f32>,
}

impl Basis {
    fn new(n: usize) -> Self {
        let c = dct_basis(n);
        let ct = transpose(&c, n);
        Self { c, ct }
    }
}

/// A chunked DCT over a 1-D or 2-D buffer: the chunking of both dimensions and the cached
/// basis matrices. Build once per tensor shape and reuse.
#[derive(Debug, Clone)]
pub struct DctPlan {
    rows: DimPlan,
    cols: DimPlan,
    row_basis: Basis,
    col_basis: Basis,
}

/// The trivial plan of a dimension of length one (the row dimension of a 1-D plan).
const UNIT_DIM: DimPlan = DimPlan { len: 1, chunk: 1, padded: 1 };

impl DctPlan {
    /// A 1-D plan over `len` points with requested chunk `chunk`; its rows are `{1, 1, 1}`.
    ///
    /// Errors as [`plan_dim`] does.
    pub fn new_1d(len: usize, chunk: usize) -> Result<Self> {
        let cols = plan_dim(len, chunk)?;
        Self::from_dims(UNIT_DIM, cols)
    }

    /// A 2-D plan over a row-major `rows × cols` matrix, each dimension chunked with the
    /// requested `chunk`.
    ///
    /// Errors as [`plan_dim`] does, or if the element count or coefficient count overflows.
    pub fn new_2d(rows: usize, cols: usize, chunk: usize) -> Result<Self> {
        let r = plan_dim(rows, chunk)?;
        let c = plan_dim(cols, chunk)?;
        Self::from_dims(r, c)
    }

    /// The plan for a tensor of the given shape: 0-d and 1-d shapes give a 1-D plan over all
    /// elements; 2-d shapes a 2-D plan; higher ranks a 2-D plan with rows `shape[0]` and cols
    /// the product of the rest (a conv weight `[out, in, kh, kw]` becomes
    /// `[out, in·kh·kw]`).
    ///
    /// Errors on a zero-size dimension, on an element count that overflows `usize`, and as
    /// [`plan_dim`] does.
    pub fn for_shape(shape: &[usize], chunk: usize) -> Result<Self> {
        if let Some(axis) = shape.iter().position(|&d| d == 0) {
            return Err(invalid("shape", format!("dimension {axis} of {shape:?} is zero")));
        }
        let overflow = || invalid("shape", format!("the element count of {shape:?} overflows"));
        match shape {
            [] => Self::new_1d(1, chunk),
            [n] => Self::new_1d(*n, chunk),
            [r, c] => Self::new_2d(*r, *c, chunk),
            [r, rest @ ..] => {
                let cols = rest
                    .iter()
                    .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                    .ok_or_else(overflow)?;
                Self::new_2d(*r, cols, chunk)
            }
        }
    }

    fn from_dims(rows: DimPlan, cols: DimPlan) -> Result<Self> {
        let overflow =
            || invalid("shape", format!("{} × {} elements overflow", rows.len, cols.len));
        rows.len.checked_mul(cols.len).ok_or_else(overflow)?;
        rows.padded.checked_mul(cols.padded).ok_or_else(overflow)?;
        Ok(Self {
            rows,
            cols,
            row_basis: Basis::new(rows.chunk),
            col_basis: Basis::new(cols.chunk),
        })
    }

    /// Chunking of the row dimension (`{1, 1, 1}` for a 1-D plan).
    pub fn rows(&self) -> DimPlan {
        self.rows
    }

    /// Chunking of the column dimension (the only dimension of a 1-D plan).
    pub fn cols(&self) -> DimPlan {
        self.cols
    }

    /// Elements in the input buffer: `rows.len · cols.len`.
    pub fn input_len(&self) -> usize {
        self.rows.len * self.cols.len
    }

    /// Coefficients produced: `rows.padded · cols.padded`.
    pub fn coeff_len(&self) -> usize {
        self.rows.padded * self.cols.padded
    }

    /// Coefficients per tile, `rows.chunk · cols.chunk`: the chunk length for per-chunk top-k
    /// on the coefficients.
    pub fn tile_len(&self) -> usize {
        self.rows.chunk * self.cols.chunk
    }

    /// Number of tiles, `coeff_len / tile_len`.
    pub fn num_tiles(&self) -> usize {
        self.rows.chunks() * self.cols.chunks()
    }

    /// Floating-point operations (multiply-adds counted as two) that [`forward`] performs,
    /// for throughput reporting. [`inverse`] performs the same number.
    ///
    /// [`forward`]: DctPlan::forward
    /// [`inverse`]: DctPlan::inverse
    pub fn flops_forward(&self) -> u64 {
        let per_tile = match self.line() {
            Some((dim, _)) => 2 * (dim.chunk as u64).pow(2),
            None => {
                let (cr, cc) = (self.rows.chunk as u64, self.cols.chunk as u64);
                2 * (cr * cc * cc + cr * cr * cc)
            }
        };
        per_tile.saturating_mul(self.num_tiles() as u64)
    }

    /// When one dimension has length one, the tile layout is exactly the 1-D layout of the
    /// other, and the transform along the unit dimension is the identity; such plans run the
    /// cheaper 1-D path.
    fn line(&self) -> Option<(DimPlan, &Basis)> {
        if self.rows.len == 1 {
            Some((self.cols, &self.col_basis))
        } else if self.cols.len == 1 {
            Some((self.rows, &self.row_basis))
        } else {
            None
        }
    }

    /// Transforms `input` (row-major, [`input_len`] elements) into `coeffs`
    /// ([`coeff_len`] elements, tile-major as in the module doc).
    ///
    /// Errors if a length is wrong or `input` holds a NaN or infinity.
    ///
    /// [`input_len`]: DctPlan::input_len
    /// [`coeff_len`]: DctPlan::coeff_len
    pub fn forward(&self, input: &[f32], coeffs: &mut [f32]) -> Result<()> {
        check_len("input", self.input_len(), input.len())?;
        check_len("coeffs", self.coeff_len(), coeffs.len())?;
        check_finite("input", input)?;
        match self.line() {
            Some((dim, basis)) => line_apply(dim, &basis.ct, input, coeffs),
            None => self.tiles_forward(input, coeffs),
        }
        Ok(())
    }

    /// Inverts [`forward`]: writes the [`input_len`] real positions of `output` from
    /// `coeffs` ([`coeff_len`] elements, tile-major); coefficients of padded positions only
    /// contribute through the transform and are not written anywhere.
    ///
    /// Errors if a length is wrong or `coeffs` holds a NaN or infinity.
    ///
    /// [`forward`]: DctPlan::forward
    /// [`input_len`]: DctPlan::input_len
    /// [`coeff_len`]: DctPlan::coeff_len
    pub fn inverse(&self, coeffs: &[f32], output: &mut [f32]) -> Result<()> {
        check_len("coeffs", self.coeff_len(), coeffs.len())?;
        check_len("output", self.input_len(), output.len())?;
        check_finite("coeffs", coeffs)?;
        match self.line() {
            Some((dim, basis)) => line_apply_inverse(dim, &basis.c, coeffs, output),
            None => self.tiles_inverse(coeffs, output),
        }
        Ok(())
    }

    fn tiles_forward(&self, input: &[f32], coeffs: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let (cr, cc) = (rows.chunk, cols.chunk);
        let tile_len = cr * cc;
        let mut gathered = vec![0.0f32; tile_len];
        let mut half = vec![0.0f32; tile_len];
        let tiles_per_row = cols.chunks();
        for (t, out) in coeffs.chunks_exact_mut(tile_len).enumerate() {
            let (r0, c0) = ((t / tiles_per_row) * cr, (t % tiles_per_row) * cc);
            let (nr, nc) = (cr.min(rows.len - r0), cc.min(cols.len - c0));
            let start = r0 * cols.len + c0;
            // Interior tiles are read in place; only edge tiles need a zero-padded copy.
            let (src, lda) = if nr == cr && nc == cc {
                (&input[start..], cols.len)
            } else {
                gathered.fill(0.0);
                for (dst, src) in
                    gathered.chunks_exact_mut(cc).zip(input[start..].chunks(cols.len)).take(nr)
                {
                    dst[..nc].copy_from_slice(&src[..nc]);
                }
                (&gathered[..], cc)
            };
            // half = X · C_cᵀ, then Y = C_r · half.
            matmul(
                Mat { data: src, ld: lda },
                &self.col_basis.ct,
                &mut half,
                cc,
                Dims { m: cr, q: cc, p: cc },
            );
            matmul(
                Mat { data: &self.row_basis.c, ld: cr },
                &half,
                out,
                cc,
                Dims { m: cr, q: cr, p: cc },
            );
        }
    }

    fn tiles_inverse(&self, coeffs: &[f32], output: &mut [f32]) {
        let (rows, cols) = (self.rows, self.cols);
        let (cr, cc) = (rows.chunk, cols.chunk);
        let tile_len = cr * cc;
        let mut half = vec![0.0f32; tile_len];
        let mut scattered = vec![0.0f32; tile_len];
        let tiles_per_row = cols.chunks();
        for (t, tile) in coeffs.chunks_exact(tile_len).enumerate() {
            let (r0, c0) = ((t / tiles_per_row) * cr, (t % tiles_per_row) * cc);
            let (nr, nc) = (cr.min(rows.len - r0), cc.min(cols.len - c0));
            let start = r0 * cols.len + c0;
            // half = Y · C_c, then X = C_rᵀ · half.
            matmul(
                Mat { data: tile, ld: cc },
                &self.col_basis.c,
                &mut half,
                cc,
                Dims { m: cr, q: cc, p: cc },
            );
            let ct_r = Mat { data: &self.row_basis.ct, ld: cr };
            if nr == cr && nc == cc {
                matmul(ct_r, &half, &mut output[start..], cols.len, Dims { m: cr, q: cr, p: cc });
            } else {
                matmul(ct_r, &half, &mut scattered, cc, Dims { m: cr, q: cr, p: cc });
                for (src, dst) in
                    scattered.chunks_exact(cc).zip(output[start..].chunks_mut(cols.len)).take(nr)
                {
                    dst[..nc].copy_from_slice(&src[..nc]);
                }
            }
        }
    }
}

/// 1-D transform of `input` (`dim.len` points) into `out` (`dim.padded` coefficients) with
/// `ct = Cᵀ`: every chunk is a row of a `chunks × chunk` matrix, so all full chunks go through
/// one matrix product that reuses each basis row across several chunks.
fn line_apply(dim: DimPlan, ct: &[f32], input: &[f32], out: &mut [f32]) {
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
fn line_apply_inverse(dim: DimPlan, c: &[f32], coeffs: &[f32], out: &mut [f32]) {
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
struct Mat<'a> {
    data: &'a [f32],
    ld: usize,
}

/// Sizes of a product `(m × q) · (q × p)`.
#[derive(Clone, Copy)]
struct Dims {
    m: usize,
    q: usize,
    p: usize,
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
fn matmul(a: Mat<'_>, b: &[f32], out: &mut [f32], ldo: usize, d: Dims) {
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

#[cfg(test)]
mod tests {
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
                        s * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2.0 * nf))
                            .cos()
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
        assert_eq!(plan.flops_forward(), 6 * 2 * (35 * 64 * 64 + 35 * 35 * 64));

        let big = DctPlan::new_2d(4096, 4096, 64).unwrap();
        assert_eq!(big.flops_forward(), 4096 * 2 * 2 * 64 * 64 * 64);
        let line = DctPlan::new_1d(1 << 24, 64).unwrap();
        assert_eq!(line.rows(), DimPlan { len: 1, chunk: 1, padded: 1 });
        assert_eq!(line.num_tiles(), 1 << 18);
        assert_eq!(line.tile_len(), 64);
        assert_eq!(line.flops_forward(), (1 << 18) * 2 * 64 * 64);
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
                assert!(
                    (f64::from(tile[0]) - dc).abs() < tol * dc,
                    "{shape:?}: {} vs {dc}",
                    tile[0]
                );
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
        assert!(matches!(
            plan_dim(huge, 64),
            Err(KernelError::InvalidParameter { name: "len", .. })
        ));
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
}
