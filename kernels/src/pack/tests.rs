//! Tests of index packing: round trips of every form, the documented byte layouts, the
//! choice between forms, and the rejection of malformed, non-canonical or hostile encodings
//! (before the decoder allocates for them).

use super::*;
use crate::rng::SplitMix64;
use proptest::prelude::*;

/// Records the largest single allocation made by the current thread, so that tests can
/// show a hostile header is rejected before the decoder allocates for it.
mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Probe;

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller's contract is passed through.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: as above.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as above.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: as above.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    pub fn reset() {
        LARGEST.with(|l| l.set(0));
    }

    pub fn largest() -> usize {
        LARGEST.with(Cell::get)
    }
}

#[global_allocator]
static PROBE: alloc_probe::Probe = alloc_probe::Probe;

/// A per-chunk selection for `spec`: `k_for` distinct offsets per chunk, drawn by a
/// partial Fisher–Yates shuffle.
fn random_chunked(spec: &ChunkSpec, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(spec.total_k());
    let mut perm: Vec<u32> = Vec::new();
    for c in 0..spec.num_chunks() {
        let r = spec.chunk_range(c);
        let kc = spec.k_for(r.len());
        perm.clear();
        perm.extend(r.start as u32..r.end as u32);
        for j in 0..kc {
            let pick = j + (rng.next_u64() % (perm.len() - j) as u64) as usize;
            perm.swap(j, pick);
        }
        let mut sel = perm[..kc].to_vec();
        sel.sort_unstable();
        out.extend(sel);
    }
    out
}

/// Each position of `0..len` kept with probability `p`.
fn random_sorted(len: usize, p: f32, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    (0..len as u32).filter(|_| rng.next_unit_f32() < p).collect()
}

/// The tag and length the module doc promises for `idx` under `spec`, computed here
/// independently of the encoder: the Rice form's size from its codes' lengths, its choice
/// from its bound.
fn expected_chunked_len(spec: &ChunkSpec, idx: &[u32]) -> (u8, usize) {
    let span = spec.chunk_len.min(spec.len);
    let mut w = 1;
    while (1usize << w) < span {
        w += 1;
    }
    let fixed = 1 + (spec.total_k() * w).div_ceil(8);
    let bitmap = 1 + spec.len.div_ceil(8);
    let r = rice_parameter(spec);
    let mut bound = 0usize;
    for c in 0..spec.num_chunks() {
        let len = spec.chunk_range(c).len();
        let k = spec.k_for(len);
        bound += k * (r + 1) + ((len - k) >> r);
    }
    if 1 + bound.div_ceil(8) < fixed.min(bitmap) {
        (TAG_RICE, 1 + rice_bits(spec, idx, r).div_ceil(8))
    } else if fixed <= bitmap {
        (TAG_FIXED, fixed)
    } else {
        (TAG_BITMAP, bitmap)
    }
}

/// `floor(log2(chunk_len / k))` over a full chunk (or the whole buffer when shorter).
fn rice_parameter(spec: &ChunkSpec) -> usize {
    let span = spec.chunk_len.min(spec.len);
    let ratio = (span / spec.k_for(span).max(1)).max(1);
    (usize::BITS - 1 - ratio.leading_zeros()) as usize
}

/// Bits of the Rice codes of `idx`: per gap g, `g >> r` ones, a zero and r bits.
fn rice_bits(spec: &ChunkSpec, idx: &[u32], r: usize) -> usize {
    let mut bits = 0;
    let mut next = 0usize;
    let mut chunk = usize::MAX;
    for &i in idx {
        let c = i as usize / spec.chunk_len;
        if c != chunk {
            (chunk, next) = (c, c * spec.chunk_len);
        }
        let gap = i as usize - next;
        bits += (gap >> r) + 1 + r;
        next = i as usize + 1;
    }
    bits
}

fn spec_strategy() -> impl Strategy<Value = ChunkSpec> {
    (1usize..=300, 1usize..=2500, any::<u64>()).prop_map(|(chunk_len, len, r)| {
        // Densities from one per chunk to the whole chunk, skewed to both ends.
        let k = match r % 4 {
            0 => 1,
            1 => chunk_len,
            _ => 1 + (r >> 8) as usize % chunk_len,
        };
        ChunkSpec::new(len, chunk_len, k).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn chunked_round_trip(spec in spec_strategy(), seed in any::<u64>(), junk in any::<u8>()) {
        let idx = random_chunked(&spec, seed);
        let mut buf = vec![junk];
        encode_chunked(&idx, &spec, &mut buf).unwrap();
        let bytes = &buf[1..];
        let (tag, want_len) = expected_chunked_len(&spec, &idx);
        prop_assert_eq!(bytes[0], tag);
        prop_assert_eq!(bytes.len(), want_len);
        if tag == TAG_RICE {
            prop_assert!(bytes.len() <= encoded_len_chunked(&spec), "within the bound");
        } else {
            prop_assert_eq!(encoded_len_chunked(&spec), bytes.len());
        }
        // Trailing bytes are not consumed.
        let mut with_tail = bytes.to_vec();
        with_tail.extend_from_slice(&[0xAB, 0xCD]);
        let (back, used) = decode_chunked(&with_tail, &spec).unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(back, idx);
        for cut in 0..bytes.len() {
            prop_assert!(decode_chunked(&bytes[..cut], &spec).is_err());
        }
    }

    #[test]
    fn sorted_round_trip(len in 0usize..3000, p in 0.0f32..1.0, seed in any::<u64>()) {
        let p = if seed % 5 == 0 { 1.0 } else { p }; // full selection: one long run
        let idx = random_sorted(len, p, seed);
        let mut buf = Vec::new();
        encode_sorted(&idx, len, &mut buf).unwrap();
        prop_assert_eq!(encoded_len_sorted(&idx, len).unwrap(), buf.len());
        let (back, used) = decode_sorted(&buf, len, idx.len()).unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(&back, &idx);
        if !idx.is_empty() {
            prop_assert!(decode_sorted(&buf, len, idx.len() - 1).is_err());
        }
        for cut in 0..buf.len() {
            prop_assert!(decode_sorted(&buf[..cut], len, usize::MAX).is_err());
        }
    }

    /// Arbitrary bytes never panic, and whatever does decode is the canonical encoding
    /// of what it decodes to.
    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        spec in spec_strategy(),
        len in 0usize..600,
        max_count in 0usize..700,
    ) {
        for tag in [None, Some(TAG_FIXED), Some(TAG_BITMAP), Some(TAG_DELTA), Some(TAG_RICE)] {
            let mut b = bytes.clone();
            if let (Some(t), Some(first)) = (tag, b.first_mut()) {
                *first = t;
            }
            if let Ok((idx, used)) = decode_chunked(&b, &spec) {
                let mut again = Vec::new();
                encode_chunked(&idx, &spec, &mut again).unwrap();
                prop_assert_eq!(&again[..], &b[..used]);
            }
            if let Ok((idx, used)) = decode_sorted(&b, len, max_count) {
                let mut again = Vec::new();
                encode_sorted(&idx, len, &mut again).unwrap();
                prop_assert_eq!(&again[..], &b[..used]);
            }
        }
    }

    /// Single-bit corruptions of valid encodings either fail or decode to a list whose
    /// canonical encoding is exactly the corrupted bytes.
    #[test]
    fn bit_flips_are_caught_or_canonical(
        spec in spec_strategy(),
        seed in any::<u64>(),
        flip in any::<u64>(),
    ) {
        let idx = random_chunked(&spec, seed);
        let mut buf = Vec::new();
        encode_chunked(&idx, &spec, &mut buf).unwrap();
        let bit = (flip % (buf.len() as u64 * 8)) as usize;
        buf[bit / 8] ^= 1 << (bit % 8);
        if let Ok((back, used)) = decode_chunked(&buf, &spec) {
            let mut again = Vec::new();
            encode_chunked(&back, &spec, &mut again).unwrap();
            prop_assert_eq!(&again[..], &buf[..used]);
        }

        let idx = random_sorted(spec.len, (seed % 100) as f32 / 100.0, seed);
        let mut buf = Vec::new();
        encode_sorted(&idx, spec.len, &mut buf).unwrap();
        let bit = (flip % (buf.len() as u64 * 8)) as usize;
        buf[bit / 8] ^= 1 << (bit % 8);
        if let Ok((back, used)) = decode_sorted(&buf, spec.len, spec.len) {
            let mut again = Vec::new();
            encode_sorted(&back, spec.len, &mut again).unwrap();
            prop_assert_eq!(&again[..], &buf[..used]);
        }
    }

    #[test]
    fn bit_io_round_trip(vals in prop::collection::vec((any::<u32>(), 0u32..=32), 0..200)) {
        let mut buf = vec![0x5A];
        let mut w = BitWriter::new(&mut buf);
        for &(v, width) in &vals {
            w.push(v, width);
        }
        w.finish();
        let bits: u32 = vals.iter().map(|&(_, w)| w).sum();
        prop_assert_eq!(buf.len(), 1 + bits.div_ceil(8) as usize);
        let mut r = BitReader::new(&buf[1..]);
        for &(v, width) in &vals {
            prop_assert_eq!(u64::from(r.read(width)), u64::from(v) & low_mask(width));
        }
    }
}

#[test]
fn chunk_4096_k64_codes_gaps_in_rice_codes_of_at_most_9_bits() {
    let spec = ChunkSpec::new(4096 * 16, 4096, 64).unwrap();
    let idx = random_chunked(&spec, 1);
    let mut buf = Vec::new();
    encode_chunked(&idx, &spec, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_RICE);
    // r = log2(4096 / 64) = 6; the bound is 64 × 7 + (4032 >> 6) = 511 bits per chunk.
    assert_eq!(encoded_len_chunked(&spec), 1 + (16 * 511usize).div_ceil(8));
    assert!(buf.len() <= encoded_len_chunked(&spec));
    assert!(buf.len() < 1 + 1024 * 12 / 8, "{} bytes: below 12 bits per index", buf.len());
    // The first code by hand: idx[0] >> 6 ones, a zero, then idx[0]'s low 6 bits.
    let bit = |p: usize| (buf[1 + p / 8] >> (p % 8)) & 1;
    let q = idx[0] as usize >> 6;
    assert!((0..q).all(|p| bit(p) == 1) && bit(q) == 0);
    let rem: u32 = (0..6).map(|j| u32::from(bit(q + 1 + j)) << j).sum();
    assert_eq!(rem, idx[0] & 63);
    assert_eq!(decode_chunked(&buf, &spec).unwrap(), (idx, buf.len()));

    // Two kept per chunk: Rice's bound (2 × 12 + 1 bits) is above the fixed width's 24,
    // so offsets stay 12 bits apart.
    let spec = ChunkSpec::new(4096 * 2 + 100, 4096, 2).unwrap();
    let idx = random_chunked(&spec, 2);
    let mut buf = Vec::new();
    encode_chunked(&idx, &spec, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_FIXED);
    // 2 + 2 + k_for(100) = 1 indices → 5 × 12 bits = 8 bytes.
    assert_eq!(buf.len(), 1 + 8);
    assert_eq!(u32::from(buf[1]) | (u32::from(buf[2] & 0x0F) << 8), idx[0]);
    assert_eq!(u32::from(buf[2] >> 4) | (u32::from(buf[3]) << 4), idx[1]);
    assert_eq!(decode_chunked(&buf, &spec).unwrap(), (idx, 9));
}

#[test]
fn corrupted_rice_streams_are_rejected() {
    // One chunk of 64 keeping 8: r = 3, a bound of 8 × 4 + (56 >> 3) = 39 bits (5 bytes)
    // against 6 bytes of 6-bit offsets. Offsets 0..=6 and 63: seven gaps of 0 ("0" + "000")
    // and one of 56 = 7 << 3 (seven ones, a zero, "000"): 39 bits.
    let spec = ChunkSpec::new(64, 64, 8).unwrap();
    let idx = [0u32, 1, 2, 3, 4, 5, 6, 63];
    let mut buf = Vec::new();
    encode_chunked(&idx, &spec, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_RICE);
    assert_eq!(buf.len(), 1 + 5);
    assert_eq!(rice_bits(&spec, &idx, rice_parameter(&spec)), 39);
    assert_eq!(decode_chunked(&buf, &spec).unwrap(), (idx.to_vec(), 6));
    // Truncated anywhere: an error, never a shorter list.
    for cut in 1..buf.len() {
        assert!(decode_chunked(&buf[..cut], &spec).is_err(), "cut at {cut}");
    }
    // All ones: the first quotient runs past its chunk.
    let ones = [TAG_RICE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
    let e = decode_chunked(&ones, &spec).unwrap_err().to_string();
    assert!(e.contains("runs past its length"), "{e}");
    // The last remainder's low bit (stream bit 36) set: gap 57 names offset 64.
    let mut past = buf.clone();
    past[1 + 36 / 8] |= 1 << (36 % 8);
    let e = decode_chunked(&past, &spec).unwrap_err().to_string();
    assert!(e.contains("not below its length"), "{e}");
    // Non-zero padding after bit 39.
    let mut pad = buf.clone();
    pad[5] |= 0x80;
    assert!(decode_chunked(&pad, &spec).is_err());
    // The fixed tag where the spec selects Rice.
    let mut fixed = buf.clone();
    fixed[0] = TAG_FIXED;
    let e = decode_chunked(&fixed, &spec).unwrap_err().to_string();
    assert!(e.contains("not the form this spec selects"), "{e}");
}

#[test]
fn form_choice_at_extremes() {
    // Sparse: fixed. Full chunks: every position selected → bitmap.
    let sparse = ChunkSpec::new(1000, 100, 1).unwrap();
    let full = ChunkSpec::new(1000, 100, 100).unwrap();
    let mut buf = Vec::new();
    encode_chunked(&random_chunked(&sparse, 3), &sparse, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_FIXED);
    buf.clear();
    encode_chunked(&random_chunked(&full, 3), &full, &mut buf).unwrap();
    assert_eq!((buf[0], buf.len()), (TAG_BITMAP, 1 + 125));
    // 2-element chunks fully kept: 1 bit each either way; the tie goes to fixed.
    let tie = ChunkSpec::new(64, 2, 2).unwrap();
    buf.clear();
    encode_chunked(&random_chunked(&tie, 3), &tie, &mut buf).unwrap();
    assert_eq!((buf[0], buf.len()), (TAG_FIXED, 9));

    // Sorted: few indices → delta; half of them at random → bitmap; all of them, a
    // single run of width 0 → delta header only.
    let len = 4000;
    for (p, tag) in [(0.001, TAG_DELTA), (0.5, TAG_BITMAP), (1.0, TAG_DELTA)] {
        let idx = random_sorted(len, p, 4);
        buf.clear();
        encode_sorted(&idx, len, &mut buf).unwrap();
        assert_eq!(buf[0], tag, "p = {p}");
    }
    assert_eq!(buf.len(), DELTA_HEADER);
    assert_eq!(buf[5], 0);
    // Nothing selected in a short buffer: the bitmap is smaller than the header.
    buf.clear();
    encode_sorted(&[], 16, &mut buf).unwrap();
    assert_eq!(buf, [TAG_BITMAP, 0, 0]);
}

#[test]
fn delta_layout_is_as_documented() {
    let mut buf = Vec::new();
    // Gaps − 1: 0, 4, 1 → width 3, packed as 000 | 100 | 001 from bit 0.
    encode_sorted(&[7, 8, 13, 15], 1 << 20, &mut buf).unwrap();
    assert_eq!(buf, [TAG_DELTA, 4, 0, 0, 0, 3, 7, 0, 0, 0, 0b0110_0000, 0b0000_0000]);
    assert_eq!(decode_sorted(&buf, 1 << 20, 4).unwrap(), (vec![7, 8, 13, 15], 12));

    // Bitmap: bit i of byte i / 8.
    buf.clear();
    let spec = ChunkSpec::new(16, 8, 3).unwrap();
    encode_chunked(&[0, 3, 7, 9, 10, 14], &spec, &mut buf).unwrap();
    assert_eq!(buf, [TAG_BITMAP, 0b1000_1001, 0b0100_0110]);
}

#[test]
fn corrupted_local_offset_errors() {
    // chunk_len 10 → 4-bit offsets, which can express 10..=15.
    let spec = ChunkSpec::new(100, 10, 1).unwrap();
    let idx: Vec<u32> = (0..10).map(|c| c * 10 + 3).collect();
    let mut buf = Vec::new();
    encode_chunked(&idx, &spec, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_FIXED);
    assert_eq!(buf[1] & 0x0F, 3);
    buf[1] = (buf[1] & 0xF0) | 12;
    let err = decode_chunked(&buf, &spec).unwrap_err();
    assert!(matches!(err, KernelError::Malformed { .. }), "{err}");

    // Ragged tail of 100 elements inside a 12-bit offset field.
    let spec = ChunkSpec::new(4096 + 100, 4096, 1).unwrap();
    let idx = [5u32, 4096 + 99];
    buf.clear();
    encode_chunked(&idx, &spec, &mut buf).unwrap();
    assert_eq!(buf.len(), 1 + 3);
    assert_eq!(decode_chunked(&buf, &spec).unwrap().0, idx);
    // Second offset 99 → 100 (the tail's length).
    let off = (u32::from(buf[2]) >> 4) | (u32::from(buf[3]) << 4);
    assert_eq!(off, 99);
    buf[2] = (buf[2] & 0x0F) | ((100 & 0x0F) << 4);
    buf[3] = (100 >> 4) as u8;
    assert!(decode_chunked(&buf, &spec).is_err());
}

#[test]
fn unsorted_within_chunk_decode_errors() {
    let spec = ChunkSpec::new(32, 16, 2).unwrap();
    let mut buf = Vec::new();
    encode_chunked(&[1, 2, 16, 17], &spec, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_FIXED);
    // Offsets (4 bits each) 1, 2 → 2, 2 (duplicate) and → 2, 1 (descending).
    let mut dup = buf.clone();
    dup[1] = 0x22;
    assert!(decode_chunked(&dup, &spec).is_err());
    let mut desc = buf.clone();
    desc[1] = 0x12;
    assert!(decode_chunked(&desc, &spec).is_err());
}

#[test]
fn bitmap_with_wrong_chunk_counts_errors() {
    let spec = ChunkSpec::new(64, 8, 6).unwrap();
    let idx = random_chunked(&spec, 9);
    let mut buf = Vec::new();
    encode_chunked(&idx, &spec, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_BITMAP);
    assert!(decode_chunked(&buf, &spec).is_ok());
    // Move a set bit from chunk 0 into chunk 1: same total, wrong split.
    let mut moved = buf.clone();
    let from = moved[1].trailing_zeros();
    let to = (!moved[2]).trailing_zeros();
    moved[1] &= !(1 << from);
    moved[2] |= 1 << to;
    assert!(decode_chunked(&moved, &spec).is_err());
    // One bit more in total.
    let mut extra = buf.clone();
    extra[1] |= 1 << (!extra[1]).trailing_zeros();
    assert!(decode_chunked(&extra, &spec).is_err());
}

#[test]
fn nonzero_padding_errors() {
    // 3 indices × 4 bits = 12 bits: the high nibble of the second byte is padding.
    let spec = ChunkSpec::new(48, 16, 1).unwrap();
    let mut buf = Vec::new();
    encode_chunked(&[1, 17, 33], &spec, &mut buf).unwrap();
    assert_eq!(buf.len(), 3);
    buf[2] |= 0x80;
    assert!(decode_chunked(&buf, &spec).is_err());

    // Bitmap over 10 bits: bits 10..16 of the second byte are padding.
    let mut buf = Vec::new();
    let idx: Vec<u32> = (0..10).step_by(2).collect();
    encode_sorted(&idx, 10, &mut buf).unwrap();
    assert_eq!(buf[0], TAG_BITMAP);
    buf[2] |= 0x40;
    assert!(decode_sorted(&buf, 10, 10).is_err());
}

#[test]
fn bad_encoder_input_errors_and_leaves_buf_alone() {
    let spec = ChunkSpec::new(40, 10, 2).unwrap();
    let good = [1u32, 2, 11, 15, 20, 29, 30, 31];
    let mut buf = vec![9u8];
    encode_chunked(&good, &spec, &mut buf).unwrap();
    let cases: [&[u32]; 7] = [
        &[1, 1, 11, 15, 20, 29, 30, 31],     // duplicate
        &[2, 1, 11, 15, 20, 29, 30, 31],     // unsorted
        &[1, 2, 11, 15, 20, 29, 30, 40],     // out of range
        &[1, 2, 3, 15, 20, 29, 30, 31],      // 3 in chunk 0, 1 in chunk 1
        &[1, 2, 11, 15, 20, 29, 30],         // too few
        &[1, 2, 11, 15, 20, 29, 30, 31, 32], // too many
        &[],
    ];
    for bad in cases {
        let mut buf = vec![9u8];
        assert!(encode_chunked(bad, &spec, &mut buf).is_err(), "{bad:?}");
        assert_eq!(buf, [9]);
    }
    let err = encode_chunked(&[1, 2, 11, 15, 20, 29, 30, 40], &spec, &mut Vec::new());
    assert!(matches!(err, Err(KernelError::IndexOutOfRange { index: 40, .. })));

    for bad in [&[3u32, 3][..], &[4, 3], &[1, 100]] {
        let mut buf = vec![9u8];
        assert!(encode_sorted(bad, 100, &mut buf).is_err(), "{bad:?}");
        assert!(encoded_len_sorted(bad, 100).is_err());
        assert_eq!(buf, [9]);
    }
    assert!(encode_sorted(&[], u32::MAX as usize + 1, &mut Vec::new()).is_err());

    // A hand-built spec that `ChunkSpec::new` would reject.
    let bogus = ChunkSpec { len: 10, chunk_len: 0, k: 1 };
    assert_eq!(encoded_len_chunked(&bogus), 0);
    assert!(encode_chunked(&[1], &bogus, &mut Vec::new()).is_err());
    assert!(decode_chunked(&[TAG_FIXED, 0], &bogus).is_err());
    let huge = ChunkSpec { len: 10, chunk_len: usize::MAX, k: usize::MAX };
    assert!(encode_chunked(&[1], &huge, &mut Vec::new()).is_err());
}

#[test]
fn count_over_limit_errors_before_allocating() {
    let len = u32::MAX as usize;
    let mut hostile = vec![TAG_DELTA];
    hostile.extend_from_slice(&u32::MAX.to_le_bytes());
    hostile.push(0);
    hostile.extend_from_slice(&0u32.to_le_bytes());

    alloc_probe::reset();
    let err = decode_sorted(&hostile, len, 1000).unwrap_err();
    assert!(alloc_probe::largest() < 4096, "allocated {} bytes", alloc_probe::largest());
    assert!(matches!(err, KernelError::Malformed { .. }), "{err}");

    // A count within the limit but past the buffer is refused the same way.
    alloc_probe::reset();
    assert!(decode_sorted(&hostile, 1000, usize::MAX).is_err());
    assert!(alloc_probe::largest() < 4096);

    // Bitmap: population count over the limit.
    let mut bm = vec![TAG_BITMAP];
    bm.extend(std::iter::repeat_n(0x0Fu8, 64));
    assert!(decode_sorted(&bm, 512, 255).is_err());
    assert_eq!(decode_sorted(&bm, 512, 256).unwrap().0.len(), 256);
}

#[test]
fn delta_header_checks() {
    let header = |count: u32, width: u8, first: u32| {
        let mut b = vec![TAG_DELTA];
        b.extend_from_slice(&count.to_le_bytes());
        b.push(width);
        b.extend_from_slice(&first.to_le_bytes());
        b
    };
    let len = 1 << 16;
    assert_eq!(decode_sorted(&header(0, 0, 0), len, 10).unwrap(), (vec![], 10));
    assert_eq!(decode_sorted(&header(3, 0, 5), len, 10).unwrap(), (vec![5, 6, 7], 10));
    assert!(decode_sorted(&header(0, 1, 0), len, 10).is_err()); // empty with width
    assert!(decode_sorted(&header(0, 0, 4), len, 10).is_err()); // empty with first
    assert!(decode_sorted(&header(3, 0, len as u32 - 2), len, 10).is_err()); // runs past len
    assert!(decode_sorted(&header(1, 0, len as u32), len, 10).is_err()); // first ≥ len
    assert!(decode_sorted(&header(2, 33, 0), len, 10).is_err()); // width > 32
                                                                 // Width 2 for gaps that fit in 1 bit is not minimal.
    let mut b = header(3, 2, 0);
    b.push(0b0001);
    assert!(decode_sorted(&b, len, 10).is_err());
    let mut b = header(3, 1, 0);
    b.push(0b01);
    assert_eq!(decode_sorted(&b, len, 10).unwrap().0, [0, 2, 3]);
    // A gap that would carry the index past u32::MAX is out of range, not a wrap.
    let mut b = header(2, 32, u32::MAX - 2);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(decode_sorted(&b, u32::MAX as usize, 10).is_err());
    // Unknown tags and empty input.
    assert!(decode_sorted(&[], len, 10).is_err());
    assert!(decode_sorted(&[0x7F, 0, 0], len, 10).is_err());
    assert!(decode_sorted(&[TAG_FIXED, 0, 0], len, 10).is_err());
    assert!(decode_chunked(&[TAG_DELTA, 0, 0], &ChunkSpec::new(8, 8, 1).unwrap()).is_err());
}

#[test]
fn non_canonical_forms_are_rejected() {
    // Delta where the bitmap is smaller: count 2, width 3 over len 8 (11 bytes vs 2).
    let mut b = vec![TAG_DELTA, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0b100];
    assert!(decode_sorted(&b, 8, 8).is_err());
    b.truncate(0);
    // Bitmap holding a single index in a long buffer: delta would be far smaller.
    let mut bm = vec![TAG_BITMAP];
    bm.extend(std::iter::repeat_n(0u8, 200));
    bm[5] = 1;
    assert!(decode_sorted(&bm, 1600, 1600).is_err());
    // Chunked: bitmap tag where the spec selects fixed.
    let spec = ChunkSpec::new(80, 8, 1).unwrap();
    let mut bm = vec![TAG_BITMAP];
    bm.extend(std::iter::repeat_n(1u8, 10));
    assert!(decode_chunked(&bm, &spec).is_err());
}

/// Timing probe for 1M indices; run with `--ignored --nocapture` (release for numbers).
#[test]
#[ignore]
fn timing_one_million() {
    use std::time::Instant;
    let spec = ChunkSpec::new(4096 * 15625, 4096, 64).unwrap();
    let idx = random_chunked(&spec, 11);
    assert_eq!(idx.len(), 1_000_000);
    let mut buf = Vec::new();
    let t = Instant::now();
    encode_chunked(&idx, &spec, &mut buf).unwrap();
    let enc = t.elapsed();
    let t = Instant::now();
    let back = decode_chunked(&buf, &spec).unwrap().0;
    let dec = t.elapsed();
    assert_eq!(back, idx);
    println!("chunked 1M: encode {enc:?}, decode {dec:?}, {} bytes", buf.len());

    let len = 64_000_000;
    let idx = random_sorted(len, 1.0 / 64.0, 12);
    buf.clear();
    let t = Instant::now();
    encode_sorted(&idx, len, &mut buf).unwrap();
    let enc = t.elapsed();
    let t = Instant::now();
    let back = decode_sorted(&buf, len, idx.len()).unwrap().0;
    let dec = t.elapsed();
    assert_eq!(back, idx);
    println!("sorted {}: encode {enc:?}, decode {dec:?}, {} bytes", idx.len(), buf.len());
}
