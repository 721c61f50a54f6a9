//! Relay: serving fetches of committed payloads from the cache, and refilling the cache from
//! the payloads' authors after a restart.
//!
//! Payloads are forwarded while a round is open and kept for `keep_rounds` committed rounds.
//! A restarted coordinator holds none: when a member fetches one, the coordinator asks its
//! author (who keeps its own payloads) to upload it again and answers every waiting fetch
//! when it arrives. This matters when the coordinator dies between saving a commit and
//! forwarding its last payloads: without it every worker would need a snapshot and no
//! member could provide one.
//!
//! An author that restarted too no longer holds it and answers `NotHeld`: every waiting
//! fetch is then answered `Unavailable`, and so is every later fetch of it, at once. The
//! fetching member asks for state right away, while the members that could provide one are
//! still there, rather than after its fetch timeouts (a minute by default), when they may
//! have finished the run and left.

use bytes::Bytes;
use tracing::{debug, info};

use super::{Coordinator, Transmit};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::ToWorker;
use crate::protocol::types::{ConnId, Dest, Digest, RejectReason, Topology};

impl Coordinator {
    pub(super) fn on_fetch(
        &mut self,
        conn: ConnId,
        round: Round,
        author: MemberId,
        digest: Digest,
    ) {
        if self.config.topology == Topology::AllGather {
            return self.reject(conn, Some(round), RejectReason::WrongTopology);
        }
        if self.commits.iter().any(|r| r.round == round && r.aggregate.is_some()) {
            // Ring aggregates are held by the ring's members, never here.
            return self.send(conn, ToWorker::Unavailable { round, member: author });
        }
        if self.unheld.contains(&(round, author)) {
            return self.send(conn, ToWorker::Unavailable { round, member: author });
        }
        let cached = self
            .payloads
            .get(&round)
            .and_then(|p| p.get(&author))
            .filter(|(d, _)| self.committed_digest(round, author) == Some(*d) && *d == digest)
            .map(|(_, b)| b.clone());
        if let Some(bytes) = cached {
            return self.serve(conn, round, author, bytes);
        }
        let author_conn = self.members.get(&author).and_then(|m| m.conn);
        match author_conn {
            Some(to) if self.committed_digest(round, author) == Some(digest) => {
                let waiting = self.refetch.entry((round, author)).or_default();
                if !waiting.contains(&conn) {
                    waiting.push(conn);
                }
                // Asked again on every fetch: a retried fetch also retries the request.
                debug!(round, author, "asking the author to upload again");
                self.send(to, ToWorker::Reupload { round });
            }
            _ => self.send(conn, ToWorker::Unavailable { round, member: author }),
        }
    }

    /// A payload for a committed round: only an upload this coordinator asked for (a
    /// [`ToWorker::Reupload`] that a fetch still waits on), that the commit names and that
    /// the cache lacks.
    ///
    /// Asked for, because frames carry no nonce: an authentic payload frame of a committed
    /// round, captured and sent again on a member's connection, is byte for byte what its
    /// author would upload. Before a restart the cache or the open round turns it away;
    /// after one the cache is empty, so only "nobody asked" tells a replay from an answer.
    pub(super) fn on_reupload(
        &mut self,
        conn: ConnId,
        member: MemberId,
        round: Round,
        digest: Digest,
        bytes: Bytes,
    ) {
        let cached = self.payloads.get(&round).is_some_and(|p| p.contains_key(&member));
        let asked = self.refetch.contains_key(&(round, member));
        if cached || !asked {
            return self.reject(conn, Some(round), RejectReason::Late);
        }
        if self.committed_digest(round, member) != Some(digest) {
            // Asked, but not the committed bytes: the author restarted and published the
            // round again. It holds one payload a round, so it cannot hold the committed one.
            self.reject(conn, Some(round), RejectReason::Late);
            return self.on_not_held(conn, member, round);
        }
        self.traffic.received(Dest::Member(member), bytes.len());
        self.payloads.entry(round).or_default().insert(member, (digest, bytes.clone()));
        for waiting in self.refetch.remove(&(round, member)).unwrap_or_default() {
            self.serve(waiting, round, member, bytes.clone());
        }
    }

    /// `member` says it no longer holds its payload of `round`, which it was asked to upload
    /// again: whoever waits for it, and whoever fetches it later, hears at once that it is
    /// unavailable.
    pub(super) fn on_not_held(&mut self, conn: ConnId, member: MemberId, round: Round) {
        let Some(waiting) = self.refetch.remove(&(round, member)) else {
            if self.unheld.contains(&(round, member)) {
                // The answer to a second request sent before the first answer came.
                return;
            }
            return self.reject(conn, Some(round), RejectReason::Unsolicited);
        };
        info!(round, member, fetching = waiting.len(), "a payload to fetch is held by nobody");
        self.unheld.insert((round, member));
        for to in waiting {
            self.send(to, ToWorker::Unavailable { round, member });
        }
    }

    /// The digest the commit of `round` holds for `member`, if it is remembered.
    fn committed_digest(&self, round: Round, member: MemberId) -> Option<Digest> {
        let record = self.commits.iter().find(|r| r.round == round)?;
        record.delivered.iter().find(|d| d.member == member).map(|d| d.digest)
    }

    fn serve(&mut self, conn: ConnId, round: Round, author: MemberId, bytes: Bytes) {
        if let Some(&member) = self.conns.get(&conn) {
            self.traffic.sent(Dest::Member(member), bytes.len());
        }
        self.transmits.push_back(Transmit::Payload { to: conn, round, from_member: author, bytes });
    }
}
