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
use crate::error::{check_len, invalid, malformed, Result};
use crate::quant::{quantize_into, QuantConfig, Quantized};
use crate::sparse::Sparse;
use crate::{feedback, pack, topk};

pub(crate) const FORMAT_VERSION: u8 = 1;
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

    /// DeMo's selection with 2-bit codebook values: the DCT pipeline of the benchmarks.
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
        match &self.chunks {
            Some(spec) => topk::topk_per_chunk(domain, spec, &mut self.selected)?,
            None => {
                let k = self.kept();
                topk::topk_global(domain, k, &mut self.selected)?;
            }
        }

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

fn read_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn read_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
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
        let indices = 1 + kept * 12 / 8;
        let q = QuantConfig::sparseloco_2bit();
        let blocks = kept.div_ceil(q.block);
        let values = 1 + 1 + 4 + 4 + blocks * 4 * 4 + kept * 2 / 8;
        assert_eq!(out.bytes.len(), HEADER_LEN + indices + values);
        // 1.56 % density at ~14 bits per entry: over 130× smaller than fp32.
        assert!(n * 4 / out.bytes.len() > 130, "{} bytes", out.bytes.len());
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
}
