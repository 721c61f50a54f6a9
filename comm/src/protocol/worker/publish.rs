//! Publishing: a round opening with this worker in it, sending its payload (once per
//! opening), and uploading it again when a restarted Relay coordinator asks.

use std::time::{Duration, Instant};

use tracing::debug;

use super::{Event, OpenRound, Transmit, WorkerProto};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::ToCoordinator;
use crate::protocol::types::{next_after, strictly_ascending, Dest, RejectReason, Topology};

impl WorkerProto {
    pub(super) fn on_round_open(
        &mut self,
        now: Instant,
        round: Round,
        members: Vec<MemberId>,
        deadline: Duration,
    ) {
        let from = Dest::Coordinator;
        if !strictly_ascending(members.iter().copied()) {
            return self.reject(from, Some(round), RejectReason::Malformed);
        }
        if round < next_after(self.applied) || self.commits.contains_key(&round) {
            return self.reject(from, Some(round), RejectReason::Late);
        }
        if self.member.is_none_or(|me| members.binary_search(&me).is_err()) {
            return self.reject(from, Some(round), RejectReason::NotMember);
        }
        if self.open.as_ref().is_some_and(|o| o.round == round && o.members == members) {
            // A copy of the opening we act on. A reopening after a reconnect finds `open`
            // cleared, and sends the payload again.
            return self.reject(from, Some(round), RejectReason::Duplicate);
        }
        debug!(round, members = members.len(), "round opened");
        self.horizon = self.horizon.max(Some(round));
        if let Some(held) = self.store.get_mut(&round) {
            // Copies from outside the round can never be committed.
            held.retain(|m, _| members.binary_search(m).is_ok());
        }
        self.opened.insert(round, (members.clone(), now));
        if self.ring.as_ref().is_some_and(|r| r.round != round) {
            self.ring = None;
        }
        self.open =
            Some(OpenRound { round, members: members.clone(), sent: false, fallback: false });
        self.events.push_back(Event::RoundOpened { round, members, deadline });
        self.send_published();
    }

    /// Sends this worker's payload for the open round, once per opening.
    pub(super) fn send_published(&mut self) {
        let (Some(me), Some(topology)) = (self.member, self.topology) else { return };
        let Some(open) = self.open.as_mut().filter(|o| !o.sent) else { return };
        let Some(held) = self.own.get(&open.round) else { return };
        open.sent = true;
        let round = open.round;
        let bytes = held.bytes.clone();
        let upload = match topology {
            Topology::Ring if !open.fallback => {
                let members = open.members.clone();
                if self.ring.as_ref().is_some_and(|r| r.round == round && r.members == members) {
                    // A reopening (after a reconnect or a coordinator restart) of a ring
                    // already under way here: its outcome may never have arrived.
                    return self.repeat_ring_outcome(round);
                }
                return self.start_ring(round, members);
            }
            Topology::Ring | Topology::Relay => Topology::Relay,
            Topology::AllGather => Topology::AllGather,
        };
        let traffic = self.traffic.entry(round).or_default();
        match upload {
            Topology::Relay | Topology::Ring => {
                traffic.sent(Dest::Coordinator, bytes.len());
                self.transmits.push_back(Transmit::Payload {
                    to: Dest::Coordinator,
                    round,
                    from_member: me,
                    bytes,
                });
            }
            Topology::AllGather => {
                for &other in open.members.iter().filter(|&&m| m != me) {
                    traffic.sent(Dest::Member(other), bytes.len());
                    self.transmits.push_back(Transmit::Payload {
                        to: Dest::Member(other),
                        round,
                        from_member: me,
                        bytes: bytes.clone(),
                    });
                }
                self.transmits.push_back(Transmit::Control {
                    msg: ToCoordinator::Delivered { round, digest: held.digest },
                });
            }
        }
        debug!(round, "payload sent");
    }

    /// Relay: uploads this worker's payload of `round` again, or says it no longer holds it
    /// (a process that restarted since it published). Silence would leave the members
    /// fetching it waiting out their fetch timeouts before they ask for state, and by then
    /// the members that could provide one may have finished and left.
    pub(super) fn reupload(&mut self, round: Round) {
        let Some(me) = self.member else {
            return self.reject(Dest::Coordinator, Some(round), RejectReason::Unsolicited);
        };
        let Some(held) = self.own.get(&round) else {
            debug!(round, "asked to upload a payload again that is no longer held");
            self.transmits.push_back(Transmit::Control { msg: ToCoordinator::NotHeld { round } });
            return;
        };
        let bytes = held.bytes.clone();
        debug!(round, "payload uploaded again");
        self.traffic.entry(round).or_default().sent(Dest::Coordinator, bytes.len());
        self.transmits.push_back(Transmit::Payload {
            to: Dest::Coordinator,
            round,
            from_member: me,
            bytes,
        });
    }
}
