//! Unit tests of the codec and the reader: round trips, one test per way a frame is rejected,
//! chunking, and properties over arbitrary input.

use std::ops::Range;

use proptest::prelude::*;

use super::*;
use crate::ids::{JoinSecret, RunId};

const SECRET: JoinSecret = JoinSecret([0x5e; 32]);
const RUN: RunId = RunId([0x11; 16]);
const MAX: usize = 1 << 16;

fn codec() -> FrameCodec {
    FrameCodec::new(&SECRET, RUN, MAX)
}

/// A body that compresses, but not to nothing.
fn text(len: usize) -> Vec<u8> {
    (0..len).map(|i| b"meridian wire "[i % 14] ^ (i / 97) as u8).collect()
}

/// Pseudo-random bytes that zstd cannot shrink.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Byte ranges of a valid frame: header, body, tag.
fn regions(frame: &[u8]) -> (Range<usize>, Range<usize>, Range<usize>) {
    let (_, rest) = postcard::take_from_bytes::<FrameHeader>(&frame[PREFIX_LEN..]).unwrap();
    let header_end = frame.len() - rest.len();
    let body_end = frame.len() - TAG_LEN;
    (PREFIX_LEN..header_end, header_end..body_end, body_end..frame.len())
}

fn flipped(frame: &[u8], byte: usize, mask: u8) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[byte] ^= mask;
    out
}

/// A valid frame whose round (5) and sender (9) are one-byte varints, so flipping bit 1 of
/// either keeps the header's layout.
fn sample(compress: bool) -> Vec<u8> {
    codec().encode(FrameKind::Payload, 5, 9, &text(300), compress).unwrap()
}

/// Offsets in a header with one-byte varints for version, round, sender, kind and
/// a body_len under 128: magic 0..4, version 4, run 5..21, round 21, sender 22, kind 23,
/// body_len 24, compressed 25.
const VERSION_AT: usize = PREFIX_LEN + 4;
const RUN_AT: usize = PREFIX_LEN + 5;
const ROUND_AT: usize = PREFIX_LEN + 21;
const SENDER_AT: usize = PREFIX_LEN + 22;
const KIND_AT: usize = PREFIX_LEN + 23;
const BODY_LEN_AT: usize = PREFIX_LEN + 24;
const COMPRESSED_AT: usize = PREFIX_LEN + 25;

/// A small frame (body_len < 128) so the offsets above hold.
fn small() -> Vec<u8> {
    codec().encode(FrameKind::Control, 5, 9, b"hello, members", false).unwrap()
}

/// Rewrites the tag after an edit, so that only the edit itself can be what is rejected.
fn retag(frame: &mut [u8]) {
    let end = frame.len() - TAG_LEN;
    let tag = codec().tag(&frame[..end]);
    frame[end..].copy_from_slice(&tag);
}

// ---- round trips ----

fn round_trip(kind: FrameKind, body: &[u8], compress: bool) -> Frame {
    let bytes = codec().encode(kind, 77, 4, body, compress).unwrap();
    let frame = codec().decode(&bytes).unwrap();
    assert_eq!(frame.body, body);
    assert_eq!(frame.header.kind, kind);
    assert_eq!((frame.header.round, frame.header.sender), (77, 4));
    assert_eq!((frame.header.magic, frame.header.version), (MAGIC, VERSION));
    assert_eq!(frame.header.run, RUN);
    assert_eq!(frame.header.compressed, compress);
    let (_, body_range, _) = regions(&bytes);
    assert_eq!(frame.header.body_len as usize, body_range.len());
    frame
}

#[test]
fn round_trip_uncompressed() {
    let frame = round_trip(FrameKind::Payload, &text(1000), false);
    assert_eq!(frame.header.body_len, 1000);
}

#[test]
fn round_trip_compressed_shrinks_a_repetitive_body() {
    let frame = round_trip(FrameKind::Payload, &text(1000), true);
    assert!(frame.header.body_len < 500, "body_len {}", frame.header.body_len);
}

#[test]
fn round_trip_empty_body() {
    round_trip(FrameKind::Control, &[], false);
    round_trip(FrameKind::Control, &[], true);
}

#[test]
fn round_trip_every_kind() {
    for kind in [FrameKind::Control, FrameKind::Payload, FrameKind::State] {
        round_trip(kind, b"body", false);
    }
}

#[test]
fn round_trip_large_body() {
    let big = 8 << 20;
    let codec = FrameCodec::new(&SECRET, RUN, 2 * big);
    for (body, compress) in [(noise(big, 3), false), (noise(big, 4), true), (text(big), true)] {
        let bytes = codec.encode(FrameKind::State, u64::MAX, u32::MAX, &body, compress).unwrap();
        let frame = codec.decode(&bytes).unwrap();
        assert_eq!((frame.header.round, frame.header.sender), (u64::MAX, u32::MAX));
        assert!(frame.body == body);
    }
}

#[test]
fn encoding_is_deterministic_and_prefix_counts_what_follows() {
    let a = sample(true);
    assert_eq!(a, sample(true));
    let len = u32::from_le_bytes(a[..4].try_into().unwrap()) as usize;
    assert_eq!(len, a.len() - PREFIX_LEN);
}

// ---- encode limits ----

#[test]
fn encode_refuses_a_body_over_the_limit() {
    let codec = FrameCodec::new(&SECRET, RUN, 100);
    let err = codec.encode(FrameKind::Payload, 0, 0, &[0; 101], true).unwrap_err();
    assert_eq!(err, WireError::TooLarge { len: 101, max: 100 });
}

#[test]
fn encode_refuses_a_frame_that_header_and_tag_push_over_the_limit() {
    let codec = FrameCodec::new(&SECRET, RUN, 100);
    let err = codec.encode(FrameKind::Payload, 0, 0, &[0; 90], false).unwrap_err();
    assert!(matches!(err, WireError::TooLarge { max: 100, .. }), "{err:?}");
}

// ---- length prefix and framing ----

#[test]
fn empty_and_short_input_is_truncated() {
    assert_eq!(codec().decode(&[]), Err(WireError::Truncated { needed: 4, got: 0 }));
    assert_eq!(codec().decode(&[1, 0, 0]), Err(WireError::Truncated { needed: 4, got: 3 }));
}

#[test]
fn a_frame_cut_short_is_truncated() {
    let bytes = sample(false);
    let cut = &bytes[..bytes.len() - 1];
    assert_eq!(
        codec().decode(cut),
        Err(WireError::Truncated { needed: bytes.len(), got: bytes.len() - 1 })
    );
}

#[test]
fn bytes_after_the_frame_are_refused() {
    let mut bytes = sample(false);
    bytes.extend_from_slice(&[0, 0]);
    assert_eq!(codec().decode(&bytes), Err(WireError::TrailingBytes { extra: 2 }));
}

#[test]
fn oversize_prefix_is_too_large() {
    let codec = FrameCodec::new(&SECRET, RUN, 64);
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 60]);
    assert_eq!(codec.decode(&bytes), Err(WireError::TooLarge { len: u32::MAX as usize, max: 64 }));
}

#[test]
fn flipping_a_length_bit_breaks_framing() {
    let bytes = small();
    let len = bytes.len() - PREFIX_LEN;
    // Bit 0: one byte more or less than the frame holds.
    let err = codec().decode(&flipped(&bytes, 0, 1)).unwrap_err();
    if len % 2 == 0 {
        assert_eq!(err, WireError::Truncated { needed: bytes.len() + 1, got: bytes.len() });
    } else {
        assert_eq!(err, WireError::TrailingBytes { extra: 1 });
    }
    // Bit 30: a gigabyte-sized claim, over the limit.
    let err = codec().decode(&flipped(&bytes, 3, 0x40)).unwrap_err();
    assert_eq!(err, WireError::TooLarge { len: len | 1 << 30, max: MAX });
}

#[test]
fn a_length_too_short_for_a_header_or_tag_is_refused() {
    // Length 0: not even the magic.
    assert_eq!(codec().decode(&[0; 4]), Err(WireError::Truncated { needed: 8, got: 4 }));
    // Header complete, body empty, tag missing: the prefix was rewritten to drop the tag.
    let bytes = codec().encode(FrameKind::Control, 5, 9, &[], false).unwrap();
    let mut cut = bytes[..bytes.len() - TAG_LEN].to_vec();
    let len = (cut.len() - PREFIX_LEN) as u32;
    cut[..4].copy_from_slice(&len.to_le_bytes());
    assert_eq!(
        codec().decode(&cut),
        Err(WireError::Truncated { needed: cut.len() + TAG_LEN, got: cut.len() })
    );
}

// ---- header ----

#[test]
fn flipping_a_magic_bit_is_bad_magic() {
    let err = codec().decode(&flipped(&small(), PREFIX_LEN, 0x01)).unwrap_err();
    assert_eq!(err, WireError::BadMagic { got: *b"LRDN" });
}

#[test]
fn flipping_a_version_bit_is_unsupported_version() {
    let err = codec().decode(&flipped(&small(), VERSION_AT, 0x01)).unwrap_err();
    assert_eq!(err, WireError::UnsupportedVersion { got: VERSION ^ 0x01 });
}

#[test]
fn another_version_with_a_valid_tag_is_unsupported_version() {
    let header = FrameHeader {
        magic: MAGIC,
        version: VERSION - 1,
        run: RUN,
        round: 0,
        sender: 0,
        kind: FrameKind::Control,
        body_len: 0,
        compressed: false,
    };
    let bytes = codec().seal(&header, &[]).unwrap();
    assert_eq!(codec().decode(&bytes), Err(WireError::UnsupportedVersion { got: VERSION - 1 }));
}

#[test]
fn a_ring_segment_frame_keeps_its_slot() {
    let bytes = codec().encode(FrameKind::Segment { slot: 300 }, 7, 2, &[9; 40], false).unwrap();
    let frame = codec().decode(&bytes).unwrap();
    assert_eq!(frame.header.kind, FrameKind::Segment { slot: 300 });
    assert_eq!((frame.header.round, frame.header.sender), (7, 2));
    assert_eq!(&frame.body[..], &[9; 40]);
}

#[test]
fn chunk_and_forwarded_frames_keep_their_fields() {
    let kinds = [
        FrameKind::StateChunk { index: 70_000 },
        FrameKind::Forward { to: 5, carried: Carried::Payload },
        FrameKind::Forwarded { from: 3, carried: Carried::StateChunk { index: 2 } },
        FrameKind::Forwarded { from: 9, carried: Carried::Segment { slot: 4 } },
    ];
    for kind in kinds {
        let bytes = codec().encode(kind, 7, 2, &[9; 40], false).unwrap();
        let frame = codec().decode(&bytes).unwrap();
        assert_eq!(frame.header.kind, kind);
        assert_eq!((frame.header.round, frame.header.sender), (7, 2));
    }
    // What members send each other travels through the coordinator and back unchanged.
    for kind in [
        FrameKind::Control,
        FrameKind::Payload,
        FrameKind::Segment { slot: 1 },
        FrameKind::StateChunk { index: 8 },
    ] {
        assert_eq!(Carried::of(kind).map(Carried::kind), Some(kind));
    }
    assert_eq!(Carried::of(FrameKind::State), None);
}

#[test]
fn flipping_a_run_bit_is_wrong_run() {
    let err = codec().decode(&flipped(&small(), RUN_AT, 0x80)).unwrap_err();
    let mut got = RUN;
    got.0[0] ^= 0x80;
    assert_eq!(err, WireError::WrongRun { expected: RUN, got });
}

#[test]
fn a_frame_of_another_run_is_wrong_run_even_with_the_same_secret() {
    let other = RunId([0x22; 16]);
    let bytes = FrameCodec::new(&SECRET, other, MAX).encode(FrameKind::Control, 1, 1, b"x", false);
    let err = codec().decode(&bytes.unwrap()).unwrap_err();
    assert_eq!(err, WireError::WrongRun { expected: RUN, got: other });
}

#[test]
fn flipping_round_or_sender_bits_is_bad_tag() {
    for at in [ROUND_AT, SENDER_AT] {
        assert_eq!(codec().decode(&flipped(&small(), at, 0x02)), Err(WireError::BadTag));
    }
}

#[test]
fn an_unknown_kind_is_bad_header_even_with_a_valid_tag() {
    let mut bytes = small();
    bytes[KIND_AT] = 3;
    retag(&mut bytes);
    let err = codec().decode(&bytes).unwrap_err();
    assert!(matches!(err, WireError::BadHeader(_)), "{err:?}");
}

#[test]
fn a_bool_other_than_0_or_1_is_bad_header() {
    let mut bytes = small();
    assert_eq!(bytes[COMPRESSED_AT], 0);
    bytes[COMPRESSED_AT] = 2;
    retag(&mut bytes);
    let err = codec().decode(&bytes).unwrap_err();
    assert!(matches!(err, WireError::BadHeader(_)), "{err:?}");
}

#[test]
fn a_header_cut_by_the_length_prefix_is_bad_header() {
    let bytes = small();
    let mut cut = bytes[..RUN_AT + 5].to_vec();
    let len = (cut.len() - PREFIX_LEN) as u32;
    cut[..4].copy_from_slice(&len.to_le_bytes());
    let err = codec().decode(&cut).unwrap_err();
    assert!(matches!(err, WireError::BadHeader(_)), "{err:?}");
}

#[test]
fn flipping_a_body_len_bit_is_body_len_mismatch() {
    let bytes = small();
    let declared = bytes[BODY_LEN_AT] ^ 0x01;
    let err = codec().decode(&flipped(&bytes, BODY_LEN_AT, 0x01)).unwrap_err();
    assert_eq!(err, WireError::BodyLenMismatch { declared: declared.into(), actual: 14 });
}

// ---- authentication ----

#[test]
fn flipping_a_body_bit_is_bad_tag() {
    for compress in [false, true] {
        let bytes = sample(compress);
        let (_, body, _) = regions(&bytes);
        for at in [body.start, body.start + body.len() / 2, body.end - 1] {
            assert_eq!(codec().decode(&flipped(&bytes, at, 0x10)), Err(WireError::BadTag));
        }
    }
}

#[test]
fn flipping_a_tag_bit_is_bad_tag() {
    let bytes = sample(false);
    let (_, _, tag) = regions(&bytes);
    for at in tag {
        assert_eq!(codec().decode(&flipped(&bytes, at, 0x01)), Err(WireError::BadTag));
    }
}

#[test]
fn a_frame_sealed_with_another_secret_is_bad_tag() {
    let stranger = FrameCodec::new(&JoinSecret([0x5f; 32]), RUN, MAX);
    let bytes = stranger.encode(FrameKind::Payload, 5, 9, b"let me in", false).unwrap();
    assert_eq!(codec().decode(&bytes), Err(WireError::BadTag));
}

#[test]
fn every_single_bit_flip_is_rejected() {
    for bytes in [small(), sample(true)] {
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let result = codec().decode(&flipped(&bytes, at, 1 << bit));
                assert!(result.is_err(), "byte {at} bit {bit} accepted");
            }
        }
    }
}

// ---- compressed bodies ----

fn sealed_compressed(body: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        magic: MAGIC,
        version: VERSION,
        run: RUN,
        round: 0,
        sender: 0,
        kind: FrameKind::Payload,
        body_len: body.len() as u32,
        compressed: true,
    };
    codec().seal(&header, body).unwrap()
}

#[test]
fn a_body_that_is_not_zstd_is_bad_body() {
    let err = codec().decode(&sealed_compressed(b"certainly not zstd")).unwrap_err();
    assert!(matches!(err, WireError::BadBody(_)), "{err:?}");
}

#[test]
fn a_zstd_body_without_a_declared_size_is_bad_body() {
    // The streaming encoder does not know the size up front, so it writes none.
    let body = zstd::stream::encode_all(&b"some bytes"[..], 3).unwrap();
    let err = codec().decode(&sealed_compressed(&body)).unwrap_err();
    assert!(matches!(err, WireError::BadBody(_)), "{err:?}");
}

#[test]
fn a_zstd_body_that_outgrows_its_declared_size_is_bad_body() {
    // Two frames: the first declares 10 bytes, the second adds 1000 more.
    let mut body = zstd::bulk::compress(&[1; 10], 3).unwrap();
    body.extend(zstd::bulk::compress(&[2; 1000], 3).unwrap());
    let err = codec().decode(&sealed_compressed(&body)).unwrap_err();
    assert!(matches!(err, WireError::BadBody(_)), "{err:?}");
}

#[test]
fn a_zip_bomb_is_refused_before_decompressing() {
    // 16 MiB of zeros compresses to under a kilobyte; its declared size gives it away.
    let body = zstd::bulk::compress(&vec![0; 16 << 20], 3).unwrap();
    assert!(body.len() < 4 << 10, "{}", body.len());
    let err = codec().decode(&sealed_compressed(&body)).unwrap_err();
    assert_eq!(err, WireError::DecompressedTooLarge { size: 16 << 20, max: MAX });
}

#[test]
fn a_compressed_body_over_a_smaller_peer_limit_is_refused() {
    let generous = FrameCodec::new(&SECRET, RUN, 1 << 20);
    let bytes = generous.encode(FrameKind::Payload, 0, 0, &vec![0; 1 << 20], true).unwrap();
    let strict = FrameCodec::new(&SECRET, RUN, 4096);
    assert!(bytes.len() < 4096);
    assert_eq!(
        strict.decode(&bytes),
        Err(WireError::DecompressedTooLarge { size: 1 << 20, max: 4096 })
    );
}

// ---- reader ----

fn stream() -> (Vec<u8>, Vec<Frame>) {
    let codec = codec();
    let mut bytes = Vec::new();
    let mut frames = Vec::new();
    for (i, (len, compress)) in
        [(0, false), (14, false), (3000, true), (1, true), (700, false)].into_iter().enumerate()
    {
        let encoded = codec.encode(FrameKind::Payload, i as u64, 2, &text(len), compress).unwrap();
        frames.push(codec.decode(&encoded).unwrap());
        bytes.extend(encoded);
    }
    (bytes, frames)
}

/// Pushes `bytes` cut at `cuts` and drains the reader after every push.
fn read_in_chunks(bytes: &[u8], cuts: &[usize]) -> (Vec<Frame>, FrameReader) {
    let mut reader = codec().reader();
    let mut frames = Vec::new();
    let mut from = 0;
    for &to in cuts.iter().chain([bytes.len()].iter()) {
        let to = to.clamp(from, bytes.len());
        reader.push(&bytes[from..to]);
        from = to;
        while let Some(frame) = reader.next_frame() {
            frames.push(frame.unwrap());
        }
    }
    (frames, reader)
}

#[test]
fn reader_yields_frames_pushed_at_once() {
    let (bytes, expected) = stream();
    let (frames, reader) = read_in_chunks(&bytes, &[]);
    assert_eq!(frames, expected);
    assert_eq!(reader.buffered(), 0);
    assert_eq!(reader.finish(), Ok(()));
}

#[test]
fn reader_fed_one_byte_at_a_time_yields_the_same_frames() {
    let (bytes, expected) = stream();
    let cuts: Vec<usize> = (1..bytes.len()).collect();
    let (frames, reader) = read_in_chunks(&bytes, &cuts);
    assert_eq!(frames, expected);
    assert_eq!(reader.finish(), Ok(()));
}

#[test]
fn reader_waits_for_a_whole_frame_and_finish_reports_a_partial_one() {
    let bytes = small();
    let mut reader = codec().reader();
    reader.push(&bytes[..2]);
    assert!(reader.next_frame().is_none());
    assert_eq!(reader.finish(), Err(WireError::Truncated { needed: 4, got: 2 }));
    reader.push(&bytes[2..10]);
    assert!(reader.next_frame().is_none());
    assert_eq!(reader.buffered(), 10);
    assert_eq!(reader.finish(), Err(WireError::Truncated { needed: bytes.len(), got: 10 }));
    reader.push(&bytes[10..]);
    assert!(reader.next_frame().unwrap().is_ok());
    assert!(reader.next_frame().is_none());
}

#[test]
fn reader_refuses_an_oversize_prefix_as_it_arrives() {
    let mut reader = FrameCodec::new(&SECRET, RUN, 64).reader();
    reader.push(&u32::MAX.to_le_bytes()[..3]);
    assert!(reader.next_frame().is_none());
    reader.push(&[0xff, 0xaa, 0xbb]);
    assert_eq!(reader.buffered(), 0, "nothing kept once refused");
    let expected = WireError::TooLarge { len: u32::MAX as usize, max: 64 };
    assert_eq!(reader.next_frame(), Some(Err(expected.clone())));
    assert_eq!(reader.finish(), Err(expected));
}

#[test]
fn reader_is_poisoned_after_an_error() {
    let good = small();
    let bad = flipped(&good, good.len() - 1, 0x01);
    let mut reader = codec().reader();
    reader.push(&good);
    reader.push(&bad);
    reader.push(&good);
    assert!(reader.next_frame().unwrap().is_ok());
    assert_eq!(reader.next_frame(), Some(Err(WireError::BadTag)));
    // The good frame after the bad one is not trusted: the stream is out of step.
    assert_eq!(reader.next_frame(), Some(Err(WireError::BadTag)));
    reader.push(&good);
    assert_eq!(reader.next_frame(), Some(Err(WireError::BadTag)));
    assert_eq!(reader.buffered(), 0);
    assert_eq!(reader.finish(), Err(WireError::BadTag));
    // Another connection's reader is unaffected.
    let mut fresh = codec().reader();
    fresh.push(&good);
    assert!(fresh.next_frame().unwrap().is_ok());
}

#[test]
fn reader_reserves_the_announced_frame_size_exactly() {
    let bytes = codec().encode(FrameKind::State, 0, 0, &noise(50_000, 9), false).unwrap();
    let mut reader = codec().reader();
    reader.push(&bytes[..100]);
    reader.push(&bytes[100..200]);
    assert_eq!(reader.capacity(), bytes.len());
    reader.push(&bytes[200..]);
    assert_eq!(reader.capacity(), bytes.len());
    assert!(reader.next_frame().unwrap().is_ok());
}

// ---- properties ----

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![Just(FrameKind::Control), Just(FrameKind::Payload), Just(FrameKind::State)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_of_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = codec().decode(&bytes);
        let mut reader = codec().reader();
        reader.push(&bytes);
        while let Some(result) = reader.next_frame() {
            if result.is_err() {
                break;
            }
        }
    }

    /// Arbitrary bytes behind a correct length prefix, magic and version: reaches the header
    /// parser, the body-length check and the tag check. Without the secret, always an error.
    #[test]
    fn arbitrary_frames_past_the_prefix_are_rejected(tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut bytes = vec![0; PREFIX_LEN];
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VERSION as u8);
        bytes.extend_from_slice(&RUN.0);
        bytes.extend_from_slice(&tail);
        let len = (bytes.len() - PREFIX_LEN) as u32;
        bytes[..4].copy_from_slice(&len.to_le_bytes());
        prop_assert!(codec().decode(&bytes).is_err());
    }

    #[test]
    fn encode_then_decode_is_identity(
        kind in kind(),
        round in any::<u64>(),
        sender in any::<u32>(),
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        compress in any::<bool>(),
    ) {
        let bytes = codec().encode(kind, round, sender, &body, compress).unwrap();
        let frame = codec().decode(&bytes).unwrap();
        prop_assert_eq!(frame.header.kind, kind);
        prop_assert_eq!(frame.header.round, round);
        prop_assert_eq!(frame.header.sender, sender);
        prop_assert_eq!(frame.header.run, RUN);
        prop_assert_eq!(frame.header.compressed, compress);
        prop_assert_eq!(frame.body, body);
    }

    #[test]
    fn any_byte_change_is_rejected(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        compress in any::<bool>(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..,
    ) {
        let bytes = codec().encode(FrameKind::Payload, 1, 2, &body, compress).unwrap();
        let at = at.index(bytes.len());
        prop_assert!(codec().decode(&flipped(&bytes, at, mask)).is_err());
    }

    #[test]
    fn chunking_does_not_change_the_frames(mut cuts in proptest::collection::vec(0usize..6000, 0..40)) {
        let (bytes, expected) = stream();
        cuts.sort_unstable();
        let (frames, reader) = read_in_chunks(&bytes, &cuts);
        prop_assert_eq!(frames, expected);
        prop_assert_eq!(reader.finish(), Ok(()));
    }
}
