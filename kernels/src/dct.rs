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

use crate::error::{check_finite, check_len, invalid, Result};

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

/// Orthonormal DCT-II basis of size `n`, row-major (`[k * n + i]` is basis vector `k` at
/// point `i`), computed in f64 so that the only error is the final rounding to f32, and
/// with no libm call so that every machine builds the same bits.
fn dct_basis(n: usize) -> Vec<f32> {
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

/// The fast path's tables for lines of `n` points, flattened for the CUDA kernels (which
/// replay [`FastDct`]'s arithmetic with these exact values): the gather permutation, and
/// `[s0, mid.re, mid.im, tw4.., tw2.., last_tw.., pairs..]` with each `V` constant taken
/// from one lane (all lanes hold the same value). `None` when the CPU uses the dense path
/// for `n`.
#[cfg(feature = "cuda")]
pub(crate) fn fast_tables(n: usize) -> Option<(Vec<u32>, Vec<f32>)> {
    if !FastDct::supports(n) {
        return None;
    }
    let f = FastDct::new(n);
    let mut tab = vec![f.s0[0], f.mid[0][0], f.mid[1][0]];
    for t in &f.tw4 {
        for w in t {
            tab.extend([w[0][0], w[1][0]]);
        }
    }
    for w in f.tw2.iter().chain(&f.last_tw) {
        tab.extend([w[0][0], w[1][0]]);
    }
    for p in &f.pairs {
        tab.extend(p.iter().map(|v| v[0]));
    }
    let gather = f.gather.iter().map(|&g| g as u32).collect();
    Some((gather, tab))
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

/// How the chunks of one dimension are transformed.
#[derive(Debug, Clone)]
enum DimTransform {
    /// Dense products with the cached basis; any chunk length.
    Matrix(Basis),
    /// The factored transform of [`FastDct`]; power-of-two chunks of at least
    /// [`FAST_MIN_CHUNK`].
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
    /// Errors if a length is wrong or `input` holds a NaN or infinity.
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

/// Smallest chunk the fast path takes. A length-two chunk has no FFT left to factor, so it
/// stays on the matrix path.
const FAST_MIN_CHUNK: usize = 4;

/// Lines the fast path transforms together, one per lane of a `[f32; LANES]` vector, which
/// LLVM maps onto one SSE register (the x86-64 baseline).
const LANES: usize = 4;

// The 4 × 4 transposes between lines and vectors rely on it.
const _: () = assert!(LANES == 4);

/// One value of `LANES` lines.
type V = [f32; LANES];

/// `LANES` lines of one complex value.
#[derive(Clone, Copy)]
struct Cv {
    re: V,
    im: V,
}

/// `c` in every lane: tables hold their constants this way so that products read them as
/// vectors.
fn splat(c: f64) -> V {
    [c as f32; LANES]
}

#[inline(always)]
fn vload(s: &[f32], at: usize) -> V {
    let mut v = [0.0; LANES];
    v.copy_from_slice(&s[at..at + LANES]);
    v
}

#[inline(always)]
fn vstore(s: &mut [f32], at: usize, v: V) {
    s[at..at + LANES].copy_from_slice(&v);
}

#[inline(always)]
fn add(a: V, b: V) -> V {
    std::array::from_fn(|i| a[i] + b[i])
}

#[inline(always)]
fn sub(a: V, b: V) -> V {
    std::array::from_fn(|i| a[i] - b[i])
}

#[inline(always)]
fn mul(a: V, b: V) -> V {
    std::array::from_fn(|i| a[i] * b[i])
}

#[inline(always)]
fn neg(a: V) -> V {
    std::array::from_fn(|i| -a[i])
}

/// `c0·a + c1·b`, in that order.
#[inline(always)]
fn dot2(c0: V, a: V, c1: V, b: V) -> V {
    std::array::from_fn(|i| c0[i] * a[i] + c1[i] * b[i])
}

/// `c0·a − c1·b`, in that order.
#[inline(always)]
fn cross2(c0: V, a: V, c1: V, b: V) -> V {
    std::array::from_fn(|i| c0[i] * a[i] - c1[i] * b[i])
}

#[inline(always)]
fn cadd(a: Cv, b: Cv) -> Cv {
    Cv { re: add(a.re, b.re), im: add(a.im, b.im) }
}

#[inline(always)]
fn csub(a: Cv, b: Cv) -> Cv {
    Cv { re: sub(a.re, b.re), im: sub(a.im, b.im) }
}

/// `w·x` for a constant `w = [re, im]`.
#[inline(always)]
fn cmul(w: [V; 2], x: Cv) -> Cv {
    Cv { re: cross2(w[0], x.re, w[1], x.im), im: dot2(w[0], x.im, w[1], x.re) }
}

/// `conj(w)·x`, the transpose of [`cmul`].
#[inline(always)]
fn cmul_conj(w: [V; 2], x: Cv) -> Cv {
    Cv { re: dot2(w[0], x.re, w[1], x.im), im: cross2(w[0], x.im, w[1], x.re) }
}

/// Complex value `p` of a work buffer: `work[2p]` real, `work[2p + 1]` imaginary part.
#[inline(always)]
fn get(work: &[V], p: usize) -> Cv {
    Cv { re: work[2 * p], im: work[2 * p + 1] }
}

#[inline(always)]
fn set(work: &mut [V], p: usize, z: Cv) {
    work[2 * p] = z.re;
    work[2 * p + 1] = z.im;
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

/// `e^{−iπ·p/q}` as `[re, im]`, splatted.
fn twiddle(p: usize, q: usize) -> [V; 2] {
    let (c, s) = cos_sin_pi(p, q);
    [splat(c), splat(-s)]
}

/// Which way a fast transform runs: DCT-II (forward) or its transpose, DCT-III (inverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Forward,
    Inverse,
}

/// Reusable buffers of the fast path: three blocks of `n` vectors.
#[derive(Default)]
struct Scratch {
    buf: Vec<V>,
}

impl Scratch {
    fn blocks(&mut self, n: usize) -> (&mut [V], &mut [V], &mut [V]) {
        if self.buf.len() < 3 * n {
            self.buf.resize(3 * n, [0.0; LANES]);
        }
        let (a, rest) = self.buf.split_at_mut(n);
        let (b, rest) = rest.split_at_mut(n);
        (a, b, &mut rest[..n])
    }
}

/// One pass of FFT butterflies between the first and the last (see [`FastDct`]).
#[derive(Clone, Copy)]
enum Stage {
    /// The radix-2 stages of half-spans `h` and `2h` at once, twiddles from
    /// [`FastDct::tw4`] at `offset`.
    Radix4 { h: usize, offset: usize },
    /// The radix-2 stage of half-span `h`, twiddles from [`FastDct::tw2`] at `offset`.
    Radix2 { h: usize, offset: usize },
}

/// The most middle passes any supported length needs (`n = 2^k`, `k ≤ 10`, has at most
/// `k − 4` of them).
const MAX_STAGES: usize = 8;

/// The middle passes of a line of `n` points, in forward order, and their count. Pure
/// arithmetic on `n`, so that it folds away where `n` is a constant.
#[inline(always)]
fn stages(n: usize) -> ([Stage; MAX_STAGES], usize) {
    let h_last = n / 4;
    let mut out = [Stage::Radix2 { h: 0, offset: 0 }; MAX_STAGES];
    let mut count = 0;
    let (mut h, mut o4, mut o2) = (FastDct::first_span(n / 2), 0, 0);
    while h < h_last && count < MAX_STAGES {
        if 4 * h <= h_last {
            out[count] = Stage::Radix4 { h, offset: o4 };
            o4 += h;
            h *= 4;
        } else {
            out[count] = Stage::Radix2 { h, offset: o2 };
            o2 += h;
            h *= 2;
        }
        count += 1;
    }
    (out, count)
}

/// The orthonormal DCT-II of a power-of-two length `n = 2m` through a complex FFT of
/// length `m` (Makhoul's reordering), and its inverse as the exact transpose.
///
/// Forward, per line `x`:
/// 1. `v[j] = x[2j]`, `v[n−1−j] = x[2j+1]` (`j < m`), then `z[p] = v[2p] + i·v[2p+1]`, read
///    in bit-reversed order of `p`: one fixed permutation, [`FastDct::gather`].
/// 2. `Z = FFT_m(z)` by radix-2 decimation in time (natural order out). The first one or two
///    stages run while gathering, pairs of middle stages as radix-4 passes ([`Stage`]), and
///    the last stage together with step 3.
/// 3. The real FFT of `v` from `Z`, rotated and scaled into coefficients. For `k` in
///    `1..m/2` and `k' = m − k`, with `A = Z[k]`, `B = Z[k']`: `S = A + conj(B)`,
///    `D = A − conj(B)`, `T = e^{−2πik/n}·D/i`; then `P = S + T` is twice the real FFT at `k`
///    and `P' = conj(S − T)` twice that at `k'`, and `X[k] = Re(α_k·P)`,
///    `X[n−k] = −Im(α_k·P)` with `α_k = √(2/n)/2 · e^{−iπk/2n}` (likewise `k'`). `Z[0]` gives
///    `X[0]` and `X[m]`, and `Z[m/2]` gives `X[m/2]` and `X[n−m/2]`.
///
/// The whole forward map is the orthonormal `C`, so the inverse is its transpose, built pass
/// by pass in reverse: the transposed post-processing, the butterflies transposed
/// (`conj(w)` for `w`), and the permutation scattered back.
///
/// [`LANES`] lines run together, one per vector lane, and every operation is elementwise
/// across lanes, so a line's arithmetic does not depend on which lines share its vector.
#[derive(Debug, Clone)]
struct FastDct {
    n: usize,
    /// FFT input value `r` (`2p` the real and `2p + 1` the imaginary part of position `p`)
    /// is point `gather[r]` of the line.
    gather: Vec<usize>,
    /// Radix-4 twiddles `[e^{−iπj/h}, e^{−iπj/2h}, e^{−3iπj/2h}]`, `j < h`, of every
    /// radix-4 pass in order.
    tw4: Vec<[[V; 2]; 3]>,
    /// Radix-2 twiddles `e^{−iπj/h}`, `j < h`, of every radix-2 middle pass in order.
    tw2: Vec<[V; 2]>,
    /// The last stage's twiddles `e^{−iπj/h}`, `h = m/2`, `j < h`.
    last_tw: Vec<[V; 2]>,
    /// For `k` in `1..m/2` at index `k − 1`: `[c_k, s_k, c_k', s_k', re w, im w]`, where
    /// `(c_k, s_k) = √(2/n)/2 · (cos, sin)(πk/2n)` and `w = e^{−2πik/n}`.
    pairs: Vec<[V; 6]>,
    /// `√(2/n) · (cos, sin)(π/8)`: the rotation of `Z[m/2]`, where `B = A`.
    mid: [V; 2],
    /// `√(1/n)`, the scale of `X[0]`, and of `X[m]`, which is `√(2/n)·cos(π/4)`.
    s0: V,
}

impl FastDct {
    fn supports(n: usize) -> bool {
        n >= FAST_MIN_CHUNK && n.is_power_of_two() && n <= MAX_CHUNK
    }

    fn new(n: usize) -> Self {
        let m = n / 2;
        let h_last = m / 2;
        let bits = m.trailing_zeros();
        let gather = (0..n)
            .map(|r| {
                let p = (r / 2).reverse_bits() >> (usize::BITS - bits);
                let j = 2 * p + r % 2;
                if j < m {
                    2 * j
                } else {
                    2 * (n - 1 - j) + 1
                }
            })
            .collect();
        let (mut tw4, mut tw2) = (Vec::new(), Vec::new());
        let (list, count) = stages(n);
        for stage in &list[..count] {
            match *stage {
                Stage::Radix4 { h, .. } => tw4.extend(
                    (0..h).map(|j| [twiddle(j, h), twiddle(j, 2 * h), twiddle(3 * j, 2 * h)]),
                ),
                Stage::Radix2 { h, .. } => tw2.extend((0..h).map(|j| twiddle(j, h))),
            }
        }
        let last_tw = (0..h_last).map(|j| twiddle(j, h_last)).collect();
        let s = (2.0 / n as f64).sqrt();
        let rot = |k: usize| {
            let (c, sn) = cos_sin_pi(k, 2 * n);
            (splat(s / 2.0 * c), splat(s / 2.0 * sn))
        };
        let pairs = (1..h_last)
            .map(|k| {
                let ((ck, sk), (ck2, sk2), [wr, wi]) = (rot(k), rot(m - k), twiddle(k, m));
                [ck, sk, ck2, sk2, wr, wi]
            })
            .collect();
        let (c8, s8) = cos_sin_pi(1, 8);
        Self {
            n,
            gather,
            tw4,
            tw2,
            last_tw,
            pairs,
            mid: [splat(s * c8), splat(s * s8)],
            s0: splat((1.0 / n as f64).sqrt()),
        }
    }

    /// Half-span of the first stage left after the gathering pass, which runs the radix-2
    /// stages below it: two when there are at least three stages, one when there are two,
    /// none when the only stage is the last.
    fn first_span(m: usize) -> usize {
        match m {
            0..=2 => 1,
            4 => 2,
            _ => 4,
        }
    }

    /// Flops per line, the same in both directions (each pass's transpose performs exactly
    /// the multiplies and adds of the pass): butterflies without their trivial twiddles,
    /// then the post-processing.
    fn flops_per_line(&self) -> u64 {
        let m = (self.n / 2) as u64;
        let h_last = m / 2;
        let mut flops = match m {
            2 => 0,
            4 => 4 * 2,
            _ => 16 * (m / 4),
        };
        let (list, count) = stages(self.n);
        for stage in &list[..count] {
            flops += match *stage {
                Stage::Radix4 { h, .. } => (m / (4 * h as u64)) * (16 + 34 * (h as u64 - 1)),
                Stage::Radix2 { h, .. } => (m / (2 * h as u64)) * (4 + 10 * (h as u64 - 1)),
            };
        }
        // The last stage: j = 0 and j = h/2 (twiddle −i) cost four adds, the others ten.
        flops += if h_last >= 2 { 8 + 10 * (h_last - 2) } else { 4 };
        // Post-processing: four flops for X[0], X[m]; six for Z[m/2]; 26 per pair.
        flops + 10 + 26 * (h_last - 1)
    }

    /// 1-D forward over whole chunks, the padded last chunk through a zero-filled copy.
    fn line_forward(&self, dim: DimPlan, input: &[f32], out: &mut [f32]) {
        let n = self.n;
        let full = dim.len / n;
        let (head_in, tail_in) = input.split_at(full * n);
        let (head_out, tail_out) = out.split_at_mut(full * n);
        let mut scratch = Scratch::default();
        self.rows(Direction::Forward, head_in, n, full, head_out, n, &mut scratch);
        if !tail_in.is_empty() {
            let mut padded = vec![0.0f32; n];
            padded[..tail_in.len()].copy_from_slice(tail_in);
            self.rows(Direction::Forward, &padded, n, 1, tail_out, n, &mut scratch);
        }
    }

    /// Inverse of [`FastDct::line_forward`]; the padded last chunk is reconstructed into
    /// scratch and truncated.
    fn line_inverse(&self, dim: DimPlan, coeffs: &[f32], out: &mut [f32]) {
        let n = self.n;
        let full = dim.len / n;
        let (head_in, tail_in) = coeffs.split_at(full * n);
        let (head_out, tail_out) = out.split_at_mut(full * n);
        let mut scratch = Scratch::default();
        self.rows(Direction::Inverse, head_in, n, full, head_out, n, &mut scratch);
        if !tail_out.is_empty() {
            let mut padded = vec![0.0f32; n];
            self.rows(Direction::Inverse, tail_in, n, 1, &mut padded, n, &mut scratch);
            tail_out.copy_from_slice(&padded[..tail_out.len()]);
        }
    }

    /// Transforms `lines` contiguous lines, line `i` at `src[i·lds ..][.. n]`, into
    /// `dst[i·ldd ..][.. n]`, [`LANES`] lines at a time transposed into vectors and back.
    #[allow(clippy::too_many_arguments)]
    fn rows(
        &self,
        dir: Direction,
        src: &[f32],
        lds: usize,
        lines: usize,
        dst: &mut [f32],
        ldd: usize,
        scratch: &mut Scratch,
    ) {
        let block = |n: usize, scratch: &mut Scratch| {
            let (vals, work, out) = scratch.blocks(n);
            for i0 in (0..lines).step_by(LANES) {
                let count = LANES.min(lines - i0);
                lines_to_vectors(&src[i0 * lds..], lds, count, vals);
                self.block(dir, n, vals, work, out);
                vectors_to_lines(out, &mut dst[i0 * ldd..], ldd, count);
            }
        };
        with_n(self.n, scratch, block);
    }

    /// Transforms the `width` columns of an `n`-row block, column `j` at `src[p·lds + j]`,
    /// into `dst[k·ldd + j]`: [`LANES`] adjacent columns already form a vector.
    #[allow(clippy::too_many_arguments)]
    fn cols(
        &self,
        dir: Direction,
        src: &[f32],
        lds: usize,
        width: usize,
        dst: &mut [f32],
        ldd: usize,
        scratch: &mut Scratch,
    ) {
        let block = |n: usize, scratch: &mut Scratch| {
            let (vals, work, out) = scratch.blocks(n);
            for l in (0..width).step_by(LANES) {
                let count = LANES.min(width - l);
                columns_to_vectors(&src[l..], lds, count, vals);
                self.block(dir, n, vals, work, out);
                vectors_to_columns(out, &mut dst[l..], ldd, count);
            }
        };
        with_n(self.n, scratch, block);
    }

    /// One [`LANES`]-line block in direction `dir`.
    #[inline(always)]
    fn block(&self, dir: Direction, n: usize, src: &[V], work: &mut [V], out: &mut [V]) {
        match dir {
            Direction::Forward => self.forward_block(n, src, work, out),
            Direction::Inverse => self.inverse_block(n, src, work, out),
        }
    }

    /// The forward transform of [`LANES`] lines: points `vals` to coefficients `out`, all of
    /// length `n`.
    #[inline(always)]
    fn forward_block(&self, n: usize, vals: &[V], work: &mut [V], out: &mut [V]) {
        let (vals, work, out) = (&vals[..n], &mut work[..n], &mut out[..n]);
        self.first_pass(n, |point| vals[point], work);
        self.middle_passes(n, work);
        self.last_pass(n, work, out);
    }

    /// The inverse transform of [`LANES`] lines: coefficients `coeffs` to points `out`.
    #[inline(always)]
    fn inverse_block(&self, n: usize, coeffs: &[V], work: &mut [V], out: &mut [V]) {
        let (coeffs, work, out) = (&coeffs[..n], &mut work[..n], &mut out[..n]);
        self.last_pass_transposed(n, |k| coeffs[k], work);
        self.middle_passes_transposed(n, work);
        self.first_pass_transposed(n, work, |point, v| out[point] = v);
    }

    /// Gathers the FFT input from the line's points into `work` and runs the stages below
    /// [`FastDct::first_span`], whose twiddles are all one (or `−i`, a swap).
    #[inline(always)]
    fn first_pass(&self, n: usize, vals: impl Fn(usize) -> V, work: &mut [V]) {
        let m = n / 2;
        let g = &self.gather[..n];
        let at = |p: usize| Cv { re: vals(g[2 * p]), im: vals(g[2 * p + 1]) };
        match m {
            2 => {
                set(work, 0, at(0));
                set(work, 1, at(1));
            }
            4 => {
                for p in (0..m).step_by(2) {
                    let (a, b) = (at(p), at(p + 1));
                    set(work, p, cadd(a, b));
                    set(work, p + 1, csub(a, b));
                }
            }
            _ => {
                for p in (0..m).step_by(4) {
                    let z = radix4([at(p), at(p + 1), at(p + 2), at(p + 3)]);
                    for (i, z) in z.into_iter().enumerate() {
                        set(work, p + i, z);
                    }
                }
            }
        }
    }

    /// Transpose of [`FastDct::first_pass`]: butterflies transposed, then scattered to the
    /// line's points.
    #[inline(always)]
    fn first_pass_transposed(&self, n: usize, work: &[V], mut out: impl FnMut(usize, V)) {
        let m = n / 2;
        let g = &self.gather[..n];
        let mut put = |p: usize, z: Cv| {
            out(g[2 * p], z.re);
            out(g[2 * p + 1], z.im);
        };
        match m {
            2 => {
                put(0, get(work, 0));
                put(1, get(work, 1));
            }
            4 => {
                for p in (0..m).step_by(2) {
                    let (a, b) = (get(work, p), get(work, p + 1));
                    put(p, cadd(a, b));
                    put(p + 1, csub(a, b));
                }
            }
            _ => {
                for p in (0..m).step_by(4) {
                    let z = [get(work, p), get(work, p + 1), get(work, p + 2), get(work, p + 3)];
                    for (i, x) in radix4_transposed(z).into_iter().enumerate() {
                        put(p + i, x);
                    }
                }
            }
        }
    }

    /// The middle stages, in place.
    #[inline(always)]
    fn middle_passes(&self, n: usize, work: &mut [V]) {
        let (list, count) = stages(n);
        for stage in &list[..count] {
            match *stage {
                Stage::Radix4 { h, offset } => self.radix4_pass(n, h, offset, work),
                Stage::Radix2 { h, offset } => self.radix2_pass(n, h, offset, work),
            }
        }
    }

    /// Transpose of [`FastDct::middle_passes`].
    #[inline(always)]
    fn middle_passes_transposed(&self, n: usize, work: &mut [V]) {
        let (list, count) = stages(n);
        for stage in list[..count].iter().rev() {
            match *stage {
                Stage::Radix4 { h, offset } => self.radix4_pass_transposed(n, h, offset, work),
                Stage::Radix2 { h, offset } => self.radix2_pass_transposed(n, h, offset, work),
            }
        }
    }

    #[inline(always)]
    fn radix4_pass(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw4[offset..offset + h];
        for g0 in (0..n / 2).step_by(4 * h) {
            for (j, tw) in tw.iter().enumerate() {
                let p = [g0 + j, g0 + j + h, g0 + j + 2 * h, g0 + j + 3 * h];
                let x = [get(work, p[0]), get(work, p[1]), get(work, p[2]), get(work, p[3])];
                let y = if j == 0 {
                    x
                } else {
                    [x[0], cmul(tw[0], x[1]), cmul(tw[1], x[2]), cmul(tw[2], x[3])]
                };
                for (&p, z) in p.iter().zip(radix4(y)) {
                    set(work, p, z);
                }
            }
        }
    }

    #[inline(always)]
    fn radix4_pass_transposed(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw4[offset..offset + h];
        for g0 in (0..n / 2).step_by(4 * h) {
            for (j, tw) in tw.iter().enumerate() {
                let p = [g0 + j, g0 + j + h, g0 + j + 2 * h, g0 + j + 3 * h];
                let z = [get(work, p[0]), get(work, p[1]), get(work, p[2]), get(work, p[3])];
                let y = radix4_transposed(z);
                let x = if j == 0 {
                    y
                } else {
                    [y[0], cmul_conj(tw[0], y[1]), cmul_conj(tw[1], y[2]), cmul_conj(tw[2], y[3])]
                };
                for (&p, x) in p.iter().zip(x) {
                    set(work, p, x);
                }
            }
        }
    }

    #[inline(always)]
    fn radix2_pass(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw2[offset..offset + h];
        for g0 in (0..n / 2).step_by(2 * h) {
            for (j, &w) in tw.iter().enumerate() {
                let (pa, pb) = (g0 + j, g0 + j + h);
                let a = get(work, pa);
                let b = if j == 0 { get(work, pb) } else { cmul(w, get(work, pb)) };
                set(work, pa, cadd(a, b));
                set(work, pb, csub(a, b));
            }
        }
    }

    #[inline(always)]
    fn radix2_pass_transposed(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw2[offset..offset + h];
        for g0 in (0..n / 2).step_by(2 * h) {
            for (j, &w) in tw.iter().enumerate() {
                let (pa, pb) = (g0 + j, g0 + j + h);
                let (a, b) = (get(work, pa), get(work, pb));
                let d = csub(a, b);
                set(work, pa, cadd(a, b));
                set(work, pb, if j == 0 { d } else { cmul_conj(w, d) });
            }
        }
    }

    /// The last FFT stage and the post-processing, `work` to coefficients `out`.
    /// Butterflies `j` and `h − j` of the last stage produce exactly the `Z` of the pairs
    /// `(j, m − j)` and `(h − j, h + j)`, so each group goes from registers to coefficients.
    #[inline(always)]
    fn last_pass(&self, n: usize, work: &[V], out: &mut [V]) {
        let m = n / 2;
        let h = m / 2;
        let [mc, ms] = self.mid;
        let (a, b) = (get(work, 0), get(work, h));
        let (z0, zh) = (cadd(a, b), csub(a, b));
        out[0] = mul(self.s0, add(z0.re, z0.im));
        out[m] = mul(self.s0, sub(z0.re, z0.im));
        out[h] = cross2(mc, zh.re, ms, zh.im);
        out[n - h] = dot2(ms, zh.re, mc, zh.im);
        if h < 2 {
            return;
        }
        let (tw, pairs) = (&self.last_tw[..h], &self.pairs[..h - 1]);
        // j = h/2: the twiddle is −i, and (−i)·b = (b.im, −b.re).
        let j = h / 2;
        let (a, b) = (get(work, j), get(work, j + h));
        let zj = Cv { re: add(a.re, b.im), im: sub(a.im, b.re) };
        let zjh = Cv { re: sub(a.re, b.im), im: add(a.im, b.re) };
        post_pair(n, j, pairs[j - 1], zj, zjh, out);
        for j in 1..h / 2 {
            let jj = h - j;
            let (a, b) = (get(work, j), cmul(tw[j], get(work, j + h)));
            let (c, d) = (get(work, jj), cmul(tw[jj], get(work, jj + h)));
            let (zj, zjh, zjj, zjjh) = (cadd(a, b), csub(a, b), cadd(c, d), csub(c, d));
            post_pair(n, j, pairs[j - 1], zj, zjjh, out);
            post_pair(n, jj, pairs[jj - 1], zjj, zjh, out);
        }
    }

    /// Transpose of [`FastDct::last_pass`]: coefficients `src` to `work`.
    #[inline(always)]
    fn last_pass_transposed(&self, n: usize, src: impl Fn(usize) -> V, work: &mut [V]) {
        let m = n / 2;
        let h = m / 2;
        let [mc, ms] = self.mid;
        let (x0, xm, xh, xnh) = (src(0), src(m), src(h), src(n - h));
        let z0 = Cv { re: mul(self.s0, add(x0, xm)), im: mul(self.s0, sub(x0, xm)) };
        let zh = Cv { re: dot2(mc, xh, ms, xnh), im: cross2(mc, xnh, ms, xh) };
        set(work, 0, cadd(z0, zh));
        set(work, h, csub(z0, zh));
        if h < 2 {
            return;
        }
        let (tw, pairs) = (&self.last_tw[..h], &self.pairs[..h - 1]);
        let j = h / 2;
        let (zj, zjh) = post_pair_transposed(n, j, pairs[j - 1], &src);
        let d = csub(zj, zjh);
        set(work, j, cadd(zj, zjh));
        // The transpose of multiplying by −i is multiplying by i: i·d = (−d.im, d.re).
        set(work, j + h, Cv { re: neg(d.im), im: d.re });
        for j in 1..h / 2 {
            let jj = h - j;
            let (zj, zjjh) = post_pair_transposed(n, j, pairs[j - 1], &src);
            let (zjj, zjh) = post_pair_transposed(n, jj, pairs[jj - 1], &src);
            set(work, j, cadd(zj, zjh));
            set(work, j + h, cmul_conj(tw[j], csub(zj, zjh)));
            set(work, jj, cadd(zjj, zjjh));
            set(work, jj + h, cmul_conj(tw[jj], csub(zjj, zjjh)));
        }
    }
}

/// Forward transform of one tile whose two dimensions are both fast: `src` (row stride
/// `lds`, `rows.n × cols.n`) to the dense coefficient tile `out`.
///
/// First the columns, [`LANES`] at a time: adjacent columns of a row already form a vector,
/// so the first pass loads straight from `src`. Each result block is transposed into
/// `rows_v`, which holds every group of [`LANES`] rows as one vector per column, exactly the
/// input of the row transform, whose results are transposed into the row-major output. So
/// besides the two transforms the data only moves through two 4 × 4 transposes.
fn fast_tile_forward(
    rows: &FastDct,
    cols: &FastDct,
    src: &[f32],
    lds: usize,
    out: &mut [f32],
    scratch: &mut Vec<V>,
) {
    let mut run = |nr: usize, nc: usize, scratch: &mut Vec<V>| {
        let (rows_v, work, res) = tile_blocks(scratch, nr, nc);
        for l in (0..nc).step_by(LANES) {
            let (work, res) = (&mut work[..nr], &mut res[..nr]);
            rows.first_pass(nr, |point| vload(src, point * lds + l), work);
            rows.middle_passes(nr, work);
            rows.last_pass(nr, work, res);
            for (g, block) in res[..nr].chunks_exact(LANES).enumerate() {
                let t = transpose4([block[0], block[1], block[2], block[3]]);
                rows_v[g * nc + l..][..LANES].copy_from_slice(&t);
            }
        }
        for (g, line_v) in rows_v.chunks_exact(nc).enumerate() {
            cols.forward_block(nc, line_v, work, res);
            vectors_to_lines(&res[..nc], &mut out[g * LANES * nc..], nc, LANES);
        }
    };
    if rows.n == DEFAULT_CHUNK && cols.n == DEFAULT_CHUNK {
        run(DEFAULT_CHUNK, DEFAULT_CHUNK, scratch);
    } else {
        run(rows.n, cols.n, scratch);
    }
}

/// Inverse of [`fast_tile_forward`]: the dense coefficient tile `coeffs` to `dst` (row
/// stride `ldd`). The transforms commute, so this one also starts with the columns, read in
/// place, and ends with the rows, whose points are transposed into the output rows: the
/// stores are then whole runs of a row rather than one vector per row.
fn fast_tile_inverse(
    rows: &FastDct,
    cols: &FastDct,
    coeffs: &[f32],
    dst: &mut [f32],
    ldd: usize,
    scratch: &mut Vec<V>,
) {
    let mut run = |nr: usize, nc: usize, scratch: &mut Vec<V>| {
        let (rows_v, work, res) = tile_blocks(scratch, nr, nc);
        for l in (0..nc).step_by(LANES) {
            let (work, res) = (&mut work[..nr], &mut res[..nr]);
            rows.last_pass_transposed(nr, |k| vload(coeffs, k * nc + l), work);
            rows.middle_passes_transposed(nr, work);
            rows.first_pass_transposed(nr, work, |point, v| res[point] = v);
            for (g, block) in res.chunks_exact(LANES).enumerate() {
                let t = transpose4([block[0], block[1], block[2], block[3]]);
                rows_v[g * nc + l..][..LANES].copy_from_slice(&t);
            }
        }
        for (g, line_v) in rows_v.chunks_exact(nc).enumerate() {
            cols.inverse_block(nc, line_v, work, res);
            vectors_to_lines(&res[..nc], &mut dst[g * LANES * ldd..], ldd, LANES);
        }
    };
    if rows.n == DEFAULT_CHUNK && cols.n == DEFAULT_CHUNK {
        run(DEFAULT_CHUNK, DEFAULT_CHUNK, scratch);
    } else {
        run(rows.n, cols.n, scratch);
    }
}

/// Splits `scratch` into the row-group vectors of an `nr × nc` tile and two blocks for one
/// line transform.
fn tile_blocks(scratch: &mut Vec<V>, nr: usize, nc: usize) -> (&mut [V], &mut [V], &mut [V]) {
    let (tile, line) = (nr * nc / LANES, nr.max(nc));
    if scratch.len() < tile + 2 * line {
        scratch.resize(tile + 2 * line, [0.0; LANES]);
    }
    let (rows_v, rest) = scratch.split_at_mut(tile);
    let (a, rest) = rest.split_at_mut(line);
    (rows_v, a, &mut rest[..line])
}

/// Runs `f` with the chunk length: the one that matters ([`DEFAULT_CHUNK`]) as a constant,
/// so that its loops unroll and its indices need no checks, any other as a variable.
#[inline(always)]
fn with_n(n: usize, scratch: &mut Scratch, mut f: impl FnMut(usize, &mut Scratch)) {
    if n == DEFAULT_CHUNK {
        f(DEFAULT_CHUNK, scratch);
    } else {
        f(n, scratch);
    }
}

/// Coefficients `X[k], X[n−k], X[m−k], X[m+k]` from `A = Z[k]`, `B = Z[m−k]`, with the
/// pair's constants `c` (see [`FastDct::pairs`]).
#[inline(always)]
fn post_pair(n: usize, k: usize, c: [V; 6], a: Cv, b: Cv, out: &mut [V]) {
    let m = n / 2;
    let [ck, sk, ck2, sk2, wr, wi] = c;
    let s = Cv { re: add(a.re, b.re), im: sub(a.im, b.im) };
    let d = Cv { re: sub(a.re, b.re), im: add(a.im, b.im) };
    let t = Cv { re: dot2(wr, d.im, wi, d.re), im: cross2(wi, d.im, wr, d.re) };
    let p = cadd(s, t);
    let p2 = Cv { re: sub(s.re, t.re), im: sub(t.im, s.im) };
    out[k] = dot2(ck, p.re, sk, p.im);
    out[n - k] = cross2(sk, p.re, ck, p.im);
    out[m - k] = dot2(ck2, p2.re, sk2, p2.im);
    out[m + k] = cross2(sk2, p2.re, ck2, p2.im);
}

/// Transpose of [`post_pair`]: `(A, B)` from the four coefficients of pair `k`.
#[inline(always)]
fn post_pair_transposed(n: usize, k: usize, c: [V; 6], src: &impl Fn(usize) -> V) -> (Cv, Cv) {
    let m = n / 2;
    let [ck, sk, ck2, sk2, wr, wi] = c;
    let (xk, xnk, xk2, xnk2) = (src(k), src(n - k), src(m - k), src(m + k));
    let p = Cv { re: dot2(ck, xk, sk, xnk), im: cross2(sk, xk, ck, xnk) };
    let p2 = Cv { re: dot2(ck2, xk2, sk2, xnk2), im: cross2(sk2, xk2, ck2, xnk2) };
    let s = Cv { re: add(p.re, p2.re), im: sub(p.im, p2.im) };
    let t = Cv { re: sub(p.re, p2.re), im: add(p.im, p2.im) };
    let d = Cv { re: cross2(wi, t.re, wr, t.im), im: dot2(wr, t.re, wi, t.im) };
    let a = Cv { re: add(s.re, d.re), im: add(s.im, d.im) };
    let b = Cv { re: sub(s.re, d.re), im: sub(d.im, s.im) };
    (a, b)
}

/// `vals[p]` = lanes `0 .. count` (`count ≤ LANES`) of row `p` of `src` (row stride `lds`), the
/// other lanes zero.
fn columns_to_vectors(src: &[f32], lds: usize, count: usize, vals: &mut [V]) {
    if count == LANES {
        for (p, v) in vals.iter_mut().enumerate() {
            *v = vload(src, p * lds);
        }
    } else {
        for (p, v) in vals.iter_mut().enumerate() {
            *v = partial_load(&src[p * lds..][..count]);
        }
    }
}

/// Inverse of [`columns_to_vectors`]: writes lanes `0 .. count` of every row of `dst`.
fn vectors_to_columns(vals: &[V], dst: &mut [f32], ldd: usize, count: usize) {
    if count == LANES {
        for (k, &v) in vals.iter().enumerate() {
            vstore(dst, k * ldd, v);
        }
    } else {
        for (k, v) in vals.iter().enumerate() {
            dst[k * ldd..][..count].copy_from_slice(&v[..count]);
        }
    }
}

/// The two radix-2 stages of a radix-4 group after its twiddles: with `y = [x0, w²x1, w·x2,
/// w³x3]`, `a0 = y0 + y1`, `a1 = y0 − y1`, `p = y2 + y3`, `q = y2 − y3`, it returns
/// `[a0 + p, a1 − i·q, a0 − p, a1 + i·q]`.
#[inline(always)]
fn radix4(y: [Cv; 4]) -> [Cv; 4] {
    let (a0, a1) = (cadd(y[0], y[1]), csub(y[0], y[1]));
    let (p, q) = (cadd(y[2], y[3]), csub(y[2], y[3]));
    [
        cadd(a0, p),
        Cv { re: add(a1.re, q.im), im: sub(a1.im, q.re) },
        csub(a0, p),
        Cv { re: sub(a1.re, q.im), im: add(a1.im, q.re) },
    ]
}

/// Transpose of [`radix4`].
#[inline(always)]
fn radix4_transposed(z: [Cv; 4]) -> [Cv; 4] {
    let (a0, p) = (cadd(z[0], z[2]), csub(z[0], z[2]));
    let a1 = cadd(z[1], z[3]);
    // q = i·(z1 − z3)
    let d = csub(z[1], z[3]);
    let q = Cv { re: neg(d.im), im: d.re };
    [cadd(a0, a1), csub(a0, a1), cadd(p, q), csub(p, q)]
}

/// The `s.len() ≤ LANES` lanes from `s`, the rest zero.
#[inline(always)]
fn partial_load(s: &[f32]) -> V {
    let mut v = [0.0; LANES];
    v[..s.len()].copy_from_slice(s);
    v
}

/// `vals[c]` = point `c` of lines `0 .. count` (`count ≤ LANES`) of `src` (line stride `lds`),
/// lanes of missing lines zero.
fn lines_to_vectors(src: &[f32], lds: usize, count: usize, vals: &mut [V]) {
    let n = vals.len();
    if count == LANES {
        let rows: [&[f32]; LANES] = std::array::from_fn(|i| &src[i * lds..][..n]);
        for (c, out) in (0..n).step_by(LANES).zip(vals.chunks_exact_mut(LANES)) {
            let t = transpose4([
                vload(rows[0], c),
                vload(rows[1], c),
                vload(rows[2], c),
                vload(rows[3], c),
            ]);
            out.copy_from_slice(&t);
        }
    } else {
        for (c, v) in vals.iter_mut().enumerate() {
            *v = std::array::from_fn(|i| if i < count { src[i * lds + c] } else { 0.0 });
        }
    }
}

/// Inverse of [`lines_to_vectors`]: writes lines `0 .. count` of `dst` from `vals`.
fn vectors_to_lines(vals: &[V], dst: &mut [f32], ldd: usize, count: usize) {
    let n = vals.len();
    if count == LANES {
        for (c, block) in (0..n).step_by(LANES).zip(vals.chunks_exact(LANES)) {
            let t = transpose4([block[0], block[1], block[2], block[3]]);
            for (i, t) in t.iter().enumerate() {
                vstore(dst, i * ldd + c, *t);
            }
        }
    } else {
        for (c, v) in vals.iter().enumerate() {
            for (i, &x) in v.iter().enumerate().take(count) {
                dst[i * ldd + c] = x;
            }
        }
    }
}

/// Checks finiteness as [`check_finite`] does, with the same error, but scans first with a
/// loop that vectorizes (the error path's `position` does not).
fn check_all_finite(what: &'static str, values: &[f32]) -> Result<()> {
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

/// The transpose of a 4 × 4 block held as four rows, in SSE shuffles. LLVM does not find
/// them on its own and moves single floats instead; with the shuffles the 2-D transform
/// measured about 11 % faster and the 1-D one 17 to 45 %. Data movement only, so the
/// results are the same bits as with the portable version below.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn transpose4(a: [V; 4]) -> [V; 4] {
    use std::arch::x86_64::{
        _mm_loadu_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_storeu_ps, _mm_unpackhi_ps, _mm_unpacklo_ps,
    };
    let mut t = [[0.0f32; 4]; 4];
    // SAFETY: SSE is part of the x86-64 baseline, and every load and store touches exactly
    // the four floats of one `[f32; 4]` that it is given a pointer to.
    unsafe {
        let (r0, r1) = (_mm_loadu_ps(a[0].as_ptr()), _mm_loadu_ps(a[1].as_ptr()));
        let (r2, r3) = (_mm_loadu_ps(a[2].as_ptr()), _mm_loadu_ps(a[3].as_ptr()));
        let lo01 = _mm_unpacklo_ps(r0, r1); // a00 a10 a01 a11
        let lo23 = _mm_unpacklo_ps(r2, r3); // a20 a30 a21 a31
        let hi01 = _mm_unpackhi_ps(r0, r1); // a02 a12 a03 a13
        let hi23 = _mm_unpackhi_ps(r2, r3); // a22 a32 a23 a33
        _mm_storeu_ps(t[0].as_mut_ptr(), _mm_movelh_ps(lo01, lo23));
        _mm_storeu_ps(t[1].as_mut_ptr(), _mm_movehl_ps(lo23, lo01));
        _mm_storeu_ps(t[2].as_mut_ptr(), _mm_movelh_ps(hi01, hi23));
        _mm_storeu_ps(t[3].as_mut_ptr(), _mm_movehl_ps(hi23, hi01));
    }
    t
}

/// The transpose of a 4 × 4 block held as four rows.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn transpose4(a: [V; 4]) -> [V; 4] {
    std::array::from_fn(|j| std::array::from_fn(|i| a[i][j]))
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
            let max_abs =
                got[0].iter().zip(&got[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
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
}

#[cfg(test)]
mod bench {
    use super::*;
    use std::time::Instant;

    fn best_ns_per_elem(reps: usize, elems: usize, mut f: impl FnMut()) -> f64 {
        f();
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        best * 1e9 / elems as f64
    }

    /// Not a test: prints ns/element of both paths. Run in release with
    /// `cargo test --release dct::bench -- --ignored --nocapture`; `DCT_BENCH_CHUNK` picks
    /// another requested chunk than 64.
    #[test]
    #[ignore]
    fn throughput() {
        let chunk = std::env::var("DCT_BENCH_CHUNK").map_or(DEFAULT_CHUNK, |c| c.parse().unwrap());
        let x: Vec<f32> = (0..1 << 18).map(|i| i as f32).collect();
        let t = best_ns_per_elem(20, x.len(), || check_all_finite("x", &x).unwrap());
        println!("finiteness check, 1 MiB: {t:.3} ns/elem");
        let shapes: &[(&str, usize, usize)] = &[
            ("2-D 256x256 (in L2)", 256, 256),
            ("2-D 512x512 (in cache)", 512, 512),
            ("1-D 256K (in cache)", 1, 1 << 18),
            ("2-D 4096x4096", 4096, 4096),
            ("1-D 16M", 1, 1 << 24),
            ("2-D 4099x1000 (edge tiles)", 4099, 1000),
        ];
        for &(name, r, c) in shapes {
            let fast = DctPlan::new_2d(r, c, chunk).unwrap();
            let matrix = DctPlan::from_dims_with(fast.rows(), fast.cols(), false).unwrap();
            let x: Vec<f32> = (0..fast.input_len())
                .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let mut y = vec![0.0f32; fast.coeff_len()];
            let mut z = vec![0.0f32; fast.input_len()];
            for (label, plan) in [("matrix", &matrix), ("fast", &fast)] {
                let n = plan.input_len();
                let fwd = best_ns_per_elem(5, n, || plan.forward(&x, &mut y).unwrap());
                let inv = best_ns_per_elem(5, n, || plan.inverse(&y, &mut z).unwrap());
                println!(
                    "{name:28} {label:6}: forward {fwd:6.3} ns/elem, inverse {inv:6.3} ns/elem"
                );
            }
        }
    }
}
