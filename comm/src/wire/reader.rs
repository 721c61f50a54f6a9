//! Incremental frame reading from a byte stream that arrives in arbitrary chunks.

use super::codec::{read_prefix, FrameCodec, PREFIX_LEN};
use super::error::WireError;
use super::header::Frame;

/// A buffer whose capacity is released, once emptied, if it grew past this (one large frame
/// should not pin its memory for the rest of a connection).
const KEEP_CAPACITY: usize = 1 << 20;

/// Cuts a byte stream into frames: [`push`](Self::push) bytes as they arrive, then call
/// [`next_frame`](Self::next_frame) until it returns `None`; at the end of the stream,
/// [`finish`](Self::finish) tells whether it stopped inside a frame.
///
/// Memory: the reader never waits for more than `max_frame + 4` bytes of one frame; an
/// oversized length prefix is refused as soon as its four bytes arrive, before any buffer
/// for the frame is reserved. Beyond that it keeps only bytes pushed and not yet returned as
/// frames, so a caller that drains `next_frame` after each push holds at most one partial
/// frame plus one chunk.
///
/// Errors poison the reader: after the first error, `next_frame` returns that error on every
/// call and pushed bytes are dropped. A byte stream has no resynchronisation point (the length
/// prefix is only authenticated by the tag at the frame's end), so once a frame is rejected
/// nothing after it can be trusted to start where it seems to. The connection should be
/// closed; other connections, each with its own reader, are unaffected.
///
/// ```
/// use meridian_comm::ids::{JoinSecret, RunId};
/// use meridian_comm::wire::{FrameCodec, FrameKind};
///
/// let codec = FrameCodec::new(&JoinSecret([7; 32]), RunId([1; 16]), 1 << 20);
/// let bytes = codec.encode(FrameKind::Control, 3, 2, b"hello", false)?;
/// let mut reader = codec.reader();
/// let (a, b) = bytes.split_at(5);
/// reader.push(a);
/// assert!(reader.next_frame().is_none()); // not whole yet
/// reader.push(b);
/// let frame = reader.next_frame().expect("one frame")?;
/// assert_eq!(frame.body, b"hello");
/// assert!(reader.finish().is_ok());
/// # Ok::<(), meridian_comm::wire::WireError>(())
/// ```
#[derive(Debug)]
pub struct FrameReader {
    codec: FrameCodec,
    /// Bytes received; those before `start` were already returned as frames.
    buf: Vec<u8>,
    start: usize,
    /// The first error, returned again on every later call.
    failed: Option<WireError>,
}

impl FrameReader {
    /// A reader that decodes with `codec` (its run, key and limit).
    pub fn new(codec: FrameCodec) -> Self {
        Self { codec, buf: Vec::new(), start: 0, failed: None }
    }

    /// Appends bytes received from the stream. Ignored once the reader is poisoned.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_some() || chunk.is_empty() {
            return;
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // When the pending frame's size is known, reserve it exactly: growing by doubling
        // could reserve up to twice the limit.
        let want = match read_prefix(&self.buf).map(|p| self.codec.frame_len(p)) {
            Some(Ok(total)) => total.max(self.buf.len() + chunk.len()),
            Some(Err(_)) | None => self.buf.len() + chunk.len(),
        };
        self.buf.reserve_exact(want - self.buf.len());
        self.buf.extend_from_slice(chunk);
        // Refuse an oversized prefix now, not when the caller next asks for a frame.
        if let Some(Err(e)) = read_prefix(&self.buf).map(|p| self.codec.frame_len(p)) {
            self.fail(e);
        }
    }

    /// The next whole frame, if one has arrived: `None` means "push more bytes".
    ///
    /// Returns `Some(Err(_))` for a rejected frame and then forever (see the type's docs).
    pub fn next_frame(&mut self) -> Option<Result<Frame, WireError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        let pending = self.buf.get(self.start..)?;
        let total = match self.codec.frame_len(read_prefix(pending)?) {
            Ok(total) => total,
            Err(e) => return Some(Err(self.fail(e))),
        };
        let result = self.codec.decode_exact(pending.get(..total)?);
        self.start += total;
        if self.start == self.buf.len() {
            self.start = 0;
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
        Some(result.map_err(|e| self.fail(e)))
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether the stream may end here: `Ok` when no partial frame is pending, the poisoning
    /// error if there was one, and [`WireError::Truncated`] when the stream stopped inside a
    /// frame. Call after draining [`next_frame`](Self::next_frame).
    pub fn finish(&self) -> Result<(), WireError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return Ok(());
        }
        let needed = match read_prefix(pending).map(|p| self.codec.frame_len(p)) {
            Some(Ok(total)) => total,
            Some(Err(e)) => return Err(e),
            None => PREFIX_LEN,
        };
        Err(WireError::Truncated { needed, got: pending.len() })
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Poisons the reader with `e` and releases its buffer; returns `e`.
    fn fail(&mut self, e: WireError) -> WireError {
        self.failed = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }
}
