//! The malformed-frame corpus in `comm/tests/frames/`: how each file is made and the error
//! it must produce.
//!
//! Regenerate the files (after a format change) with
//! `MERIDIAN_WRITE_FRAME_CORPUS=1 cargo test -p meridian-comm write_frame_corpus -- --ignored`.
//! Files whose names start with `fuzz-` are crashes or oddities found by fuzzing; they are not
//! generated here and are only replayed by `comm/tests/malformed_frames.rs`.
//!
//! The same run also writes `fuzz/seeds/`: valid frames in the input format of the
//! `frame_decoder` fuzz target, which it could hardly find by itself (a zstd body, in
//! particular).

use std::path::PathBuf;

use super::*;
use crate::ids::{JoinSecret, RunId};

/// The key, run and limit the corpus was made for (also in `comm/tests/frames/README.md` and
/// `comm/tests/malformed_frames.rs`).
const SECRET: JoinSecret = JoinSecret([0x5e; 32]);
const RUN: RunId = RunId([0x11; 16]);
const MAX_FRAME: usize = 4096;

fn codec() -> FrameCodec {
    FrameCodec::new(&SECRET, RUN, MAX_FRAME)
}

fn header(body_len: usize, compressed: bool) -> FrameHeader {
    FrameHeader {
        magic: MAGIC,
        version: VERSION,
        run: RUN,
        round: 5,
        sender: 9,
        kind: FrameKind::Payload,
        body_len: body_len as u32,
        compressed,
    }
}

fn valid() -> Vec<u8> {
    codec().encode(FrameKind::Payload, 5, 9, b"a perfectly good payload", false).unwrap()
}

/// Sets the length prefix to what follows it.
fn fix_prefix(mut frame: Vec<u8>) -> Vec<u8> {
    let len = (frame.len() - PREFIX_LEN) as u32;
    frame[..PREFIX_LEN].copy_from_slice(&len.to_le_bytes());
    frame
}

/// Rewrites the tag so that only the deliberate defect is wrong.
fn retag(mut frame: Vec<u8>) -> Vec<u8> {
    let end = frame.len() - TAG_LEN;
    let tag = codec().tag(&frame[..end]);
    frame[end..].copy_from_slice(&tag);
    frame
}

fn flip(mut frame: Vec<u8>, at: usize, mask: u8) -> Vec<u8> {
    frame[at] ^= mask;
    frame
}

/// Each malformed frame: file name (without `.bin`), bytes, and the error `decode` must give.
fn cases() -> Vec<(&'static str, Vec<u8>, WireError)> {
    let valid = valid();
    let n = valid.len();
    let bad_header = || WireError::BadHeader(String::new());
    let bad_body = || WireError::BadBody(String::new());
    // Header offsets in `valid` (one-byte varints): magic at 4, version 8, run 9..25,
    // round 25, sender 26, kind 27, body_len 28, compressed 29.
    vec![
        ("empty", vec![], WireError::Truncated { needed: 4, got: 0 }),
        ("short_prefix", vec![0x20, 0, 0], WireError::Truncated { needed: 4, got: 3 }),
        (
            "oversize_prefix",
            [&u32::MAX.to_le_bytes()[..], b"MRDN"].concat(),
            WireError::TooLarge { len: u32::MAX as usize, max: MAX_FRAME },
        ),
        ("zero_length", vec![0; 4], WireError::Truncated { needed: 8, got: 4 }),
        ("cut_short", valid[..n - 5].to_vec(), WireError::Truncated { needed: n, got: n - 5 }),
        ("trailing_byte", [&valid[..], &[0]].concat(), WireError::TrailingBytes { extra: 1 }),
        ("bad_magic", retag(flip(valid.clone(), 4, 0x20)), WireError::BadMagic { got: *b"mRDN" }),
        (
            "next_version",
            codec().seal(&FrameHeader { version: VERSION + 1, ..header(0, false) }, &[]).unwrap(),
            WireError::UnsupportedVersion { got: VERSION + 1 },
        ),
        ("cut_header", fix_prefix(valid[..14].to_vec()), bad_header()),
        ("unknown_kind", retag(flip(valid.clone(), 27, 0x07)), bad_header()),
        ("bool_is_2", retag(flip(valid.clone(), 29, 0x02)), bad_header()),
        (
            "wrong_run",
            FrameCodec::new(&SECRET, RunId([0x22; 16]), MAX_FRAME)
                .encode(FrameKind::Payload, 5, 9, b"from next door", false)
                .unwrap(),
            WireError::WrongRun { expected: RUN, got: RunId([0x22; 16]) },
        ),
        (
            "body_len_mismatch",
            codec().seal(&header(3, false), b"four").unwrap(),
            WireError::BodyLenMismatch { declared: 3, actual: 4 },
        ),
        (
            "no_room_for_tag",
            fix_prefix(codec().seal(&header(0, false), &[]).unwrap()[..30].to_vec()),
            WireError::Truncated { needed: 46, got: 30 },
        ),
        (
            "wrong_secret",
            FrameCodec::new(&JoinSecret([0x5f; 32]), RUN, MAX_FRAME)
                .encode(FrameKind::Payload, 5, 9, b"let me in", false)
                .unwrap(),
            WireError::BadTag,
        ),
        ("flipped_round_bit", flip(valid.clone(), 25, 0x02), WireError::BadTag),
        ("flipped_body_bit", flip(valid.clone(), 35, 0x01), WireError::BadTag),
        ("flipped_tag_bit", flip(valid.clone(), n - 1, 0x80), WireError::BadTag),
        ("zstd_garbage", codec().seal(&header(15, true), b"this isn't zstd").unwrap(), bad_body()),
        (
            "zstd_without_size",
            {
                let body = zstd::stream::encode_all(&b"size unknown"[..], 3).unwrap();
                codec().seal(&header(body.len(), true), &body).unwrap()
            },
            bad_body(),
        ),
        (
            "zstd_outgrows_declared_size",
            {
                let mut body = zstd::bulk::compress(&[1; 10], 3).unwrap();
                body.extend(zstd::bulk::compress(&[2; 1000], 3).unwrap());
                codec().seal(&header(body.len(), true), &body).unwrap()
            },
            bad_body(),
        ),
        (
            "zip_bomb",
            {
                let body = zstd::bulk::compress(&vec![0; 1 << 24], 3).unwrap();
                codec().seal(&header(body.len(), true), &body).unwrap()
            },
            WireError::DecompressedTooLarge { size: 1 << 24, max: MAX_FRAME },
        ),
    ]
}

/// Valid inputs for the `frame_decoder` fuzz target (see `fuzz/fuzz_targets/frame_decoder.rs`):
/// a control byte (bit 0: the target adds prefix and tag itself; bits 1..: chunk size - 1),
/// then the bytes.
fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let codec = codec();
    let plain = codec.encode(FrameKind::Control, 1, 2, b"control message", false).unwrap();
    let packed = codec.encode(FrameKind::Payload, 3, 4, &[7; 600], true).unwrap();
    let inner = |frame: &[u8]| frame[PREFIX_LEN..frame.len() - TAG_LEN].to_vec();
    vec![
        ("raw-plain", [&[0x0e][..], &plain].concat()),
        ("raw-compressed", [&[0x00][..], &packed].concat()),
        ("raw-two-frames", [&[0x3e][..], &plain, &packed].concat()),
        ("auth-plain", [&[0x01][..], &inner(&plain)].concat()),
        ("auth-compressed", [&[0x01][..], &inner(&packed)].concat()),
    ]
}

/// Equal errors, except that message-carrying variants match on the variant alone (their
/// text comes from postcard or zstd and may change between versions).
fn same_error(got: &WireError, expected: &WireError) -> bool {
    match (got, expected) {
        (WireError::BadHeader(_), WireError::BadHeader(_)) => true,
        (WireError::BadBody(_), WireError::BadBody(_)) => true,
        _ => got == expected,
    }
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("frames")
}

#[test]
fn valid_corpus_frame_decodes() {
    let frame = codec().decode(&valid()).unwrap();
    assert_eq!(frame.body, b"a perfectly good payload");
}

#[test]
fn fuzz_seeds_hold_valid_frames() {
    for (name, input) in fuzz_seeds() {
        let bytes = if input[0] & 1 == 1 {
            retag(fix_prefix([&[0; PREFIX_LEN][..], &input[1..], &[0; TAG_LEN]].concat()))
        } else {
            input[1..].to_vec()
        };
        let mut reader = codec().reader();
        reader.push(&bytes);
        assert!(reader.next_frame().unwrap().is_ok(), "{name}");
    }
}

#[test]
fn each_generated_case_fails_with_its_error() {
    for (name, bytes, expected) in cases() {
        let got = codec().decode(&bytes).unwrap_err();
        assert!(same_error(&got, &expected), "{name}: got {got:?}, expected {expected:?}");
    }
}

#[test]
fn each_checked_in_file_fails_with_its_error() {
    for (name, _, expected) in cases() {
        let path = corpus_dir().join(format!("{name}.bin"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let got = codec().decode(&bytes).unwrap_err();
        assert!(same_error(&got, &expected), "{name}: got {got:?}, expected {expected:?}");
    }
}

/// Writes the corpus files; see the module docs.
#[test]
#[ignore = "writes comm/tests/frames/; run by hand after a format change"]
fn write_frame_corpus() {
    if std::env::var_os("MERIDIAN_WRITE_FRAME_CORPUS").is_none() {
        return;
    }
    std::fs::create_dir_all(corpus_dir()).unwrap();
    for (name, bytes, _) in cases() {
        std::fs::write(corpus_dir().join(format!("{name}.bin")), bytes).unwrap();
    }
    let seeds = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    std::fs::create_dir_all(&seeds).unwrap();
    for (name, bytes) in fuzz_seeds() {
        std::fs::write(seeds.join(name), bytes).unwrap();
    }
}
