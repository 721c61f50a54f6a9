//! The frame header and the decoded frame.

use serde::{Deserialize, Serialize};

use crate::ids::{MemberId, Round, RunId};

/// First four bytes of every header: tells a Meridian frame from anything else.
pub const MAGIC: [u8; 4] = *b"MRDN";

/// The frame format version this build reads and writes. Version 3: a worker's `Join`
/// carries its run signature, and a join can be refused for a differing one. Version 4: a
/// worker answers a re-upload request it cannot serve (`ToCoordinator::NotHeld`). Version 5:
/// the run's settings travel in the welcome. Version 6: a newcomer fetches state in
/// [`FrameKind::StateChunk`]s from several members at once, and a frame for a member that
/// cannot be reached directly travels through the coordinator ([`FrameKind::Forward`]).
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
    /// A member's frame for member `to`, which it cannot reach directly, sent to the
    /// coordinator to pass on; round and sender as in the carried frame.
    Forward {
        /// The member it is for.
        to: MemberId,
        /// What the frame holds.
        carried: Carried,
    },
    /// The coordinator passes on a frame member `from` sent it as [`FrameKind::Forward`].
    Forwarded {
        /// The member it comes from (as the coordinator knows it by its connection).
        from: MemberId,
        /// What the frame holds.
        carried: Carried,
    },
}

/// What a frame between members holds, when it travels through the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Carried {
    /// A postcard-encoded message between members.
    Control,
    /// A payload.
    Payload,
    /// A ring segment.
    Segment {
        /// The ring step.
        slot: u32,
    },
    /// A state chunk.
    StateChunk {
        /// The chunk.
        index: u32,
    },
}

impl Carried {
    /// How `kind` travels through the coordinator, for the kinds members send each other.
    pub fn of(kind: FrameKind) -> Option<Carried> {
        match kind {
            FrameKind::Control => Some(Carried::Control),
            FrameKind::Payload => Some(Carried::Payload),
            FrameKind::Segment { slot } => Some(Carried::Segment { slot }),
            FrameKind::StateChunk { index } => Some(Carried::StateChunk { index }),
            FrameKind::State | FrameKind::Forward { .. } | FrameKind::Forwarded { .. } => None,
        }
    }

    /// The kind of frame it is between members.
    pub fn kind(self) -> FrameKind {
        match self {
            Carried::Control => FrameKind::Control,
            Carried::Payload => FrameKind::Payload,
            Carried::Segment { slot } => FrameKind::Segment { slot },
            Carried::StateChunk { index } => FrameKind::StateChunk { index },
        }
    }
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
