//! Feeds arbitrary bytes to `FrameCodec::decode` and to a `FrameReader` in chunks.
//!
//! The first input byte steers: bit 0 picks the mode, the other bits the reader's chunk size
//! (1 to 128 bytes).
//! - raw (bit 0 clear): the rest is the byte stream as received.
//! - authentic (bit 0 set): the rest is what comes after the length prefix and before the tag;
//!   the target adds both, with a correct tag. Without this the fuzzer could never get past
//!   the tag and would not reach header decoding past the checks, or zstd.
//!
//! Checked beyond "no panic, no over-allocation" (libFuzzer's `-rss_limit_mb` and
//! `-malloc_limit_mb` catch the latter): `decode` and the reader agree, and whatever decodes
//! re-encodes to a frame that decodes to the same header fields and body.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_comm::ids::{JoinSecret, RunId};
use meridian_comm::wire::{FrameCodec, PREFIX_LEN, TAG_LEN};

/// The same codec as the checked-in corpus in `comm/tests/frames/`.
const SECRET: JoinSecret = JoinSecret([0x5e; 32]);
const RUN: RunId = RunId([0x11; 16]);
const MAX_FRAME: usize = 4096;

/// Wraps `content` as a frame with a correct prefix and tag, computing the tag from the
/// format's description (keyed BLAKE3, key derived from the secret, first 16 bytes) rather
/// than from the codec: a disagreement shows as frames that fail to authenticate.
fn seal(content: &[u8]) -> Vec<u8> {
    let len = u32::try_from(content.len() + TAG_LEN).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(PREFIX_LEN + content.len() + TAG_LEN);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(content);
    let key = blake3::derive_key("meridian frame v1", &SECRET.0);
    let tag = blake3::keyed_hash(&key, &frame);
    frame.extend_from_slice(&tag.as_bytes()[..TAG_LEN]);
    frame
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let bytes = if control & 1 == 1 { seal(rest) } else { rest.to_vec() };
    let chunk = 1 + usize::from(control >> 1);
    let codec = FrameCodec::new(&SECRET, RUN, MAX_FRAME);

    let decoded = codec.decode(&bytes);

    let mut reader = codec.reader();
    let mut frames = Vec::new();
    let mut error = None;
    'feed: for piece in bytes.chunks(chunk) {
        reader.push(piece);
        while let Some(result) = reader.next_frame() {
            match result {
                Ok(frame) => frames.push(frame),
                Err(e) => {
                    assert_eq!(reader.next_frame(), Some(Err(e.clone())), "poisoned reader");
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }

    if let Ok(frame) = &decoded {
        // One whole frame: the reader sees the same one and nothing else.
        assert_eq!(frames.as_slice(), std::slice::from_ref(frame));
        assert!(error.is_none() && reader.finish().is_ok());
        let h = &frame.header;
        let again = codec
            .encode(h.kind, h.round, h.sender, &frame.body, h.compressed)
            .expect("a decoded frame re-encodes");
        let back = codec.decode(&again).expect("a re-encoded frame decodes");
        assert_eq!(
            (back.header.kind, back.header.round, back.header.sender, back.header.compressed),
            (h.kind, h.round, h.sender, h.compressed)
        );
        assert_eq!(back.body, frame.body);
    } else if let Some(first) = frames.first() {
        // decode refused (trailing bytes, say) a stream whose first frame the reader accepted:
        // that frame's bytes on their own must decode to it.
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&bytes[..PREFIX_LEN]);
        let total = PREFIX_LEN + u32::from_le_bytes(prefix) as usize;
        assert_eq!(codec.decode(&bytes[..total]).as_ref(), Ok(first));
    }
});
