//! The round lifecycle: deliveries, closing and committing, opening the next round.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::{CommitRecord, Coordinator, Event, OpenRound, Phase, Transmit};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::ToWorker;
use crate::protocol::types::{
    next_after, ConnId, Delivery, Dest, Digest, RejectReason, RoundStats,
};

impl Coordinator {
    pub(super) fn on_delivery(
        &mut self,
        now: Instant,
        conn: ConnId,
        member: MemberId,
        round: Round,
        digest: Digest,
        bytes: Option<Bytes>,
    ) {
        if let Some(reason) = self.misplaced(member, round) {
            return self.reject(conn, Some(round), reason);
        }
        let Some(open) = self.open.as_mut() else { return };
        if let Some((first, _)) = open.delivered.get(&member) {
            // The first delivery wins; a different second one is logged louder.
            if *first != digest {
                warn!(member, round, "a second, different payload for the round is ignored");
            }
            return self.reject(conn, Some(round), RejectReason::Duplicate);
        }
        open.delivered.insert(member, (digest, now));
        let everyone = if open.fallback {
            // A ring's fallback waits for the members still connected, not for the dead.
            let members = &self.members;
            open.members.iter().all(|m| {
                open.delivered.contains_key(m) || members.get(m).is_none_or(|x| x.conn.is_none())
            })
        } else {
            open.delivered.len() == open.members.len()
        };
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

    pub(super) fn close(&mut self, now: Instant) {
        let Some(open) = self.open.take() else { return };
        let round = open.round;
        let aggregate = ring_agreement(&open);
        let (delivered, times): (Vec<Delivery>, Vec<Instant>) = match aggregate {
            Some(digest) => open
                .members
                .iter()
                .map(|&member| (Delivery { member, digest }, open.ring[&member].1))
                .unzip(),
            None => open
                .delivered
                .iter()
                .map(|(&member, &(digest, at))| (Delivery { member, digest }, at))
                .unzip(),
        };
        let stragglers: Vec<MemberId> = open
            .members
            .iter()
            .copied()
            .filter(|m| delivered.binary_search_by_key(m, |d| d.member).is_err())
            .collect();
        let last_delivery = times.iter().map(|&at| at.saturating_duration_since(open.opened)).max();
        if let Some(d) = last_delivery {
            self.deadline_stats.observe(d);
        }
        let record = CommitRecord { round, delivered: delivered.clone(), stragglers, aggregate };
        self.commits.push_back(record.clone());
        while self.commits.len() as u64 > self.config.keep_rounds {
            self.commits.pop_front();
        }
        self.committed = Some(round);
        if let Some(payloads) = self.payloads.get_mut(&round) {
            payloads.retain(|m, _| aggregate.is_none() && open.delivered.contains_key(m));
        }
        let keep = self.config.keep_rounds;
        self.payloads.retain(|&r, _| r.saturating_add(keep) > round);
        self.refetch.retain(|&(r, _), _| r.saturating_add(keep) > round);
        self.unheld.retain(|&(r, _)| r.saturating_add(keep) > round);
        info!(
            round,
            ring = aggregate.is_some(),
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
        self.events.push_back(Event::RoundCommitted { round, delivered, aggregate, stats });
        // A live member known to have applied the previous round applies this one from the
        // commit it is sent now: it stays known as current, which makes it the preferred
        // snapshot provider. One known to be behind (it rejoined to replay) stays at the
        // round it reported until it reports again.
        let previous = round.checked_sub(1);
        for m in self.members.values_mut() {
            if m.phase == Phase::Live && m.conn.is_some() && m.last_applied == previous {
                m.last_applied = Some(round);
            }
        }
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

    /// Tells member `id`, back on `conn`, about the open round if it belongs to it: it may
    /// still deliver. With the fallback too, which it may have missed (the ring of this
    /// round is over).
    pub(super) fn tell_open_round(&mut self, now: Instant, conn: ConnId, id: MemberId) {
        let Some(open) = self.open.as_ref().filter(|o| o.members.binary_search(&id).is_ok()) else {
            return;
        };
        let msg = open_message(open, now);
        let fallback = open.fallback.then(|| fallback_message(open, now));
        let round = open.round;
        self.send(conn, msg);
        if let Some(msg) = fallback {
            self.send(conn, msg);
        }
        // The payloads others delivered while this member was away were forwarded to
        // nobody on its behalf: send them now, or it would wait for a fetch grace before
        // asking, and could miss the round (a copy it already holds is refused as a
        // duplicate, harmlessly).
        let held: Vec<(MemberId, Bytes)> = self
            .payloads
            .get(&round)
            .map(|by| {
                by.iter()
                    .filter(|(&author, _)| author != id)
                    .map(|(&author, (_, bytes))| (author, bytes.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (author, bytes) in held {
            self.traffic.sent(Dest::Member(id), bytes.len());
            self.transmits.push_back(Transmit::Payload {
                to: conn,
                round,
                from_member: author,
                bytes,
            });
        }
    }

    pub(super) fn maybe_open(&mut self, now: Instant) {
        if self.open.is_some() {
            return;
        }
        // A rejoin gate that ran out is over, whoever is back: left in place it would name
        // a moment already past as the next timeout, over and over.
        if self.gate.as_ref().is_some_and(|g| now >= g.until) {
            self.gate = None;
        }
        let live: Vec<MemberId> = self
            .members
            .iter()
            .filter(|(_, m)| m.conn.is_some() && m.phase == Phase::Live)
            .map(|(&id, _)| id)
            .collect();
        if live.is_empty() || live.len() < self.config.quorum(self.committed.is_some()) {
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
            ring: BTreeMap::new(),
            fallback: false,
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

/// The aggregate digest every member of a ring round reported, if they all agree (and the
/// round did not fall back).
fn ring_agreement(open: &OpenRound) -> Option<Digest> {
    if open.fallback || open.ring.len() != open.members.len() {
        return None;
    }
    let first = open.ring.values().next().map(|&(d, _)| d)?;
    open.ring.values().all(|&(d, _)| d == first).then_some(first)
}

pub(super) fn fallback_message(open: &OpenRound, now: Instant) -> ToWorker {
    let left = open.deadline.saturating_duration_since(now);
    ToWorker::Fallback {
        round: open.round,
        deadline_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
    }
}

pub(super) fn open_message(open: &OpenRound, now: Instant) -> ToWorker {
    let left = open.deadline.saturating_duration_since(now);
    ToWorker::RoundOpen {
        round: open.round,
        members: open.members.clone(),
        deadline_ms: u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
    }
}
