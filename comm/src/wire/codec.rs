//! Encoding and decoding of whole frames: layout, authentication tag, bounded decompression.

use std::borrow::Cow;

use super::error::WireError;
use super::header::{Frame, FrameHeader, FrameKind, MAGIC, VERSION};
use super::reader::FrameReader;
use crate::ids::{JoinSecret, MemberId, Round, RunId};

/// Default limit on a frame (and on a decompressed body): 1 GiB.
pub const DEFAULT_MAX_FRAME: usize = 1 << 30;

/// Bytes of the little-endian `u32` length prefix.
pub const PREFIX_LEN: usize = 4;

/// Bytes of the authentication tag that ends every frame.
pub const TAG_LEN: usize = 16;

/// BLAKE3 key-derivation context: ties the tag key to this format version, so the same join
/// secret used elsewhere never yields the same key.
const TAG_CONTEXT: &str = "meridian frame v1";

/// zstd's own default level: a good ratio at several hundred MB/s.
const ZSTD_LEVEL: i32 = 3;

/// Encodes and decodes the frames of one run.
///
/// Layout of a frame (see the crate's design notes):
///
/// ```text
/// u32 LE length of what follows | postcard FrameHeader | body | 16-byte tag
/// ```
///
/// The tag is keyed BLAKE3 (key = `blake3::derive_key("meridian frame v1", secret)`) over
/// prefix, header and body as sent, truncated to 16 bytes. Decoding checks, in order: the
/// length prefix against `max_frame` (before allocating anything), magic, version, header,
/// run, `body_len`, the tag (compared in constant time), then decompresses the body with
/// the decompressed size bounded by `max_frame`. The checks before the tag exist to name
/// the problem (a peer of another version or run); nothing is trusted before the tag.
///
/// Cheap to clone: a keyed BLAKE3 state (about 2 KB) and two words.
#[derive(Clone)]
pub struct FrameCodec {
    /// Keyed hasher, cloned per frame so the key is expanded once.
    mac: blake3::Hasher,
    run: RunId,
    max_frame: usize,
}

impl std::fmt::Debug for FrameCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("FrameCodec")
            .field("run", &self.run)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl FrameCodec {
    /// A codec for `run`, authenticating with a key derived from `secret`.
    ///
    /// `max_frame` bounds the length prefix (everything after it) and the decompressed size
    /// of a body, in bytes; [`DEFAULT_MAX_FRAME`] suits training runs. Values above
    /// `u32::MAX` are clamped to it, the most a length prefix can say.
    pub fn new(secret: &JoinSecret, run: RunId, max_frame: usize) -> Self {
        let key = blake3::derive_key(TAG_CONTEXT, &secret.0);
        let max_frame = max_frame.min(u32::MAX as usize);
        Self { mac: blake3::Hasher::new_keyed(&key), run, max_frame }
    }

    /// The run whose frames this codec accepts and writes.
    pub fn run(&self) -> RunId {
        self.run
    }

    /// The limit on a frame and on a decompressed body, in bytes.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// This codec with another limit (clamped like [`new`](Self::new)'s): for instance a
    /// smaller one for what a peer may send before it has proven itself.
    pub fn with_max_frame(&self, max_frame: usize) -> Self {
        Self { max_frame: max_frame.min(u32::MAX as usize), ..self.clone() }
    }

    /// An incremental reader for a byte stream of frames, sharing this codec's key and limit.
    pub fn reader(&self) -> FrameReader {
        FrameReader::new(self.clone())
    }

    /// Builds one frame: prefix, header, body (zstd-compressed when `compress`), tag.
    ///
    /// Fails with [`WireError::TooLarge`] when `body` or the finished frame exceeds
    /// `max_frame` (the peer would refuse it), and with [`WireError::BadBody`] if zstd fails.
    pub fn encode(
        &self,
        kind: FrameKind,
        round: Round,
        sender: MemberId,
        body: &[u8],
        compress: bool,
    ) -> Result<Vec<u8>, WireError> {
        if body.len() > self.max_frame {
            return Err(WireError::TooLarge { len: body.len(), max: self.max_frame });
        }
        let wire_body: Cow<'_, [u8]> = if compress {
            // The one-shot compressor records the content size in the zstd frame header,
            // which `decompress_bounded` requires.
            let packed = zstd::bulk::compress(body, ZSTD_LEVEL)
                .map_err(|e| WireError::BadBody(e.to_string()))?;
            Cow::Owned(packed)
        } else {
            Cow::Borrowed(body)
        };
        let body_len = u32::try_from(wire_body.len())
            .map_err(|_| WireError::TooLarge { len: wire_body.len(), max: self.max_frame })?;
        let header = FrameHeader {
            magic: MAGIC,
            version: VERSION,
            run: self.run,
            round,
            sender,
            kind,
            body_len,
            compressed: compress,
        };
        self.seal(&header, &wire_body)
    }

    /// Lays out `header` and `wire_body` (taken as they are: `body_len` is not checked here)
    /// and appends the tag. Tests use it directly to build authenticated but malformed frames.
    pub(crate) fn seal(
        &self,
        header: &FrameHeader,
        wire_body: &[u8],
    ) -> Result<Vec<u8>, WireError> {
        let head = postcard::to_stdvec(header).map_err(|e| WireError::BadHeader(e.to_string()))?;
        let len = head.len() + wire_body.len() + TAG_LEN;
        if len > self.max_frame {
            return Err(WireError::TooLarge { len, max: self.max_frame });
        }
        let prefix =
            u32::try_from(len).map_err(|_| WireError::TooLarge { len, max: self.max_frame })?;
        let mut out = Vec::with_capacity(PREFIX_LEN + len);
        out.extend_from_slice(&prefix.to_le_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(wire_body);
        let tag = self.tag(&out);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decodes exactly one whole frame, length prefix included.
    ///
    /// Rejects input that stops early ([`WireError::Truncated`]) or goes on past the frame
    /// ([`WireError::TrailingBytes`]); see [`FrameCodec`] for the other checks.
    pub fn decode(&self, bytes: &[u8]) -> Result<Frame, WireError> {
        let Some(prefix) = read_prefix(bytes) else {
            return Err(WireError::Truncated { needed: PREFIX_LEN, got: bytes.len() });
        };
        let total = self.frame_len(prefix)?;
        match bytes.len().cmp(&total) {
            std::cmp::Ordering::Less => {
                Err(WireError::Truncated { needed: total, got: bytes.len() })
            }
            std::cmp::Ordering::Greater => {
                Err(WireError::TrailingBytes { extra: bytes.len() - total })
            }
            std::cmp::Ordering::Equal => self.decode_exact(bytes),
        }
    }

    /// Total size (prefix included) of a frame whose length prefix is `prefix`, or
    /// [`WireError::TooLarge`]. Callers allocate only after this.
    pub(crate) fn frame_len(&self, prefix: [u8; PREFIX_LEN]) -> Result<usize, WireError> {
        let len = u32::from_le_bytes(prefix) as usize;
        if len > self.max_frame {
            return Err(WireError::TooLarge { len, max: self.max_frame });
        }
        Ok(PREFIX_LEN + len)
    }

    /// Decodes a frame whose length prefix is known to match `frame.len()`.
    pub(crate) fn decode_exact(&self, frame: &[u8]) -> Result<Frame, WireError> {
        let content = frame.get(PREFIX_LEN..).unwrap_or_default();
        let truncated = |needed: usize| WireError::Truncated { needed, got: frame.len() };

        // Magic and version first, on their own: a frame of another version may have another
        // header layout, and should be refused as such rather than as a bad header.
        let magic =
            content.get(..MAGIC.len()).ok_or_else(|| truncated(PREFIX_LEN + MAGIC.len()))?;
        if magic != MAGIC {
            let mut got = [0u8; 4];
            got.copy_from_slice(magic);
            return Err(WireError::BadMagic { got });
        }
        let ((_, version), _) = postcard::take_from_bytes::<([u8; 4], u16)>(content)
            .map_err(|e| WireError::BadHeader(e.to_string()))?;
        if version != VERSION {
            return Err(WireError::UnsupportedVersion { got: version });
        }
        let (header, rest) = postcard::take_from_bytes::<FrameHeader>(content)
            .map_err(|e| WireError::BadHeader(e.to_string()))?;
        if header.run != self.run {
            return Err(WireError::WrongRun { expected: self.run, got: header.run });
        }
        let header_end = frame.len() - rest.len();
        let body_end = frame
            .len()
            .checked_sub(TAG_LEN)
            .filter(|&end| end >= header_end)
            .ok_or_else(|| truncated(header_end + TAG_LEN))?;
        let body = &frame[header_end..body_end];
        if body.len() != header.body_len as usize {
            return Err(WireError::BodyLenMismatch {
                declared: header.body_len,
                actual: body.len(),
            });
        }
        let expected = self.tag(&frame[..body_end]);
        let got: &[u8; TAG_LEN] =
            frame[body_end..].try_into().map_err(|_| truncated(body_end + TAG_LEN))?;
        if !constant_time_eq::constant_time_eq_16(&expected, got) {
            return Err(WireError::BadTag);
        }

        let body = if header.compressed {
            decompress_bounded(body, self.max_frame)?
        } else {
            body.to_vec()
        };
        Ok(Frame { header, body })
    }

    /// The tag of `covered` (prefix, header and body).
    pub(crate) fn tag(&self, covered: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(covered);
        let hash = mac.finalize();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&hash.as_bytes()[..TAG_LEN]);
        tag
    }
}

/// The first four bytes, if there are four.
pub(crate) fn read_prefix(bytes: &[u8]) -> Option<[u8; PREFIX_LEN]> {
    bytes.get(..PREFIX_LEN)?.try_into().ok()
}

/// Decompresses a zstd body into a buffer of exactly its declared size, refusing sizes over
/// `max`.
///
/// One-shot decompression into a buffer sized from the frame's declared content size is what
/// bounds memory: the output can never grow past that buffer (zstd reports "destination too
/// small"), zstd checks the declared size against what it produced, and no streaming window
/// is allocated. A body without a declared size is refused; [`FrameCodec::encode`] always
/// writes one.
fn decompress_bounded(body: &[u8], max: usize) -> Result<Vec<u8>, WireError> {
    let declared = match zstd::zstd_safe::get_frame_content_size(body) {
        Ok(Some(size)) => size,
        Ok(None) => {
            return Err(WireError::BadBody("zstd frame does not declare its size".into()));
        }
        Err(_) => return Err(WireError::BadBody("not a zstd frame".into())),
    };
    let size = usize::try_from(declared)
        .ok()
        .filter(|&size| size <= max)
        .ok_or(WireError::DecompressedTooLarge { size: declared, max })?;
    let bad_body = |e: std::io::Error| WireError::BadBody(e.to_string());
    let mut out = Vec::with_capacity(size);
    // Into the Vec's spare capacity (not `&mut out[..]`, which is empty).
    let written = zstd::bulk::Decompressor::new()
        .and_then(|mut z| z.decompress_to_buffer(body, &mut out))
        .map_err(bad_body)?;
    if written != size {
        return Err(WireError::BadBody(format!(
            "zstd body holds {written} bytes but declares {size}"
        )));
    }
    Ok(out)
}
