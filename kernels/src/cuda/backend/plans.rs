//! What the launches take, computed on the host: the DCT's tile geometry and per-dimension
//! tables on the device (mirroring the C structs of dct.cuh), and the sizes and parameters
//! of quantizing and of packing indices, chosen exactly as the CPU modules choose them.

use cudarc::driver::DeviceRepr;

use super::{blocks, device_err, u32_of, CudaBackend, DeviceBuffer, MAX_LINE, MAX_TILE};
use crate::chunks::ChunkSpec;
use crate::dct::DctPlan;
use crate::error::{invalid, Result};
use crate::quant::{Bits, QuantConfig, Quantized, Rounding, Scheme, SchemeTag};

/// The geometry of a chunked DCT as the kernels take it (`TileGeometry` in dct.cuh).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TileGeometry {
    rows: u32,
    cols: u32,
    rc: u32,
    cc: u32,
    tiles_per_row: u32,
    line: u32,
}

// SAFETY: a plain `#[repr(C)]` struct of u32s, laid out as the C struct it mirrors.
unsafe impl DeviceRepr for TileGeometry {}

impl TileGeometry {
    /// The geometry of `plan`, or an error when a chunk exceeds what the kernels hold.
    pub(crate) fn of(plan: &DctPlan) -> Result<Self> {
        let (r, c) = (plan.rows(), plan.cols());
        if r.chunk > MAX_LINE || c.chunk > MAX_LINE || plan.tile_len() > MAX_TILE {
            return Err(device_err(format!(
                "DCT chunks of {} x {} exceed the {MAX_LINE} points per line the kernels hold",
                r.chunk, c.chunk
            )));
        }
        let u = |v: usize| u32::try_from(v).map_err(|_| invalid("shape", "exceeds u32"));
        Ok(Self {
            rows: u(r.len)?,
            cols: u(c.len)?,
            rc: u(r.chunk)?,
            cc: u(c.chunk)?,
            tiles_per_row: u(c.padded / c.chunk)?,
            // As `DctPlan::line`: a plan with one row (or one column) is a line plan.
            line: if r.len == 1 {
                1
            } else if c.len == 1 {
                2
            } else {
                0
            },
        })
    }
}

/// One dimension's transform as the kernels take it (`DimDev` in dct.cuh): device
/// addresses of its tables and basis.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DimDev {
    gather: u64,
    tab: u64,
    c: u64,
    n: u32,
    fast: u32,
}

// SAFETY: `#[repr(C)]`, three 8-byte addresses then two u32s, as the C struct (which holds
// three pointers then two u32s) on a 64-bit device.
unsafe impl DeviceRepr for DimDev {}

/// One dimension's tables on the device.
#[derive(Debug)]
struct DimTables {
    gather: DeviceBuffer<u32>,
    tab: DeviceBuffer<f32>,
    c: DeviceBuffer<f32>,
    n: u32,
    fast: bool,
}

impl DimTables {
    fn new(backend: &CudaBackend, n: usize) -> Result<Self> {
        let (gather, tab, fast) = match crate::dct::fast_tables(n) {
            Some((g, t)) => (g, t, true),
            None => (Vec::new(), Vec::new(), false),
        };
        Ok(Self {
            gather: backend.upload(&gather)?,
            tab: backend.upload(&tab)?,
            c: backend.upload(&crate::dct::basis(n))?,
            n: u32_of("chunk", n)?,
            fast,
        })
    }

    fn dev(&self) -> DimDev {
        DimDev {
            gather: self.gather.ptr(),
            tab: self.tab.ptr(),
            c: self.c.ptr(),
            n: self.n,
            fast: u32::from(self.fast),
        }
    }
}

/// A DCT plan's tables on the device: for each dimension the fast path's permutation and
/// constants or the dense basis, the same `f32` values the CPU computes with.
#[derive(Debug)]
pub struct DctBases {
    pub(crate) geometry: TileGeometry,
    pub(crate) tiles: usize,
    rows: DimTables,
    cols: DimTables,
}

impl DctBases {
    /// Uploads `plan`'s tables. Errors when a chunk exceeds 64 points.
    pub fn new(backend: &CudaBackend, plan: &DctPlan) -> Result<Self> {
        let geometry = TileGeometry::of(plan)?;
        Ok(Self {
            geometry,
            tiles: plan.num_tiles(),
            rows: DimTables::new(backend, plan.rows().chunk)?,
            cols: DimTables::new(backend, plan.cols().chunk)?,
        })
    }

    /// The row and column dimensions as kernel arguments.
    pub(crate) fn dims(&self) -> (DimDev, DimDev) {
        (self.rows.dev(), self.cols.dev())
    }
}

/// What quantizing `n` values under a configuration takes and produces.
#[derive(Debug, Clone)]
pub(crate) struct QuantPlan {
    pub(crate) n: usize,
    pub(crate) block: usize,
    pub(crate) bits: Bits,
    pub(crate) scheme: u32,
    pub(crate) clip: f32,
    pub(crate) stochastic: u32,
    pub(crate) seed: u64,
    /// Parameters in all.
    pub(crate) params: usize,
    /// Bytes of packed codes.
    pub(crate) packed: usize,
}

impl QuantPlan {
    pub(crate) fn new(cfg: &QuantConfig, n: usize) -> Result<Self> {
        cfg.validate()?;
        u32_of("values", n)?;
        // One CUDA block per quantization block.
        blocks(n.div_ceil(cfg.block))?;
        let (scheme, clip, per_block) = match cfg.scheme {
            Scheme::Absmax => (0, 0.0, 1),
            Scheme::Codebook { clip_sigmas } => (1, clip_sigmas, 1usize << cfg.bits.count()),
            Scheme::SignLloyd => (2, 0.0, 1usize << cfg.bits.count()),
            // Streaming DiLoCo, the one user of FP4, quantizes on the host.
            Scheme::Fp4 => {
                return Err(invalid(
                    "scheme",
                    "fp4 values are quantized on the host, not by the CUDA kernels",
                ))
            }
        };
        let (stochastic, seed) = match cfg.rounding {
            Rounding::Nearest => (0, 0),
            Rounding::Stochastic { seed } => (1, seed),
        };
        let per_byte = 8 / cfg.bits.count() as usize;
        Ok(Self {
            n,
            block: cfg.block,
            bits: cfg.bits,
            scheme,
            clip,
            stochastic,
            seed,
            params: n.div_ceil(cfg.block) * per_block,
            packed: n.div_ceil(per_byte),
        })
    }

    pub(crate) fn finish(&self, codes: Vec<u8>, params: Vec<f32>) -> Result<Quantized> {
        let q = Quantized {
            bits: self.bits,
            scheme: match self.scheme {
                0 => SchemeTag::Absmax,
                1 => SchemeTag::Codebook,
                _ => SchemeTag::SignLloyd,
            },
            len: self.n,
            block: self.block,
            codes,
            params,
        };
        q.validate()?;
        Ok(q)
    }
}

/// The chunked index encoding's form for a spec, as [`crate::pack`] chooses it, and what
/// the device packs. The kernels pack the fixed and bitmap forms; for the Rice form (a
/// variable-length code, serial per chunk) they pack the fixed form, which nothing reads,
/// and the host encodes the downloaded indices ([`IndexPlan::append_indices`]).
#[derive(Debug, Clone)]
pub(crate) struct IndexPlan {
    /// The device packs the fixed-width form.
    pub(crate) fixed: bool,
    /// The wire form is Rice: the host encodes it from the indices.
    pub(crate) rice: bool,
    pub(crate) width: u32,
    pub(crate) total_k: usize,
    /// Bytes of the device's packed stream.
    pub(crate) payload: usize,
    pub(crate) k: u32,
    pub(crate) chunk_len: u32,
    spec: ChunkSpec,
}

impl IndexPlan {
    pub(crate) fn new(spec: &ChunkSpec) -> Result<Self> {
        let p = crate::pack::chunked_plan(spec)?;
        let rice = p.rice.is_some();
        Ok(Self {
            fixed: p.fixed || rice,
            rice,
            width: p.width,
            total_k: p.total_k,
            payload: if rice { p.fixed_payload } else { p.payload },
            k: u32_of("k", spec.k)?,
            chunk_len: u32_of("chunk_len", spec.chunk_len)?,
            spec: *spec,
        })
    }

    /// Appends the wire encoding: the device's packed `words` for the fixed and bitmap
    /// forms, the host's Rice encoding of `indices` (the kept positions) otherwise.
    pub(crate) fn append_indices(
        &self,
        words: &[u32],
        indices: &[u32],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if self.rice {
            return crate::pack::encode_chunked(indices, &self.spec, buf);
        }
        self.append(words, buf);
        Ok(())
    }

    /// u32 words the packed stream occupies.
    pub(crate) fn words(&self) -> usize {
        self.payload.div_ceil(4)
    }

    /// Appends the tag and the stream's first `payload` bytes.
    pub(crate) fn append(&self, words: &[u32], buf: &mut Vec<u8>) {
        buf.push(if self.fixed { crate::pack::TAG_FIXED } else { crate::pack::TAG_BITMAP });
        let start = buf.len();
        for w in words {
            buf.extend_from_slice(&w.to_le_bytes());
        }
        buf.truncate(start + self.payload);
    }
}
