//! Catch-up by snapshot: members that need state fetch it from live members directly, in
//! chunks; one that cannot is sent it whole, relayed through the coordinator.
//!
//! Direct (the default, with `state_donors` > 0): the coordinator asks up to `state_donors`
//! live members, the most current first, to serve their state (`SnapshotRequest { direct:
//! true }`). Each answers, once it applied the round, with its state's manifest: chunk
//! digests. When every one answered, or [`MANIFEST_GRACE`] after the first answer, each
//! syncing member gets a `StateOffer`: the donors whose state has the first answer's round
//! and shape, each with its digests (replicated state has the same chunks everywhere;
//! per-member state, such as inner optimizer moments, differs). The member fetches the
//! chunks itself (see the worker's side) and is live from the offer on, with the commits
//! after the state's round replayed to it right after the offer. A member that could not fetch asks again, directly when it
//! got some chunks (its donors died), relayed when it got none (it cannot reach them).
//!
//! Relayed: one request is in flight at a time. The provider is a live connected member not yet
//! tried, the one that applied the latest round as far as the coordinator knows (then the
//! lowest id): a member that is behind (one that rejoined after a restart and still
//! replays commits whose payloads may be gone) would make the newcomer wait for rounds it
//! may never apply. It uploads its state as of right after applying the requested round
//! (or a later one). The latest upload is cached, so members that need state later are served
//! at once as long as the commits after it are still remembered for replay; otherwise a
//! fresh snapshot is requested. A member that gets state becomes live: it replays the
//! commits after the snapshot and joins rounds from the next boundary, or, when it belongs
//! to the open round (it died during it), is told the round is open and may deliver to it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};

use super::{CommitRecord, Coordinator, Event, Phase, Transmit};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::{Donor, StateManifest, ToWorker};
use crate::protocol::types::{ConnId, Dest, RejectReason};

/// The snapshot request in flight.
#[derive(Debug)]
pub(super) struct SnapshotAsk {
    pub(super) provider: MemberId,
    pub(super) round: Round,
    pub(super) asked: Instant,
    /// Members already asked in this attempt (they timed out or left).
    tried: BTreeSet<MemberId>,
}

/// How long the first donor's manifest waits for the other donors' before the state is
/// offered with the donors that answered.
pub const MANIFEST_GRACE: Duration = Duration::from_secs(2);

/// A direct snapshot request in flight: members asked to serve their state in chunks.
#[derive(Debug)]
pub(super) struct DirectAsk {
    round: Round,
    asked: Instant,
    /// The members asked and still live.
    donors: BTreeSet<MemberId>,
    /// Their answers, with when the first one came and whose it was.
    manifests: BTreeMap<MemberId, (Round, StateManifest)>,
    first: Option<(Instant, MemberId)>,
}

impl DirectAsk {
    /// When it is due: the offer after the first answer, or giving up on answers.
    pub(super) fn due(&self, timeout: Duration) -> Instant {
        match self.first {
            Some((at, _)) => at + MANIFEST_GRACE,
            None => self.asked + timeout,
        }
    }

    fn ready(&self, now: Instant) -> bool {
        self.first.is_some_and(|(at, _)| {
            self.manifests.len() >= self.donors.len() || now >= at + MANIFEST_GRACE
        })
    }
}

impl Coordinator {
    pub(super) fn on_state_wanted(
        &mut self,
        member: MemberId,
        last_applied: Option<Round>,
        direct: bool,
    ) {
        if self.committed.is_none() {
            // Nothing committed yet: every worker's state is the initial one.
            return;
        }
        if let Some(m) = self.members.get_mut(&member) {
            info!(member, ?last_applied, direct, "member needs state");
            m.phase = Phase::Syncing;
            m.last_applied = last_applied;
            m.relayed_state = !direct;
        }
    }

    /// A donor's manifest: it serves its state of `round` in these chunks.
    pub(super) fn on_manifest(
        &mut self,
        now: Instant,
        conn: ConnId,
        member: MemberId,
        round: Round,
        manifest: StateManifest,
    ) {
        let Some(ask) = self.direct.as_mut().filter(|a| a.donors.contains(&member)) else {
            return self.reject(conn, Some(round), RejectReason::Unsolicited);
        };
        if round < ask.round || self.committed.is_none_or(|c| round > c) {
            return self.reject(conn, Some(round), RejectReason::WrongRound);
        }
        if !manifest.is_valid(self.config.max_state) {
            return self.reject(conn, Some(round), RejectReason::Oversized);
        }
        info!(member, round, len = manifest.len, "donor serves its state");
        ask.first.get_or_insert((now, member));
        ask.manifests.insert(member, (round, manifest));
    }

    /// Members that need state directly: asks donors, and offers their state once they
    /// answered.
    fn drive_direct(&mut self, now: Instant, waiting: &[MemberId]) {
        if let Some(ask) = self.direct.as_mut() {
            let members = &self.members;
            ask.donors.retain(|id| {
                members.get(id).is_some_and(|m| m.conn.is_some() && m.phase == Phase::Live)
            });
            ask.manifests.retain(|id, _| ask.donors.contains(id));
            if ask.first.is_some_and(|(_, id)| !ask.manifests.contains_key(&id)) {
                // The first donor left: the next answer, if any, leads.
                ask.first = ask.manifests.keys().next().map(|&id| (now, id));
            }
            if ask.donors.is_empty() {
                warn!(round = ask.round, "every state donor left; asking others");
                self.direct = None;
            } else if ask.ready(now) {
                self.offer(now, waiting);
                return;
            }
        }
        if self.direct.is_none() && !waiting.is_empty() {
            self.ask_donors(now);
        }
    }

    fn ask_donors(&mut self, now: Instant) {
        let Some(round) = self.committed else { return };
        let donors: BTreeSet<MemberId> = self
            .live_by_currency()
            .into_iter()
            .take(self.config.state_donors)
            .map(|(id, ..)| id)
            .collect();
        if donors.is_empty() {
            warn!("a member needs state but no live member can provide it");
            return;
        }
        info!(round, ?donors, "members asked to serve their state");
        for &id in &donors {
            if let Some(conn) = self.members.get(&id).and_then(|m| m.conn) {
                self.send(conn, ToWorker::SnapshotRequest { round, direct: true });
                self.events.push_back(Event::SnapshotRequested { provider: id, round });
            }
        }
        self.direct =
            Some(DirectAsk { round, asked: now, donors, manifests: BTreeMap::new(), first: None });
    }

    /// Offers the answered state to every member waiting for it directly: the donors whose
    /// state has the first answer's round and shape (length, chunking), with their digests.
    fn offer(&mut self, now: Instant, waiting: &[MemberId]) {
        let Some(ask) = self.direct.take() else { return };
        let Some((_, lead)) = ask.first else { return };
        let Some((round, shape)) =
            ask.manifests.get(&lead).map(|(r, m)| (*r, (m.len, m.chunk_len)))
        else {
            return;
        };
        let donors: Vec<Donor> = ask
            .manifests
            .into_iter()
            .filter(|(_, (r, m))| *r == round && (m.len, m.chunk_len) == shape)
            .map(|(member, (_, m))| Donor { member, digests: m.digests })
            .collect();
        let (len, chunk_len) = shape;
        for &id in waiting {
            let Some(member) = self.members.get(&id) else { continue };
            let Some(conn) = member.conn else { continue };
            if member.last_applied.is_some_and(|a| a >= round) {
                continue;
            }
            let Some(replay) = self.replay_after(Some(round)) else { continue };
            let offered: Vec<Donor> = donors.iter().filter(|d| d.member != id).cloned().collect();
            if offered.is_empty() {
                continue;
            }
            let count = offered.len();
            info!(member = id, round, donors = count, "state offered");
            self.send(conn, ToWorker::StateOffer { round, len, chunk_len, donors: offered });
            self.state_sent(now, conn, id, round, replay);
            self.events.push_back(Event::StateOffered { member: id, round, len, donors: count });
        }
    }

    /// The live connected members, the most current first, then by id.
    fn live_by_currency(&self) -> Vec<(MemberId, ConnId, Option<Round>)> {
        let mut live: Vec<(MemberId, ConnId, Option<Round>)> = self
            .members
            .iter()
            .filter(|(_, m)| m.phase == Phase::Live)
            .filter_map(|(&id, m)| m.conn.map(|c| (id, c, m.last_applied)))
            .collect();
        // The most current first, then by id: stable, so retries walk down the same list.
        live.sort_by_key(|&(id, _, applied)| (std::cmp::Reverse(applied), id));
        live
    }

    pub(super) fn on_state(&mut self, conn: ConnId, round: Round, bytes: Bytes) {
        let Some(&member) = self.conns.get(&conn) else {
            return self.reject(conn, Some(round), RejectReason::NotJoined);
        };
        if bytes.len() > self.config.max_state {
            return self.reject(conn, Some(round), RejectReason::Oversized);
        }
        let Some(ask) = self.asking.as_ref().filter(|a| a.provider == member) else {
            return self.reject(conn, Some(round), RejectReason::Unsolicited);
        };
        if round < ask.round || self.committed.is_none_or(|c| round > c) {
            return self.reject(conn, Some(round), RejectReason::WrongRound);
        }
        info!(member, round, len = bytes.len(), "snapshot received");
        self.traffic.received(Dest::Member(member), bytes.len());
        self.asking = None;
        self.snapshot = Some((round, bytes));
    }

    /// Serves members that wait for state: directly from donors, or relayed from the cache
    /// or a fresh snapshot.
    pub(super) fn drive_snapshots(&mut self, now: Instant) {
        let direct = self.config.state_donors > 0;
        let mut waiting = Vec::new();
        let mut direct_waiting = Vec::new();
        for (&id, m) in &self.members {
            if m.phase == Phase::Syncing && m.conn.is_some() {
                if m.relayed_state || !direct {
                    waiting.push(id);
                } else {
                    direct_waiting.push(id);
                }
            }
        }
        if direct {
            self.drive_direct(now, &direct_waiting);
        }
        let mut unserved = false;
        for id in waiting {
            if !self.relay_cached(now, id) {
                unserved = true;
            }
        }
        if let Some(ask) = &self.asking {
            let provider_gone = self
                .members
                .get(&ask.provider)
                .is_none_or(|m| m.conn.is_none() || m.phase != Phase::Live);
            if provider_gone {
                let mut tried = ask.tried.clone();
                tried.insert(ask.provider);
                self.asking = None;
                if unserved {
                    self.ask(now, tried);
                }
            }
        } else if unserved {
            self.ask(now, BTreeSet::new());
        }
    }

    pub(super) fn snapshot_timeout(&mut self, now: Instant) {
        if self
            .direct
            .as_ref()
            .is_some_and(|d| d.first.is_none() && now >= d.asked + self.config.snapshot_timeout)
        {
            warn!("no state donor answered in time; asking again");
            self.direct = None;
        }
        let Some(ask) = &self.asking else { return };
        if now < ask.asked + self.config.snapshot_timeout {
            return;
        }
        warn!(provider = ask.provider, round = ask.round, "snapshot request timed out");
        let mut tried = ask.tried.clone();
        tried.insert(ask.provider);
        self.asking = None;
        self.ask(now, tried);
    }

    fn ask(&mut self, now: Instant, mut tried: BTreeSet<MemberId>) {
        let Some(round) = self.committed else { return };
        let live = self.live_by_currency();
        if live.iter().all(|(id, _, _)| tried.contains(id)) {
            // Everyone was tried: start over rather than give up.
            tried.clear();
        }
        let Some(&(provider, conn, applied)) = live.iter().find(|(id, _, _)| !tried.contains(id))
        else {
            warn!("a member needs state but no live member can provide it");
            return;
        };
        info!(provider, round, provider_applied = ?applied, "snapshot requested");
        self.send(conn, ToWorker::SnapshotRequest { round, direct: false });
        self.asking = Some(SnapshotAsk { provider, round, asked: now, tried });
        self.events.push_back(Event::SnapshotRequested { provider, round });
    }

    /// Sends the cached snapshot and the commits after it to `id`, if that makes it current.
    fn relay_cached(&mut self, now: Instant, id: MemberId) -> bool {
        let Some((round, bytes)) = self.snapshot.clone() else { return false };
        let Some(member) = self.members.get(&id) else { return false };
        let Some(conn) = member.conn else { return false };
        if member.last_applied.is_some_and(|a| a >= round) {
            // Not newer than what it has: it needs a fresher one.
            return false;
        }
        let Some(replay) = self.replay_after(Some(round)) else { return false };
        info!(member = id, round, "state relayed");
        self.traffic.sent(Dest::Member(id), bytes.len());
        let len = bytes.len();
        self.transmits.push_back(Transmit::State { to: conn, round, bytes });
        self.state_sent(now, conn, id, round, replay);
        self.events.push_back(Event::StateRelayed { member: id, round, len });
        true
    }

    /// After the state of `round` (or its offer) went to member `id`: the commits since,
    /// and the member is live.
    fn state_sent(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: MemberId,
        round: Round,
        replay: Vec<CommitRecord>,
    ) {
        for record in replay {
            self.send(conn, record.to_message());
        }
        if let Some(m) = self.members.get_mut(&id) {
            m.phase = Phase::Live;
            m.last_applied = Some(round);
        }
        // A member of the open round (it died during it and came back with nothing) is
        // current now: it may still deliver, and the round need not wait out its deadline.
        self.tell_open_round(now, conn, id);
    }
}
