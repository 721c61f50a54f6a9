//! Why a frame was rejected (or could not be built).

use super::header::VERSION;
use crate::ids::RunId;

/// Why a frame could not be decoded or encoded.
///
/// Every variant names one problem, so that a log line says what a peer got wrong. A
/// [`FrameReader`](super::FrameReader) that returned any of them is poisoned: see its docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The frame (as declared by its length prefix, or as built) or a body to encode is
    /// larger than the codec's limit. Checked before any buffer of that size is allocated.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The declared or computed size in bytes.
        len: usize,
        /// The codec's `max_frame`.
        max: usize,
    },
    /// Fewer bytes than the frame needs: the input stops inside the length prefix or before
    /// the end the prefix declares, or the declared length is too short for header and tag.
    #[error("truncated frame: needs {needed} bytes, has {got}")]
    Truncated {
        /// Bytes needed (at least).
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// Bytes follow the end that the length prefix declares (`decode` takes exactly one frame).
    #[error("{extra} bytes follow the end of the frame")]
    TrailingBytes {
        /// How many bytes follow.
        extra: usize,
    },
    /// The frame does not start with `MRDN`: not a Meridian frame, or the stream is out of step.
    #[error("not a Meridian frame (magic {got:02x?})")]
    BadMagic {
        /// The four bytes found instead.
        got: [u8; 4],
    },
    /// The peer speaks another version of the frame format.
    #[error("unsupported frame version {got} (this build speaks version {VERSION})")]
    UnsupportedVersion {
        /// The version the frame declares.
        got: u16,
    },
    /// The header does not decode (unknown frame kind, bad varint, cut short...).
    #[error("malformed frame header: {0}")]
    BadHeader(String),
    /// The frame belongs to another run.
    #[error("frame belongs to run {got}, not to this run ({expected})")]
    WrongRun {
        /// This codec's run.
        expected: RunId,
        /// The run the frame declares.
        got: RunId,
    },
    /// The header's `body_len` disagrees with the bytes between header and tag.
    #[error("header declares a {declared}-byte body but the frame holds {actual} bytes")]
    BodyLenMismatch {
        /// `body_len` from the header.
        declared: u32,
        /// Bytes actually between header and tag.
        actual: usize,
    },
    /// The authentication tag does not match: the frame was altered, or its sender does not
    /// hold this run's join secret.
    #[error("frame authentication failed (tampered, or sent without this run's secret)")]
    BadTag,
    /// A compressed body is not a valid zstd frame with a declared size, or fails to
    /// decompress (also used if compressing a body fails).
    #[error("malformed compressed body: {0}")]
    BadBody(String),
    /// A compressed body declares a decompressed size over the codec's limit.
    #[error("body decompresses to {size} bytes, over the limit of {max} bytes")]
    DecompressedTooLarge {
        /// The decompressed size the body declares.
        size: u64,
        /// The codec's `max_frame`.
        max: usize,
    },
}
