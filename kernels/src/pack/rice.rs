//! The Rice form of the chunked index encoding: within each chunk, the gaps between
//! consecutive kept offsets, each as a unary quotient and `r` remainder bits.
//!
//! Why: a per-chunk top-k keeps `k` of `c` positions, so a fixed-width offset spends
//! `log2 c` bits where the selection carries about `log2(c/k) + 1.44` bits of information
//! per index. With `r = floor(log2(c/k))`, gap `g` costs `(g >> r) + 1 + r` bits; the gaps of
//! a chunk sum to at most `c − k`, so a chunk never takes more than
//! `k·(r + 1) + ((c − k) >> r)` bits, below the fixed width whenever `k ≥ 4` on
//! power-of-two chunks (top-64 of 4096: at most 9.0 bits per index against 12; top-24 at
//! most 10.4, about 9.3 on real selections).
//!
//! Layout (after the tag [`super::TAG_RICE`]): chunk by chunk, for each kept offset `o_i`
//! (ascending, `o_{-1} = −1`), `g = o_i − o_{i−1} − 1` written as `g >> r` one-bits, a
//! zero-bit, then the low `r` bits of `g` LSB-first; bits are packed as in the module doc
//! and the last byte is zero-padded. The size depends on the selection; its bound depends
//! only on the spec.

use super::{check_padding, to_usize, BitWriter};
use crate::chunks::ChunkSpec;
use crate::error::{malformed, Result};

const WHAT: &str = "chunked index encoding (Rice)";

/// The Rice parameter of a spec: `floor(log2(chunk_len / k))` over its full chunks.
pub(crate) fn parameter(spec: &ChunkSpec) -> u32 {
    let span = spec.chunk_len.min(spec.len);
    let k = spec.k_for(span).max(1);
    let ratio = (span / k).max(1) as u64;
    63 - ratio.leading_zeros()
}

/// The most bits the Rice form of any valid selection under `spec` can take: per chunk of
/// `len` positions keeping `k`, `k·(r + 1)` for the codes' fixed parts plus `(len − k) >> r`
/// for the quotients, whose gaps sum to at most `len − k`.
pub(crate) fn max_bits(spec: &ChunkSpec, r: u32) -> u64 {
    let chunk = |len: usize| {
        let k = spec.k_for(len) as u64;
        k * u64::from(r + 1) + ((len as u64 - k) >> r)
    };
    let full = (spec.len / spec.chunk_len) as u64;
    let short = spec.len % spec.chunk_len;
    full * chunk(spec.chunk_len) + if short > 0 { chunk(short) } else { 0 }
}

/// Appends the Rice form (without its tag) of `indices`, already checked to hold exactly
/// `k_for` ascending offsets inside each chunk.
pub(crate) fn encode(indices: &[u32], spec: &ChunkSpec, r: u32, buf: &mut Vec<u8>) {
    let mut w = BitWriter::new(buf);
    let mut rest = indices;
    for c in 0..spec.num_chunks() {
        let range = spec.chunk_range(c);
        let Some((head, tail)) = rest.split_at_checked(spec.k_for(range.len())) else {
            break; // unreachable: the caller checked the counts
        };
        let mut next = range.start as u32;
        for &i in head {
            let gap = i - next;
            let mut q = gap >> r;
            while q >= 31 {
                w.push(u32::MAX, 31);
                q -= 31;
            }
            // q ones, then the terminating zero.
            w.push((1u32 << q) - 1, q + 1);
            w.push(gap, r);
            next = i + 1;
        }
        rest = tail;
    }
    w.finish();
}

/// Bounds-checked reads of codes from one byte slice, 64 bits at a time.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: u64,
    end: u64,
}

impl Reader<'_> {
    /// The bits from `pos` on, LSB first: at least 57 of them are the stream's (zeros past
    /// its end).
    #[inline]
    fn peek(&self) -> u64 {
        let byte = (self.pos >> 3) as usize;
        let tail = self.bytes.get(byte..).unwrap_or(&[]);
        let word = match tail.first_chunk::<8>() {
            Some(w) => u64::from_le_bytes(*w),
            None => {
                let mut w = [0u8; 8];
                w[..tail.len()].copy_from_slice(tail);
                u64::from_le_bytes(w)
            }
        };
        word >> (self.pos & 7)
    }

    fn truncated() -> crate::error::KernelError {
        malformed(WHAT, "truncated: the index stream ends inside a code")
    }

    /// A unary quotient: ones up to a zero. Errors once `q << r` reaches `len` (no
    /// position of the chunk is that far) or when the stream ends first.
    #[inline]
    fn quotient(&mut self, r: u32, len: u64, chunk: usize) -> Result<u64> {
        let mut q = 0u64;
        loop {
            // At most 56 at a time: all of them lie within the 57 bits `peek` vouches for.
            let ones = u64::from(self.peek().trailing_ones().min(56));
            q += ones;
            self.pos += ones;
            if q << r >= len {
                return Err(malformed(
                    WHAT,
                    format!("a gap in chunk {chunk} runs past its length {len}"),
                ));
            }
            if ones < 56 {
                break;
            }
        }
        // The terminating zero must be the stream's, not the padding past its end.
        if self.pos >= self.end {
            return Err(Self::truncated());
        }
        self.pos += 1;
        Ok(q)
    }

    /// The next `width` (≤ 32) bits.
    #[inline]
    fn bits(&mut self, width: u32) -> Result<u64> {
        if self.pos + u64::from(width) > self.end {
            return Err(Self::truncated());
        }
        let v = self.peek() & ((1u64 << width) - 1);
        self.pos += u64::from(width);
        Ok(v)
    }
}

/// Decodes the Rice form from `body` (the bytes after the tag, possibly followed by other
/// data); returns the global indices and the bytes the form used. `max_payload` is the
/// spec's bound in bytes: nothing past it is read.
pub(crate) fn decode(
    body: &[u8],
    spec: &ChunkSpec,
    r: u32,
    max_payload: usize,
    total_k: usize,
) -> Result<(Vec<u32>, usize)> {
    let body = &body[..body.len().min(max_payload)];
    let mut rd = Reader { bytes: body, pos: 0, end: body.len() as u64 * 8 };
    let mut out = Vec::with_capacity(total_k);
    for c in 0..spec.num_chunks() {
        let range = spec.chunk_range(c);
        let len = range.len() as u64;
        let mut next = 0u64;
        for _ in 0..spec.k_for(range.len()) {
            let q = rd.quotient(r, len, c)?;
            let gap = (q << r) | rd.bits(r)?;
            let off = next + gap;
            if off >= len {
                return Err(malformed(
                    WHAT,
                    format!("offset {off} in chunk {c} is not below its length {len}"),
                ));
            }
            // `off < len ≤ chunk_len ≤ u32::MAX` and chunk starts are below `len < 2^32`.
            out.push(range.start as u32 + off as u32);
            next = off + 1;
        }
    }
    let used = to_usize("rice stream", rd.pos.div_ceil(8))?;
    check_padding(WHAT, &body[..used], rd.pos)?;
    Ok((out, used))
}
