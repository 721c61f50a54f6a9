//! The whole compression pipeline as one configured object: optional chunked DCT → top-k →
//! optional quantization of the kept values → index packing, with a byte encoding whose
//! length is exact and whose decoder validates everything.
//!
//! A [`Compressor`] is built once per tensor (shape and configuration fixed) and reused
//! every round, so its scratch buffers are allocated once. Sender and receivers build it
//! from the same configuration; the decoder checks that the bytes agree with it.
//!
//! Aggregation happens in the transform domain: receivers [`Compressor::decode_sparse`]
//! each payload, combine them with [`crate::aggregate::scatter_mean`] into a buffer of
//! [`Compressor::transform_len`] elements, then call [`Compressor::inverse_transform`] once.
//!
//! # Byte layout (little-endian)
//! ```text
//! u8  format version (1)
//! u8  selection tag (0 = per chunk, 1 = global)
//! u32 element count of the tensor
//! u32 number of kept entries
//! ..  indices: pack::encode_chunked (per chunk) or pack::encode_sorted (global)
//! ..  values: quant::Quantized encoding, or the raw f32 values when unquantized
//! ```

use crate::aggregate::{scatter_mean_with, BlockMean, Contribution, MeanOver, ScatterScratch};
use crate::chunks::ChunkSpec;
use crate::dct::DctPlan;
use crate::error::{check_finite, check_len, invalid, malformed, KernelError, Result};
use crate::quant::{quantize_into, QuantConfig, Quantized};
use crate::sparse::Sparse;
use crate::{feedback, pack, topk};

/// Version 2: per-chunk indices may travel Rice-coded ([`pack::TAG_RICE`]); a version-1
/// peer would misread them, so it is told the version instead.
pub(crate) const FORMAT_VERSION: u8 = 2;
pub(crate) const TAG_PER_CHUNK: u8 = 0;
const TAG_GLOBAL: u8 = 1;
const HEADER_LEN: usize = 1 + 1 + 4 + 4;

/// The transform applied before selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Select directly on the values (SparseLoCo).
    None,
    /// Chunked orthonormal DCT-II with this chunk size per dimension (DeMo: 64).
    Dct {
        /// Requested chunk per dimension; see [`crate::dct::plan_dim`] for the rule.
        chunk: usize,
    },
}

/// Which entries are kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// `k` largest magnitudes of every chunk. Without a transform the chunks are
    /// `chunk_len` consecutive elements; with the DCT they are its tiles, and a tile
    /// smaller than `k` (a small tensor) is kept whole.
    PerChunk {
        /// Entries kept per chunk.
        k: usize,
    },
    /// The largest `fraction` of the whole tensor (0 < fraction ≤ 1).
    Global {
        /// Share of entries kept.
        fraction: f64,
    },
}

/// Everything that decides what a compressor sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompressorConfig {
    /// Transform before selection.
    pub transform: Transform,
    /// Chunk length for per-chunk selection without a transform. Ignored with the DCT.
    pub chunk_len: usize,
    /// What is kept.
    pub selection: Selection,
    /// How kept values are quantized; `None` sends them as f32.
    pub values: Option<QuantConfig>,
}

impl CompressorConfig {
    /// SparseLoCo: no transform, 64 of every 4096, 2-bit codebook values.
    pub fn sparseloco() -> Self {
        Self {
            transform: Transform::None,
            chunk_len: 4096,
            selection: Selection::PerChunk { k: 64 },
            values: Some(QuantConfig::sparseloco_2bit()),
        }
    }

    /// DeMo: 64×64 DCT tiles, 32 of each, f32 values (as the reference sends them).
    pub fn demo() -> Self {
        Self {
            transform: Transform::Dct { chunk: 64 },
            chunk_len: 4096,
            selection: Selection::PerChunk { k: 32 },
            values: None,
        }
    }

    /// DeMo's selection with SparseLoCo's 2-bit values: the DCT pipeline of the benchmarks.
    pub fn demo_2bit() -> Self {
        Self { values: Some(QuantConfig::sparseloco_2bit()), ..Self::demo() }
    }

    /// DeMo's selection with 1-bit sign values, as Psyche sends them.
    pub fn demo_sign() -> Self {
        Self { values: Some(QuantConfig::sign_1bit()), ..Self::demo() }
    }
}

/// What one call to [`Compressor::compress`] produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compressed {
    /// The encoding to send; its length is the exact byte count on the wire.
    pub bytes: Vec<u8>,
    /// In the transform domain, exactly what a receiver decodes from `bytes`.
    pub sent: Sparse,
}

/// A compressor for one tensor shape; see the module doc.
#[derive(Debug, Clone)]
pub struct Compressor {
    config: CompressorConfig,
    len: usize,
    dct: Option<DctPlan>,
    /// Chunking of the transform domain; `None` for global selection.
    chunks: Option<ChunkSpec>,
    transformed: Vec<f32>,
    selected: Sparse,
    quantized: Quantized,
}

impl Compressor {
    /// Builds a compressor for tensors of `shape` (row-major). Validates the configuration.
    pub fn new(config: CompressorConfig, shape: &[usize]) -> Result<Self> {
        let len = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| invalid("shape", format!("{shape:?} overflows")))?;
        if len == 0 {
            return Err(invalid("shape", format!("{shape:?} has no elements")));
        }
        if u32::try_from(len).is_err() {
            return Err(invalid("shape", format!("{len} elements exceed the u32 index range")));
        }
        if let Some(q) = &config.values {
            q.validate()?;
        }
        let dct = match config.transform {
            Transform::None => None,
            Transform::Dct { chunk } => Some(DctPlan::for_shape(shape, chunk)?),
        };
        let transform_len = dct.as_ref().map_or(len, DctPlan::coeff_len);
        let chunks = match config.selection {
            Selection::PerChunk { k } => match &dct {
                None => Some(ChunkSpec::new(transform_len, config.chunk_len, k)?),
                // A DCT tile is as large as the tensor allows (a bias of 10 gets a tile of
                // 10): keep the whole tile when it is smaller than k rather than refuse it.
                Some(plan) => {
                    if k == 0 {
                        return Err(invalid("k", "must be positive"));
                    }
                    Some(ChunkSpec::new(transform_len, plan.tile_len(), k.min(plan.tile_len()))?)
                }
            },
            Selection::Global { fraction } => {
                topk::k_for_fraction(transform_len, fraction)?;
                None
            }
        };
        Ok(Self {
            config,
            len,
            transformed: if dct.is_some() { vec![0.0; transform_len] } else { Vec::new() },
            dct,
            chunks,
            selected: Sparse::default(),
            quantized: Quantized::default(),
        })
    }

    /// The configuration this compressor was built with.
    pub fn config(&self) -> &CompressorConfig {
        &self.config
    }

    /// Elements of the tensor.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a compressor is never built for an empty tensor.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Elements of the transform domain (DCT coefficients, padded; or the tensor itself).
    pub fn transform_len(&self) -> usize {
        self.dct.as_ref().map_or(self.len, DctPlan::coeff_len)
    }

    /// Entries kept per call.
    pub fn kept(&self) -> usize {
        match (&self.chunks, self.config.selection) {
            (Some(spec), _) => spec.total_k(),
            // Validated in `new`.
            (None, Selection::Global { fraction }) => {
                topk::k_for_fraction(self.transform_len(), fraction).unwrap_or(1)
            }
            (None, Selection::PerChunk { .. }) => 0,
        }
    }

    /// The chunking of the transform domain (`None` for global selection).
    #[cfg(feature = "cuda")]
    pub(crate) fn chunk_spec(&self) -> Option<&ChunkSpec> {
        self.chunks.as_ref()
    }

    /// The DCT plan (`None` without a transform).
    #[cfg(feature = "cuda")]
    pub(crate) fn dct_plan(&self) -> Option<&DctPlan> {
        self.dct.as_ref()
    }

    /// The entries the last [`Compressor::compress`] kept, in the transform domain, with
    /// their values before quantization: what the value quantizer was given. Empty before
    /// the first call.
    pub fn last_selection(&self) -> &Sparse {
        &self.selected
    }

    /// The last call's quantized values (codes and per-block parameters, e.g. for
    /// [`crate::quant::bin_occupancy`]); `None` when values go as f32.
    pub fn last_quantized(&self) -> Option<&Quantized> {
        self.config.values.as_ref().map(|_| &self.quantized)
    }

    /// Floating-point operations of one forward transform (0 without a transform).
    pub fn transform_flops(&self) -> u64 {
        self.dct.as_ref().map_or(0, DctPlan::flops_forward)
    }

    /// Compresses `x` (row-major, `len()` elements, all finite).
    pub fn compress(&mut self, x: &[f32]) -> Result<Compressed> {
        let mut out = Compressed::default();
        self.compress_into(x, &mut out)?;
        Ok(out)
    }

    /// As [`Compressor::compress`], reusing `out`'s allocations.
    pub fn compress_into(&mut self, x: &[f32], out: &mut Compressed) -> Result<()> {
        check_len("tensor", self.len, x.len())?;
        let domain: &[f32] = match &self.dct {
            Some(plan) => {
                // The top-k below rejects any non-finite coefficient, and a NaN or infinity
                // in the input always yields one, so the transform skips its own check.
                plan.forward_unvalidated_values(x, &mut self.transformed)?;
                &self.transformed
            }
            None => x,
        };
        let selected = match &self.chunks {
            Some(spec) => topk::topk_per_chunk(domain, spec, &mut self.selected),
            None => {
                let k = self.kept();
                topk::topk_global(domain, k, &mut self.selected)
            }
        };
        if let (Err(e @ KernelError::NonFinite { .. }), Some(plan)) = (&selected, &self.dct) {
            return Err(non_finite_coefficients(plan, x, e.clone()));
        }
        selected?;

        out.bytes.clear();
        out.bytes.push(FORMAT_VERSION);
        out.bytes.push(if self.chunks.is_some() { TAG_PER_CHUNK } else { TAG_GLOBAL });
        out.bytes.extend_from_slice(&(self.len as u32).to_le_bytes());
        out.bytes.extend_from_slice(&(self.selected.len() as u32).to_le_bytes());
        match &self.chunks {
            Some(spec) => pack::encode_chunked(&self.selected.indices, spec, &mut out.bytes)?,
            None => pack::encode_sorted(&self.selected.indices, domain.len(), &mut out.bytes)?,
        }

        out.sent.indices.clear();
        out.sent.indices.extend_from_slice(&self.selected.indices);
        out.sent.values.clear();
        match &self.config.values {
            Some(q) => {
                quantize_into(&self.selected.values, q, &mut self.quantized)?;
                self.quantized.encode_into(&mut out.bytes);
                out.sent.values.resize(self.selected.len(), 0.0);
                self.quantized.dequantize_into(&mut out.sent.values)?;
            }
            None => {
                for v in &self.selected.values {
                    out.bytes.extend_from_slice(&v.to_le_bytes());
                }
                out.sent.values.extend_from_slice(&self.selected.values);
            }
        }
        Ok(())
    }

    /// Decodes bytes from a sender with the same configuration into the transform domain.
    /// Rejects bytes that are truncated, have trailing data, disagree with this
    /// configuration, or carry out-of-range indices or non-finite values.
    pub fn decode_sparse(&self, bytes: &[u8]) -> Result<Sparse> {
        const WHAT: &str = "compressed tensor";
        if bytes.len() < HEADER_LEN {
            return Err(malformed(
                WHAT,
                format!("{} bytes is shorter than the header", bytes.len()),
            ));
        }
        if bytes[0] != FORMAT_VERSION {
            return Err(malformed(
                WHAT,
                format!("format version {} (expected {FORMAT_VERSION})", bytes[0]),
            ));
        }
        let expected_tag = if self.chunks.is_some() { TAG_PER_CHUNK } else { TAG_GLOBAL };
        if bytes[1] != expected_tag {
            return Err(malformed(
                WHAT,
                format!("selection tag {} (expected {expected_tag})", bytes[1]),
            ));
        }
        let len = read_u32(&bytes[2..6]) as usize;
        if len != self.len {
            return Err(malformed(WHAT, format!("{len} elements, this tensor has {}", self.len)));
        }
        let count = read_u32(&bytes[6..10]) as usize;
        if count != self.kept() {
            return Err(malformed(
                WHAT,
                format!("{count} entries, the configuration keeps {}", self.kept()),
            ));
        }
        let mut at = HEADER_LEN;
        let (indices, used) = match &self.chunks {
            Some(spec) => pack::decode_chunked(&bytes[at..], spec)?,
            None => pack::decode_sorted(&bytes[at..], self.transform_len(), count)?,
        };
        if indices.len() != count {
            return Err(malformed(WHAT, format!("{} indices, header says {count}", indices.len())));
        }
        at += used;
        let values = match &self.config.values {
            Some(_) => {
                let (q, used) = Quantized::decode(&bytes[at..], count)?;
                if q.len != count {
                    return Err(malformed(WHAT, format!("{} values for {count} indices", q.len)));
                }
                at += used;
                q.dequantize()?
            }
            None => {
                let need = count * 4;
                let raw = bytes
                    .get(at..at + need)
                    .ok_or_else(|| malformed(WHAT, "truncated f32 values"))?;
                at += need;
                raw.chunks_exact(4).map(read_f32).collect()
            }
        };
        if at != bytes.len() {
            return Err(malformed(WHAT, format!("{} trailing bytes", bytes.len() - at)));
        }
        let sparse = Sparse { indices, values };
        sparse.validate(self.transform_len())?;
        Ok(sparse)
    }

    /// Maps a dense transform-domain buffer (`transform_len()` elements) back to the
    /// tensor's `len()` elements.
    pub fn inverse_transform(&self, transformed: &[f32], out: &mut [f32]) -> Result<()> {
        check_len("transformed", self.transform_len(), transformed.len())?;
        check_len("output", self.len, out.len())?;
        match &self.dct {
            Some(plan) => plan.inverse(transformed, out),
            None => {
                out.copy_from_slice(transformed);
                Ok(())
            }
        }
    }

    /// Receivers' whole aggregation in one call: the canonical mean of the members'
    /// transform-domain selections (see [`crate::aggregate`]) mapped back to the tensor's
    /// `len()` elements in `out`. Bit-identical to [`scatter_mean_with`] into a
    /// `transform_len()` buffer followed by [`Compressor::inverse_transform`], but with the
    /// DCT each tile's mean is transformed while it is in cache, so the coefficient buffer
    /// never goes through memory.
    ///
    /// [`scatter_mean_with`]: crate::aggregate::scatter_mean_with
    pub fn aggregate(
        &self,
        scratch: &mut ScatterScratch,
        contribs: &[Contribution<'_>],
        mode: MeanOver,
        out: &mut [f32],
    ) -> Result<()> {
        check_len("output", self.len, out.len())?;
        match &self.dct {
            None => scatter_mean_with(scratch, contribs, mode, out),
            Some(plan) => {
                let mut blocks = BlockMean::new(scratch, contribs, mode, plan.coeff_len())?;
                let tile_len = plan.tile_len();
                plan.inverse_tilewise(out, |t, buf| {
                    blocks.next_block(t * tile_len, buf)?;
                    Ok(None)
                })
            }
        }
    }

    /// Decodes `bytes` all the way back to a dense tensor of `len()` elements.
    pub fn decompress(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let sparse = self.decode_sparse(bytes)?;
        self.sparse_to_dense(&sparse)
    }

    /// The dense tensor that a transform-domain selection stands for.
    pub fn sparse_to_dense(&self, sparse: &Sparse) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.len];
        match &self.dct {
            Some(plan) => {
                let coeffs = sparse.to_dense(plan.coeff_len())?;
                plan.inverse(&coeffs, &mut out)?;
            }
            None => sparse.scatter_into(&mut out)?,
        }
        Ok(out)
    }

    /// Error feedback: removes from `x` (the tensor that was compressed) exactly what
    /// `sent` carries, so `x` keeps what has not been sent yet.
    pub fn subtract_sent(&self, x: &mut [f32], sent: &Sparse) -> Result<()> {
        check_len("tensor", self.len, x.len())?;
        match &self.dct {
            None => feedback::subtract_sent(x, sent),
            Some(_) => {
                let reconstructed = self.sparse_to_dense(sent)?;
                feedback::subtract_dense(x, &reconstructed)
            }
        }
    }
}

/// Why the transform of `x` under `plan` holds a non-finite coefficient (`found`, the
/// top-k's error at its position in the transform domain): a NaN or infinity of `x`
/// itself, reported at its position in `x`; or finite values too large for the DCT in
/// f32. Only called on that error, so the scans cost nothing on valid input.
pub(crate) fn non_finite_coefficients(
    plan: &DctPlan,
    x: &[f32],
    found: KernelError,
) -> KernelError {
    if let Err(e) = check_finite("x", x) {
        return e;
    }
    let max_abs = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let limit = plan.max_magnitude();
    if max_abs <= limit {
        // Cannot happen (the bound is proven for every path); keep the top-k's own words
        // rather than claim an overflow the bound rules out.
        return found;
    }
    KernelError::TransformOverflow {
        what: "x",
        max_abs,
        limit,
        tile_rows: plan.rows().chunk,
        tile_cols: plan.cols().chunk,
    }
}

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn read_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests;
