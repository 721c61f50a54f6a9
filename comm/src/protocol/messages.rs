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
//! header, before its join is read. Version 4 added [`ToCoordinator::NotHeld`]. Version 5
//! added the run's settings: `Join::follows`, `Welcome::settings` and
//! [`RefuseReason::NoSettings`]. Version 6 added catch-up from several members at once:
//! [`ToCoordinator::StateManifest`], [`ToWorker::StateOffer`], the `direct` flags of
//! `SnapshotRequest` and `StateWanted`, [`PeerMessage::FetchChunk`] and
//! [`PeerMessage::ChunkUnavailable`], and `StateChunk` frames.
//!
//! Payload and state bytes are never inside a message: they travel as `Payload`, `State`
//! and `StateChunk` frames whose header carries the round and the author (see the transmit
//! types).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::signature::{bounded_lines, RunSignature, MAX_SIGNATURE_BYTES, MAX_SIGNATURE_ENTRIES};
use super::types::{
    Delivery, Digest, MemberInfo, PeerInfo, Topology, MAX_NAME_LEN, MAX_PEER_INFO_LEN,
};
use super::ProtocolError;
use crate::ids::{MemberId, Round};

/// The most bytes the body of a valid [`ToCoordinator::Join`] encodes to: a name of
/// [`MAX_NAME_LEN`] bytes, a round, a peer info of [`MAX_PEER_INFO_LEN`] bytes and a
/// signature at its limits, with every postcard length prefix and tag. A driver caps what a
/// connection may send before it joined at this (plus the frame's own overhead): no valid
/// join is larger, so nothing valid is refused by the cap.
///
/// A bound computed from the limits, not a measurement: the signature's part is its
/// [`MAX_SIGNATURE_BYTES`] of keys and values plus one varint length prefix per key and
/// per value. A string of `L` bytes has a prefix of `1 + ⌊log₁₂₈ L⌋ ≤ 1 + L / 128` bytes,
/// so the prefixes of at most `2 ×` [`MAX_SIGNATURE_ENTRIES`] strings holding
/// [`MAX_SIGNATURE_BYTES`] bytes together take at most `2 × entries + bytes / 128`. The
/// largest join that can actually be built is within 0.5% of it (a test builds one).
pub const MAX_JOIN_LEN: usize = varint_len(0) // the variant
    + varint_len(MAX_NAME_LEN as u64) + MAX_NAME_LEN // name
    + 1 + varint_len(Round::MAX) // last_applied: Some(round)
    + varint_len(MAX_PEER_INFO_LEN as u64) + MAX_PEER_INFO_LEN // peer
    + varint_len(MAX_SIGNATURE_ENTRIES as u64) // signature: the number of facts
    + 2 * MAX_SIGNATURE_ENTRIES + MAX_SIGNATURE_BYTES / 128 // their length prefixes
    + MAX_SIGNATURE_BYTES // their keys and values
    + 1; // follows

/// The most bytes of run settings a welcome carries.
pub const MAX_SETTINGS_LEN: usize = 64 << 10;

/// Decodes a welcome's settings, refusing more than [`MAX_SETTINGS_LEN`] bytes.
fn bounded_settings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let settings = Option::<String>::deserialize(d)?;
    if settings.as_ref().is_some_and(|s| s.len() > MAX_SETTINGS_LEN) {
        return Err(serde::de::Error::custom(format!(
            "run settings over {MAX_SETTINGS_LEN} bytes"
        )));
    }
    Ok(settings)
}

/// Bytes of postcard's varint encoding of `n` (7 bits a byte).
const fn varint_len(n: u64) -> usize {
    let mut len = 1;
    let mut rest = n >> 7;
    while rest > 0 {
        len += 1;
        rest >>= 7;
    }
    len
}

/// A worker to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToCoordinator {
    /// Asks for admission (first message on a connection), or resynchronises.
    Join {
        /// The worker's stable identity (at most [`MAX_NAME_LEN`] bytes):
        /// the same name gets the same member id for the whole run.
        name: String,
        /// The last round this worker applied, `None` for a fresh worker.
        last_applied: Option<Round>,
        /// How other members reach this worker (AllGather).
        peer: PeerInfo,
        /// What this worker trains (model, algorithm, settings); one that differs from the
        /// run's is refused. Empty: not checked.
        signature: RunSignature,
        /// The worker takes the run's settings from the welcome rather than its own flags:
        /// its signature holds only the facts it brings itself (its data's fingerprint) and
        /// is compared on those alone. A coordinator that holds no settings refuses it
        /// ([`RefuseReason::NoSettings`]).
        follows: bool,
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
        /// Fetch it from live members directly (a [`ToWorker::StateOffer`]); `false`: have
        /// the coordinator relay it, for a worker that could not reach the members offered.
        direct: bool,
    },
    /// The answer to a direct `SnapshotRequest`: this member holds its state as of right
    /// after `round` and serves it to members in chunks ([`PeerMessage::FetchChunk`]).
    StateManifest {
        /// The round the state reflects.
        round: Round,
        /// The manifest of its chunks.
        manifest: StateManifest,
    },
    /// This worker leaves the run (it may join again under its name).
    Leave,
    /// Relay: the answer to a [`ToWorker::Reupload`] this worker cannot serve: it no longer
    /// holds its payload of `round` (its process restarted since it published it). The
    /// coordinator then tells the members fetching it at once that it is unavailable, so
    /// they ask for state while live members can still provide it, instead of waiting out
    /// their fetch timeouts.
    NotHeld {
        /// The round asked for.
        round: Round,
    },
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
    /// The worker asked for the run's settings (`Join::follows`) and this coordinator was
    /// started without them: give the worker the run's flags, or the coordinator a
    /// settings file.
    NoSettings,
}

impl ToCoordinator {
    /// A join with no peer info and no signature (not checked): what a tool or a test
    /// double sends.
    pub fn bare_join(name: impl Into<String>, last_applied: Option<Round>) -> Self {
        ToCoordinator::Join {
            name: name.into(),
            last_applied,
            peer: PeerInfo::default(),
            signature: RunSignature::default(),
            follows: false,
        }
    }
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
        /// The run's settings (model, algorithm, steps, seed...), as the application wrote
        /// them, when the coordinator holds them; at most [`MAX_SETTINGS_LEN`] bytes (a
        /// decoded welcome with more is malformed).
        #[serde(deserialize_with = "bounded_settings")]
        settings: Option<String>,
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
    /// Provide your state as of right after applying `round` (or your latest applied round
    /// if that is later).
    SnapshotRequest {
        /// The round.
        round: Round,
        /// Serve it to members in chunks and answer with a `StateManifest`; `false`: upload
        /// it whole as a `State` frame, which the coordinator relays.
        direct: bool,
    },
    /// The state to take, as of right after `round`: fetch its chunks from these members
    /// ([`PeerMessage::FetchChunk`]), checking each against the serving member's digest,
    /// then replay the commits after `round` that follow this message.
    StateOffer {
        /// The round the state reflects.
        round: Round,
        /// The state's length in bytes (the same on every donor).
        len: u64,
        /// The length of every chunk but the last.
        chunk_len: u32,
        /// The members serving it, ascending.
        donors: Vec<Donor>,
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
    /// Please send chunk `index` of the state you hold as of right after `round` (a
    /// `StateChunk` frame).
    FetchChunk {
        /// The round.
        round: Round,
        /// The chunk.
        index: u32,
    },
    /// The asked-for chunk is not held here (the state of that round was dropped).
    ChunkUnavailable {
        /// The round.
        round: Round,
        /// The chunk.
        index: u32,
    },
}

/// A state split into chunks of `chunk_len` bytes (the last one shorter), each named by
/// its digest: what a newcomer checks every chunk against, whoever served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateManifest {
    /// The state's length in bytes.
    pub len: u64,
    /// The length of every chunk but the last.
    pub chunk_len: u32,
    /// One digest per chunk, in order.
    pub digests: Vec<Digest>,
}

impl StateManifest {
    /// The manifest of `bytes` in chunks of `chunk_len` (at least 1) bytes.
    pub fn of(bytes: &[u8], chunk_len: u32) -> Self {
        let chunk_len = chunk_len.max(1);
        StateManifest {
            len: bytes.len() as u64,
            chunk_len,
            digests: bytes.chunks(chunk_len as usize).map(Digest::of).collect(),
        }
    }

    /// The byte range of chunk `index`, when it exists.
    pub fn range(&self, index: u32) -> Option<std::ops::Range<usize>> {
        chunk_range(self.len, self.chunk_len, index)
    }

    /// Whether it is well-formed and at most `max_len` bytes: a positive chunk length, and
    /// exactly one digest per chunk.
    pub fn is_valid(&self, max_len: usize) -> bool {
        chunk_count(self.len, self.chunk_len, max_len) == Some(self.digests.len())
    }
}

/// The number of chunks of `chunk_len` bytes a state of `len` bytes has, when it is a usable
/// shape: not empty, at most `max_len` bytes, a positive chunk length.
pub fn chunk_count(len: u64, chunk_len: u32, max_len: usize) -> Option<usize> {
    if chunk_len == 0 || len == 0 || len > max_len as u64 {
        return None;
    }
    usize::try_from(len.div_ceil(u64::from(chunk_len))).ok()
}

/// The byte range of chunk `index` of a state of `len` bytes in chunks of `chunk_len`.
pub fn chunk_range(len: u64, chunk_len: u32, index: u32) -> Option<std::ops::Range<usize>> {
    let start = u64::from(index).checked_mul(u64::from(chunk_len))?;
    if start >= len {
        return None;
    }
    let end = (start + u64::from(chunk_len)).min(len);
    Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

/// A member that serves chunks of an offered state, with its own chunks' digests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Donor {
    /// The member.
    pub member: MemberId,
    /// One digest per chunk of its state, in order. Chunks of replicated state (parameters,
    /// the outer optimizer's state) are the same on every member; those of per-member state
    /// (inner optimizer moments) differ, and the newcomer takes all of those from one donor.
    pub digests: Vec<Digest>,
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

/// The largest valid `Join` this test suite can build: every field at its limit, and the
/// signature's bytes spread to maximise its length prefixes (100 000 facts with 5-byte keys,
/// values of 128 bytes, whose prefixes take two bytes, while the byte budget lasts). Only
/// `last_applied` is the caller's: at most ten bytes, and a coordinator refuses a round it
/// never committed.
#[cfg(test)]
pub(crate) fn largest_join(last_applied: Option<Round>) -> ToCoordinator {
    let mut left = MAX_SIGNATURE_BYTES - 5 * MAX_SIGNATURE_ENTRIES;
    let facts = (0..MAX_SIGNATURE_ENTRIES)
        .map(|i| {
            let len = match left {
                0..128 => left,
                256.. => 128,
                // The last long value takes the rest, so no byte of the budget is lost.
                _ => left,
            };
            left -= len;
            (format!("{i:05x}"), "v".repeat(len))
        })
        .collect();
    let signature = RunSignature::from_facts(facts);
    ToCoordinator::Join {
        name: "n".repeat(MAX_NAME_LEN),
        last_applied,
        peer: PeerInfo(vec![0xa5; MAX_PEER_INFO_LEN]),
        signature,
        follows: false,
    }
}
