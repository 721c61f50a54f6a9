//! The frame header and the decoded frame.

use serde::{Deserialize, Serialize};

use crate::ids::{MemberId, Round, RunId};

/// First four bytes of every header: tells a Meridian frame from anything else.
pub const MAGIC: [u8; 4] = *b"MRDN";

/// The frame format version this build reads and writes. Version 3: a worker's `Join`
/// carries its run signature, and a join can be refused for a differing one. Version 4: a
/// worker answers a re-upload request it cannot serve (`ToCoordinator::NotHeld`). Version 5:
/// the run's settings travel in the welcome. Version 6: a newcomer fetches state in
/// [`FrameKind::StateChunk`]s from several members at once.
pub const VERSION: u16 = 6;

/// What a frame's body holds. Travels as a postcard enum (varint discriminant);
/// a discriminant this build does not know is a [`WireError::BadHeader`](super::WireError).
///
/// Deliberately not `#[non_exhaustive]`: a new kind changes what peers must understand,
/// so it comes with a new [`VERSION`], and exhaustive matches then point at every place
/// that must handle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FrameKind {
    /// A postcard-encoded protocol message.
    Control,
    /// A member's payload bytes for a round.
    Payload,
    /// Model state for a member that catches up, whole (relayed by the coordinator).
    State,
    /// A ring all-reduce segment from the ring predecessor, at step `slot` of the round's
    /// ring (see [`RingReducer`](crate::protocol::RingReducer)).
    Segment {
        /// The ring step.
        slot: u32,
    },
    /// Chunk `index` of a member's state, to a member that catches up (the header's round
    /// is the state's round).
    StateChunk {
        /// The chunk.
        index: u32,
    },
}

/// The header of a frame, postcard-encoded right after the length prefix.
///
/// Field order is part of the format: `magic` and `version` come first so that any future
/// version can still be recognised (and refused by name) by this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameHeader {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// Always [`VERSION`] for frames this build accepts.
    pub version: u16,
    /// The run the frame belongs to.
    pub run: RunId,
    /// The outer round the frame belongs to.
    pub round: Round,
    /// Who sent (or, for a relayed payload, produced) the frame.
    pub sender: MemberId,
    /// What the body holds.
    pub kind: FrameKind,
    /// Length of the body as carried on the wire (compressed length when `compressed`).
    pub body_len: u32,
    /// Whether the body is zstd-compressed on the wire.
    pub compressed: bool,
}

/// A decoded, authenticated frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header as received; `body_len` and `compressed` describe the body on the wire.
    pub header: FrameHeader,
    /// The body, already decompressed when `header.compressed`.
    pub body: Vec<u8>,
}
