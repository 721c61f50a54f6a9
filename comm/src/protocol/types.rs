//! Small types both state machines share: peer addressing, topology, digests, rejections.

use serde::{Deserialize, Serialize};

use crate::ids::{MemberId, Round};

/// The longest worker name the coordinator accepts, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The largest [`PeerInfo`] the coordinator accepts, in bytes.
pub const MAX_PEER_INFO_LEN: usize = 4096;

/// A connection to the coordinator, named by the driver. Opaque to the protocol: the driver
/// picks a fresh id for every accepted connection and never reuses one while it is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// A worker's peer: the coordinator or another member. Where a worker sends to, and the
/// link a worker received something on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dest {
    /// The run's coordinator.
    Coordinator,
    /// Another member (AllGather links, fetches).
    Member(MemberId),
}

/// How payloads travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topology {
    /// Each worker uploads its payload once to the coordinator, which forwards it to every
    /// other member of the round and keeps recent rounds' payloads to serve fetches.
    Relay,
    /// Each worker sends its payload directly to every other member of the round and tells
    /// the coordinator `Delivered`; the coordinator never holds payloads.
    AllGather,
    /// The round's members, ascending by id, form a ring: each splits its payload into one
    /// segment per member, reduce-scatter then all-gather pass segments to the next member
    /// (a caller-supplied [`RingReducer`](super::RingReducer) adds them), and every member
    /// ends with the same aggregate bytes, whose digest it reports as `Delivered`. A ring
    /// that cannot finish falls back to Relay for that round.
    Ring,
}

/// How to reach a member, as the driver describes it (e.g. an address and a certificate
/// fingerprint). The protocol only relays it; at most [`MAX_PEER_INFO_LEN`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerInfo(pub Vec<u8>);

/// A member as the coordinator announces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its id, stable for its name for the whole run.
    pub id: MemberId,
    /// Its stable name (worker identity).
    pub name: String,
    /// How to reach it.
    pub peer: PeerInfo,
}

/// A payload's 128-bit XXH3 digest. Commits name each member's payload by digest, so every
/// worker applies the same bytes even when a restarted member published twice. It guards
/// against accidents (restarts, duplicates, stale copies), not against a member that holds
/// the join secret and crafts collisions: such a member is trusted by the run anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Digest(pub u128);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(xxhash_rust::xxh3::xxh3_128(bytes))
    }
}

/// One member's contribution to a committed round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The member.
    pub member: MemberId,
    /// The digest of the payload it delivered.
    pub digest: Digest,
}

/// Why a state machine rejected something a peer sent. Rejections are reported as events
/// and logged; they never change a round's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// From a connection that has not joined (coordinator) or before the welcome (worker).
    NotJoined,
    /// Not valid in this run's topology (a payload upload in AllGather, say).
    WrongTopology,
    /// For a round that is not open, or too far ahead.
    WrongRound,
    /// For a round that is already committed or applied, by a member outside its set.
    Late,
    /// From, or naming, a member that is not in the round.
    NotMember,
    /// A payload whose frame names another author than the peer that pushed it.
    SenderMismatch,
    /// A second copy for the same round and member (the first one wins).
    Duplicate,
    /// Larger than the configured limit.
    Oversized,
    /// A payload whose digest is not the committed one.
    DigestMismatch,
    /// Nothing asked for it (a state blob nobody requested, say).
    Unsolicited,
    /// Structurally invalid (unsorted member lists, say).
    Malformed,
    /// A ring segment the reducer refused (wrong size or encoding, non-finite values).
    BadSegment,
}

/// Bytes moved with one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerTraffic {
    /// The peer.
    pub peer: Dest,
    /// Payload (and state) bytes received from it.
    pub received: u64,
    /// Payload (and state) bytes sent to it.
    pub sent: u64,
}

/// What one round cost, for the driver's metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundStats {
    /// The round.
    pub round: Round,
    /// The round's members, as opened (empty when this worker never saw its opening).
    pub members: Vec<crate::ids::MemberId>,
    /// Members whose payload was committed, ascending.
    pub delivered: Vec<crate::ids::MemberId>,
    /// Members of the round that did not deliver by the deadline, ascending.
    pub stragglers: Vec<crate::ids::MemberId>,
    /// Coordinator: open → commit. Worker: the round's opening as received → round ready;
    /// `None` when this worker did not see the round open.
    pub duration: Option<std::time::Duration>,
    /// Coordinator only: open → last delivery (what the adaptive deadline learns from).
    pub last_delivery: Option<std::time::Duration>,
    /// Bytes per peer, ascending by peer. Coordinator: everything moved while the round was
    /// open. Worker: the payload frames of this round, sent and received.
    pub traffic: Vec<PeerTraffic>,
}

/// Per-peer byte counters behind [`RoundStats::traffic`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Traffic(std::collections::BTreeMap<Dest, (u64, u64)>);

impl Traffic {
    pub(crate) fn received(&mut self, peer: Dest, bytes: usize) {
        self.0.entry(peer).or_default().0 += bytes as u64;
    }

    pub(crate) fn sent(&mut self, peer: Dest, bytes: usize) {
        self.0.entry(peer).or_default().1 += bytes as u64;
    }

    pub(crate) fn report(&self) -> Vec<PeerTraffic> {
        self.0
            .iter()
            .map(|(&peer, &(received, sent))| PeerTraffic { peer, received, sent })
            .collect()
    }
}

/// True when `ids` is strictly ascending (sorted, no duplicates).
pub(crate) fn strictly_ascending(ids: impl IntoIterator<Item = MemberId>) -> bool {
    let mut last = None;
    for id in ids {
        if last.is_some_and(|l| l >= id) {
            return false;
        }
        last = Some(id);
    }
    true
}

/// The round after `applied` (round 0 when nothing is applied yet).
pub(crate) fn next_after(applied: Option<Round>) -> Round {
    applied.map_or(0, |a| a.saturating_add(1))
}
