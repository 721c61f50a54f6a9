//! Replays every file in `tests/frames/` (see its README) through the decoder and through a
//! stream reader: each must be rejected with an error, never a panic, and the process must
//! go on decoding other peers' frames afterwards.

// Helpers outside #[test] functions unwrap too: a failure here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use meridian_comm::ids::{JoinSecret, RunId};
use meridian_comm::wire::{FrameCodec, FrameKind, WireError};

/// The key, run and limit the corpus was made for.
const SECRET: JoinSecret = JoinSecret([0x5e; 32]);
const RUN: RunId = RunId([0x11; 16]);
const MAX_FRAME: usize = 4096;

fn codec() -> FrameCodec {
    FrameCodec::new(&SECRET, RUN, MAX_FRAME)
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("frames");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Feeds `bytes` to a new reader in chunks of `chunk` bytes, draining it after each push.
/// Returns how many frames it yielded and the first error from `next_frame` or, failing that,
/// from `finish`.
fn read(bytes: &[u8], chunk: usize) -> (usize, Option<WireError>) {
    let mut reader = codec().reader();
    let mut frames = 0;
    for piece in bytes.chunks(chunk) {
        reader.push(piece);
        while let Some(result) = reader.next_frame() {
            match result {
                Ok(_) => frames += 1,
                Err(e) => {
                    // Poisoned: the same error again.
                    assert_eq!(reader.next_frame(), Some(Err(e.clone())));
                    return (frames, Some(e));
                }
            }
        }
    }
    (frames, reader.finish().err())
}

/// A reader rejects `bytes`. The one exception is the empty file: for `decode`, which wants
/// exactly one frame, it is truncated; for a reader it is a stream without frames.
fn reader_rejects(bytes: &[u8], chunk: usize) -> bool {
    match read(bytes, chunk) {
        (_, Some(_)) => true,
        (frames, None) => bytes.is_empty() && frames == 0,
    }
}

#[test]
fn the_corpus_is_there() {
    assert!(corpus().len() >= 12, "{} files", corpus().len());
}

#[test]
fn every_malformed_frame_is_rejected_by_decode() {
    for (name, bytes) in corpus() {
        let result = codec().decode(&bytes);
        assert!(result.is_err(), "{name} decoded: {result:?}");
    }
}

#[test]
fn every_malformed_frame_is_rejected_by_a_reader_however_it_arrives() {
    for (name, bytes) in corpus() {
        for chunk in [1, 3, 7, 64, usize::MAX] {
            assert!(reader_rejects(&bytes, chunk), "{name} in chunks of {chunk} was accepted");
        }
    }
}

#[test]
fn a_valid_frame_still_decodes_after_each_rejection() {
    let good = codec().encode(FrameKind::Payload, 8, 1, b"from an honest peer", true).unwrap();
    for (name, bytes) in corpus() {
        assert!(codec().decode(&bytes).is_err());
        assert!(reader_rejects(&bytes, 5), "{name}");
        // The same codec, and a new reader (as for another connection), carry on.
        let codec = codec();
        assert!(codec.decode(&bytes).is_err(), "{name}");
        let frame = codec.decode(&good).unwrap();
        assert_eq!(frame.body, b"from an honest peer", "after {name}");
        let mut reader = codec.reader();
        reader.push(&good);
        let frame = reader.next_frame().unwrap().unwrap();
        assert_eq!(frame.header.round, 8, "after {name}");
        assert_eq!(reader.finish(), Ok(()));
    }
}
