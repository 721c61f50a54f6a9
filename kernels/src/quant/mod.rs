//! Blockwise quantizers for 8/4/2/1-bit values.
//!
//! Values are split into blocks of [`QuantConfig::block`] consecutive elements (the last
//! block may be short) and each block gets its own parameters:
//! - [`Scheme::Absmax`]: one scale per block, a uniform grid symmetric about zero (sign
//!   times mean magnitude at 1 bit). See the `absmax` bounds on [`Scheme::Absmax`].
//! - [`Scheme::Codebook`]: `2^b` reconstruction values per block, the means of equal-width
//!   bins over `μ ± c·σ` (SparseLoCo style). See [`Scheme::Codebook`].
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
//! | 1 | scheme tag: 0 = absmax, 1 = codebook |
//! | 1 | bits: 1, 2, 4 or 8 |
//! | 4 | `len` (u32): number of values |
//! | 4 | `block` (u32): values per block |
//! | 4 each | params (f32): `ceil(len/block)` scales, or `2^b` entries per block |
//! | `ceil(len·b/8)` | codes, packed little-endian within each byte, zero padding |
//!
//! Quantization is deterministic: statistics are accumulated sequentially in f64 (no
//! parallel reductions) and stochastic rounding draws from a seeded in-crate generator, so
//! the same input and configuration give the same bytes on every machine.

mod absmax;
mod bits;
mod codebook;

pub use codebook::bin_occupancy;

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
}

impl SchemeTag {
    fn byte(self) -> u8 {
        match self {
            SchemeTag::Absmax => 0,
            SchemeTag::Codebook => 1,
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(SchemeTag::Absmax),
            1 => Some(SchemeTag::Codebook),
            _ => None,
        }
    }

    /// Parameters stored per block.
    fn params_per_block(self, bits: Bits) -> usize {
        match self {
            SchemeTag::Absmax => 1,
            SchemeTag::Codebook => bits.levels(),
        }
    }
}

impl From<Scheme> for SchemeTag {
    fn from(s: Scheme) -> Self {
        match s {
            Scheme::Absmax => SchemeTag::Absmax,
            Scheme::Codebook { .. } => SchemeTag::Codebook,
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
    /// positive, and that stochastic rounding is only asked of absmax (codebook entries are
    /// bin means, not grid levels to round between).
    pub fn validate(&self) -> Result<()> {
        if self.block == 0 || u32::try_from(self.block).is_err() {
            return Err(invalid("block", format!("{} is not in 1..=u32::MAX", self.block)));
        }
        if let Scheme::Codebook { clip_sigmas } = self.scheme {
            if !(clip_sigmas.is_finite() && clip_sigmas > 0.0) {
                return Err(invalid("clip_sigmas", format!("{clip_sigmas} is not finite and > 0")));
            }
            if let Rounding::Stochastic { .. } = self.rounding {
                return Err(invalid(
                    "rounding",
                    "stochastic rounding needs a grid; codebook rounds to bin means",
                ));
            }
        }
        Ok(())
    }

    /// SparseLoCo's 2-bit codebook: `clip_sigmas = 3.0`, blocks of 4096 values, nearest.
    ///
    /// The four entries cost 128 bits per block, 0.03 bits per value on top of the 2-bit
    /// codes (1.6%), and 4096 top-k values give stable estimates of `μ` and `σ`. At ±3σ
    /// the clip catches only genuine outliers while the bins stay narrow.
    pub fn sparseloco_2bit() -> Self {
        Self {
            bits: Bits::B2,
            scheme: Scheme::Codebook { clip_sigmas: 3.0 },
            block: 4096,
            rounding: Rounding::Nearest,
        }
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

    /// Sign with a per-block mean magnitude, blocks of 512 values, nearest: the scale adds
    /// 0.0625 bits per value (6%), and a sign code gains little from a more local scale.
    pub fn sign_1bit() -> Self {
        Self { bits: Bits::B1, scheme: Scheme::Absmax, block: 512, rounding: Rounding::Nearest }
    }

    /// Documented worst-case `|x − x̂|` for a block whose values are `block_values`, as
    /// stated on [`Scheme`]: `s/2` or `s` (absmax, nearest or stochastic), `max(a − m, m)`
    /// or `2a` (1-bit absmax), `w + max(0, max|x − μ| − cσ)` (codebook). The exact-arithmetic
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
    /// codes with zero padding, params are finite and absmax scales are non-negative and
    /// small enough that every level is finite.
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
        if self.scheme == SchemeTag::Absmax {
            for &s in &self.params {
                absmax::check_scale(s, self.bits)?;
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
    /// implies. Then rejects non-finite params, out-of-range absmax scales and nonzero code
    /// padding. Allocation is bounded by `bytes.len()`; no input panics.
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
/// Linear in `values.len()` plus the parameter count, with no per-element allocation.
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
        }
    }
    bits::pack_in_place(&mut out.codes, cfg.bits);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::KernelError;
    use proptest::collection::vec;
    use proptest::prelude::*;

    const ALL_BITS: [Bits; 4] = [Bits::B1, Bits::B2, Bits::B4, Bits::B8];

    fn cfg(bits: Bits, scheme: Scheme, block: usize, rounding: Rounding) -> QuantConfig {
        QuantConfig { bits, scheme, block, rounding }
    }

    fn encode(q: &Quantized) -> Vec<u8> {
        let mut buf = Vec::new();
        q.encode_into(&mut buf);
        buf
    }

    /// Blocks of the shapes that stress a quantizer: plain, with outliers, constant, all
    /// zero, negative-only, bimodal, mixed 1e30/1e-30 magnitudes, values on exact ties.
    fn values() -> impl Strategy<Value = Vec<f32>> {
        let magnitude = prop_oneof![
            Just(1.0f32),
            Just(1e-30),
            Just(1e30),
            Just(3.5e-3),
            Just(7e5),
            Just(1e-40)
        ];
        (0u8..8, magnitude, vec(-1.0f32..1.0, 0..160), 1usize..20).prop_map(
            |(kind, mag, base, stride)| {
                let n = base.len();
                match kind {
                    0 => base.iter().map(|x| x * mag).collect(),
                    1 => base
                        .iter()
                        .enumerate()
                        .map(|(i, x)| if i % stride == 0 { x * mag * 1000.0 } else { x * mag })
                        .collect(),
                    2 => vec![base.first().copied().unwrap_or(0.5) * mag; n],
                    3 => vec![0.0; n],
                    4 => base.iter().map(|x| -(x.abs() * mag)).collect(),
                    5 => base.iter().map(|x| (x.signum() + 0.05 * x) * mag).collect(),
                    6 => base
                        .iter()
                        .enumerate()
                        .map(|(i, x)| if i % stride == 0 { x * 1e30 } else { x * 1e-30 })
                        .collect(),
                    _ => base.iter().map(|x| (x * 4.0).round() / 4.0 * mag).collect(),
                }
            },
        )
    }

    fn config() -> impl Strategy<Value = QuantConfig> {
        let scheme = prop_oneof![
            Just(Scheme::Absmax),
            prop_oneof![Just(0.25f32), Just(1.0), Just(3.0), Just(10.0)]
                .prop_map(|c| Scheme::Codebook { clip_sigmas: c }),
        ];
        (0usize..4, scheme, 1usize..70, any::<u64>(), any::<bool>()).prop_map(
            |(b, scheme, block, seed, stochastic)| {
                let rounding = if stochastic && scheme == Scheme::Absmax {
                    Rounding::Stochastic { seed }
                } else {
                    Rounding::Nearest
                };
                cfg(ALL_BITS[b], scheme, block, rounding)
            },
        )
    }

    /// The codebook's per-element bound `w + max(0, |x − μ| − cσ)`, recomputed here
    /// independently of the quantizer, plus the documented slack.
    fn codebook_element_bound(block: &[f32], x: f32, bits: Bits, c: f32) -> f64 {
        let n = block.len() as f64;
        let mean = block.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var =
            block.iter().map(|&v| (f64::from(v) - mean) * (f64::from(v) - mean)).sum::<f64>() / n;
        let cs = f64::from(c) * var.sqrt();
        let absmax = block.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs())));
        let w = 2.0 * cs / f64::from(1u32 << bits.count());
        w + ((f64::from(x) - mean).abs() - cs).max(0.0) + rounding_slack(absmax)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(768))]
        #[test]
        fn every_element_is_within_the_documented_bound(x in values(), cfg in config()) {
            let q = quantize(&x, &cfg).unwrap();
            let y = q.dequantize().unwrap();
            prop_assert_eq!(y.len(), x.len());
            for (xb, yb) in x.chunks(cfg.block).zip(y.chunks(cfg.block)) {
                let bound = f64::from(cfg.error_bound(xb));
                for (&a, &b) in xb.iter().zip(yb) {
                    prop_assert!(b.is_finite());
                    let err = (f64::from(a) - f64::from(b)).abs();
                    prop_assert!(err <= bound, "{cfg:?}: {a} -> {b}, err {err} > {bound}");
                    if let Scheme::Codebook { clip_sigmas } = cfg.scheme {
                        let own = codebook_element_bound(xb, a, cfg.bits, clip_sigmas);
                        prop_assert!(err <= own, "{cfg:?}: {a} -> {b}, err {err} > {own}");
                    }
                }
            }
            let occupancy = bin_occupancy(&q);
            prop_assert_eq!(occupancy.len(), 1 << cfg.bits.count());
            prop_assert_eq!(occupancy.iter().sum::<usize>(), x.len());
        }

        #[test]
        fn encode_decode_round_trips(x in values(), cfg in config(), junk in vec(any::<u8>(), 0..5)) {
            let q = quantize(&x, &cfg).unwrap();
            let mut buf = junk.clone();
            q.encode_into(&mut buf);
            prop_assert_eq!(buf.len() - junk.len(), q.encoded_len());
            buf.extend_from_slice(&junk);
            let (back, used) = Quantized::decode(&buf[junk.len()..], x.len()).unwrap();
            prop_assert_eq!(used, q.encoded_len());
            prop_assert_eq!(&back, &q);
            prop_assert_eq!(back.dequantize().unwrap(), q.dequantize().unwrap());
            // Same input, same configuration: same bytes.
            prop_assert_eq!(encode(&quantize(&x, &cfg).unwrap()), encode(&q));
        }

        #[test]
        fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..300), max_len in 0usize..1000) {
            let _ = Quantized::decode(&bytes, max_len);
        }

        #[test]
        fn plausible_headers_never_panic_and_accepted_payloads_are_canonical(
            tag in 0u8..3, bits in 0u8..10, len in 0u32..40, block in 0u32..12,
            tail in vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = vec![tag, bits];
            bytes.extend_from_slice(&len.to_le_bytes());
            bytes.extend_from_slice(&block.to_le_bytes());
            bytes.extend_from_slice(&tail);
            if let Ok((q, used)) = Quantized::decode(&bytes, 64) {
                let y = q.dequantize().unwrap();
                prop_assert!(y.iter().all(|v| v.is_finite()));
                prop_assert_eq!(encode(&q), bytes[..used].to_vec());
            }
        }
    }

    #[test]
    fn golden_bytes() {
        let q = quantize(
            &[-3.0, -1.2, 0.1, 2.2, 3.0],
            &cfg(Bits::B2, Scheme::Absmax, 64, Rounding::Nearest),
        )
        .unwrap();
        let mut expected = vec![0, 2, 5, 0, 0, 0, 64, 0, 0, 0];
        expected.extend_from_slice(&2.0f32.to_le_bytes());
        expected.extend_from_slice(&[0b11_10_01_00, 0b11]);
        assert_eq!(encode(&q), expected);
        assert_eq!(q.dequantize().unwrap(), vec![-3.0, -1.0, 1.0, 3.0, 3.0]);
    }

    #[test]
    fn config_validation() {
        for preset in [
            QuantConfig::sparseloco_2bit(),
            QuantConfig::int8(),
            QuantConfig::int4(),
            QuantConfig::sign_1bit(),
        ] {
            preset.validate().unwrap();
        }
        let ok = QuantConfig::int8();
        assert!(QuantConfig { block: 0, ..ok }.validate().is_err());
        for c in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let bad = QuantConfig { scheme: Scheme::Codebook { clip_sigmas: c }, ..ok };
            assert!(bad.validate().is_err(), "{c}");
        }
        let stochastic_codebook = QuantConfig {
            rounding: Rounding::Stochastic { seed: 1 },
            ..QuantConfig::sparseloco_2bit()
        };
        assert!(matches!(
            stochastic_codebook.validate(),
            Err(KernelError::InvalidParameter { name: "rounding", .. })
        ));
        assert!(quantize(&[1.0, 2.0], &stochastic_codebook).is_err());
        for b in ALL_BITS {
            assert_eq!(Bits::from_count(b.count()).unwrap(), b);
        }
        for n in [0, 3, 5, 16, u32::MAX] {
            assert!(Bits::from_count(n).is_err());
        }
    }

    #[test]
    fn non_finite_input_is_rejected_and_output_untouched() {
        let mut out = quantize(&[1.0, 2.0], &QuantConfig::int8()).unwrap();
        let before = out.clone();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = quantize_into(&[1.0, bad, 3.0], &QuantConfig::int4(), &mut out).unwrap_err();
            assert!(matches!(err, KernelError::NonFinite { index: 1, .. }), "{err:?}");
            assert_eq!(out, before);
        }
    }

    #[test]
    fn empty_input_round_trips() {
        for preset in
            [QuantConfig::sparseloco_2bit(), QuantConfig::int8(), QuantConfig::sign_1bit()]
        {
            let q = quantize(&[], &preset).unwrap();
            assert!(q.codes.is_empty() && q.params.is_empty());
            let bytes = encode(&q);
            assert_eq!(bytes.len(), q.encoded_len());
            let (back, used) = Quantized::decode(&bytes, 0).unwrap();
            assert_eq!((back.clone(), used), (q, bytes.len()));
            assert!(back.dequantize().unwrap().is_empty());
        }
        let default = Quantized::default();
        let (back, _) = Quantized::decode(&encode(&default), 0).unwrap();
        assert_eq!(back, default);
    }

    #[test]
    fn quantize_into_reuses_allocations() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        for preset in [QuantConfig::sparseloco_2bit(), QuantConfig::int4()] {
            let mut q = Quantized::default();
            quantize_into(&x, &preset, &mut q).unwrap();
            let (codes, params) = (q.codes.as_ptr(), q.params.as_ptr());
            quantize_into(&x, &preset, &mut q).unwrap();
            assert_eq!((q.codes.as_ptr(), q.params.as_ptr()), (codes, params));
            assert_eq!(q, quantize(&x, &preset).unwrap());
        }
    }

    #[test]
    fn dequantize_checks_the_output_length_and_the_fields() {
        let q = quantize(&[1.0, -2.0, 3.0], &QuantConfig::int4()).unwrap();
        assert!(q.dequantize_into(&mut [0.0; 2]).is_err());
        assert!(q.dequantize_into(&mut [0.0; 4]).is_err());
        let mut short = q.clone();
        short.codes.pop();
        assert!(short.dequantize().is_err());
        let mut extra = q.clone();
        extra.params.push(1.0);
        assert!(extra.dequantize().is_err());
        let mut zero_block = q.clone();
        zero_block.block = 0;
        assert!(zero_block.dequantize().is_err());
        let mut nan = q;
        nan.params[0] = f32::NAN;
        assert!(matches!(nan.dequantize(), Err(KernelError::NonFinite { .. })));
    }

    fn stochastic(bits: Bits, seed: u64, block: usize) -> QuantConfig {
        cfg(bits, Scheme::Absmax, block, Rounding::Stochastic { seed })
    }

    #[test]
    fn stochastic_rounding_is_reproducible_and_seed_dependent() {
        let x: Vec<f32> = (0..1000).map(|i| ((i * 7919 % 1013) as f32 - 506.3) / 97.0).collect();
        for bits in ALL_BITS {
            let a = encode(&quantize(&x, &stochastic(bits, 42, 128)).unwrap());
            let b = encode(&quantize(&x, &stochastic(bits, 42, 128)).unwrap());
            let c = encode(&quantize(&x, &stochastic(bits, 43, 128)).unwrap());
            assert_eq!(a, b, "{bits:?}");
            assert_ne!(a, c, "{bits:?}");
        }
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 29 % 64) as f32 - 31.7) / 32.0).collect();
        let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let trials = 2000;
        for bits in ALL_BITS {
            let mut sum = vec![0.0f64; x.len()];
            let mut nearest_differs = false;
            for seed in 0..trials {
                let y = quantize(&x, &stochastic(bits, seed, 64)).unwrap().dequantize().unwrap();
                for (s, v) in sum.iter_mut().zip(&y) {
                    *s += f64::from(*v);
                }
            }
            // One draw has spread at most one step (2·absmax at 1 bit); the mean of
            // `trials` draws, ~step/(2·√trials), must sit well inside 5% of a step.
            let step = if bits == Bits::B1 {
                2.0 * f64::from(absmax)
            } else {
                2.0 * f64::from(absmax) / f64::from((1u32 << bits.count()) - 1)
            };
            let nearest = quantize(&x, &cfg(bits, Scheme::Absmax, 64, Rounding::Nearest))
                .unwrap()
                .dequantize()
                .unwrap();
            for ((&v, s), n) in x.iter().zip(&sum).zip(&nearest) {
                let mean = s / trials as f64;
                assert!((mean - f64::from(v)).abs() < 0.05 * step, "{bits:?}: {v} mean {mean}");
                nearest_differs |= (f64::from(*n) - f64::from(v)).abs() > 0.05 * step;
            }
            // The test has teeth: nearest rounding would fail it.
            assert!(nearest_differs, "{bits:?}");
        }
    }

    #[test]
    fn one_bit_codebook_recovers_two_modes() {
        let x: Vec<f32> = (0..999)
            .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 } + ((i * 13 % 21) as f32 - 10.0) / 200.0)
            .collect();
        let q = quantize(
            &x,
            &cfg(Bits::B1, Scheme::Codebook { clip_sigmas: 3.0 }, 333, Rounding::Nearest),
        )
        .unwrap();
        let y = q.dequantize().unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((b - a.signum()).abs() < 0.06, "{a} -> {b}");
        }
        assert_eq!(bin_occupancy(&q), vec![333, 666]);
    }

    #[test]
    fn two_bit_preset_uses_every_bin_on_top_k_like_values() {
        // Values that survived a magnitude threshold: |x| ≥ 1 with an exponential tail.
        let mut rng = SplitMix64::new(5);
        let x: Vec<f32> = (0..8192)
            .map(|_| {
                let tail = -(1.0 - rng.next_unit_f32()).ln();
                if rng.next_unit_f32() < 0.5 {
                    -(1.0 + tail)
                } else {
                    1.0 + tail
                }
            })
            .collect();
        let q = quantize(&x, &QuantConfig::sparseloco_2bit()).unwrap();
        let occupancy = bin_occupancy(&q);
        assert_eq!(occupancy.iter().sum::<usize>(), x.len());
        assert!(occupancy.iter().all(|&n| n > x.len() / 50), "{occupancy:?}");
    }

    #[test]
    fn every_truncation_is_rejected() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 3.0).collect();
        for preset in [
            QuantConfig::sparseloco_2bit(),
            QuantConfig { block: 8, ..QuantConfig::sparseloco_2bit() },
            QuantConfig { block: 5, ..QuantConfig::int4() },
            QuantConfig { block: 16, ..QuantConfig::sign_1bit() },
            QuantConfig { block: 10, ..QuantConfig::int8() },
        ] {
            let bytes = encode(&quantize(&x, &preset).unwrap());
            assert!(Quantized::decode(&bytes, 37).is_ok());
            for cut in 0..bytes.len() {
                assert!(Quantized::decode(&bytes[..cut], 37).is_err(), "{preset:?} cut {cut}");
            }
        }
    }

    #[test]
    fn corrupt_headers_and_params_are_rejected() {
        let x: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) / 3.0).collect();
        let absmax =
            encode(&quantize(&x, &QuantConfig { block: 8, ..QuantConfig::int4() }).unwrap());
        let codebook = encode(
            &quantize(&x, &QuantConfig { block: 8, ..QuantConfig::sparseloco_2bit() }).unwrap(),
        );
        for bytes in [&absmax, &codebook] {
            for tag in [2u8, 7, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[0] = tag;
                assert!(Quantized::decode(&b, 37).is_err(), "tag {tag}");
            }
            for bits in [0u8, 3, 5, 7, 16, 0xff] {
                let mut b = bytes.clone();
                b[1] = bits;
                assert!(Quantized::decode(&b, 37).is_err(), "bits {bits}");
            }
            assert!(Quantized::decode(bytes, 36).is_err());
            let mut b = bytes.clone();
            b[6..10].copy_from_slice(&0u32.to_le_bytes());
            assert!(Quantized::decode(&b, 37).is_err(), "block 0");
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut b = bytes.clone();
                b[14..18].copy_from_slice(&bad.to_le_bytes());
                assert!(
                    matches!(
                        Quantized::decode(&b, 37),
                        Err(KernelError::NonFinite { index: 1, .. })
                    ),
                    "{bad}"
                );
            }
            // 37 codes of 2 or 4 bits leave padding in the last byte.
            let mut b = bytes.clone();
            *b.last_mut().unwrap() |= 0x80;
            assert!(Quantized::decode(&b, 37).is_err(), "padding");
        }
        for bad_scale in [-1.0f32, f32::MAX] {
            let mut b = absmax.clone();
            b[10..14].copy_from_slice(&bad_scale.to_le_bytes());
            assert!(Quantized::decode(&b, 37).is_err(), "scale {bad_scale}");
        }
    }

    #[test]
    fn huge_len_is_rejected_before_allocating() {
        for tag in [0u8, 1] {
            let mut b = vec![tag, 8];
            b.extend_from_slice(&u32::MAX.to_le_bytes());
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&[0; 16]);
            let err = Quantized::decode(&b, 1 << 20).unwrap_err();
            assert!(err.to_string().contains("exceeds"), "{err}");
            // Even when the caller allows it, the header's ~1 TiB claim is checked against
            // the bytes present before anything is allocated.
            let err = Quantized::decode(&b, usize::MAX).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }
}
