//! The control messages of the round protocol.
//!
//! They travel postcard-encoded as the body of `Control` frames; the frame header versions
//! them, so a change here bumps the frame version. Three directions, three enums: a worker
//! talks to the coordinator with [`ToCoordinator`], the coordinator answers with
//! [`ToWorker`], and members talk to each other (fetches) with [`PeerMessage`]. The driver
//! knows which kind of link a frame came on and decodes the matching enum.
//!
//! Frame version 3 added the worker's [`RunSignature`] to `Join` and
//! [`RefuseReason::SignatureMismatch`]; a worker of version 2 is refused by the frame
//! header, before its join is read.
//!
//! Payload and state bytes are never inside a message: they travel as `Payload` and `State`
//! frames whose header carries the round and the author (see the transmit types).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::signature::{bounded_lines, RunSignature};
use super::types::{Delivery, Digest, MemberInfo, PeerInfo, Topology};
use super::ProtocolError;
use crate::ids::{MemberId, Round};

/// A worker to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// Asks for admission (first message on a connection), or resynchronises.
    Join {
        /// The worker's stable identity (at most [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes):
        /// the same name gets the same member id for the whole run.
        name: String,
        /// The last round this worker applied, `None` for a fresh worker.
        last_applied: Option<Round>,
        /// How other members reach this worker (AllGather).
        peer: PeerInfo,
        /// What this worker trains (model, algorithm, settings); one that differs from the
        /// run's is refused. Empty: not checked.
        signature: RunSignature,
    },
    /// AllGather: this member has sent its payload for `round` to every other member.
    /// Ring: this member holds the round's aggregate, whose digest this is.
    Delivered {
        /// The round.
        round: Round,
        /// The digest of the payload sent (AllGather) or of the aggregate (Ring).
        digest: Digest,
    },
    /// Ring: this member cannot finish the ring of `round` (a bad segment from its
    /// predecessor, no reducer); the round should fall back to Relay.
    RingFailed {
        /// The round.
        round: Round,
        /// The member whose segment was refused, if that is the cause.
        culprit: Option<MemberId>,
    },
    /// Relay: please send the committed payload of `member` in `round`.
    Fetch {
        /// The round.
        round: Round,
        /// The payload's author.
        member: MemberId,
        /// The committed digest.
        digest: Digest,
    },
    /// This worker cannot catch up by replaying commits and needs a state snapshot.
    StateWanted {
        /// The last round it applied (a snapshot must be newer to help).
        last_applied: Option<Round>,
    },
    /// This worker leaves the run (it may join again under its name).
    Leave,
}

/// Why the coordinator refused a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The name is empty, too long or holds control characters, or the peer info or the
    /// signature is too large.
    InvalidJoin,
    /// The run already has its maximum number of members.
    Full,
    /// The worker claims to have applied a round this coordinator never committed: its
    /// history and the coordinator's diverged.
    AheadOfCoordinator,
    /// A newer connection joined under the same name; this one is dropped.
    Superseded,
    /// The worker's [`RunSignature`] differs from the run's: it trains another model,
    /// algorithm or setting, and would corrupt the run.
    SignatureMismatch {
        /// One line per difference (see [`RunSignature::differences`]): at most
        /// [`MAX_LISTED_DIFFERENCES`](super::MAX_LISTED_DIFFERENCES) of them, then
        /// `and N more`; a decoded refusal with more or longer lines is malformed.
        #[serde(deserialize_with = "bounded_lines")]
        differences: Vec<String>,
    },
}

/// The coordinator to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Admission.
    Welcome {
        /// The worker's member id.
        member: MemberId,
        /// The connected members, ascending by id.
        members: Vec<MemberInfo>,
        /// The round now open, or the next to open.
        next_round: Round,
        /// The last committed round.
        committed: Option<Round>,
        /// How payloads travel.
        topology: Topology,
        /// A state snapshot will follow; until it arrives the worker applies nothing.
        need_state: bool,
        /// The members the run was started for (the coordinator's `min_members`): how a
        /// program shards its data before the first round.
        expected: u32,
    },
    /// Admission refused.
    Refused {
        /// Why.
        reason: RefuseReason,
    },
    /// A round opened; its members should publish their payloads.
    RoundOpen {
        /// The round.
        round: Round,
        /// Its members, ascending.
        members: Vec<MemberId>,
        /// Milliseconds from now until the coordinator closes it.
        deadline_ms: u64,
    },
    /// A round closed: apply exactly these payloads, in this (ascending member) order.
    Commit {
        /// The round.
        round: Round,
        /// The committed payloads, ascending by member. For a ring commit: the ring's
        /// members, each with the aggregate's digest.
        delivered: Vec<Delivery>,
        /// Members of the round that did not deliver, ascending.
        stragglers: Vec<MemberId>,
        /// Ring: the digest of the aggregate (the sum over `delivered`) to apply instead of
        /// per-member payloads; `None` for a per-member commit.
        aggregate: Option<Digest>,
    },
    /// Ring: the ring of `round` cannot finish; upload your own payload to the coordinator,
    /// which relays it (the round commits per member).
    Fallback {
        /// The round.
        round: Round,
        /// Milliseconds from now until the coordinator closes the round.
        deadline_ms: u64,
    },
    /// The connected members changed (full list, ascending by id).
    Members {
        /// The members.
        members: Vec<MemberInfo>,
    },
    /// Upload your state as of right after applying `round` (or your latest applied round
    /// if that is later), as a `State` frame.
    SnapshotRequest {
        /// The round.
        round: Round,
    },
    /// Relay: upload your payload of the committed `round` again (this coordinator
    /// restarted and lost it while others still need it).
    Reupload {
        /// The round.
        round: Round,
    },
    /// Relay: the fetched payload is no longer held.
    Unavailable {
        /// The round.
        round: Round,
        /// The payload's author.
        member: MemberId,
    },
}

/// A member to another member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// AllGather and Ring: please send the committed payload of `member` in `round` (for a
    /// ring commit: the aggregate, `member` being the commit's first member).
    Fetch {
        /// The round.
        round: Round,
        /// The payload's author.
        member: MemberId,
        /// The committed digest.
        digest: Digest,
    },
    /// The fetched payload is not held here.
    Unavailable {
        /// The round.
        round: Round,
        /// The payload's author.
        member: MemberId,
    },
}

fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtocolError> {
    postcard::to_allocvec(msg).map_err(ProtocolError::Encode)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtocolError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(ProtocolError::Decode)?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

macro_rules! codec {
    ($t:ty) => {
        impl $t {
            /// The postcard encoding: a `Control` frame's body.
            pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
                encode(self)
            }

            /// Decodes a `Control` frame's body; trailing bytes are an error.
            pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
                decode(body)
            }
        }
    };
}

codec!(ToCoordinator);
codec!(ToWorker);
codec!(PeerMessage);
