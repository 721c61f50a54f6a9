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
//! # Two paths
//!
//! A dimension whose chunk is a power of two from 4 to [`MAX_CHUNK`] (the default 64
//! included) is transformed by an O(n log n) factorization, `FastDct`: Makhoul's mapping of
//! the DCT-II onto a complex FFT of half the length, radix-2 decimation in time fused into
//! few passes, and a real-FFT post-processing that folds in the orthonormal scale. Its
//! inverse is its exact transpose. Every other chunk length (the chunk rule also yields
//! lengths like 35, 48 or 50) uses dense products with the cached basis `C`. In 2-D each
//! dimension picks its path on its own. The paths compute the same transform and agree to
//! rounding (2 to 3e-7 relative at chunk 64, where the fast path is also the more
//! accurate, with 28.5 instead of 256 flops per element of a 64 × 64 tile).
//!
//! # Reproducibility
//!
//! All replicas must decode the same aggregated coefficients to the same update, on
//! whatever x86-64 CPUs they run, so the bits of every result depend only on the input:
//! - Each output is computed by a fixed sequence of separate IEEE multiplies and adds
//!   (never fused: the code has no `mul_add`, and LLVM does not contract on its own), in an
//!   order fixed by the chunk length alone.
//! - Vectorization only runs across independent outputs (matrix path) or independent lines
//!   (fast path: four lines per SSE register, one per lane), so the arithmetic of one output
//!   does not depend on the vector width or on which lines share a register.
//! - There is no runtime CPU-feature dispatch. The only explicit intrinsics are baseline-SSE
//!   shuffles in the fast path's 4 × 4 transposes, which move data and do no arithmetic.
//! - The fast path's twiddle tables come from `cos_sin_pi`, which uses basic arithmetic
//!   only, rather than the platform's libm.
//!
//! # Files
//!
//! This file holds the chunk rule, [`DctPlan`] (which picks a path per dimension and walks
//! the tiles), and the exact trigonometry that both paths build their tables from. The
//! paths live beside it: `dense.rs` the matrix path, `fast.rs` the O(n log n)
//! factorization, and `lanes.rs` the four-line vector arithmetic that the fast path is
//! written in.

mod dense;
mod fast;
mod lanes;
#[cfg(test)]
mod tests;

use crate::error::{check_finite, check_len, invalid, Result};
use dense::{line_apply, line_apply_inverse, matmul, Basis, Dims, Mat};
use fast::{fast_tile_forward, fast_tile_inverse, Direction, FastDct, Scratch};

#[cfg(feature = "cuda")]
pub(crate) use dense::basis;
#[cfg(feature = "cuda")]
pub(crate) use fast::fast_tables;

/// The chunk length used when callers have no reason to pick another (DeMo's choice).
pub const DEFAULT_CHUNK: usize = 64;

/// The largest chunk a plan accepts. A plan caches chunk × chunk basis matrices for chunks
/// that are not powers of two, so an unbounded chunk would turn a configuration mistake into
/// a huge allocation; transforms over more than this many points per chunk are not what
/// per-chunk compression wants.
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

/// How the chunks of one dimension are transformed.
#[derive(Debug, Clone)]
enum DimTransform {
    /// Dense products with the cached basis; any chunk length.
    Matrix(Basis),
    /// The factored transform of [`FastDct`]; power-of-two chunks of at least
    /// [`FAST_MIN_CHUNK`](fast::FAST_MIN_CHUNK).
    Fast(FastDct),
}

impl DimTransform {
    fn new(n: usize, allow_fast: bool) -> Self {
        if allow_fast && FastDct::supports(n) {
            Self::Fast(FastDct::new(n))
        } else {
            Self::Matrix(Basis::new(n))
        }
    }

    /// Flops of transforming one line of `n` points (either direction).
    fn flops_per_line(&self, n: usize) -> u64 {
        match self {
            Self::Matrix(_) => 2 * (n as u64).pow(2),
            Self::Fast(f) => f.flops_per_line(),
        }
    }
}

/// A chunked DCT over a 1-D or 2-D buffer: the chunking of both dimensions and, per
/// dimension, the cached basis matrix or the fast transform's tables. Build once per tensor
/// shape and reuse.
#[derive(Debug, Clone)]
pub struct DctPlan {
    rows: DimPlan,
    cols: DimPlan,
    row_t: DimTransform,
    col_t: DimTransform,
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

    /// The same plan with every dimension on the matrix path.
    ///
    /// Exists for the `dct_paths` benchmark of `meridian-benches`, which times both paths on
    /// one shape; not part of the supported API. Infallible, unlike building a plan from
    /// [`DimPlan`]s: `self`'s dimensions were checked when it was made.
    #[doc(hidden)]
    pub fn matrix_path_twin(&self) -> Self {
        Self {
            rows: self.rows,
            cols: self.cols,
            row_t: DimTransform::new(self.rows.chunk, false),
            col_t: DimTransform::new(self.cols.chunk, false),
        }
    }

    fn from_dims(rows: DimPlan, cols: DimPlan) -> Result<Self> {
        Self::from_dims_with(rows, cols, true)
    }

    /// `allow_fast = false` keeps every dimension on the matrix path, so tests can compare
    /// the two paths on the same shape.
    fn from_dims_with(rows: DimPlan, cols: DimPlan, allow_fast: bool) -> Result<Self> {
        let overflow =
            || invalid("shape", format!("{} × {} elements overflow", rows.len, cols.len));
        rows.len.checked_mul(cols.len).ok_or_else(overflow)?;
        rows.padded.checked_mul(cols.padded).ok_or_else(overflow)?;
        Ok(Self {
            rows,
            cols,
            row_t: DimTransform::new(rows.chunk, allow_fast),
            col_t: DimTransform::new(cols.chunk, allow_fast),
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

    /// The largest input magnitude the transform takes on every path without overflowing
    /// f32: `f32::MAX / (2 · tile_len)`. Every coefficient, and every partial sum on the
    /// way to it, adds up at most `tile_len` inputs times weights below one per dimension
    /// pass, with a factor of two to spare for the fast path's unscaled FFT sums; larger
    /// finite inputs may overflow ([`crate::KernelError::TransformOverflow`]).
    pub fn max_magnitude(&self) -> f32 {
        f32::MAX / (2.0 * self.tile_len() as f32)
    }

    /// Number of tiles, `coeff_len / tile_len`.
    pub fn num_tiles(&self) -> usize {
        self.rows.chunks() * self.cols.chunks()
    }

    /// Floating-point operations that [`forward`] performs on the path the plan chose, for
    /// throughput reporting; [`inverse`] performs the same number. Each dimension counts
    /// its own path per line of its chunk length `n`: the matrix path `2n²` (one
    /// multiply-add per point and output, counted as two), the fast path the adds and
    /// multiplies of its butterflies and post-processing (912 at `n = 64`, against 8192),
    /// without the trivial twiddles it skips. Data movement (gathers, transposes, padding)
    /// is not counted.
    ///
    /// [`forward`]: DctPlan::forward
    /// [`inverse`]: DctPlan::inverse
    pub fn flops_forward(&self) -> u64 {
        let per_tile = match self.line() {
            Some((dim, t)) => t.flops_per_line(dim.chunk),
            None => {
                let (cr, cc) = (self.rows.chunk, self.cols.chunk);
                // cr lines along the columns, then cc lines along the rows.
                cr as u64 * self.col_t.flops_per_line(cc)
                    + cc as u64 * self.row_t.flops_per_line(cr)
            }
        };
        per_tile.saturating_mul(self.num_tiles() as u64)
    }

    /// When one dimension has length one, the tile layout is exactly the 1-D layout of the
    /// other, and the transform along the unit dimension is the identity; such plans run the
    /// cheaper 1-D path.
    fn line(&self) -> Option<(DimPlan, &DimTransform)> {
        if self.rows.len == 1 {
            Some((self.cols, &self.col_t))
        } else if self.cols.len == 1 {
            Some((self.rows, &self.row_t))
        } else {
            None
        }
    }

    /// Transforms `input` (row-major, [`input_len`] elements) into `coeffs`
    /// ([`coeff_len`] elements, tile-major as in the module doc).
    ///
    /// Errors if a length is wrong or `input` holds a NaN or infinity. Finite input above
    /// [`DctPlan::max_magnitude`] may overflow to infinite coefficients, which this does
    /// not check (the compress pipeline does, and says so).
    ///
    /// [`input_len`]: DctPlan::input_len
    /// [`coeff_len`]: DctPlan::coeff_len
    pub fn forward(&self, input: &[f32], coeffs: &mut [f32]) -> Result<()> {
        check_all_finite("input", input)?;
        self.forward_unvalidated_values(input, coeffs)
    }

    /// [`DctPlan::forward`] without the up-front finiteness pass over `input`, for callers
    /// that check every coefficient anyway (the compress pipeline's top-k does): a NaN or
    /// infinity in a tile's input makes coefficients of that tile non-finite, so it is still
    /// caught, one pass over memory sooner. Lengths are checked.
    pub(crate) fn forward_unvalidated_values(
        &self,
        input: &[f32],
        coeffs: &mut [f32],
    ) -> Result<()> {
        check_len("input", self.input_len(), input.len())?;
        check_len("coeffs", self.coeff_len(), coeffs.len())?;
        match self.line() {
            Some((dim, DimTransform::Matrix(basis))) => line_apply(dim, &basis.ct, input, coeffs),
            Some((dim, DimTransform::Fast(fast))) => fast.line_forward(dim, input, coeffs),
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
        check_all_finite("coeffs", coeffs)?;
        match self.line() {
            Some((dim, DimTransform::Matrix(basis))) => {
                line_apply_inverse(dim, &basis.c, coeffs, output)
            }
            Some((dim, DimTransform::Fast(fast))) => fast.line_inverse(dim, coeffs, output),
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
        let mut scratch = Scratch::default();
        let mut tile_scratch = Vec::new();
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
            if let (DimTransform::Fast(fr), DimTransform::Fast(fc)) = (&self.row_t, &self.col_t) {
                fast_tile_forward(fr, fc, src, lda, out, &mut tile_scratch);
                continue;
            }
            // half = X · C_cᵀ (every tile row is a line of the column dimension), then
            // Y = C_r · half (every column of half is a line of the row dimension).
            match &self.col_t {
                DimTransform::Matrix(basis) => matmul(
                    Mat { data: src, ld: lda },
                    &basis.ct,
                    &mut half,
                    cc,
                    Dims { m: cr, q: cc, p: cc },
                ),
                DimTransform::Fast(fast) => {
                    fast.rows(Direction::Forward, src, lda, cr, &mut half, cc, &mut scratch);
                }
            }
            match &self.row_t {
                DimTransform::Matrix(basis) => matmul(
                    Mat { data: &basis.c, ld: cr },
                    &half,
                    out,
                    cc,
                    Dims { m: cr, q: cr, p: cc },
                ),
                DimTransform::Fast(fast) => {
                    fast.cols(Direction::Forward, &half, cc, cc, out, cc, &mut scratch)
                }
            }
        }
    }

    fn tiles_inverse(&self, coeffs: &[f32], output: &mut [f32]) {
        let tile_len = self.tile_len();
        // The source never fails, so neither does the transform.
        let _ = self
            .tiles_inverse_with(output, |t, _| Ok(Some(&coeffs[t * tile_len..(t + 1) * tile_len])));
    }

    /// Inverse transform whose coefficients arrive one tile at a time, in tile order:
    /// `tile(t, buf)` either returns tile `t`'s coefficients or writes them into `buf` (one
    /// tile long) and returns `None`. A producer can so hand over each tile while it is in
    /// cache; the arithmetic, and so every bit of the output, is that of
    /// [`DctPlan::inverse`]. Does not check finiteness: that is the producer's job.
    pub(crate) fn inverse_tilewise<'c>(
        &self,
        output: &mut [f32],
        mut tile: impl FnMut(usize, &mut [f32]) -> Result<Option<&'c [f32]>>,
    ) -> Result<()> {
        check_len("output", self.input_len(), output.len())?;
        if self.line().is_some() {
            // Line plans transform the whole buffer at once: gather it first.
            let tile_len = self.tile_len();
            let mut coeffs = vec![0.0f32; self.coeff_len()];
            for (t, dst) in coeffs.chunks_exact_mut(tile_len).enumerate() {
                let mut buf = vec![0.0f32; tile_len];
                match tile(t, &mut buf)? {
                    Some(src) => dst.copy_from_slice(src),
                    None => dst.copy_from_slice(&buf),
                }
            }
            return self.inverse(&coeffs, output);
        }
        self.tiles_inverse_with(output, tile)
    }

    fn tiles_inverse_with<'c>(
        &self,
        output: &mut [f32],
        mut source: impl FnMut(usize, &mut [f32]) -> Result<Option<&'c [f32]>>,
    ) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        let (cr, cc) = (rows.chunk, cols.chunk);
        let tile_len = cr * cc;
        let mut half = vec![0.0f32; tile_len];
        let mut scattered = vec![0.0f32; tile_len];
        let mut filled = vec![0.0f32; tile_len];
        let mut scratch = Scratch::default();
        let mut tile_scratch = Vec::new();
        let tiles_per_row = cols.chunks();
        for t in 0..self.num_tiles() {
            let tile: &[f32] = match source(t, &mut filled)? {
                Some(s) => s,
                None => &filled,
            };
            let (r0, c0) = ((t / tiles_per_row) * cr, (t % tiles_per_row) * cc);
            let (nr, nc) = (cr.min(rows.len - r0), cc.min(cols.len - c0));
            let start = r0 * cols.len + c0;
            // Interior tiles are written in place, except that when only the rows are fast
            // the column pass's strided stores measured faster into scratch; edge tiles go
            // through scratch and only their real positions are copied out.
            let interior = nr == cr
                && nc == cc
                && !matches!(
                    (&self.row_t, &self.col_t),
                    (DimTransform::Fast(_), DimTransform::Matrix(_))
                );
            let (dst, ldo) =
                if interior { (&mut output[start..], cols.len) } else { (&mut scattered[..], cc) };
            match (&self.row_t, &self.col_t) {
                (DimTransform::Fast(fr), DimTransform::Fast(fc)) => {
                    fast_tile_inverse(fr, fc, tile, dst, ldo, &mut tile_scratch);
                }
                (row_t, col_t) => {
                    // half = Y · C_c, then X = C_rᵀ · half.
                    match col_t {
                        DimTransform::Matrix(basis) => matmul(
                            Mat { data: tile, ld: cc },
                            &basis.c,
                            &mut half,
                            cc,
                            Dims { m: cr, q: cc, p: cc },
                        ),
                        DimTransform::Fast(fast) => {
                            fast.rows(
                                Direction::Inverse,
                                tile,
                                cc,
                                cr,
                                &mut half,
                                cc,
                                &mut scratch,
                            );
                        }
                    }
                    match row_t {
                        DimTransform::Matrix(basis) => matmul(
                            Mat { data: &basis.ct, ld: cr },
                            &half,
                            dst,
                            ldo,
                            Dims { m: cr, q: cr, p: cc },
                        ),
                        DimTransform::Fast(fast) => {
                            fast.cols(Direction::Inverse, &half, cc, cc, dst, ldo, &mut scratch);
                        }
                    }
                }
            }
            if !interior {
                for (src, dst) in
                    scattered.chunks_exact(cc).zip(output[start..].chunks_mut(cols.len)).take(nr)
                {
                    dst[..nc].copy_from_slice(&src[..nc]);
                }
            }
        }
        Ok(())
    }
}

/// Checks finiteness as [`check_finite`] does, with the same error, but scans first with a
/// loop that vectorizes (the error path's `position` does not).
///
/// Public, and hidden from the docs, only for the `dct_paths` benchmark of
/// `meridian-benches`, which prints its throughput; not part of the supported API.
#[doc(hidden)]
pub fn check_all_finite(what: &'static str, values: &[f32]) -> Result<()> {
    // NaN and the infinities are exactly the values whose exponent bits are all ones.
    let any_bad = values
        .chunks(4096)
        .any(|c| c.iter().fold(false, |bad, v| bad | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000)));
    if any_bad {
        check_finite(what, values)
    } else {
        Ok(())
    }
}

/// `(cos(π·p/q), sin(π·p/q))` from IEEE basic arithmetic only.
///
/// The fast path's tables are rounded to f32 from these; computing them with `f64::cos`
/// would leave their last bits to the platform's libm, which may pick a different code path
/// on a different CPU. The angle is reduced exactly in integers to `[0, π/4]`, where a
/// Taylor series with a fixed number of terms is accurate to about 1e-16.
fn cos_sin_pi(p: usize, q: usize) -> (f64, f64) {
    let u = p % (2 * q);
    let quadrant = 2 * u / q;
    // The angle inside the quadrant is (π/2)·rem/q.
    let rem = 2 * u - quadrant * q;
    let (c, s) = if 2 * rem <= q {
        cos_sin_small(std::f64::consts::FRAC_PI_2 * rem as f64 / q as f64)
    } else {
        let (c, s) = cos_sin_small(std::f64::consts::FRAC_PI_2 * (q - rem) as f64 / q as f64);
        (s, c)
    };
    match quadrant {
        0 => (c, s),
        1 => (-s, c),
        2 => (-c, -s),
        _ => (s, -c),
    }
}

/// `(cos x, sin x)` for `0 ≤ x ≤ π/4` by nested Taylor series through `x^23`.
fn cos_sin_small(x: f64) -> (f64, f64) {
    let x2 = x * x;
    let (mut c, mut s) = (1.0f64, 1.0f64);
    for i in (1..=11u32).rev() {
        let i = f64::from(i);
        c = 1.0 - x2 / ((2.0 * i - 1.0) * (2.0 * i)) * c;
        s = 1.0 - x2 / ((2.0 * i) * (2.0 * i + 1.0)) * s;
    }
    (c, x * s)
}
