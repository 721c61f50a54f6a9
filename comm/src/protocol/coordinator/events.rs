//! What the coordinator hands its driver: transmits and events.

use std::time::Duration;

use bytes::Bytes;

use crate::ids::{MemberId, Round};
use crate::protocol::messages::{RefuseReason, ToWorker};
use crate::protocol::types::{ConnId, Delivery, Digest, RejectReason, RoundStats};
use crate::wire::Carried;

/// Something for the driver to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A control frame carrying `msg`.
    Control {
        /// The connection.
        to: ConnId,
        /// The message.
        msg: ToWorker,
    },
    /// A payload frame (header: `round`, sender `from_member`, the payload's author).
    Payload {
        /// The connection.
        to: ConnId,
        /// The round.
        round: Round,
        /// The payload's author.
        from_member: MemberId,
        /// The payload.
        bytes: Bytes,
    },
    /// A state frame: the run's state right after applying `round`.
    State {
        /// The connection.
        to: ConnId,
        /// The round the state reflects.
        round: Round,
        /// The state.
        bytes: Bytes,
    },
    /// A frame member `from` sent for this connection's member, passed on (a
    /// `Forwarded { from, carried }` frame with the carried frame's round and sender).
    Forwarded {
        /// The connection.
        to: ConnId,
        /// The member it comes from.
        from: MemberId,
        /// What it holds.
        carried: Carried,
        /// The carried frame's round.
        round: Round,
        /// The carried frame's sender (a payload's author).
        sender: MemberId,
        /// The body.
        bytes: Bytes,
    },
}

/// Something the driver may want to act on or record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker was admitted (or re-admitted under its name).
    Joined {
        /// Its member id.
        member: MemberId,
        /// Its name.
        name: String,
        /// Its connection.
        conn: ConnId,
        /// It will get a state snapshot before it takes part in rounds.
        need_state: bool,
    },
    /// The run's signature was taken from this member's join (the first admitted one with
    /// a signature, none being configured). Persist
    /// [`Coordinator::persisted`](crate::protocol::Coordinator::persisted) now, so that a
    /// restarted coordinator keeps enforcing it.
    SignatureAdopted {
        /// The member.
        member: MemberId,
    },
    /// A join was refused.
    Refused {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: RefuseReason,
    },
    /// A member's connection closed or it left; it stays known under its name.
    Left {
        /// The member.
        member: MemberId,
        /// It said goodbye (`Leave`), rather than its connection closing or being
        /// superseded by a new one under its name (a restarted process).
        graceful: bool,
    },
    /// A round opened.
    RoundOpened {
        /// The round.
        round: Round,
        /// Its members, ascending.
        members: Vec<MemberId>,
        /// When it closes at the latest, from now.
        deadline: Duration,
    },
    /// A round closed and committed `delivered`. Persist [`Coordinator::persisted`](crate::protocol::Coordinator::persisted) now.
    RoundCommitted {
        /// The round.
        round: Round,
        /// The committed payloads, ascending by member.
        delivered: Vec<Delivery>,
        /// Ring: the digest of the committed aggregate (`None`: per-member payloads).
        aggregate: Option<Digest>,
        /// Durations, stragglers and bytes moved.
        stats: RoundStats,
    },
    /// Ring: the open round's ring was abandoned; members upload their payloads instead.
    RingFellBack {
        /// The round.
        round: Round,
        /// Why.
        why: &'static str,
    },
    /// A member was asked for a state snapshot.
    SnapshotRequested {
        /// The member.
        provider: MemberId,
        /// The round the snapshot must include.
        round: Round,
    },
    /// A member that needed state was offered one to fetch from members directly.
    StateOffered {
        /// The member.
        member: MemberId,
        /// The round the state reflects.
        round: Round,
        /// Its size.
        len: u64,
        /// The members serving it.
        donors: usize,
    },
    /// A snapshot was relayed to a member that needed state.
    StateRelayed {
        /// The member.
        member: MemberId,
        /// The round the state reflects.
        round: Round,
        /// Its size.
        len: usize,
    },
    /// Input from a peer was rejected; nothing changed.
    Rejected {
        /// The connection it came on.
        conn: ConnId,
        /// The round it named, if any.
        round: Option<Round>,
        /// Why.
        reason: RejectReason,
    },
}
