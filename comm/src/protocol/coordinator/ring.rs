//! Ring rounds at the coordinator: members report the digest of the aggregate they hold;
//! when all agree the round commits that aggregate. A member that drops out before it
//! finished, a member that reports a failure, disagreeing digests or the deadline make the
//! round fall back to Relay: every member is told to upload its own payload, the
//! coordinator forwards them as usual and the round commits per member, without stalling:
//! when every connected member uploaded, or one round deadline after the fallback.

use std::time::Instant;

use tracing::{debug, warn};

use super::rounds::fallback_message;
use super::{Coordinator, Event};
use crate::ids::{MemberId, Round};
use crate::protocol::types::{ConnId, Digest, RejectReason, Topology};

impl Coordinator {
    pub(super) fn on_ring_done(
        &mut self,
        now: Instant,
        conn: ConnId,
        member: MemberId,
        round: Round,
        digest: Digest,
    ) {
        if let Some(reason) = self.misplaced(member, round) {
            return self.reject(conn, Some(round), reason);
        }
        let Some(open) = self.open.as_mut() else { return };
        if open.fallback {
            // Too late: the round commits per member now.
            return self.reject(conn, Some(round), RejectReason::Late);
        }
        if open.ring.contains_key(&member) {
            return self.reject(conn, Some(round), RejectReason::Duplicate);
        }
        debug!(member, round, "ring finished at member");
        open.ring.insert(member, (digest, now));
        if open.ring.len() < open.members.len() {
            return;
        }
        let agreed = open.ring.values().all(|&(d, _)| d == digest);
        if agreed {
            self.close(now);
        } else {
            warn!(round, "ring members hold different aggregates");
            self.fall_back(now, "members disagree on the aggregate");
        }
    }

    pub(super) fn on_ring_failed(
        &mut self,
        now: Instant,
        conn: ConnId,
        member: MemberId,
        round: Round,
        culprit: Option<MemberId>,
    ) {
        if self.config.topology != Topology::Ring {
            return self.reject(conn, Some(round), RejectReason::WrongTopology);
        }
        let Some(open) = self.open.as_ref().filter(|o| o.round == round) else {
            return self.reject(conn, Some(round), RejectReason::WrongRound);
        };
        if open.members.binary_search(&member).is_err() {
            return self.reject(conn, Some(round), RejectReason::NotMember);
        }
        if open.fallback {
            return;
        }
        warn!(round, member, ?culprit, "a member cannot finish the ring");
        self.fall_back(now, "a member cannot finish the ring");
    }

    /// A member of the open ring round lost its connection: if it had not finished, the
    /// ring cannot finish either.
    pub(super) fn ring_member_lost(&mut self, now: Instant, member: MemberId) {
        if self.config.topology != Topology::Ring {
            return;
        }
        let stuck = self.open.as_ref().is_some_and(|o| {
            !o.fallback && o.members.binary_search(&member).is_ok() && !o.ring.contains_key(&member)
        });
        if stuck {
            self.fall_back(now, "a member left mid-ring");
        }
    }

    /// Abandons the open round's ring: members upload their own payloads (Relay) and the
    /// round closes when every connected member did, or after a fresh round deadline (the
    /// uploads take as long as a Relay round's).
    pub(super) fn fall_back(&mut self, now: Instant, why: &'static str) {
        let fallback = self.config.deadline.next(&self.deadline_stats);
        let Some(open) = self.open.as_mut().filter(|o| !o.fallback) else { return };
        open.fallback = true;
        open.deadline = now + fallback;
        let round = open.round;
        warn!(round, why, "ring falls back to relay");
        let msg = fallback_message(open, now);
        let targets: Vec<ConnId> = open
            .members
            .iter()
            .filter_map(|id| self.members.get(id).and_then(|m| m.conn))
            .collect();
        for conn in targets {
            self.send(conn, msg.clone());
        }
        self.events.push_back(Event::RingFellBack { round, why });
    }
}
