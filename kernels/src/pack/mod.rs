//! Index packing: compact byte encodings of a strictly increasing index list.
//!
//! Two encodings, each choosing the smaller of two forms and announcing it with a leading
//! tag byte. Decoders accept only the form the encoder would have chosen (and, for the
//! delta form, only the minimal bit width), so every index list has exactly one encoding:
//! replicas that encode the same selection produce the same bytes, and anything else is
//! rejected as [`KernelError::Malformed`].
//!
//! # Bit packing
//!
//! Packed values are written LSB-first: a value `v` of width `w` placed at stream bit `p`
//! puts bit `j` of `v` at stream bit `p + j`, and stream bit `q` is bit `q % 8` of byte
//! `q / 8`. Values follow one another with no alignment; the last byte is padded with zero
//! bits, and decoders reject non-zero padding.
//!
//! # Tags
//!
//! | tag                   | form   | used by                                          |
//! |-----------------------|--------|--------------------------------------------------|
//! | `0x01` [`TAG_FIXED`]  | fixed  | [`encode_chunked`]                               |
//! | `0x02` [`TAG_BITMAP`] | bitmap | [`encode_chunked`] and [`encode_sorted`]         |
//! | `0x03` [`TAG_DELTA`]  | delta  | [`encode_sorted`]                                |
//! | `0x04` [`TAG_RICE`]   | Rice   | [`encode_chunked`]                               |
//!
//! # Chunked encoding ([`encode_chunked`])
//!
//! For indices chosen by a per-chunk top-k described by a [`ChunkSpec`]: chunk `c` holds
//! exactly `spec.k_for(chunk length)` indices, all inside the chunk.
//!
//! - **fixed**: `[0x01]` then `total_k` local offsets (index − chunk start), chunk by chunk,
//!   ascending within each chunk, bit-packed at `w = max(1, ceil(log2(min(chunk_len,
//!   len))))` bits each (12 bits for 4096-element chunks); `ceil(total_k · w / 8)` bytes.
//!   Capping the span at `len` only matters when one chunk covers the whole buffer, and
//!   keeps `w ≤ 32`.
//! - **bitmap**: `[0x02]` then `ceil(len / 8)` bytes; bit `i` is set iff index `i` is
//!   selected.
//!
//! - **Rice**: `[0x04]` then, chunk by chunk, the gaps between consecutive kept offsets as
//!   Rice codes with parameter `r = floor(log2(chunk_len / k))` (module `rice`): about
//!   `log2(chunk_len / k) + 2` bits per index instead of `log2(chunk_len)`. Its size depends
//!   on the selection; its bound `k·(r + 1) + ((chunk_len − k) >> r)` bits per chunk does not.
//!
//! Rice is chosen iff its bound, in bytes, is below both other forms' sizes (top-k of 4 or
//! more per power-of-two chunk); otherwise fixed iff its size is at most the bitmap's (ties
//! go to fixed). The choice depends only on the spec, so a decoder knows which form to
//! expect, and [`encoded_len_chunked`] (exact for fixed and bitmap, the bound for Rice) is
//! known before encoding.
//!
//! # Sorted encoding ([`encode_sorted`])
//!
//! For any strictly increasing list below `len` (a global top-k):
//!
//! - **delta**: a 10-byte header `[0x03][count: u32 LE][width: u8][first: u32 LE]`, then
//!   the `count − 1` gaps `idx[i] − idx[i−1] − 1` (i = 1..count) bit-packed at `width`
//!   bits, `ceil((count − 1) · width / 8)` bytes. `width` is the bit length of the largest
//!   gap (0 when the indices are consecutive, in which case there is no payload). An empty
//!   list has `width = 0` and `first = 0`.
//! - **bitmap**: `[0x02]` then `ceil(len / 8)` bytes, as above.
//!
//! Delta is chosen iff its size is at most the bitmap's (ties go to delta).
//!
//! Encoders append to the caller's buffer and leave it unchanged on error. Decoders read
//! from the front of a byte slice and return the indices and the number of bytes consumed,
//! so several encodings can be concatenated.

mod rice;

use crate::chunks::ChunkSpec;
use crate::error::{invalid, malformed, KernelError, Result};

/// Tag byte of the fixed-width chunk-local form.
pub const TAG_FIXED: u8 = 0x01;
/// Tag byte of the bitmap form.
pub const TAG_BITMAP: u8 = 0x02;
/// Tag byte of the delta form.
pub const TAG_DELTA: u8 = 0x03;
/// Tag byte of the Rice-coded chunk-local form.
pub const TAG_RICE: u8 = 0x04;

/// Tag, count, width and first index.
const DELTA_HEADER: usize = 1 + 4 + 1 + 4;

const WHAT_CHUNKED: &str = "chunked index encoding";
const WHAT_SORTED: &str = "sorted index encoding";

// ---------------------------------------------------------------------------------------
// Bit I/O
// ---------------------------------------------------------------------------------------

/// Appends values of up to 32 bits each to a byte buffer, LSB-first.
pub(crate) struct BitWriter<'a> {
    buf: &'a mut Vec<u8>,
    acc: u64,
    nbits: u32,
}

impl<'a> BitWriter<'a> {
    /// A writer appending to `buf` from its current end (byte-aligned).
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        Self { buf, acc: 0, nbits: 0 }
    }

    /// Appends the low `width` bits of `value`; widths above 32 are treated as 32.
    #[inline]
    pub(crate) fn push(&mut self, value: u32, width: u32) {
        let width = width.min(32);
        // `nbits < 32` between calls, so the accumulator never holds more than 63 bits.
        self.acc |= (u64::from(value) & low_mask(width)) << self.nbits;
        self.nbits += width;
        if self.nbits >= 32 {
            self.buf.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.nbits -= 32;
        }
    }

    /// Flushes the partial last byte, zero-padded.
    pub(crate) fn finish(self) {
        let n = self.nbits.div_ceil(8) as usize;
        self.buf.extend_from_slice(&self.acc.to_le_bytes()[..n]);
    }
}

/// Reads values of up to 32 bits each from a byte slice, LSB-first.
///
/// Reading past the end yields zero bits rather than panicking; callers check the length
/// of the slice against the number of bits they will read before they start.
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    /// A reader starting at the first bit of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    /// The next `width` bits as an integer; widths above 32 are treated as 32.
    #[inline]
    pub(crate) fn read(&mut self, width: u32) -> u32 {
        let width = width.min(32);
        let byte = self.pos >> 3;
        let shift = (self.pos & 7) as u32;
        let tail = self.bytes.get(byte..).unwrap_or(&[]);
        // An unaligned 8-byte load covers shift (≤ 7) + width (≤ 32) bits in one go.
        let word = match tail.first_chunk::<8>() {
            Some(w) => u64::from_le_bytes(*w),
            None => {
                let mut w = [0u8; 8];
                let n = tail.len().min(8);
                w[..n].copy_from_slice(&tail[..n]);
                u64::from_le_bytes(w)
            }
        };
        self.pos += width as usize;
        ((word >> shift) & low_mask(width)) as u32
    }
}

#[inline]
fn low_mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

/// Bits needed to write `v` (0 for 0).
fn bit_len(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Rejects non-zero bits after the first `used_bits` bits of `bytes` (whose length the
/// caller has already matched to `used_bits.div_ceil(8)`).
fn check_padding(what: &'static str, bytes: &[u8], used_bits: u64) -> Result<()> {
    let rem = (used_bits % 8) as u32;
    match bytes.last() {
        Some(&last) if rem != 0 && last >> rem != 0 => {
            Err(malformed(what, "non-zero padding bits in the last byte"))
        }
        _ => Ok(()),
    }
}

fn to_usize(what: &'static str, n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| invalid(what, format!("{n} does not fit in usize")))
}

// ---------------------------------------------------------------------------------------
// Shared validation and the bitmap form
// ---------------------------------------------------------------------------------------

/// Checks that `indices` is strictly increasing and below `len`; returns the largest gap
/// `idx[i] − idx[i−1] − 1` (0 for fewer than two indices).
fn scan_sorted(what: &'static str, indices: &[u32], len: usize) -> Result<u32> {
    let Some((&first, rest)) = indices.split_first() else {
        return Ok(0);
    };
    let mut prev = first;
    let mut max_gap = 0u32;
    for (pos, &i) in rest.iter().enumerate() {
        if i <= prev {
            return Err(malformed(
                what,
                format!("indices not strictly increasing at position {}: {prev} then {i}", pos + 1),
            ));
        }
        max_gap = max_gap.max(i - prev - 1);
        prev = i;
    }
    if prev as usize >= len {
        return Err(KernelError::IndexOutOfRange { what, index: u64::from(prev), len: len as u64 });
    }
    Ok(max_gap)
}

fn bitmap_bytes(len: usize) -> usize {
    len.div_ceil(8)
}

/// Sets bit `i` of a zeroed bitmap for every `i` in `indices` (already checked `< len`).
fn write_bitmap(indices: &[u32], len: usize, buf: &mut Vec<u8>) {
    buf.push(TAG_BITMAP);
    let start = buf.len();
    buf.resize(start + bitmap_bytes(len), 0);
    let bm = &mut buf[start..];
    for &i in indices {
        if let Some(b) = bm.get_mut((i >> 3) as usize) {
            *b |= 1 << (i & 7);
        }
    }
}

/// Checks the padding of a bitmap over `len` bits (`body` already exactly
/// `bitmap_bytes(len)` long) and returns its population count.
fn bitmap_count(what: &'static str, body: &[u8], len: usize) -> Result<usize> {
    check_padding(what, body, len as u64)?;
    let (words, rest) = body.split_at(body.len() - body.len() % 8);
    let mut n = 0usize;
    for w in words.chunks_exact(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        n += u64::from_le_bytes(a).count_ones() as usize;
    }
    n += rest.iter().map(|b| b.count_ones() as usize).sum::<usize>();
    Ok(n)
}

/// The set positions of a bitmap whose padding has been checked, in ascending order.
fn bitmap_extract(body: &[u8], count: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(count);
    let mut base = 0usize;
    let (words, rest) = body.split_at(body.len() - body.len() % 8);
    for w in words.chunks_exact(8) {
        let mut a = [0u8; 8];
        a.copy_from_slice(w);
        let mut x = u64::from_le_bytes(a);
        while x != 0 {
            out.push((base + x.trailing_zeros() as usize) as u32);
            x &= x - 1;
        }
        base += 64;
    }
    for &b in rest {
        let mut x = b;
        while x != 0 {
            out.push((base + x.trailing_zeros() as usize) as u32);
            x &= x - 1;
        }
        base += 8;
    }
    out
}

// ---------------------------------------------------------------------------------------
// Chunked encoding
// ---------------------------------------------------------------------------------------

pub(crate) struct ChunkedPlan {
    /// The fixed-width form is chosen.
    pub(crate) fixed: bool,
    /// The Rice form is chosen, with this parameter.
    pub(crate) rice: Option<u32>,
    /// Bits per offset of the fixed-width form.
    pub(crate) width: u32,
    pub(crate) total_k: usize,
    /// Bytes after the tag: exact for fixed and bitmap, the bound for Rice.
    pub(crate) payload: usize,
    /// Bytes after the tag that the fixed-width form would take.
    pub(crate) fixed_payload: usize,
}

/// Validates a spec whose fields may have been set by hand, including that `k_for` on the
/// short last chunk cannot overflow.
pub(crate) fn chunked_plan(spec: &ChunkSpec) -> Result<ChunkedPlan> {
    ChunkSpec::new(spec.len, spec.chunk_len, spec.k)?;
    let short = spec.len % spec.chunk_len;
    if spec.k.checked_mul(short).is_none() {
        return Err(invalid("k", format!("{} × {short} overflows", spec.k)));
    }
    let span = spec.chunk_len.min(spec.len);
    let width = bit_len(span as u64 - 1).max(1);
    let total_k = spec.total_k();
    let fixed_bytes = to_usize("spec", (total_k as u64 * u64::from(width)).div_ceil(8))?;
    let bitmap = bitmap_bytes(spec.len);
    let r = rice::parameter(spec);
    let rice_bytes = to_usize("spec", rice::max_bits(spec, r).div_ceil(8))?;
    let base = ChunkedPlan {
        fixed: false,
        rice: None,
        width,
        total_k,
        payload: bitmap,
        fixed_payload: fixed_bytes,
    };
    Ok(if rice_bytes < fixed_bytes.min(bitmap) {
        ChunkedPlan { rice: Some(r), payload: rice_bytes, ..base }
    } else if fixed_bytes <= bitmap {
        ChunkedPlan { fixed: true, payload: fixed_bytes, ..base }
    } else {
        base
    })
}

/// For sorted, in-range `indices` of length `spec.total_k()`: the first chunk whose slot
/// of `k_for` consecutive indices does not lie inside it, with its expected and actual
/// counts.
fn chunk_mismatch(indices: &[u32], spec: &ChunkSpec) -> Option<(usize, usize, usize)> {
    let mut pos = 0usize;
    for c in 0..spec.num_chunks() {
        let r = spec.chunk_range(c);
        let kc = spec.k_for(r.len());
        let fits = indices.get(pos..pos + kc).is_some_and(|s| match (s.first(), s.last()) {
            (Some(&a), Some(&b)) => (a as usize) >= r.start && (b as usize) < r.end,
            _ => true,
        });
        if !fits {
            let lo = indices.partition_point(|&i| (i as usize) < r.start);
            let hi = indices.partition_point(|&i| (i as usize) < r.end);
            return Some((c, kc, hi - lo));
        }
        pos += kc;
    }
    None
}

/// Size in bytes (tag included) of [`encode_chunked`]'s output for `spec`: exact for the
/// fixed and bitmap forms, the most it can be for the Rice form (see the module doc).
///
/// Depends only on the spec. Returns 0 for a spec that [`ChunkSpec::new`] would reject;
/// [`encode_chunked`] and [`decode_chunked`] return an error for such a spec.
pub fn encoded_len_chunked(spec: &ChunkSpec) -> usize {
    chunked_plan(spec).map_or(0, |p| 1 + p.payload)
}

/// Appends the chunked encoding (see the module doc) of `indices` to `buf`.
///
/// `indices` must be strictly increasing, below `spec.len`, and hold exactly
/// `spec.k_for(chunk length)` indices in each chunk. On error `buf` is unchanged.
pub fn encode_chunked(indices: &[u32], spec: &ChunkSpec, buf: &mut Vec<u8>) -> Result<()> {
    let plan = chunked_plan(spec)?;
    scan_sorted("chunked indices", indices, spec.len)?;
    if indices.len() != plan.total_k {
        return Err(KernelError::LengthMismatch {
            what: "chunked indices (total over all chunks)",
            expected: plan.total_k,
            actual: indices.len(),
        });
    }
    if let Some((_, expected, actual)) = chunk_mismatch(indices, spec) {
        return Err(KernelError::LengthMismatch {
            what: "chunked indices in a chunk",
            expected,
            actual,
        });
    }
    buf.reserve(1 + plan.payload);
    if let Some(r) = plan.rice {
        buf.push(TAG_RICE);
        rice::encode(indices, spec, r, buf);
        return Ok(());
    }
    if !plan.fixed {
        write_bitmap(indices, spec.len, buf);
        return Ok(());
    }
    buf.push(TAG_FIXED);
    let mut w = BitWriter::new(buf);
    let mut rest = indices;
    for c in 0..spec.num_chunks() {
        let r = spec.chunk_range(c);
        let Some((head, tail)) = rest.split_at_checked(spec.k_for(r.len())) else {
            break; // unreachable: counts were checked above
        };
        // Chunk starts are below `len < 2^32`.
        let start = r.start as u32;
        for &i in head {
            w.push(i - start, plan.width);
        }
        rest = tail;
    }
    w.finish();
    Ok(())
}

/// Decodes a chunked encoding from the front of `bytes`; returns the global indices
/// (strictly increasing) and the number of bytes consumed.
///
/// Errors on a spec [`ChunkSpec::new`] rejects, a missing, unknown or non-canonical tag,
/// too few bytes, non-zero padding, a local offset at or beyond its chunk's length, offsets
/// not strictly increasing within a chunk, or (bitmap) a chunk whose number of set bits is
/// not `spec.k_for(chunk length)`. Trailing bytes are left for the caller.
pub fn decode_chunked(bytes: &[u8], spec: &ChunkSpec) -> Result<(Vec<u32>, usize)> {
    let plan = chunked_plan(spec)?;
    let Some((&tag, body)) = bytes.split_first() else {
        return Err(malformed(WHAT_CHUNKED, "empty input"));
    };
    let want = match (plan.rice, plan.fixed) {
        (Some(_), _) => TAG_RICE,
        (None, true) => TAG_FIXED,
        (None, false) => TAG_BITMAP,
    };
    if tag != want {
        return Err(malformed(
            WHAT_CHUNKED,
            if [TAG_FIXED, TAG_BITMAP, TAG_RICE].contains(&tag) {
                format!("tag {tag:#04x} is not the form this spec selects ({want:#04x})")
            } else {
                format!("unknown tag {tag:#04x}")
            },
        ));
    }
    if let Some(r) = plan.rice {
        let (indices, used) = rice::decode(body, spec, r, plan.payload, plan.total_k)?;
        return Ok((indices, 1 + used));
    }
    let Some(body) = body.get(..plan.payload) else {
        return Err(malformed(
            WHAT_CHUNKED,
            format!("truncated: need {} bytes after the tag, have {}", plan.payload, body.len()),
        ));
    };
    let indices = if plan.fixed {
        decode_fixed(body, spec, &plan)?
    } else {
        decode_chunked_bitmap(body, spec, &plan)?
    };
    Ok((indices, 1 + plan.payload))
}

fn decode_fixed(body: &[u8], spec: &ChunkSpec, plan: &ChunkedPlan) -> Result<Vec<u32>> {
    check_padding(WHAT_CHUNKED, body, plan.total_k as u64 * u64::from(plan.width))?;
    let mut out = Vec::with_capacity(plan.total_k);
    let mut r = BitReader::new(body);
    for c in 0..spec.num_chunks() {
        let range = spec.chunk_range(c);
        let this_len = range.len();
        let mut next_min = 0u32;
        for _ in 0..spec.k_for(this_len) {
            let off = r.read(plan.width);
            if off as usize >= this_len {
                return Err(malformed(
                    WHAT_CHUNKED,
                    format!("local offset {off} in chunk {c} is not below its length {this_len}"),
                ));
            }
            if off < next_min {
                return Err(malformed(
                    WHAT_CHUNKED,
                    format!("local offsets in chunk {c} are not strictly increasing at {off}"),
                ));
            }
            // `off < this_len ≤ u32::MAX`, so neither sum overflows.
            next_min = off + 1;
            out.push(range.start as u32 + off);
        }
    }
    Ok(out)
}

fn decode_chunked_bitmap(body: &[u8], spec: &ChunkSpec, plan: &ChunkedPlan) -> Result<Vec<u32>> {
    let count = bitmap_count(WHAT_CHUNKED, body, spec.len)?;
    if count != plan.total_k {
        return Err(malformed(
            WHAT_CHUNKED,
            format!("bitmap has {count} set bits, the spec keeps {}", plan.total_k),
        ));
    }
    let out = bitmap_extract(body, count);
    if let Some((c, expected, actual)) = chunk_mismatch(&out, spec) {
        return Err(malformed(
            WHAT_CHUNKED,
            format!("chunk {c} has {actual} set bits, the spec keeps {expected}"),
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Sorted encoding
// ---------------------------------------------------------------------------------------

fn check_sorted_len(len: usize) -> Result<()> {
    if u32::try_from(len).is_err() {
        return Err(invalid("len", format!("{len} elements exceed the u32 index range")));
    }
    Ok(())
}

/// Delta-form size in bytes (tag included), computed in u64 so that header values read
/// from the network cannot overflow it.
fn delta_size(count: u64, width: u32) -> u64 {
    DELTA_HEADER as u64 + (count.saturating_sub(1) * u64::from(width)).div_ceil(8)
}

fn bitmap_size(len: usize) -> u64 {
    1 + bitmap_bytes(len) as u64
}

struct SortedPlan {
    delta: bool,
    width: u32,
    size: usize,
}

fn sorted_plan(indices: &[u32], len: usize) -> Result<SortedPlan> {
    check_sorted_len(len)?;
    let max_gap = scan_sorted("sorted indices", indices, len)?;
    let width = bit_len(u64::from(max_gap));
    let d = delta_size(indices.len() as u64, width);
    let b = bitmap_size(len);
    let delta = d <= b;
    Ok(SortedPlan { delta, width, size: to_usize("len", if delta { d } else { b })? })
}

/// Exact size in bytes (tag included) of [`encode_sorted`]'s output; validates like it.
pub fn encoded_len_sorted(indices: &[u32], len: usize) -> Result<usize> {
    Ok(sorted_plan(indices, len)?.size)
}

/// Appends the sorted encoding (see the module doc) of `indices` to `buf`.
///
/// `indices` must be strictly increasing and below `len`, and `len` must fit in a `u32`.
/// On error `buf` is unchanged.
pub fn encode_sorted(indices: &[u32], len: usize, buf: &mut Vec<u8>) -> Result<()> {
    let plan = sorted_plan(indices, len)?;
    buf.reserve(plan.size);
    if !plan.delta {
        write_bitmap(indices, len, buf);
        return Ok(());
    }
    // `indices.len() ≤ len < 2^32`.
    let count = indices.len() as u32;
    buf.push(TAG_DELTA);
    buf.extend_from_slice(&count.to_le_bytes());
    buf.push(plan.width as u8);
    buf.extend_from_slice(&indices.first().copied().unwrap_or(0).to_le_bytes());
    if plan.width > 0 {
        let mut w = BitWriter::new(buf);
        for p in indices.windows(2) {
            w.push(p[1] - p[0] - 1, plan.width);
        }
        w.finish();
    }
    Ok(())
}

/// Decodes a sorted encoding from the front of `bytes`; returns the indices (strictly
/// increasing, below `len`) and the number of bytes consumed.
///
/// `max_count` bounds the number of indices; it is checked against the header (delta) or
/// the population count (bitmap) before the index vector is allocated, so a short hostile
/// message cannot make the decoder allocate more than `max_count` indices. Also errors on a
/// missing or unknown tag, too few bytes, non-zero padding, an index at or beyond `len`, a
/// non-minimal width, or a form the encoder would not have chosen. Trailing bytes are left
/// for the caller.
pub fn decode_sorted(bytes: &[u8], len: usize, max_count: usize) -> Result<(Vec<u32>, usize)> {
    check_sorted_len(len)?;
    let Some((&tag, body)) = bytes.split_first() else {
        return Err(malformed(WHAT_SORTED, "empty input"));
    };
    match tag {
        TAG_DELTA => decode_delta(body, len, max_count),
        TAG_BITMAP => decode_sorted_bitmap(body, len, max_count),
        _ => Err(malformed(WHAT_SORTED, format!("unknown tag {tag:#04x}"))),
    }
}

fn decode_delta(body: &[u8], len: usize, max_count: usize) -> Result<(Vec<u32>, usize)> {
    let Some((header, payload)) = body.split_first_chunk::<{ DELTA_HEADER - 1 }>() else {
        return Err(malformed(
            WHAT_SORTED,
            format!(
                "truncated: {} header bytes after the tag, need {}",
                body.len(),
                DELTA_HEADER - 1
            ),
        ));
    };
    let count = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let width = u32::from(header[4]);
    let first = u32::from_le_bytes([header[5], header[6], header[7], header[8]]);
    if count as usize > max_count {
        return Err(malformed(WHAT_SORTED, format!("count {count} exceeds the limit {max_count}")));
    }
    if count as usize > len {
        return Err(malformed(WHAT_SORTED, format!("count {count} exceeds the length {len}")));
    }
    if width > 32 {
        return Err(malformed(WHAT_SORTED, format!("width {width} exceeds 32 bits")));
    }
    if count == 0 && (width != 0 || first != 0) {
        return Err(malformed(WHAT_SORTED, "empty list with non-zero width or first index"));
    }
    let size = delta_size(u64::from(count), width);
    if size > bitmap_size(len) {
        return Err(malformed(WHAT_SORTED, "delta form where the bitmap is smaller"));
    }
    if count == 0 {
        return Ok((Vec::new(), DELTA_HEADER));
    }
    // Every gap adds at least one, so this is the smallest possible last index.
    let min_last = u64::from(first) + u64::from(count - 1);
    if min_last >= len as u64 {
        return Err(KernelError::IndexOutOfRange {
            what: WHAT_SORTED,
            index: min_last,
            len: len as u64,
        });
    }
    // `size ≤ bitmap_size(len)`, which fits in usize.
    let payload_len = size as usize - DELTA_HEADER;
    let Some(payload) = payload.get(..payload_len) else {
        return Err(malformed(
            WHAT_SORTED,
            format!("truncated: need {payload_len} payload bytes, have {}", payload.len()),
        ));
    };
    check_padding(WHAT_SORTED, payload, u64::from(count - 1) * u64::from(width))?;
    let mut out = Vec::with_capacity(count as usize);
    if width == 0 {
        // `first + count − 1 < len ≤ u32::MAX` was checked above.
        out.extend(first..=first + (count - 1));
        return Ok((out, size as usize));
    }
    let mut r = BitReader::new(payload);
    let mut prev = first;
    let mut max_gap = 0u32;
    out.push(first);
    for _ in 1..count {
        let gap = r.read(width);
        max_gap = max_gap.max(gap);
        let next = u64::from(prev) + u64::from(gap) + 1;
        if next >= len as u64 {
            return Err(KernelError::IndexOutOfRange {
                what: WHAT_SORTED,
                index: next,
                len: len as u64,
            });
        }
        prev = next as u32;
        out.push(prev);
    }
    if bit_len(u64::from(max_gap)) != width {
        return Err(malformed(WHAT_SORTED, format!("width {width} is not minimal for the gaps")));
    }
    Ok((out, size as usize))
}

fn decode_sorted_bitmap(body: &[u8], len: usize, max_count: usize) -> Result<(Vec<u32>, usize)> {
    let n = bitmap_bytes(len);
    let Some(body) = body.get(..n) else {
        return Err(malformed(
            WHAT_SORTED,
            format!("truncated: need {n} bitmap bytes, have {}", body.len()),
        ));
    };
    let count = bitmap_count(WHAT_SORTED, body, len)?;
    if count > max_count {
        return Err(malformed(WHAT_SORTED, format!("count {count} exceeds the limit {max_count}")));
    }
    let out = bitmap_extract(body, count);
    let max_gap = out.windows(2).map(|p| p[1] - p[0] - 1).max().unwrap_or(0);
    if delta_size(count as u64, bit_len(u64::from(max_gap))) <= bitmap_size(len) {
        return Err(malformed(WHAT_SORTED, "bitmap form where the delta form is no larger"));
    }
    Ok((out, 1 + n))
}

#[cfg(test)]
mod tests;
