//! The coordinator's state machine: admission, round opening and closing, commits, relaying
//! payloads (Relay) and snapshots, and the persisted state it restarts from.

mod config;
mod persist;
mod relay;
mod snapshot;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

pub use config::CoordinatorConfig;
pub use persist::{CommitRecord, CoordinatorState};

use super::messages::{RefuseReason, ToCoordinator, ToWorker};
use super::types::{
    next_after, ConnId, Delivery, Dest, Digest, MemberInfo, PeerInfo, RejectReason, RoundStats,
    Topology, Traffic, MAX_NAME_LEN, MAX_PEER_INFO_LEN,
};
use super::ProtocolError;
use crate::ids::{MemberId, Round};
use crate::protocol::deadline::DeadlineStats;
use snapshot::SnapshotAsk;

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
    /// A round closed and committed `delivered`. Persist [`Coordinator::persisted`] now.
    RoundCommitted {
        /// The round.
        round: Round,
        /// The committed payloads, ascending by member.
        delivered: Vec<Delivery>,
        /// Durations, stragglers and bytes moved.
        stats: RoundStats,
    },
    /// A member was asked for a state snapshot.
    SnapshotRequested {
        /// The member.
        provider: MemberId,
        /// The round the snapshot must include.
        round: Round,
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
}

#[derive(Debug)]
struct OpenRound {
    round: Round,
    members: Vec<MemberId>,
    opened: Instant,
    deadline: Instant,
    delivered: BTreeMap<MemberId, (Digest, Instant)>,
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
/// applied a round it forgot ([`RefuseReason::AheadOfCoordinator`]).
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
    deadline_stats: DeadlineStats,
    /// Bytes moved since the open round opened.
    traffic: Traffic,
    /// The latest state snapshot: (round it reflects, bytes).
    snapshot: Option<(Round, Bytes)>,
    asking: Option<SnapshotAsk>,
    gate: Option<Gate>,
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
            deadline_stats: DeadlineStats::default(),
            traffic: Traffic::default(),
            snapshot: None,
            asking: None,
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

    /// The member id that `name` holds, if it ever joined.
    pub fn member_id(&self, name: &str) -> Option<MemberId> {
        self.names.get(name).copied()
    }

    // ---- inputs ----

    /// A control message arrived on `conn`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: ToCoordinator) {
        if let ToCoordinator::Join { name, last_applied, peer } = msg {
            self.on_join(now, conn, name, last_applied, peer);
            self.drive(now);
            return;
        }
        let Some(&member) = self.conns.get(&conn) else {
            self.reject(conn, None, RejectReason::NotJoined);
            return;
        };
        match msg {
            ToCoordinator::Join { .. } => {}
            ToCoordinator::Delivered { round, digest } => {
                if self.config.topology == Topology::AllGather {
                    self.on_delivery(now, conn, member, round, digest, None);
                } else {
                    self.reject(conn, Some(round), RejectReason::WrongTopology);
                }
            }
            ToCoordinator::Fetch { round, member: author, digest } => {
                self.on_fetch(conn, round, author, digest)
            }
            ToCoordinator::StateWanted { last_applied } => {
                self.on_state_wanted(member, last_applied)
            }
            ToCoordinator::Leave => {
                info!(member, "member leaves");
                self.drop_conn(conn);
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
        if self.config.topology != Topology::Relay {
            return self.reject(conn, Some(round), RejectReason::WrongTopology);
        }
        if sender != member {
            return self.reject(conn, Some(round), RejectReason::SenderMismatch);
        }
        if bytes.len() > self.config.max_payload {
            return self.reject(conn, Some(round), RejectReason::Oversized);
        }
        let digest = Digest::of(&bytes);
        if self.committed.is_some_and(|c| round <= c) {
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
        self.drop_conn(conn);
        self.drive(now);
    }

    /// The time from [`Coordinator::poll_timeout`] has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.open.as_ref().is_some_and(|o| o.deadline <= now) {
            self.close(now);
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
        let gate = self.gate.as_ref().map(|g| g.until);
        [deadline, snapshot, gate].into_iter().flatten().min()
    }

    // ---- internals ----

    fn drive(&mut self, now: Instant) {
        self.drive_snapshots(now);
        self.maybe_open(now);
    }

    fn send(&mut self, to: ConnId, msg: ToWorker) {
        self.transmits.push_back(Transmit::Control { to, msg });
    }

    fn reject(&mut self, conn: ConnId, round: Option<Round>, reason: RejectReason) {
        debug!(?conn, ?round, ?reason, "rejected");
        self.events.push_back(Event::Rejected { conn, round, reason });
    }

    fn refuse(&mut self, conn: ConnId, reason: RefuseReason) {
        info!(?conn, ?reason, "join refused");
        self.send(conn, ToWorker::Refused { reason });
        self.events.push_back(Event::Refused { conn, reason });
    }

    fn on_join(
        &mut self,
        now: Instant,
        conn: ConnId,
        name: String,
        last_applied: Option<Round>,
        peer: PeerInfo,
    ) {
        if !valid_name(&name) || peer.0.len() > MAX_PEER_INFO_LEN {
            return self.refuse(conn, RefuseReason::InvalidJoin);
        }
        if let Some(applied) = last_applied {
            if self.committed.is_none_or(|c| applied > c) {
                return self.refuse(conn, RefuseReason::AheadOfCoordinator);
            }
        }
        // A connection that joined under another name gives that member up.
        if let Some(&previous) = self.conns.get(&conn) {
            if self.members.get(&previous).is_some_and(|m| m.name != name) {
                self.drop_conn(conn);
            }
        }
        let id = match self.names.get(&name) {
            Some(&id) => id,
            None => {
                if self.members.len() >= self.config.max_members || self.next_id == MemberId::MAX {
                    return self.refuse(conn, RefuseReason::Full);
                }
                let id = self.next_id;
                self.next_id += 1;
                self.names.insert(name.clone(), id);
                self.members.insert(
                    id,
                    Member {
                        name: name.clone(),
                        peer: PeerInfo::default(),
                        conn: None,
                        phase: Phase::Live,
                        last_applied: None,
                    },
                );
                id
            }
        };
        let replay = self.replay_after(last_applied);
        let need_state = replay.is_none();
        let Some(member) = self.members.get_mut(&id) else { return };
        let superseded = member.conn.filter(|&old| old != conn);
        member.conn = Some(conn);
        member.peer = peer;
        member.last_applied = last_applied;
        member.phase = if need_state { Phase::Syncing } else { Phase::Live };
        if let Some(old) = superseded {
            self.conns.remove(&old);
            self.refuse(old, RefuseReason::Superseded);
        }
        self.conns.insert(conn, id);
        info!(member = id, %name, ?last_applied, need_state, "member joined");

        let next_round = next_after(self.committed);
        let welcome = ToWorker::Welcome {
            member: id,
            members: self.member_infos(),
            next_round,
            committed: self.committed,
            topology: self.config.topology,
            need_state,
        };
        self.send(conn, welcome);
        for record in replay.unwrap_or_default() {
            self.send(conn, record.to_message());
        }
        // Back during a round it belongs to: it may still deliver.
        if !need_state {
            if let Some(open) = self.open.as_ref().filter(|o| o.members.binary_search(&id).is_ok())
            {
                let msg = open_message(open, now);
                self.send(conn, msg);
            }
        }
        self.events.push_back(Event::Joined { member: id, name, conn, need_state });
        self.broadcast_members(Some(id));
    }

    /// The commits a worker that applied `last_applied` must replay to be current, or `None`
    /// when it cannot catch up by replay and needs a snapshot. A fresh worker (nothing
    /// applied) joining after a commit always needs a snapshot: the protocol does not assume
    /// that initial states agree. Whether the replayed payloads can still be had is not
    /// checked here: usually the worker holds them already (it missed a commit, not the
    /// payloads), and when no holder has one the worker asks for a snapshot itself.
    fn replay_after(&self, last_applied: Option<Round>) -> Option<Vec<CommitRecord>> {
        let Some(committed) = self.committed else { return Some(Vec::new()) };
        let applied = last_applied?;
        if applied >= committed {
            return Some(Vec::new());
        }
        let records: Vec<CommitRecord> =
            self.commits.iter().filter(|r| r.round > applied).cloned().collect();
        if records.first().map(|r| r.round) != Some(applied + 1) {
            return None;
        }
        Some(records)
    }

    fn member_infos(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .filter(|(_, m)| m.conn.is_some())
            .map(|(&id, m)| MemberInfo { id, name: m.name.clone(), peer: m.peer.clone() })
            .collect()
    }

    /// Tells every connected member (except `skip`, which just got a welcome) who is there.
    fn broadcast_members(&mut self, skip: Option<MemberId>) {
        let members = self.member_infos();
        let targets: Vec<ConnId> = self
            .members
            .iter()
            .filter(|(&id, _)| Some(id) != skip)
            .filter_map(|(_, m)| m.conn)
            .collect();
        for conn in targets {
            self.send(conn, ToWorker::Members { members: members.clone() });
        }
    }

    fn drop_conn(&mut self, conn: ConnId) {
        let Some(id) = self.conns.remove(&conn) else { return };
        if let Some(member) = self.members.get_mut(&id) {
            member.conn = None;
        }
        info!(member = id, "member disconnected");
        self.events.push_back(Event::Left { member: id });
        self.broadcast_members(None);
    }

    fn on_delivery(
        &mut self,
        now: Instant,
        conn: ConnId,
        member: MemberId,
        round: Round,
        digest: Digest,
        bytes: Option<Bytes>,
    ) {
        let next_round = next_after(self.committed);
        let Some(open) = self.open.as_mut().filter(|o| o.round == round) else {
            let reason =
                if round < next_round { RejectReason::Late } else { RejectReason::WrongRound };
            return self.reject(conn, Some(round), reason);
        };
        if open.members.binary_search(&member).is_err() {
            return self.reject(conn, Some(round), RejectReason::NotMember);
        }
        if let Some((first, _)) = open.delivered.get(&member) {
            // The first delivery wins; a different second one is logged louder.
            if *first != digest {
                warn!(member, round, "a second, different payload for the round is ignored");
            }
            return self.reject(conn, Some(round), RejectReason::Duplicate);
        }
        open.delivered.insert(member, (digest, now));
        let everyone = open.delivered.len() == open.members.len();
        let others: Vec<MemberId> = open.members.iter().copied().filter(|&m| m != member).collect();
        debug!(member, round, "delivered");
        if let Some(bytes) = bytes {
            self.traffic.received(Dest::Member(member), bytes.len());
            for other in others {
                let Some(to) = self.members.get(&other).and_then(|m| m.conn) else { continue };
                self.traffic.sent(Dest::Member(other), bytes.len());
                self.transmits.push_back(Transmit::Payload {
                    to,
                    round,
                    from_member: member,
                    bytes: bytes.clone(),
                });
            }
            self.payloads.entry(round).or_default().insert(member, (digest, bytes));
        }
        if everyone {
            self.close(now);
        }
    }

    fn close(&mut self, now: Instant) {
        let Some(open) = self.open.take() else { return };
        let round = open.round;
        let delivered: Vec<Delivery> = open
            .delivered
            .iter()
            .map(|(&member, &(digest, _))| Delivery { member, digest })
            .collect();
        let stragglers: Vec<MemberId> =
            open.members.iter().copied().filter(|m| !open.delivered.contains_key(m)).collect();
        let last_delivery =
            open.delivered.values().map(|&(_, at)| at.saturating_duration_since(open.opened)).max();
        if let Some(d) = last_delivery {
            self.deadline_stats.observe(d);
        }
        let record = CommitRecord { round, delivered: delivered.clone(), stragglers };
        self.commits.push_back(record.clone());
        while self.commits.len() as u64 > self.config.keep_rounds {
            self.commits.pop_front();
        }
        self.committed = Some(round);
        if let Some(payloads) = self.payloads.get_mut(&round) {
            payloads.retain(|m, _| open.delivered.contains_key(m));
        }
        let keep = self.config.keep_rounds;
        self.payloads.retain(|&r, _| r.saturating_add(keep) > round);
        self.refetch.retain(|&(r, _), _| r.saturating_add(keep) > round);
        info!(
            round,
            delivered = delivered.len(),
            stragglers = record.stragglers.len(),
            "round committed"
        );
        let stats = RoundStats {
            round,
            members: open.members.clone(),
            delivered: delivered.iter().map(|d| d.member).collect(),
            stragglers: record.stragglers.clone(),
            duration: Some(now.saturating_duration_since(open.opened)),
            last_delivery,
            traffic: std::mem::take(&mut self.traffic).report(),
        };
        self.events.push_back(Event::RoundCommitted { round, delivered, stats });
        let msg = record.to_message();
        let targets: Vec<ConnId> = self
            .members
            .values()
            .filter(|m| m.phase == Phase::Live)
            .filter_map(|m| m.conn)
            .collect();
        for conn in targets {
            self.send(conn, msg.clone());
        }
    }

    fn maybe_open(&mut self, now: Instant) {
        if self.open.is_some() {
            return;
        }
        let live: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, m)| m.conn.is_some() && m.phase == Phase::Live)
            .map(|(&id, _)| id)
            .collect();
        if live.is_empty() || live.len() < self.config.min_members {
            return;
        }
        if let Some(gate) = &self.gate {
            let all_back = gate.expected.iter().all(|id| live.binary_search(id).is_ok());
            if now < gate.until && !all_back {
                return;
            }
        }
        self.gate = None;
        let round = next_after(self.committed);
        let deadline = self.config.deadline.next(&self.deadline_stats);
        let open = OpenRound {
            round,
            members: live.clone(),
            opened: now,
            deadline: now + deadline,
            delivered: BTreeMap::new(),
        };
        info!(round, members = live.len(), ?deadline, "round opened");
        let msg = open_message(&open, now);
        self.open = Some(open);
        for id in &live {
            if let Some(conn) = self.members.get(id).and_then(|m| m.conn) {
                self.send(conn, msg.clone());
            }
        }
        self.events.push_back(Event::RoundOpened { round, members: live, deadline });
    }
}

fn open_message(open: &OpenRound, now: Instant) -> ToWorker {
    let left = open.deadline.saturating_duration_since(now);
    ToWorker::RoundOpen {
        round: open.round,
        members: open.members.clone(),
        deadline_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
    }
}

/// A usable worker name: 1..=64 bytes, no control characters.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}
