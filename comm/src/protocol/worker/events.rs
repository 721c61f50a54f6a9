//! What a worker hands its driver: transmits and events.

use std::time::Duration;

use bytes::Bytes;

use crate::ids::{MemberId, Round};
use crate::protocol::messages::{PeerMessage, RefuseReason, ToCoordinator};
use crate::protocol::types::{Dest, MemberInfo, RejectReason, RoundStats};

/// Something for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A control frame to the coordinator.
    Control {
        /// The message.
        msg: ToCoordinator,
    },
    /// A control frame to another member.
    Peer {
        /// The member.
        to: MemberId,
        /// The message.
        msg: PeerMessage,
    },
    /// A payload frame (header: `round`, sender `from_member`, the payload's author).
    Payload {
        /// The coordinator (Relay upload, none else) or a member.
        to: Dest,
        /// The round.
        round: Round,
        /// The payload's author.
        from_member: MemberId,
        /// The payload.
        bytes: Bytes,
    },
    /// A ring segment to the next member of the ring (a `Segment` frame).
    Segment {
        /// The member.
        to: MemberId,
        /// The round.
        round: Round,
        /// The step of the ring it belongs to (see [`crate::protocol::RingReducer`]).
        slot: u32,
        /// The segment.
        bytes: Bytes,
    },
    /// Chunk `index` of this worker's state as of right after `round`, to a member that
    /// catches up (a `StateChunk` frame).
    StateChunk {
        /// The member.
        to: MemberId,
        /// The round the state reflects.
        round: Round,
        /// The chunk.
        index: u32,
        /// The chunk's bytes.
        bytes: Bytes,
    },
    /// A state frame to the coordinator: this worker's state right after applying `round`.
    State {
        /// The round the state reflects.
        round: Round,
        /// The state.
        bytes: Bytes,
    },
}

/// The most bytes of a payload that [`Event::PayloadArrived`] carries.
pub const PAYLOAD_HEAD_LEN: usize = 64;

/// Something the driver acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Admitted by the coordinator.
    Welcomed {
        /// This worker's member id.
        member: MemberId,
        /// The round open now, or the next to open.
        next_round: Round,
        /// A snapshot will come before anything is applied.
        need_state: bool,
    },
    /// The coordinator refused this worker (it sends no more joins).
    Refused {
        /// Why.
        reason: RefuseReason,
    },
    /// The connected members changed.
    Members {
        /// All of them, ascending by id.
        members: Vec<MemberInfo>,
    },
    /// A round this worker belongs to opened: compute and [`WorkerProto::publish`](crate::protocol::WorkerProto::publish).
    RoundOpened {
        /// The round.
        round: Round,
        /// Its members, ascending.
        members: Vec<MemberId>,
        /// When the coordinator closes it at the latest, from now.
        deadline: Duration,
    },
    /// Another member's payload for `round` arrived before the round committed: that
    /// member has finished its part of the round. `head` is the payload's first bytes (at
    /// most [`PAYLOAD_HEAD_LEN`]), where an application keeps its header; the payload itself
    /// comes with the commit.
    PayloadArrived {
        /// The round.
        round: Round,
        /// Its author.
        member: MemberId,
        /// The payload's first bytes.
        head: Bytes,
    },
    /// A round committed and every committed payload is here: apply them, in this order.
    RoundReady {
        /// The round.
        round: Round,
        /// The committed payloads, ascending by member (this worker's own included).
        payloads: Vec<(MemberId, Bytes)>,
        /// Duration, stragglers, bytes.
        stats: RoundStats,
    },
    /// A ring round committed its aggregate: apply the sum over `members` (its count is
    /// `members.len()`), the same bytes on every member.
    AggregateReady {
        /// The round.
        round: Round,
        /// The members whose payloads it sums, ascending.
        members: Vec<MemberId>,
        /// The aggregate, as the [`RingReducer`](crate::protocol::RingReducer) joined it.
        aggregate: Bytes,
        /// Duration, bytes.
        stats: RoundStats,
    },
    /// Upload the state as it is right after the RoundReady of `round` with
    /// [`WorkerProto::provide_state`](crate::protocol::WorkerProto::provide_state).
    SnapshotRequested {
        /// The round.
        round: Round,
    },
    /// Replace the application's state with this one (as of right after `round`); the
    /// RoundReady events that follow continue from it.
    StateReceived {
        /// The round it reflects.
        round: Round,
        /// The state.
        bytes: Bytes,
    },
    /// This worker could not obtain a committed payload and asked for a snapshot.
    FellBehind {
        /// The round it could not apply.
        round: Round,
    },
    /// Input from a peer was rejected; nothing changed.
    Rejected {
        /// The link it came on.
        from: Dest,
        /// The round it named, if any.
        round: Option<Round>,
        /// Why.
        reason: RejectReason,
    },
}
