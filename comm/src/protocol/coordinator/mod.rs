//! The coordinator's state machine: admission, round opening and closing, commits, relaying
//! payloads (Relay) and snapshots, and the persisted state it restarts from.

mod config;
mod events;
mod forward;
mod join;
mod persist;
mod relay;
mod ring;
mod rounds;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info};

pub use config::CoordinatorConfig;
pub use events::{Event, Transmit};
pub use persist::{CommitRecord, CoordinatorState};

use super::messages::{RefuseReason, ToCoordinator, ToWorker};
use super::types::{
    next_after, ConnId, Digest, PeerInfo, RejectReason, Topology, Traffic, MAX_NAME_LEN,
};
use super::{ProtocolError, RunSignature};
use crate::ids::{MemberId, Round};
use crate::protocol::deadline::DeadlineStats;
use snapshot::{DirectAsk, SnapshotAsk};

/// Whether a member takes part in rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its state is current (or catching up by replayed commits): it joins the next round.
    Live,
    /// It waits for a state snapshot and takes no part in rounds.
    Syncing,
}

#[derive(Debug)]
struct Member {
    name: String,
    peer: PeerInfo,
    conn: Option<ConnId>,
    phase: Phase,
    /// The last round it said it applied (join or state request).
    last_applied: Option<Round>,
    /// While syncing: it asked for the state relayed by the coordinator (it could not
    /// fetch it from the members offered).
    relayed_state: bool,
}

#[derive(Debug)]
struct OpenRound {
    round: Round,
    members: Vec<MemberId>,
    opened: Instant,
    deadline: Instant,
    delivered: BTreeMap<MemberId, (Digest, Instant)>,
    /// Ring: the aggregate digests members reported, with when.
    ring: BTreeMap<MemberId, (Digest, Instant)>,
    /// Ring: the ring was abandoned and members upload their payloads (Relay) instead.
    fallback: bool,
}

/// After a restore: the first round waits until `until` for the last round's members.
#[derive(Debug)]
struct Gate {
    until: Instant,
    expected: Vec<MemberId>,
}

/// The coordinator of one run.
///
/// [`Coordinator`] reads no clock and owns no socket. Its methods come in four groups:
/// - inputs, `handle_*`: a decoded control message, a payload frame, a state frame, a closed
///   connection, a timer that expired;
/// - commands: [`Coordinator::persisted`];
/// - outputs, `poll_*`: [`Event`]s for the driver, [`Transmit`]s to send, the next timeout;
/// - getters.
///
/// After every input the driver drains [`Coordinator::poll_event`] first, then
/// [`Coordinator::poll_transmit`], then re-arms its timer from [`Coordinator::poll_timeout`].
/// On [`Event::RoundCommitted`] it saves [`Coordinator::persisted`] before it sends that
/// round's `Commit`s: a coordinator restored from older state would refuse workers that
/// applied a round it forgot ([`RefuseReason::AheadOfCoordinator`]). On
/// [`Event::SignatureAdopted`] it saves it too, so that a restart keeps the run's signature.
#[derive(Debug)]
pub struct Coordinator {
    config: CoordinatorConfig,
    members: BTreeMap<MemberId, Member>,
    names: BTreeMap<String, MemberId>,
    conns: BTreeMap<ConnId, MemberId>,
    next_id: MemberId,
    committed: Option<Round>,
    open: Option<OpenRound>,
    /// The last `keep_rounds` commits, ascending and contiguous.
    commits: VecDeque<CommitRecord>,
    /// Relay: the open round's payloads and the committed ones of the last `keep_rounds`.
    payloads: BTreeMap<Round, BTreeMap<MemberId, (Digest, Bytes)>>,
    /// Relay: fetches waiting for a payload its author was asked to upload again.
    refetch: BTreeMap<(Round, MemberId), Vec<ConnId>>,
    /// Relay: committed payloads this coordinator lacks and whose authors said they no
    /// longer hold them: fetches for them are answered `Unavailable` at once.
    unheld: BTreeSet<(Round, MemberId)>,
    deadline_stats: DeadlineStats,
    /// Bytes moved since the open round opened.
    traffic: Traffic,
    /// The latest state snapshot: (round it reflects, bytes).
    snapshot: Option<(Round, Bytes)>,
    asking: Option<SnapshotAsk>,
    /// Members asked to serve their state in chunks, for the members syncing directly.
    direct: Option<DirectAsk>,
    gate: Option<Gate>,
    /// The run's signature: the configured one, or the first admitted joiner's.
    signature: Option<RunSignature>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl Coordinator {
    /// A coordinator for a new run.
    pub fn new(config: CoordinatorConfig, now: Instant) -> Result<Self, ProtocolError> {
        config.validate()?;
        let _ = now;
        Ok(Self::empty(config))
    }

    fn empty(config: CoordinatorConfig) -> Self {
        Coordinator {
            signature: config.run_signature(),
            config,
            members: BTreeMap::new(),
            names: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_id: 0,
            committed: None,
            open: None,
            commits: VecDeque::new(),
            payloads: BTreeMap::new(),
            refetch: BTreeMap::new(),
            unheld: BTreeSet::new(),
            deadline_stats: DeadlineStats::default(),
            traffic: Traffic::default(),
            snapshot: None,
            asking: None,
            direct: None,
            gate: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    // ---- getters ----

    /// The configuration.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The last committed round.
    pub fn committed(&self) -> Option<Round> {
        self.committed
    }

    /// The open round, if one is open.
    pub fn open_round(&self) -> Option<Round> {
        self.open.as_ref().map(|o| o.round)
    }

    /// The members with an open connection, ascending.
    pub fn connected(&self) -> Vec<MemberId> {
        self.members.iter().filter(|(_, m)| m.conn.is_some()).map(|(&id, _)| id).collect()
    }

    /// The run's signature, once configured or adopted from the first joiner that had one.
    pub fn signature(&self) -> Option<&RunSignature> {
        self.signature.as_ref()
    }

    /// The member id that `name` holds, if it ever joined.
    pub fn member_id(&self, name: &str) -> Option<MemberId> {
        self.names.get(name).copied()
    }

    // ---- inputs ----

    /// A control message arrived on `conn`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: ToCoordinator) {
        if let ToCoordinator::Join { name, last_applied, peer, signature, follows } = msg {
            let join = join::JoinRequest { name, last_applied, peer, signature, follows };
            self.on_join(now, conn, join);
            self.drive(now);
            return;
        }
        let Some(&member) = self.conns.get(&conn) else {
            self.reject(conn, None, RejectReason::NotJoined);
            return;
        };
        match msg {
            ToCoordinator::Join { .. } => {}
            ToCoordinator::Delivered { round, digest } => match self.config.topology {
                Topology::AllGather => self.on_delivery(now, conn, member, round, digest, None),
                Topology::Ring => self.on_ring_done(now, conn, member, round, digest),
                Topology::Relay => self.reject(conn, Some(round), RejectReason::WrongTopology),
            },
            ToCoordinator::RingFailed { round, culprit } => {
                self.on_ring_failed(now, conn, member, round, culprit)
            }
            ToCoordinator::Fetch { round, member: author, digest } => {
                self.on_fetch(conn, round, author, digest)
            }
            ToCoordinator::StateWanted { last_applied, direct } => {
                self.on_state_wanted(member, last_applied, direct)
            }
            ToCoordinator::StateManifest { round, manifest } => {
                self.on_manifest(now, conn, member, round, manifest)
            }
            ToCoordinator::NotHeld { round } => self.on_not_held(conn, member, round),
            ToCoordinator::Leave => {
                info!(member, "member leaves");
                self.drop_conn(now, conn, true);
            }
        }
        self.drive(now);
    }

    /// A payload frame arrived on `conn` (Relay uploads).
    pub fn handle_payload(
        &mut self,
        now: Instant,
        conn: ConnId,
        round: Round,
        sender: MemberId,
        bytes: Bytes,
    ) {
        let Some(&member) = self.conns.get(&conn) else {
            return self.reject(conn, Some(round), RejectReason::NotJoined);
        };
        let committed = self.committed.is_some_and(|c| round <= c);
        let accepts = match self.config.topology {
            Topology::Relay => true,
            // Ring rounds take uploads once they fell back (and re-uploads after a commit).
            Topology::Ring => {
                committed || self.open.as_ref().is_some_and(|o| o.round == round && o.fallback)
            }
            Topology::AllGather => false,
        };
        if !accepts {
            return self.reject(conn, Some(round), RejectReason::WrongTopology);
        }
        if sender != member {
            return self.reject(conn, Some(round), RejectReason::SenderMismatch);
        }
        if bytes.len() > self.config.max_payload {
            return self.reject(conn, Some(round), RejectReason::Oversized);
        }
        let digest = Digest::of(&bytes);
        if committed {
            self.on_reupload(conn, member, round, digest, bytes);
        } else {
            self.on_delivery(now, conn, member, round, digest, Some(bytes));
        }
        self.drive(now);
    }

    /// A state frame arrived on `conn`: a snapshot upload after a `SnapshotRequest`.
    pub fn handle_state(&mut self, now: Instant, conn: ConnId, round: Round, bytes: Bytes) {
        self.on_state(conn, round, bytes);
        self.drive(now);
    }

    /// `conn` closed. Its member stays in the open round (it may reconnect and deliver) and
    /// is dropped from the next one unless it is back by then.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.drop_conn(now, conn, false);
        self.drive(now);
    }

    /// The time from [`Coordinator::poll_timeout`] has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(open) = self.open.as_ref().filter(|o| o.deadline <= now) {
            if self.config.topology == Topology::Ring && !open.fallback {
                // The ring did not finish in time: the round commits per member instead.
                self.fall_back(now, "deadline");
            } else {
                self.close(now);
            }
        }
        self.snapshot_timeout(now);
        self.drive(now);
    }

    // ---- outputs ----

    /// The next thing to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Coordinator::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let deadline = self.open.as_ref().map(|o| o.deadline);
        let snapshot = self.asking.as_ref().map(|a| a.asked + self.config.snapshot_timeout);
        let direct = self.direct.as_ref().map(|d| d.due(self.config.snapshot_timeout));
        let gate = self.gate.as_ref().map(|g| g.until);
        [deadline, snapshot, direct, gate].into_iter().flatten().min()
    }

    // ---- internals ----

    fn drive(&mut self, now: Instant) {
        self.drive_snapshots(now);
        self.maybe_open(now);
    }

    fn send(&mut self, to: ConnId, msg: ToWorker) {
        self.transmits.push_back(Transmit::Control { to, msg });
    }

    /// Why a message from `member` about `round` does not belong to the open round (a round
    /// already over is late, any other one wrong; a member outside it is not one), or `None`
    /// when it does.
    fn misplaced(&self, member: MemberId, round: Round) -> Option<RejectReason> {
        match self.open.as_ref().filter(|o| o.round == round) {
            None if round < next_after(self.committed) => Some(RejectReason::Late),
            None => Some(RejectReason::WrongRound),
            Some(open) if open.members.binary_search(&member).is_err() => {
                Some(RejectReason::NotMember)
            }
            Some(_) => None,
        }
    }

    fn reject(&mut self, conn: ConnId, round: Option<Round>, reason: RejectReason) {
        debug!(?conn, ?round, ?reason, "rejected");
        self.events.push_back(Event::Rejected { conn, round, reason });
    }

    fn refuse(&mut self, conn: ConnId, reason: RefuseReason) {
        info!(?conn, ?reason, "join refused");
        self.send(conn, ToWorker::Refused { reason: reason.clone() });
        self.events.push_back(Event::Refused { conn, reason });
    }
}

/// A usable worker name: 1..=64 bytes, no control characters.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}
