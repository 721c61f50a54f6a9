//! Catch-up by snapshot: asking a live member for its state and relaying it to the members
//! that need it.
//!
//! One request is in flight at a time. The provider is a live connected member not yet
//! tried, the one that applied the latest round as far as the coordinator knows (then the
//! lowest id): a member that is behind (one that rejoined after a restart and still
//! replays commits whose payloads may be gone) would make the newcomer wait for rounds it
//! may never apply. It uploads its state as of right after applying the requested round
//! (or a later one). The latest upload is cached, so members that need state later are served
//! at once as long as the commits after it are still remembered for replay; otherwise a
//! fresh snapshot is requested. A member that gets state becomes live: it replays the
//! commits after the snapshot and joins rounds from the next boundary, or, when it belongs
//! to the open round (it died during it), is told the round is open and may deliver to it.

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::Bytes;
use tracing::{info, warn};

use super::{Coordinator, Event, Phase, Transmit};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::ToWorker;
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

impl Coordinator {
    pub(super) fn on_state_wanted(&mut self, member: MemberId, last_applied: Option<Round>) {
        if self.committed.is_none() {
            // Nothing committed yet: every worker's state is the initial one.
            return;
        }
        if let Some(m) = self.members.get_mut(&member) {
            info!(member, ?last_applied, "member needs state");
            m.phase = Phase::Syncing;
            m.last_applied = last_applied;
        }
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

    /// Serves members that wait for state from the cache, or asks for a fresh snapshot.
    pub(super) fn drive_snapshots(&mut self, now: Instant) {
        let waiting: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, m)| m.phase == Phase::Syncing && m.conn.is_some())
            .map(|(&id, _)| id)
            .collect();
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
        let mut live: Vec<(MemberId, ConnId, Option<Round>)> = self
            .members
            .iter()
            .filter(|(_, m)| m.phase == Phase::Live)
            .filter_map(|(&id, m)| m.conn.map(|c| (id, c, m.last_applied)))
            .collect();
        // The most current first, then by id: stable, so retries walk down the same list.
        live.sort_by_key(|&(id, _, applied)| (std::cmp::Reverse(applied), id));
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
        self.send(conn, ToWorker::SnapshotRequest { round });
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
        self.events.push_back(Event::StateRelayed { member: id, round, len });
        true
    }
}
