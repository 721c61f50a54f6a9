//! Membership: admission by name, catch-up by replay, member lists, disconnects.
//!
//! A name keeps its member id for the whole run. A join is refused when the name is not
//! usable, the worker trains something else than the run (its signature differs), the run
//! is full, or the worker claims a round this coordinator never committed.
//! A second connection under the same name supersedes the first (a restarted worker whose
//! old connection has not timed out yet).

use std::time::Instant;

use tracing::{info, warn};

use super::{valid_name, CommitRecord, Coordinator, Event, Member, Phase};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::{RefuseReason, ToWorker};
use crate::protocol::types::{next_after, ConnId, MemberInfo, PeerInfo, MAX_PEER_INFO_LEN};
use crate::protocol::RunSignature;

/// A `Join` message's fields.
pub(super) struct JoinRequest {
    pub name: String,
    pub last_applied: Option<Round>,
    pub peer: PeerInfo,
    pub signature: RunSignature,
    pub follows: bool,
}

impl Coordinator {
    pub(super) fn on_join(&mut self, now: Instant, conn: ConnId, join: JoinRequest) {
        let JoinRequest { name, last_applied, peer, signature, follows } = join;
        if !valid_name(&name) || peer.0.len() > MAX_PEER_INFO_LEN || !signature.within_limits() {
            return self.refuse(conn, RefuseReason::InvalidJoin);
        }
        // Checked before anything else about the worker: one that trains another model or
        // setting must not take part, whatever its history.
        if follows && self.config.settings.is_none() {
            warn!(%name, "a worker asked for the run's settings, and this coordinator has none");
            return self.refuse(conn, RefuseReason::NoSettings);
        }
        if let Some(run) = self.signature.as_ref().filter(|_| !signature.is_empty()) {
            let differences = signature.join_differences(run, follows);
            if !differences.is_empty() {
                warn!(%name, ?differences, "a worker whose model or settings differ was refused");
                return self.refuse(conn, RefuseReason::SignatureMismatch { differences });
            }
        }
        if let Some(applied) = last_applied {
            if self.committed.is_none_or(|c| applied > c) {
                return self.refuse(conn, RefuseReason::AheadOfCoordinator);
            }
        }
        // A connection that joined under another name gives that member up.
        if let Some(&previous) = self.conns.get(&conn) {
            if self.members.get(&previous).is_some_and(|m| m.name != name) {
                self.drop_conn(now, conn, false);
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
                        relayed_state: false,
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
        member.relayed_state = false;
        if let Some(old) = superseded {
            self.conns.remove(&old);
            self.refuse(old, RefuseReason::Superseded);
            // The old connection's process is gone (or about to be): it was lost, and with
            // it any part it had in the open round's ring.
            self.events.push_back(Event::Left { member: id, graceful: false });
            self.ring_member_lost(now, id);
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
            expected: u32::try_from(self.config.min_members).unwrap_or(u32::MAX),
            settings: self.config.settings.clone(),
        };
        self.send(conn, welcome);
        for record in replay.unwrap_or_default() {
            self.send(conn, record.to_message());
        }
        // Back during a round it belongs to: it may still deliver.
        if !need_state {
            self.tell_open_round(now, conn, id);
        }
        self.events.push_back(Event::Joined { member: id, name, conn, need_state });
        // A follower's signature holds only what it reads: not the run's.
        if self.signature.is_none() && !signature.is_empty() && !follows {
            info!(member = id, facts = signature.len(), "the run's signature is this member's");
            self.signature = Some(signature);
            self.events.push_back(Event::SignatureAdopted { member: id });
        }
        self.broadcast_members(Some(id));
    }

    /// The commits a worker that applied `last_applied` must replay to be current, or `None`
    /// when it cannot catch up by replay and needs a snapshot. A fresh worker (nothing
    /// applied) joining after a commit always needs a snapshot: the protocol does not assume
    /// that initial states agree. Whether the replayed payloads can still be had is not
    /// checked here: usually the worker holds them already (it missed a commit, not the
    /// payloads), and when no holder has one the worker asks for a snapshot itself.
    pub(super) fn replay_after(&self, last_applied: Option<Round>) -> Option<Vec<CommitRecord>> {
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

    pub(super) fn member_infos(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .filter(|(_, m)| m.conn.is_some())
            .map(|(&id, m)| MemberInfo { id, name: m.name.clone(), peer: m.peer.clone() })
            .collect()
    }

    /// Tells every connected member (except `skip`, which just got a welcome) who is there.
    pub(super) fn broadcast_members(&mut self, skip: Option<MemberId>) {
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

    pub(super) fn drop_conn(&mut self, now: Instant, conn: ConnId, graceful: bool) {
        let Some(id) = self.conns.remove(&conn) else { return };
        if let Some(member) = self.members.get_mut(&id) {
            member.conn = None;
        }
        info!(member = id, "member disconnected");
        self.ring_member_lost(now, id);
        self.events.push_back(Event::Left { member: id, graceful });
        self.broadcast_members(None);
    }
}
