//! Ring rounds at a worker: splitting its payload, passing segments to the next member,
//! combining what the previous member sends, reporting the aggregate's digest, and falling
//! back to a Relay upload when the coordinator says so.
//!
//! Segments are accepted only from the ring predecessor, for the ring's round, at a slot not
//! seen before; they may arrive before this worker started its ring (its predecessor was
//! faster) and are then buffered (at most a ring's worth for the next two rounds). A segment
//! the reducer refuses, or one over the size limit from the predecessor, is rejected naming
//! it, and this worker reports `RingFailed`, so the round falls back instead of waiting for
//! the deadline.

use std::collections::BTreeMap;

use bytes::Bytes;
use tracing::{debug, warn};

use super::{Held, Transmit, WorkerProto};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::ToCoordinator;
use crate::protocol::ring::{is_reduce, sent_segment, slots};
use crate::protocol::types::{next_after, Dest, RejectReason, Topology};

/// This worker's part in the ring of one round.
#[derive(Debug)]
pub(super) struct RingRound {
    pub(super) round: Round,
    pub(super) members: Vec<MemberId>,
    index: usize,
    /// The current segments: own, partial sums, then finished copies.
    segments: Vec<Bytes>,
    /// The next slot expected from the predecessor.
    next_slot: u32,
    /// Segments from the predecessor ahead of `next_slot`.
    ahead: BTreeMap<u32, Bytes>,
    /// The ring finished (aggregate held) or failed: nothing more is sent or accepted.
    over: bool,
}

impl RingRound {
    fn n(&self) -> usize {
        self.members.len()
    }

    fn prev(&self) -> MemberId {
        self.members[(self.index + self.n() - 1) % self.n()]
    }

    fn next(&self) -> MemberId {
        self.members[(self.index + 1) % self.n()]
    }
}

/// Segments that came before this worker knew their round: by round, slot → (sender, bytes).
pub(super) type Early = BTreeMap<Round, BTreeMap<u32, (MemberId, Bytes)>>;

impl WorkerProto {
    /// A ring segment from member `from` (the driver knows who is on the link).
    pub fn handle_segment(&mut self, from: MemberId, round: Round, slot: u32, bytes: Bytes) {
        let dest = Dest::Member(from);
        if self.member.is_none() {
            return self.reject(dest, Some(round), RejectReason::NotJoined);
        }
        if self.topology != Some(Topology::Ring) {
            return self.reject(dest, Some(round), RejectReason::WrongTopology);
        }
        if round < next_after(self.applied) || self.commits.contains_key(&round) {
            return self.reject(dest, Some(round), RejectReason::Late);
        }
        if let Some(ring) = self.ring.as_ref().filter(|r| r.round == round) {
            let reason = if ring.members.binary_search(&from).is_err() {
                Some(RejectReason::NotMember)
            } else if from != ring.prev() {
                Some(RejectReason::SenderMismatch)
            } else if slot >= slots(ring.n()) {
                Some(RejectReason::Malformed)
            } else if ring.over {
                Some(RejectReason::Late)
            } else if slot < ring.next_slot || ring.ahead.contains_key(&slot) {
                Some(RejectReason::Duplicate)
            } else if bytes.len() > self.config.max_payload {
                Some(RejectReason::Oversized)
            } else {
                None
            };
            if let Some(reason) = reason {
                self.reject(dest, Some(round), reason);
                if reason == RejectReason::Oversized {
                    self.ring_failed(Some(from));
                }
                return;
            }
            self.traffic.entry(round).or_default().received(dest, bytes.len());
            if let Some(ring) = self.ring.as_mut() {
                ring.ahead.insert(slot, bytes);
            }
            return self.advance_ring();
        }
        // Not started here yet: buffer a bounded amount for the open round or the next one.
        let ahead = self.horizon.map_or(0, |h| h.saturating_add(1));
        let bound = slots(self.members.len().max(2));
        let buffered = self.early.get(&round).map_or(0, |r| r.len());
        if round > ahead || slot >= bound || buffered >= bound as usize {
            return self.reject(dest, Some(round), RejectReason::WrongRound);
        }
        if bytes.len() > self.config.max_payload {
            return self.reject(dest, Some(round), RejectReason::Oversized);
        }
        let early = self.early.entry(round).or_default();
        if early.contains_key(&slot) {
            return self.reject(dest, Some(round), RejectReason::Duplicate);
        }
        self.traffic.entry(round).or_default().received(dest, bytes.len());
        early.insert(slot, (from, bytes));
    }

    /// Starts this worker's ring for the open round: split, send slot 0, take in what
    /// came early.
    pub(super) fn start_ring(&mut self, round: Round, members: Vec<MemberId>) {
        let Some(me) = self.member else { return };
        let Ok(index) = members.binary_search(&me) else { return };
        let Some(own) = self.own.get(&round).map(|h| h.bytes.clone()) else { return };
        let n = members.len();
        let segments = match self.reducer.as_ref().map(|r| r.split(&own, n)) {
            Some(Ok(segments)) if segments.len() == n => segments,
            Some(Ok(_)) | Some(Err(_)) | None => {
                warn!(round, "cannot split this worker's payload for the ring");
                self.ring = None;
                return self.report_ring_failed(round, None);
            }
        };
        debug!(round, n, index, "ring started");
        let mut ring = RingRound {
            round,
            members,
            index,
            segments,
            next_slot: 0,
            ahead: BTreeMap::new(),
            over: false,
        };
        let mut rejected = Vec::new();
        for (slot, (from, bytes)) in self.early.remove(&round).unwrap_or_default() {
            if from == ring.prev() && slot < slots(n) {
                ring.ahead.insert(slot, bytes);
            } else {
                rejected.push(from);
            }
        }
        self.early.retain(|&r, _| r > round);
        for from in rejected {
            self.reject(Dest::Member(from), Some(round), RejectReason::SenderMismatch);
        }
        self.ring = Some(ring);
        if n == 1 {
            return self.finish_ring();
        }
        self.send_segment(0);
        self.advance_ring();
    }

    /// Consumes the predecessor's segments in slot order, sending each result on.
    fn advance_ring(&mut self) {
        loop {
            let Some(ring) = self.ring.as_mut().filter(|r| !r.over) else { return };
            let slot = ring.next_slot;
            let Some(bytes) = ring.ahead.remove(&slot) else { return };
            let n = ring.n();
            let prev = ring.prev();
            let k = sent_segment((ring.index + n - 1) % n, slot, n);
            let Some(reducer) = self.reducer.as_ref() else { return };
            let result = if is_reduce(slot, n) {
                reducer.combine(&bytes, &ring.segments[k])
            } else {
                reducer.check(&bytes, &ring.segments[k]).map(|()| bytes)
            };
            match result {
                Ok(segment) => ring.segments[k] = segment,
                Err(e) => {
                    warn!(round = ring.round, from = prev, slot, error = %e, "bad ring segment");
                    let round = ring.round;
                    self.reject(Dest::Member(prev), Some(round), RejectReason::BadSegment);
                    return self.ring_failed(Some(prev));
                }
            }
            ring.next_slot += 1;
            let next = ring.next_slot;
            if next == slots(n) {
                return self.finish_ring();
            }
            self.send_segment(next);
        }
    }

    fn send_segment(&mut self, slot: u32) {
        let Some(ring) = self.ring.as_ref() else { return };
        let k = sent_segment(ring.index, slot, ring.n());
        let bytes = ring.segments[k].clone();
        let (to, round) = (ring.next(), ring.round);
        self.traffic.entry(round).or_default().sent(Dest::Member(to), bytes.len());
        self.transmits.push_back(Transmit::Segment { to, round, slot, bytes });
    }

    fn finish_ring(&mut self) {
        let Some(ring) = self.ring.as_mut() else { return };
        ring.over = true;
        let round = ring.round;
        let joined = self.reducer.as_ref().map(|r| r.join(&ring.segments));
        match joined {
            Some(Ok(aggregate)) => {
                let held = Held::new(aggregate);
                debug!(round, len = held.bytes.len(), "ring finished");
                let digest = held.digest;
                self.aggregates.insert(round, held);
                self.transmits.push_back(Transmit::Control {
                    msg: ToCoordinator::Delivered { round, digest },
                });
            }
            Some(Err(e)) => {
                warn!(round, error = %e, "cannot join the ring's segments");
                self.report_ring_failed(round, None);
            }
            None => self.report_ring_failed(round, None),
        }
    }

    /// Reports the outcome of this worker's ring of `round` again: the aggregate's digest,
    /// or the failure (nothing while it still runs).
    pub(super) fn repeat_ring_outcome(&mut self, round: Round) {
        let msg = match (self.aggregates.get(&round), self.ring.as_ref()) {
            (Some(held), _) => ToCoordinator::Delivered { round, digest: held.digest },
            (None, Some(ring)) if ring.over => ToCoordinator::RingFailed { round, culprit: None },
            _ => return,
        };
        debug!(round, "ring outcome reported again");
        self.transmits.push_back(Transmit::Control { msg });
    }

    /// The open ring cannot finish here.
    fn ring_failed(&mut self, culprit: Option<MemberId>) {
        let Some(ring) = self.ring.as_mut().filter(|r| !r.over) else { return };
        ring.over = true;
        let round = ring.round;
        self.report_ring_failed(round, culprit);
    }

    fn report_ring_failed(&mut self, round: Round, culprit: Option<MemberId>) {
        self.transmits
            .push_back(Transmit::Control { msg: ToCoordinator::RingFailed { round, culprit } });
    }

    /// The coordinator abandoned the ring of `round`: upload the own payload instead.
    pub(super) fn on_fallback(&mut self, round: Round) {
        if round < next_after(self.applied) || self.commits.contains_key(&round) {
            return self.reject(Dest::Coordinator, Some(round), RejectReason::Late);
        }
        if let Some(ring) = self.ring.as_mut().filter(|r| r.round == round) {
            ring.over = true;
        }
        self.early.remove(&round);
        let Some(open) = self.open.as_mut().filter(|o| o.round == round) else {
            return self.reject(Dest::Coordinator, Some(round), RejectReason::WrongRound);
        };
        if open.fallback {
            return self.reject(Dest::Coordinator, Some(round), RejectReason::Duplicate);
        }
        debug!(round, "ring fell back, uploading the payload");
        open.fallback = true;
        open.sent = false;
        self.send_published();
    }
}
