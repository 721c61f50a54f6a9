//! Blockwise quantizers for 8/4/2/1-bit values.
//!
//! Values are split into blocks of [`QuantConfig::block`] consecutive elements (the last
//! block may be short) and each block gets its own parameters:
//! - [`Scheme::Absmax`]: one scale per block, a uniform grid symmetric about zero (sign
//!   times mean magnitude at 1 bit). See the `absmax` bounds on [`Scheme::Absmax`].
//! - [`Scheme::Codebook`]: `2^b` reconstruction values per block, the means of equal-width
//!   bins over `μ ± c·σ` (SparseLoCo's reference grid, made symmetric). See [`Scheme::Codebook`].
//! - [`Scheme::SignLloyd`]: `2^b` reconstruction values per block, a sign bit and `b − 1`
//!   bits of magnitude level fitted per sign by Lloyd–Max: the codebook for values that
//!   top-k selected by magnitude (SparseLoCo's default). See `sign_lloyd`.
//! - [`Scheme::Fp4`]: 4-bit floating point (E2M1: a sign and eight magnitudes from 0 to 6),
//!   one scale per block mapping its largest magnitude to 6 (Streaming DiLoCo's format).
//!   See `fp4`.
//!
//! [`QuantConfig::error_bound`] states each quantizer's worst-case error for a block and the
//! tests check every element against it.
//!
//! # Byte encoding
//!
//! All little-endian, produced by [`Quantized::encode_into`] and read by
//! [`Quantized::decode`]:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | scheme tag: 0 = absmax, 1 = codebook, 2 = sign + Lloyd–Max magnitudes, 3 = FP4 |
//! | 1 | bits: 1, 2, 4 or 8 |
//! | 4 | `len` (u32): number of values |
//! | 4 | `block` (u32): values per block |
//! | 4 each | params (f32): `ceil(len/block)` scales, or `2^b` entries per block (codes index them) |
//! | `ceil(len·b/8)` | codes, packed little-endian within each byte, zero padding |
//!
//! Quantization is deterministic: statistics are accumulated sequentially in f64 (no
//! parallel reductions) and stochastic rounding draws from a seeded in-crate generator, so
//! the same input and configuration give the same bytes on every machine.

mod absmax;
mod bits;
mod codebook;
mod fp4;
mod sign_lloyd;

pub use codebook::bin_occupancy;
pub use sign_lloyd::MAX_ITERATIONS as SIGN_LLOYD_MAX_ITERATIONS;

use crate::error::{check_finite, invalid, malformed, Result};
use crate::rng::SplitMix64;

/// Bits per quantized value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bits {
    /// 1 bit: two levels.
    B1,
    /// 2 bits: four levels.
    B2,
    /// 4 bits: sixteen levels.
    B4,
    /// 8 bits: 256 levels. The default, being the least lossy.
    #[default]
    B8,
}

impl Bits {
    /// The width as a number: 1, 2, 4 or 8.
    pub fn count(self) -> u32 {
        match self {
            Bits::B1 => 1,
            Bits::B2 => 2,
            Bits::B4 => 4,
            Bits::B8 => 8,
        }
    }

    /// The width for `n` bits; only 1, 2, 4 and 8 are supported (each divides a byte, so no
    /// code straddles two bytes).
    pub fn from_count(n: u32) -> Result<Self> {
        match n {
            1 => Ok(Bits::B1),
            2 => Ok(Bits::B2),
            4 => Ok(Bits::B4),
            8 => Ok(Bits::B8),
            _ => Err(invalid("bits", format!("{n} is not one of 1, 2, 4, 8"))),
        }
    }

    fn levels(self) -> usize {
        1 << self.count()
    }
}

/// How a block's values are mapped to codes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// One scale `s` per block from the block's largest magnitude `a`.
    ///
    /// For b ∈ {2, 4, 8}: code `q ∈ [0, 2^b−1]` decodes to `(q − (2^b−1)/2)·s` with
    /// `s = 2a/(2^b−1)`, a midrise grid whose outer levels are `±a`. Nearest rounding:
    /// `|x − x̂| ≤ s/2`; stochastic: `|x − x̂| < s` and `E[x̂] = x`. An all-zero block has
    /// scale 0 and decodes to exact zeros.
    ///
    /// For b = 1: nearest rounding gives `x̂ = sign(x)·m` with `m` the block's mean
    /// magnitude (the L2-optimal scale for a sign code), so `|x − x̂| ≤ max(a − m, m) ≤ a`.
    /// Stochastic rounding gives `±a` with `P(+a) = (x/a + 1)/2`, which is unbiased,
    /// `|x − x̂| ≤ 2a`.
    Absmax,
    /// `2^b` reconstruction values per block: with `μ` the block mean and `σ` its population
    /// standard deviation, equal-width bins of `w = 2cσ/2^b` over `[μ − cσ, μ + cσ]`
    /// (`c = clip_sigmas`), values beyond the range joining the edge bins. Each entry is its
    /// bin's mean, clamped into the bin (only edge bins can need it), or the bin centre when
    /// empty. Bound: `|x − x̂| ≤ w + max(0, |x − μ| − cσ)`; `σ = 0` decodes exactly.
    ///
    /// Rounding is always to the bin mean, which is the L2-optimal value for the bin but not
    /// unbiased per element, so [`Rounding::Stochastic`] is rejected with this scheme.
    Codebook {
        /// Half-width of the binned range in standard deviations; finite and positive.
        clip_sigmas: f32,
    },
    /// `2^b` reconstruction values per block: the sign of each value plus one of
    /// `M = 2^(b−1)` magnitude levels fitted to that sign's values in the block by
    /// Lloyd–Max iterations from a mean-splitting start (at most
    /// [`SIGN_LLOYD_MAX_ITERATIONS`] passes per sign). Made for top-k values, which are
    /// bimodal: equal bins over `μ ± cσ` leave the outer two of four 2-bit bins nearly
    /// empty there, while these levels sit where the values are. Entries ascend from the
    /// most negative to the most positive, codes `0..M` negative and `M..2M` non-negative;
    /// decoding rejects entries that break that order.
    ///
    /// Bound: the sign is kept (zeros may decode to a small non-negative value) and
    /// `|x − x̂| ≤ max|x| − min|x|` over the values of `x`'s sign. Nearest only:
    /// [`Rounding::Stochastic`] is rejected.
    SignLloyd,
    /// FP4 (E2M1), 4 bits only: a sign and one of `{0, 0.5, 1, 1.5, 2, 3, 4, 6}` times the
    /// block scale `s = absmax/6`. Bound: `|x − x̂| ≤ s` (nearest; stochastic is rejected).
    Fp4,
}

/// Which scheme a [`Quantized`] payload was made with: all that decoding needs of a
/// [`Scheme`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchemeTag {
    /// [`Scheme::Absmax`]: one scale per block. Byte tag 0.
    #[default]
    Absmax,
    /// [`Scheme::Codebook`]: `2^b` entries per block. Byte tag 1.
    Codebook,
    /// [`Scheme::SignLloyd`]: `2^b` ascending entries per block, the lower half `≤ 0` and
    /// the upper half `≥ 0`. Byte tag 2.
    SignLloyd,
    /// [`Scheme::Fp4`]: one scale per block, 4-bit codes. Byte tag 3.
    Fp4,
}

impl SchemeTag {
    fn byte(self) -> u8 {
        match self {
            SchemeTag::Absmax => 0,
            SchemeTag::Codebook => 1,
            SchemeTag::SignLloyd => 2,
            SchemeTag::Fp4 => 3,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(SchemeTag::Absmax),
            1 => Some(SchemeTag::Codebook),
            2 => Some(SchemeTag::SignLloyd),
            3 => Some(SchemeTag::Fp4),
            _ => None,
        }
    }

    /// Parameters stored per block.
    fn params_per_block(self, bits: Bits) -> usize {
        match self {
            SchemeTag::Absmax | SchemeTag::Fp4 => 1,
            SchemeTag::Codebook | SchemeTag::SignLloyd => bits.levels(),
        }
    }
}

impl From<Scheme> for SchemeTag {
    fn from(s: Scheme) -> Self {
        match s {
            Scheme::Absmax => SchemeTag::Absmax,
            Scheme::Codebook { .. } => SchemeTag::Codebook,
            Scheme::SignLloyd => SchemeTag::SignLloyd,
            Scheme::Fp4 => SchemeTag::Fp4,
        }
    }
}

/// How a value between two levels picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// The nearest level (for 1-bit absmax: the sign).
    Nearest,
    /// Down or up with probability proportional to the distance to the other level, so
    /// `E[x̂] = x`. One [`SplitMix64`] stream seeded with `seed` per call, one draw per value
    /// in element order; replicas that share the seed produce identical bytes. Absmax only.
    Stochastic {
        /// Seed of the call's stream.
        seed: u64,
    },
}

/// Everything that fixes how values are quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantConfig {
    /// Bits per value.
    pub bits: Bits,
    /// Mapping from values to codes.
    pub scheme: Scheme,
    /// Values per block; each block has its own parameters. Positive and at most
    /// `u32::MAX` (it is encoded as a u32).
    pub block: usize,
    /// Nearest or stochastic rounding.
    pub rounding: Rounding,
}

impl QuantConfig {
    /// Checks that `block` is in `1..=u32::MAX`, that a codebook's `clip_sigmas` is finite and
    /// positive, and that stochastic rounding is only asked of absmax (codebook and
    /// sign/Lloyd entries are cell means, not grid levels to round between).
    pub fn validate(&self) -> Result<()> {
        if self.block == 0 || u32::try_from(self.block).is_err() {
            return Err(invalid("block", format!("{} is not in 1..=u32::MAX", self.block)));
        }
        if let Scheme::Codebook { clip_sigmas } = self.scheme {
            if !(clip_sigmas.is_finite() && clip_sigmas > 0.0) {
                return Err(invalid("clip_sigmas", format!("{clip_sigmas} is not finite and > 0")));
            }
        }
        if self.scheme == Scheme::Fp4 && self.bits != Bits::B4 {
            return Err(invalid("bits", format!("fp4 is 4 bits, not {}", self.bits.count())));
        }
        let grid = matches!(self.scheme, Scheme::Absmax);
        if let (false, Rounding::Stochastic { .. }) = (grid, self.rounding) {
            return Err(invalid(
                "rounding",
                "stochastic rounding needs a grid; codebook and sign/Lloyd round to cell means",
            ));
        }
        Ok(())
    }

    /// SparseLoCo's 2-bit values: sign plus two Lloyd–Max magnitude levels per sign
    /// ([`Scheme::SignLloyd`]), blocks of 4096 values, nearest.
    ///
    /// The four entries cost 128 bits per block, 0.03 bits per value on top of the 2-bit
    /// codes (1.6%), and 4096 top-k values (about 2000 per sign) fit two levels each
    /// stably. On the kept values of a pseudo-gradient all four codes are used, where the
    /// reference's bins over `μ ± 3σ` ([`QuantConfig::sparseloco_2bit_equal_bins`]) used
    /// two.
    pub fn sparseloco_2bit() -> Self {
        Self { bits: Bits::B2, scheme: Scheme::SignLloyd, block: 4096, rounding: Rounding::Nearest }
    }

    /// The 2-bit codebook SparseLoCo's reference describes, made symmetric: four equal
    /// bins over `μ ± 3σ` of each block of 4096, entries the bin means, nearest. Kept for
    /// comparison with [`QuantConfig::sparseloco_2bit`].
    pub fn sparseloco_2bit_equal_bins() -> Self {
        Self { scheme: Scheme::Codebook { clip_sigmas: 3.0 }, ..Self::sparseloco_2bit() }
    }

    /// 8-bit absmax, blocks of 256 values, nearest: one f32 scale per 2048 code bits
    /// (1.6% overhead) while keeping one outlier from coarsening the grid of more than 255
    /// neighbours.
    pub fn int8() -> Self {
        Self { bits: Bits::B8, scheme: Scheme::Absmax, block: 256, rounding: Rounding::Nearest }
    }

    /// 4-bit absmax, blocks of 128 values, nearest: with only 15 steps an outlier costs
    /// more, so blocks are smaller; the scale adds 0.25 bits per value (6%).
    pub fn int4() -> Self {
        Self { bits: Bits::B4, scheme: Scheme::Absmax, block: 128, rounding: Rounding::Nearest }
    }

    /// FP4 (E2M1) in blocks of 128 with one f32 scale each, nearest: Streaming DiLoCo's
    /// 4-bit floating point, beside [`QuantConfig::int4`]'s grid.
    pub fn fp4() -> Self {
        Self { bits: Bits::B4, scheme: Scheme::Fp4, block: 128, rounding: Rounding::Nearest }
    }

    /// Sign with a per-block mean magnitude, blocks of 512 values, nearest: the scale adds
    /// 0.0625 bits per value (6%), and a sign code gains little from a more local scale.
    pub fn sign_1bit() -> Self {
        Self { bits: Bits::B1, scheme: Scheme::Absmax, block: 512, rounding: Rounding::Nearest }
    }

    /// Documented worst-case `|x − x̂|` for a block whose values are `block_values`, as
    /// stated on [`Scheme`]: `s/2` or `s` (absmax, nearest or stochastic), `max(a − m, m)`
    /// or `2a` (1-bit absmax), `w + max(0, max|x − μ| − cσ)` (codebook), the widest span
    /// `max|x| − min|x|` of one sign's values (sign/Lloyd). The exact-arithmetic
    /// bound is widened by `4·ε·absmax + f32::MIN_POSITIVE` for f32 rounding of parameters
    /// and reconstructions, then rounded up to f32. Returns 0 for an empty block and
    /// infinity if a value is not finite (such a block is rejected by [`quantize`]).
    pub fn error_bound(&self, block_values: &[f32]) -> f32 {
        if block_values.is_empty() {
            return 0.0;
        }
        if check_finite("block", block_values).is_err() {
            return f32::INFINITY;
        }
        let stochastic = matches!(self.rounding, Rounding::Stochastic { .. });
        match self.scheme {
            Scheme::Absmax => absmax::error_bound(block_values, self.bits, stochastic),
            Scheme::Codebook { clip_sigmas } => {
                codebook::error_bound(block_values, self.bits, clip_sigmas)
            }
            Scheme::SignLloyd => sign_lloyd::error_bound(block_values),
            Scheme::Fp4 => fp4::error_bound(block_values),
        }
    }
}

/// f32 rounding of parameters and reconstructions, in absolute terms, for a block whose
/// largest magnitude is `absmax`; `MIN_POSITIVE` covers subnormal scales.
fn rounding_slack(absmax: f64) -> f64 {
    4.0 * f64::from(f32::EPSILON) * absmax + f64::from(f32::MIN_POSITIVE)
}

/// The smallest f32 not below a non-negative `x`, so a bound never shrinks in conversion.
fn round_up_f32(x: f64) -> f32 {
    let y = x as f32;
    if y.is_finite() && f64::from(y) < x {
        f32::from_bits(y.to_bits() + 1)
    } else {
        y
    }
}

/// A quantized buffer: codes plus per-block parameters.
///
/// Fields are public so callers can move payloads around; [`Quantized::validate`] checks
/// that they agree, and every method that reads them calls it first.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Quantized {
    /// Bits per code.
    pub bits: Bits,
    /// Which scheme made the payload (decides what `params` mean).
    pub scheme: SchemeTag,
    /// Number of values.
    pub len: usize,
    /// Values per block (the last block may be short). May be 0 only when `len` is 0.
    pub block: usize,
    /// `len` codes of `bits` each, packed little-endian within each byte (first code in the
    /// low bits), unused high bits of the last byte zero.
    pub codes: Vec<u8>,
    /// Absmax: one scale per block. Codebook: `2^bits` entries per block, block after block.
    pub params: Vec<f32>,
}

/// Bytes before the params: tag, bits, len, block.
const HEADER_LEN: usize = 10;

impl Quantized {
    /// Number of blocks, or `None` if `len > 0` with `block == 0`.
    fn blocks(&self) -> Option<usize> {
        match (self.len, self.block) {
            (0, _) => Some(0),
            (_, 0) => None,
            (len, block) => Some(len.div_ceil(block)),
        }
    }

    /// Checks that the fields agree: `len` and `block` fit the u32 encoding, `block > 0`
    /// unless empty, `params` has the count the scheme implies, `codes` holds exactly `len`
    /// codes with zero padding, params are finite, absmax scales are non-negative and
    /// small enough that every level is finite, and sign/Lloyd entries ascend with the
    /// lower half `≤ 0` and the upper half `≥ 0`.
    pub fn validate(&self) -> Result<()> {
        const WHAT: &str = "quantized";
        if u32::try_from(self.len).is_err() || u32::try_from(self.block).is_err() {
            return Err(malformed(WHAT, "len or block does not fit in u32"));
        }
        let blocks = self.blocks().ok_or_else(|| malformed(WHAT, "block is 0 with len > 0"))?;
        let expected = blocks
            .checked_mul(self.scheme.params_per_block(self.bits))
            .ok_or_else(|| malformed(WHAT, "parameter count overflows"))?;
        if self.params.len() != expected {
            return Err(malformed(
                WHAT,
                format!("{} params where len/block/bits imply {expected}", self.params.len()),
            ));
        }
        bits::check_packed("quantized codes", &self.codes, self.bits, self.len)?;
        check_finite("quantized params", &self.params)?;
        match self.scheme {
            SchemeTag::Absmax => {
                for &s in &self.params {
                    absmax::check_scale(s, self.bits)?;
                }
            }
            SchemeTag::Codebook => {}
            SchemeTag::SignLloyd => {
                for (b, entries) in self.params.chunks_exact(self.bits.levels()).enumerate() {
                    sign_lloyd::check_entries(b, entries)?;
                }
            }
            SchemeTag::Fp4 => {
                if self.bits != Bits::B4 {
                    return Err(malformed(WHAT, format!("fp4 with {} bits", self.bits.count())));
                }
                for &s in &self.params {
                    fp4::check_scale(s)?;
                }
                fp4::check_codes(bits::Codes::new(&self.codes, self.bits, self.len))?;
            }
        }
        Ok(())
    }

    /// Writes the `len` reconstructed values into `out`, which must be exactly `len` long.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        self.validate()?;
        crate::error::check_len("dequantize output", self.len, out.len())?;
        if self.len == 0 {
            return Ok(());
        }
        let mut codes = bits::Codes::new(&self.codes, self.bits, self.len);
        let per_block = self.scheme.params_per_block(self.bits);
        for (chunk, params) in out.chunks_mut(self.block).zip(self.params.chunks_exact(per_block)) {
            match self.scheme {
                SchemeTag::Absmax => {
                    absmax::dequantize_block(&mut codes, params[0], self.bits, chunk)
                }
                SchemeTag::Codebook => codebook::dequantize_block(&mut codes, params, chunk),
                SchemeTag::SignLloyd => sign_lloyd::dequantize_block(&mut codes, params, chunk),
                SchemeTag::Fp4 => fp4::dequantize_block(&mut codes, params[0], chunk),
            }
        }
        Ok(())
    }

    /// The `len` reconstructed values.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        let mut out = vec![0.0; self.len];
        self.dequantize_into(&mut out)?;
        Ok(out)
    }

    /// Exactly the number of bytes [`Quantized::encode_into`] appends.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + 4 * self.params.len() + self.codes.len()
    }

    /// Appends the byte encoding (see the module doc). A payload that fails
    /// [`Quantized::validate`] is still written, but its bytes will not decode.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        buf.reserve(self.encoded_len());
        buf.push(self.scheme.byte());
        buf.push(self.bits.count() as u8);
        // Out-of-range values saturate; validate() rejects them on decode.
        buf.extend_from_slice(&u32::try_from(self.len).unwrap_or(u32::MAX).to_le_bytes());
        buf.extend_from_slice(&u32::try_from(self.block).unwrap_or(u32::MAX).to_le_bytes());
        for p in &self.params {
            buf.extend_from_slice(&p.to_le_bytes());
        }
        buf.extend_from_slice(&self.codes);
    }

    /// Decodes one payload from the front of `bytes`, returning it and the bytes consumed
    /// (trailing bytes are left for the caller).
    ///
    /// Rejects, before allocating anything: a short header, an unknown scheme tag or bit
    /// width, `len > max_len`, `block = 0` with `len > 0`, and fewer bytes than the header
    /// implies. Then rejects non-finite params, out-of-range absmax scales, sign/Lloyd
    /// entries out of order and nonzero code padding. Allocation is bounded by `bytes.len()`; no input panics.
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<(Self, usize)> {
        const WHAT: &str = "quantized";
        let header: &[u8; HEADER_LEN] =
            bytes.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or_else(|| {
                malformed(WHAT, format!("{} bytes, header needs {HEADER_LEN}", bytes.len()))
            })?;
        let scheme = SchemeTag::from_byte(header[0])
            .ok_or_else(|| malformed(WHAT, format!("unknown scheme tag {}", header[0])))?;
        let bits = Bits::from_count(u32::from(header[1]))
            .map_err(|_| malformed(WHAT, format!("unsupported bit width {}", header[1])))?;
        let len = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
        let block = u32::from_le_bytes([header[6], header[7], header[8], header[9]]);
        let (len, block) = (len as usize, block as usize);
        if len > max_len {
            return Err(malformed(WHAT, format!("len {len} exceeds the maximum {max_len}")));
        }
        let shape = Quantized { bits, scheme, len, block, codes: Vec::new(), params: Vec::new() };
        let blocks = shape.blocks().ok_or_else(|| malformed(WHAT, "block is 0 with len > 0"))?;
        let n_params = blocks.checked_mul(scheme.params_per_block(bits));
        let n_codes = bits::packed_len(len, bits);
        let total = n_params
            .and_then(|p| p.checked_mul(4))
            .and_then(|p| p.checked_add(HEADER_LEN))
            .and_then(|p| p.checked_add(n_codes))
            .ok_or_else(|| malformed(WHAT, "size overflows"))?;
        if bytes.len() < total {
            return Err(malformed(
                WHAT,
                format!("truncated: {} bytes, header implies {total}", bytes.len()),
            ));
        }
        let params_end = total - n_codes;
        let params = bytes[HEADER_LEN..params_end]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let q = Quantized { codes: bytes[params_end..total].to_vec(), params, ..shape };
        q.validate()?;
        Ok((q, total))
    }
}

/// Quantizes `values` under `cfg` into a new payload.
pub fn quantize(values: &[f32], cfg: &QuantConfig) -> Result<Quantized> {
    let mut out = Quantized::default();
    quantize_into(values, cfg, &mut out)?;
    Ok(out)
}

/// Quantizes `values` under `cfg` into `out`, reusing its allocations. Fails (leaving `out`
/// untouched) on an invalid config, a non-finite value, or more than `u32::MAX` values.
/// Linear in `values.len()` plus the parameter count (sign/Lloyd: at most
/// `2 + log2(2^(b−1)) + SIGN_LLOYD_MAX_ITERATIONS` passes per sign), with no per-element
/// allocation.
pub fn quantize_into(values: &[f32], cfg: &QuantConfig, out: &mut Quantized) -> Result<()> {
    cfg.validate()?;
    check_finite("quantize values", values)?;
    if u32::try_from(values.len()).is_err() {
        return Err(invalid("values", format!("{} values do not fit in u32", values.len())));
    }
    let scheme = SchemeTag::from(cfg.scheme);
    out.bits = cfg.bits;
    out.scheme = scheme;
    out.len = values.len();
    out.block = cfg.block;
    out.codes.clear();
    out.params.clear();
    // Codes are written one per byte and packed in place afterwards.
    out.codes.reserve(values.len());
    out.params.reserve(
        values.len().div_ceil(cfg.block).saturating_mul(scheme.params_per_block(cfg.bits)),
    );
    let mut rng = match cfg.rounding {
        Rounding::Nearest => None,
        Rounding::Stochastic { seed } => Some(SplitMix64::new(seed)),
    };
    for block in values.chunks(cfg.block) {
        match cfg.scheme {
            Scheme::Absmax => {
                let s = absmax::quantize_block(block, cfg.bits, rng.as_mut(), &mut out.codes);
                out.params.push(s);
            }
            Scheme::Codebook { clip_sigmas } => codebook::quantize_block(
                block,
                cfg.bits,
                clip_sigmas,
                &mut out.codes,
                &mut out.params,
            ),
            Scheme::SignLloyd => {
                sign_lloyd::quantize_block(block, cfg.bits, &mut out.codes, &mut out.params)
            }
            Scheme::Fp4 => out.params.push(fp4::quantize_block(block, &mut out.codes)),
        }
    }
    bits::pack_in_place(&mut out.codes, cfg.bits);
    Ok(())
}

#[cfg(test)]
mod tests;
