//! Accepting payload frames: pushes before a commit, fetched copies after it.

use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use super::events::{Event, PAYLOAD_HEAD_LEN};
use super::{Held, WorkerProto};
use crate::ids::{MemberId, Round};
use crate::protocol::types::{next_after, Dest, RejectReason, Topology};

impl WorkerProto {
    /// A payload frame arrived on the link `from`: `sender` (the frame header's) is its
    /// author.
    ///
    /// Before its round commits a payload must come from where the topology pushes it (the
    /// coordinator in Relay, its author in AllGather), for a round no further than one past
    /// the newest known open round, by a member of that round; the first copy wins. After
    /// the commit it must be named by the commit with the same digest (a fetch reply).
    pub fn handle_payload(
        &mut self,
        now: Instant,
        from: Dest,
        round: Round,
        sender: MemberId,
        bytes: Bytes,
    ) {
        if let Err(reason) = self.check_payload(round, &bytes) {
            return self.reject(from, Some(round), reason);
        }
        let held = Held::new(bytes);
        let len = held.bytes.len();
        if let Some(digest) = self.commits.get(&round).and_then(|c| c.aggregate) {
            // A ring commit: only its aggregate (a fetch reply) is wanted.
            let first =
                self.commits.get(&round).and_then(|c| c.delivered.first()).map(|d| d.member);
            if first != Some(sender) {
                return self.reject(from, Some(round), RejectReason::Late);
            }
            if held.digest != digest {
                return self.reject(from, Some(round), RejectReason::DigestMismatch);
            }
            if self.aggregates.get(&round).is_some_and(|h| h.digest == digest) {
                return self.reject(from, Some(round), RejectReason::Duplicate);
            }
            debug!(round, len, ?from, "aggregate fetched");
            self.traffic.entry(round).or_default().received(from, len);
            self.aggregates.insert(round, held);
            self.fetches.remove(&(round, sender));
            return self.progress(now);
        }
        if let Some(commit) = self.commits.get(&round) {
            let committed = commit.delivered.iter().find(|d| d.member == sender);
            match committed {
                None => return self.reject(from, Some(round), RejectReason::Late),
                Some(d) if d.digest != held.digest => {
                    return self.reject(from, Some(round), RejectReason::DigestMismatch)
                }
                Some(_) => {}
            }
            if self.matching(round, sender, held.digest).is_some() {
                return self.reject(from, Some(round), RejectReason::Duplicate);
            }
        } else {
            if self.member == Some(sender) {
                // Nobody publishes this worker's payload but itself.
                return self.reject(from, Some(round), RejectReason::SenderMismatch);
            }
            let pushed_by_author = match self.topology {
                Some(Topology::Relay | Topology::Ring) => from == Dest::Coordinator,
                Some(Topology::AllGather) => from == Dest::Member(sender),
                None => false,
            };
            if !pushed_by_author {
                return self.reject(from, Some(round), RejectReason::SenderMismatch);
            }
            let in_round = match self.opened.get(&round) {
                Some((members, _)) => members.binary_search(&sender).is_ok(),
                None => self.members.contains_key(&sender),
            };
            if !in_round {
                return self.reject(from, Some(round), RejectReason::NotMember);
            }
            if self.store.get(&round).is_some_and(|s| s.contains_key(&sender)) {
                return self.reject(from, Some(round), RejectReason::Duplicate);
            }
        }
        debug!(round, sender, len, ?from, "payload");
        self.traffic.entry(round).or_default().received(from, len);
        if !self.commits.contains_key(&round) {
            let head = held.bytes.slice(..len.min(PAYLOAD_HEAD_LEN));
            self.events.push_back(Event::PayloadArrived { round, member: sender, head });
        }
        self.store.entry(round).or_default().insert(sender, held);
        self.fetches.remove(&(round, sender));
        self.progress(now);
    }

    /// The checks that need no commit.
    fn check_payload(&self, round: Round, bytes: &Bytes) -> Result<(), RejectReason> {
        if self.member.is_none() {
            return Err(RejectReason::NotJoined);
        }
        if bytes.len() > self.config.max_payload {
            return Err(RejectReason::Oversized);
        }
        if round < next_after(self.applied) || self.awaiting_state.is_some() {
            return Err(RejectReason::Late);
        }
        let ahead = self.horizon.map_or(0, |h| h.saturating_add(1));
        if round > ahead && !self.commits.contains_key(&round) {
            return Err(RejectReason::WrongRound);
        }
        Ok(())
    }
}
