//! A worker's state machine: joining, publishing its payload, collecting the others',
//! applying commits in order, fetching what is missing, and snapshots (both ways).

mod apply;
mod config;
mod events;
mod payload;
mod publish;
mod ring;
mod state;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

pub use config::WorkerConfig;
pub use events::{Event, Transmit, PAYLOAD_HEAD_LEN};

use super::messages::{PeerMessage, ToCoordinator, ToWorker};
use super::types::{
    strictly_ascending, Delivery, Dest, Digest, MemberInfo, RejectReason, RoundStats, Topology,
    Traffic,
};
use super::{ProtocolError, RingReducer};
use crate::ids::{MemberId, Round};
use apply::{Fetch, PendingCommit};

/// A payload and its digest.
#[derive(Debug, Clone)]
struct Held {
    bytes: Bytes,
    digest: Digest,
}

impl Held {
    fn new(bytes: Bytes) -> Self {
        Held { digest: Digest::of(&bytes), bytes }
    }
}

/// The latest round opened with this worker in it.
#[derive(Debug)]
struct OpenRound {
    round: Round,
    members: Vec<MemberId>,
    /// This worker's payload went out for this opening (Ring: its ring started, or after a
    /// fallback its upload went out).
    sent: bool,
    /// Ring: the coordinator abandoned the ring; the payload is uploaded instead.
    fallback: bool,
}

/// One worker's protocol state.
///
/// [`WorkerProto`] reads no clock and owns no socket. Its methods come in four groups:
/// - inputs, `handle_*`: the coordinator connection opened or closed, a control message
///   from the coordinator or from a member, a payload frame, a state frame, a timer;
/// - commands: [`WorkerProto::publish`] (this round's payload),
///   [`WorkerProto::provide_state`] (a snapshot asked for), [`WorkerProto::leave`];
/// - outputs, `poll_*`: [`Event`]s, [`Transmit`]s, the next timeout;
/// - getters.
///
/// After every input or command the driver drains [`WorkerProto::poll_event`], then
/// [`WorkerProto::poll_transmit`], then re-arms its timer from [`WorkerProto::poll_timeout`].
/// The driver's application applies [`Event::RoundReady`]s in the order they come; a
/// [`Event::SnapshotRequested`] asks for its state exactly as it is at that point of the
/// event stream (right after the RoundReady of that round).
#[derive(Debug)]
pub struct WorkerProto {
    config: WorkerConfig,
    /// When the join now unanswered was sent.
    joining: Option<Instant>,
    member: Option<MemberId>,
    topology: Option<Topology>,
    /// The members the run was started for, from the welcome.
    expected: Option<u32>,
    /// The run's settings from the last welcome, where the coordinator holds them.
    settings: Option<String>,
    members: BTreeMap<MemberId, MemberInfo>,
    applied: Option<Round>,
    /// Since when this worker waits for a snapshot.
    awaiting_state: Option<Instant>,
    /// The highest round known to be open (payloads up to one round past it are buffered).
    horizon: Option<Round>,
    open: Option<OpenRound>,
    /// Members and opening time of recent rounds this worker was in (for stats).
    opened: BTreeMap<Round, (Vec<MemberId>, Instant)>,
    commits: BTreeMap<Round, PendingCommit>,
    /// Other members' payloads (and fetched copies of our own), by round and author.
    store: BTreeMap<Round, BTreeMap<MemberId, Held>>,
    /// This worker's published payloads, by round.
    own: BTreeMap<Round, Held>,
    fetches: BTreeMap<(Round, MemberId), Fetch>,
    /// Since when commits have a gap before them.
    gap_since: Option<Instant>,
    /// A snapshot the coordinator asked for, not yet announced to the driver.
    snapshot_wanted: Option<Round>,
    /// The round of the SnapshotRequested event awaiting `provide_state`.
    snapshot_announced: Option<Round>,
    /// How the snapshot asked for is answered once provided: served in chunks (direct),
    /// uploaded whole, or both (two requests came before it was provided).
    snapshot_serve: state::Serve,
    /// The state this worker provided, served to members that catch up.
    held_state: Option<state::HeldState>,
    /// The offered state this worker fetches in chunks.
    state_fetch: Option<state::StateFetch>,
    traffic: BTreeMap<Round, Traffic>,
    /// Ring: how payloads add up (none: this worker cannot take part in rings).
    reducer: Option<Arc<dyn RingReducer>>,
    /// Ring: this worker's ring of the latest ring round.
    ring: Option<ring::RingRound>,
    /// Ring: segments that arrived before their round started here.
    early: ring::Early,
    /// Ring: aggregates this worker holds (its rings' results, fetched copies), by round.
    aggregates: BTreeMap<Round, Held>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl WorkerProto {
    /// A worker whose application last applied `last_applied` (`None`: fresh). It joins
    /// when [`WorkerProto::handle_connected`] is called.
    pub fn new(config: WorkerConfig, last_applied: Option<Round>) -> Result<Self, ProtocolError> {
        config.validate()?;
        Ok(WorkerProto {
            config,
            joining: None,
            member: None,
            topology: None,
            expected: None,
            settings: None,
            members: BTreeMap::new(),
            applied: last_applied,
            awaiting_state: None,
            horizon: None,
            open: None,
            opened: BTreeMap::new(),
            commits: BTreeMap::new(),
            store: BTreeMap::new(),
            own: BTreeMap::new(),
            fetches: BTreeMap::new(),
            gap_since: None,
            snapshot_wanted: None,
            snapshot_announced: None,
            snapshot_serve: state::Serve::default(),
            held_state: None,
            state_fetch: None,
            traffic: BTreeMap::new(),
            reducer: None,
            ring: None,
            early: BTreeMap::new(),
            aggregates: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// Sets how payloads add up in [`Topology::Ring`] rounds. Without a reducer a worker
    /// reports every ring it is in as failed, and those rounds fall back to Relay.
    pub fn with_reducer(mut self, reducer: Arc<dyn RingReducer>) -> Self {
        self.reducer = Some(reducer);
        self
    }

    // ---- getters ----

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// This worker's member id, once welcomed.
    pub fn member(&self) -> Option<MemberId> {
        self.member
    }

    /// The last round whose RoundReady was emitted (or whose state was received).
    pub fn applied(&self) -> Option<Round> {
        self.applied
    }

    /// The run's topology, once welcomed.
    pub fn topology(&self) -> Option<Topology> {
        self.topology
    }

    /// The members the run was started for (the coordinator's `min_members`), once welcomed.
    pub fn expected_members(&self) -> Option<u32> {
        self.expected
    }

    /// The run's settings from the last welcome, where the coordinator holds them.
    pub fn run_settings(&self) -> Option<&str> {
        self.settings.as_deref()
    }

    /// The connected members as last announced, ascending by id.
    pub fn members(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.values()
    }

    /// True while a snapshot is awaited.
    pub fn awaiting_state(&self) -> bool {
        self.awaiting_state.is_some()
    }

    // ---- inputs ----

    /// The connection to the coordinator is (again) open: join.
    pub fn handle_connected(&mut self, now: Instant) {
        self.send_join(now);
    }

    /// The connection to the coordinator closed. Held payloads and commits are kept; the
    /// open round is forgotten until the coordinator opens it again after the next join.
    pub fn handle_disconnected(&mut self, now: Instant) {
        let _ = now;
        self.joining = None;
        self.open = None;
        self.gap_since = None;
    }

    /// A control message from the coordinator.
    pub fn handle_coordinator(&mut self, now: Instant, msg: ToWorker) {
        if self.member.is_none()
            && !matches!(msg, ToWorker::Welcome { .. } | ToWorker::Refused { .. })
        {
            return self.reject(Dest::Coordinator, None, RejectReason::NotJoined);
        }
        match msg {
            ToWorker::Welcome {
                member,
                members,
                next_round,
                committed,
                topology,
                need_state,
                expected,
                settings,
            } => {
                self.expected = Some(expected);
                self.settings = settings;
                self.on_welcome(now, member, members, next_round, committed, topology, need_state)
            }
            ToWorker::Refused { reason } => {
                // The driver reports it (and usually ends): logged once, there.
                debug!(?reason, "refused by the coordinator");
                self.joining = None;
                self.events.push_back(Event::Refused { reason });
            }
            ToWorker::RoundOpen { round, members, deadline_ms } => {
                self.on_round_open(now, round, members, Duration::from_millis(deadline_ms))
            }
            ToWorker::Commit { round, delivered, stragglers, aggregate } => {
                self.on_commit(now, round, delivered, stragglers, aggregate)
            }
            ToWorker::Fallback { round, deadline_ms } => {
                let _ = deadline_ms;
                self.on_fallback(round)
            }
            ToWorker::Members { members } => {
                self.on_members(members);
                self.recheck_donors(now);
            }
            ToWorker::SnapshotRequest { round, direct } => self.on_snapshot_request(round, direct),
            ToWorker::StateOffer { round, len, chunk_len, donors } => {
                self.on_state_offer(now, round, len, chunk_len, donors)
            }
            ToWorker::Unavailable { round, member } => {
                self.fetch_unavailable(now, Dest::Coordinator, round, member)
            }
            ToWorker::Reupload { round } => self.reupload(round),
        }
    }

    /// A control message from member `from` (the driver knows who is on the link).
    pub fn handle_peer(&mut self, now: Instant, from: MemberId, msg: PeerMessage) {
        if self.member.is_none() {
            return self.reject(Dest::Member(from), None, RejectReason::NotJoined);
        }
        match msg {
            PeerMessage::Fetch { round, member, digest } => {
                let aggregate =
                    self.aggregates.get(&round).filter(|h| h.digest == digest).map(|h| &h.bytes);
                match self.matching(round, member, digest).or(aggregate).cloned() {
                    Some(bytes) => {
                        let to = Dest::Member(from);
                        self.traffic.entry(round).or_default().sent(to, bytes.len());
                        self.transmits.push_back(Transmit::Payload {
                            to,
                            round,
                            from_member: member,
                            bytes,
                        });
                    }
                    None => self.transmits.push_back(Transmit::Peer {
                        to: from,
                        msg: PeerMessage::Unavailable { round, member },
                    }),
                }
            }
            PeerMessage::Unavailable { round, member } => {
                self.fetch_unavailable(now, Dest::Member(from), round, member)
            }
            PeerMessage::FetchChunk { round, index } => self.on_fetch_chunk(from, round, index),
            PeerMessage::ChunkUnavailable { round, index } => {
                let _ = index;
                self.on_chunk_unavailable(now, from, round)
            }
        }
    }

    /// A state frame from the coordinator: the run's state right after `round`.
    pub fn handle_state(&mut self, now: Instant, round: Round, bytes: Bytes) {
        let from = Dest::Coordinator;
        if self.awaiting_state.is_none() {
            return self.reject(from, Some(round), RejectReason::Unsolicited);
        }
        if bytes.len() > self.config.max_state {
            return self.reject(from, Some(round), RejectReason::Oversized);
        }
        if self.applied.is_some_and(|a| round <= a) {
            return self.reject(from, Some(round), RejectReason::WrongRound);
        }
        self.state_fetch = None;
        self.take_state(now, round, bytes);
    }

    /// Installs the state of `round`, relayed whole or assembled from chunks.
    fn take_state(&mut self, now: Instant, round: Round, bytes: Bytes) {
        info!(round, len = bytes.len(), "state received");
        self.applied = Some(round);
        self.awaiting_state = None;
        self.snapshot_wanted = None;
        self.snapshot_announced = None;
        self.snapshot_serve = state::Serve::default();
        self.commits.retain(|&r, _| r > round);
        self.store.retain(|&r, _| r > round);
        self.own.retain(|&r, _| r > round);
        self.fetches.retain(|&(r, _), _| r > round);
        self.opened.retain(|&r, _| r > round);
        self.traffic.retain(|&r, _| r > round);
        self.aggregates.retain(|&r, _| r > round);
        self.early.retain(|&r, _| r > round);
        self.events.push_back(Event::StateReceived { round, bytes });
        self.progress(now);
    }

    /// The time from [`WorkerProto::poll_timeout`] has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.joining.is_some_and(|at| now >= at + self.config.join_timeout) {
            debug!("join unanswered, sending it again");
            self.send_join(now);
        }
        if self.awaiting_state.is_some_and(|at| now >= at + self.config.state_timeout) {
            debug!("state still missing, asking again");
            self.ask_state(now);
        }
        if self.gap_since.is_some_and(|at| now >= at + self.config.fetch_timeout) {
            // A commit went missing: joining again makes the coordinator replay them.
            debug!("commits have a gap, resynchronising");
            self.gap_since = Some(now);
            self.send_join(now);
        }
        self.run_fetches(now);
        self.state_fetch_timeouts(now);
    }

    // ---- commands ----

    /// Publishes this worker's payload for `round`. It goes out when the round opens with
    /// this worker in it, and again on every reopening (after a coordinator restart) until
    /// the round commits.
    pub fn publish(
        &mut self,
        now: Instant,
        round: Round,
        bytes: Bytes,
    ) -> Result<(), ProtocolError> {
        if bytes.len() > self.config.max_payload {
            return Err(ProtocolError::PayloadTooLarge {
                len: bytes.len(),
                max: self.config.max_payload,
            });
        }
        if let Some(applied) = self.applied.filter(|&a| round <= a) {
            return Err(ProtocolError::RoundApplied { round, applied });
        }
        if self.awaiting_state.is_some() {
            return Err(ProtocolError::AwaitingState);
        }
        let held = Held::new(bytes);
        if let Some(previous) = self.own.get(&round) {
            return if previous.digest == held.digest {
                Ok(())
            } else {
                Err(ProtocolError::AlreadyPublished(round))
            };
        }
        self.own.insert(round, held);
        self.send_published();
        self.progress(now);
        Ok(())
    }

    /// Provides the state asked for by [`Event::SnapshotRequested`]`{ round }`: it is served
    /// in chunks to the members that catch up (or uploaded whole, when the coordinator asked
    /// for that), and kept until `keep_rounds` rounds later.
    pub fn provide_state(
        &mut self,
        now: Instant,
        round: Round,
        bytes: Bytes,
    ) -> Result<(), ProtocolError> {
        let _ = now;
        if self.snapshot_announced != Some(round) {
            return Err(ProtocolError::SnapshotNotRequested(round));
        }
        if bytes.len() > self.config.max_state {
            return Err(ProtocolError::StateTooLarge {
                len: bytes.len(),
                max: self.config.max_state,
            });
        }
        self.snapshot_announced = None;
        self.hold_state(round, bytes);
        Ok(())
    }

    /// Tells the coordinator this worker leaves (the driver closes the connection after).
    pub fn leave(&mut self, now: Instant) {
        let _ = now;
        self.joining = None;
        self.transmits.push_back(Transmit::Control { msg: ToCoordinator::Leave });
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

    /// When [`WorkerProto::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let join = self.joining.map(|at| at + self.config.join_timeout);
        let state = self.awaiting_state.map(|at| at + self.config.state_timeout);
        let gap = self.gap_since.map(|at| at + self.config.fetch_timeout);
        let fetch = self.fetches.values().map(|f| f.due).min();
        let chunk = self.state_fetch_due();
        [join, state, gap, fetch, chunk].into_iter().flatten().min()
    }

    // ---- internals ----

    fn reject(&mut self, from: Dest, round: Option<Round>, reason: RejectReason) {
        debug!(?from, ?round, ?reason, "rejected");
        self.events.push_back(Event::Rejected { from, round, reason });
    }

    fn send_join(&mut self, now: Instant) {
        self.joining = Some(now);
        self.transmits.push_back(Transmit::Control {
            msg: ToCoordinator::Join {
                name: self.config.name.clone(),
                last_applied: self.applied,
                peer: self.config.peer.clone(),
                signature: self.config.signature.clone(),
                follows: self.config.follows,
            },
        });
    }

    fn ask_state(&mut self, now: Instant) {
        self.ask_state_as(now, true);
    }

    /// Asks for state, to fetch from members (`direct`) or to be relayed by the coordinator.
    fn ask_state_as(&mut self, now: Instant, direct: bool) {
        self.awaiting_state = Some(now);
        self.fetches.clear();
        self.gap_since = None;
        self.transmits.push_back(Transmit::Control {
            msg: ToCoordinator::StateWanted { last_applied: self.applied, direct },
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_welcome(
        &mut self,
        now: Instant,
        member: MemberId,
        members: Vec<MemberInfo>,
        next_round: Round,
        committed: Option<Round>,
        topology: Topology,
        need_state: bool,
    ) {
        if self.joining.is_none() {
            return self.reject(Dest::Coordinator, None, RejectReason::Unsolicited);
        }
        if let Some(previous) = self.member.filter(|&m| m != member) {
            // Only a coordinator that lost its state renames a worker; our own payloads
            // are kept by round, so they follow the new id.
            warn!(previous, member, "the coordinator gave this worker a new id");
        }
        info!(member, next_round, ?committed, need_state, "welcomed");
        self.joining = None;
        self.member = Some(member);
        self.topology = Some(topology);
        self.horizon = self.horizon.max(Some(next_round));
        self.open = None;
        self.gap_since = None;
        self.events.push_back(Event::Welcomed { member, next_round, need_state });
        self.on_members(members);
        if need_state {
            self.awaiting_state = Some(now);
            self.fetches.clear();
        } else {
            self.awaiting_state = None;
            self.refetch_after_reconnect(now);
        }
        self.progress(now);
    }

    fn on_members(&mut self, members: Vec<MemberInfo>) {
        if !strictly_ascending(members.iter().map(|m| m.id)) {
            return self.reject(Dest::Coordinator, None, RejectReason::Malformed);
        }
        self.members = members.iter().map(|m| (m.id, m.clone())).collect();
        self.events.push_back(Event::Members { members });
    }

    /// Emits the SnapshotRequested event once the asked-for round is applied.
    fn announce_snapshot(&mut self) {
        let (Some(wanted), Some(applied)) = (self.snapshot_wanted, self.applied) else { return };
        if applied >= wanted {
            self.snapshot_wanted = None;
            self.snapshot_announced = Some(applied);
            self.events.push_back(Event::SnapshotRequested { round: applied });
        }
    }

    /// A held payload of `member` in `round` with `digest`.
    fn matching(&self, round: Round, member: MemberId, digest: Digest) -> Option<&Bytes> {
        let own = self.own.get(&round).filter(|_| self.member == Some(member));
        let stored = self.store.get(&round).and_then(|s| s.get(&member));
        [own, stored].into_iter().flatten().find(|h| h.digest == digest).map(|h| &h.bytes)
    }

    fn round_stats(&mut self, round: Round, commit: &PendingCommit, now: Instant) -> RoundStats {
        let (members, duration) = match self.opened.get(&round) {
            Some((members, at)) => (members.clone(), Some(now.saturating_duration_since(*at))),
            None => (Vec::new(), None),
        };
        RoundStats {
            round,
            members,
            delivered: commit.delivered.iter().map(|d: &Delivery| d.member).collect(),
            stragglers: commit.stragglers.clone(),
            duration,
            last_delivery: None,
            traffic: self.traffic.get(&round).map(Traffic::report).unwrap_or_default(),
        }
    }
}
