//! The frame format every transport carries.
//!
//! A frame is `u32 LE length | postcard header | body | 16-byte tag`. The header names the
//! run, round, sender and kind of the body; the body is raw bytes, optionally zstd-compressed;
//! the tag is keyed BLAKE3 over everything before it, with a key derived from the run's join
//! secret, so a frame from anyone without the secret, or altered on the way, is rejected.
//!
//! - [`FrameCodec`] encodes a frame and decodes one whole frame from a byte slice.
//! - [`FrameReader`] cuts a byte stream arriving in arbitrary chunks into frames.
//! - [`WireError`] says why a frame was rejected.
//!
//! Decoding is written for hostile input: it never panics, checks the length prefix against a
//! limit before allocating, and bounds decompressed sizes by the same limit.
//!
//! ```
//! use meridian_comm::ids::{JoinSecret, RunId};
//! use meridian_comm::wire::{FrameCodec, FrameKind, DEFAULT_MAX_FRAME};
//!
//! let codec = FrameCodec::new(&JoinSecret([7; 32]), RunId([1; 16]), DEFAULT_MAX_FRAME);
//! let bytes = codec.encode(FrameKind::Payload, 12, 3, &[0u8; 1000], true)?;
//! let frame = codec.decode(&bytes)?;
//! assert_eq!((frame.header.round, frame.header.sender), (12, 3));
//! assert_eq!(frame.body, vec![0u8; 1000]);
//! # Ok::<(), meridian_comm::wire::WireError>(())
//! ```

mod codec;
mod error;
mod header;
mod reader;

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;

pub use codec::{FrameCodec, DEFAULT_MAX_FRAME, PREFIX_LEN, TAG_LEN};
pub use error::WireError;
pub use header::{Carried, Frame, FrameHeader, FrameKind, MAGIC, VERSION};
pub use reader::FrameReader;
