//! Commits: buffering them, applying them in round order, and fetching the committed
//! payloads a worker does not hold.
//!
//! A fetch starts `fetch_grace` after the commit arrived (the payload may be on its way) and
//! asks one holder at a time, moving on after `fetch_timeout` or an `Unavailable` answer.
//! Holders: in Relay the coordinator (asked twice); in AllGather the payload's author, then
//! the other committed members in ascending order. A reply from any holder asked earlier is
//! still accepted: it is matched by digest. When every holder was asked the worker gives up
//! on replay and asks for a snapshot. A request to the coordinator that a lost connection
//! (or a coordinator restart) swallowed is sent again once the worker is welcomed back.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::{Event, Transmit, WorkerProto};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::{PeerMessage, ToCoordinator};
use crate::protocol::types::{
    next_after, strictly_ascending, Delivery, Dest, Digest, RejectReason,
};

/// Commits further ahead of the next round to apply than this are refused (they would
/// only buffer memory; a worker that far behind catches up by snapshot).
const MAX_COMMITS_AHEAD: u64 = 1024;

/// A commit not applied yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PendingCommit {
    pub(super) delivered: Vec<Delivery>,
    pub(super) stragglers: Vec<MemberId>,
    /// Ring: the committed aggregate's digest (then `delivered` lists the ring's members).
    pub(super) aggregate: Option<Digest>,
}

/// A committed payload being fetched.
#[derive(Debug)]
pub(super) struct Fetch {
    digest: Digest,
    holders: Vec<Dest>,
    /// The next holder to ask.
    next: usize,
    /// The holder asked last.
    asked: Option<Dest>,
    /// When to ask the next holder.
    pub(super) due: Instant,
}

impl WorkerProto {
    pub(super) fn on_commit(
        &mut self,
        now: Instant,
        round: Round,
        delivered: Vec<Delivery>,
        stragglers: Vec<MemberId>,
        aggregate: Option<Digest>,
    ) {
        let from = Dest::Coordinator;
        if !strictly_ascending(delivered.iter().map(|d| d.member))
            || !strictly_ascending(stragglers.iter().copied())
        {
            return self.reject(from, Some(round), RejectReason::Malformed);
        }
        let next = next_after(self.applied);
        if round < next {
            return self.reject(from, Some(round), RejectReason::Late);
        }
        if round - next > MAX_COMMITS_AHEAD {
            return self.reject(from, Some(round), RejectReason::WrongRound);
        }
        if aggregate
            .is_some_and(|a| delivered.is_empty() || delivered.iter().any(|d| d.digest != a))
        {
            return self.reject(from, Some(round), RejectReason::Malformed);
        }
        let commit = PendingCommit { delivered, stragglers, aggregate };
        if let Some(existing) = self.commits.get(&round) {
            if *existing != commit {
                warn!(round, "a conflicting second commit is ignored");
            }
            return self.reject(from, Some(round), RejectReason::Duplicate);
        }
        debug!(round, delivered = commit.delivered.len(), "commit");
        if let Some(held) = self.store.get_mut(&round) {
            // Only the committed bytes of committed members can ever be applied.
            held.retain(|m, h| {
                commit.delivered.iter().any(|d| d.member == *m && d.digest == h.digest)
            });
        }
        if self.open.as_ref().is_some_and(|o| o.round == round) {
            self.open = None;
        }
        self.horizon = self.horizon.max(round.checked_add(1));
        self.commits.insert(round, commit);
        self.progress(now);
    }

    /// Applies what can be applied, starts the fetches that are needed, watches for gaps.
    pub(super) fn progress(&mut self, now: Instant) {
        if self.awaiting_state.is_some() {
            return;
        }
        while self.apply_next(now) {}
        self.start_fetches(now);
        let next = next_after(self.applied);
        let gap = self.commits.keys().next().is_some_and(|&first| first > next);
        if !gap {
            self.gap_since = None;
        } else if self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
        self.announce_snapshot();
        self.run_fetches(now);
    }

    /// Emits the next round's RoundReady if its commit and all its payloads are here.
    fn apply_next(&mut self, now: Instant) -> bool {
        let round = next_after(self.applied);
        let Some(commit) = self.commits.get(&round) else { return false };
        if let Some(digest) = commit.aggregate {
            let Some(aggregate) =
                self.aggregates.get(&round).filter(|h| h.digest == digest).map(|h| h.bytes.clone())
            else {
                return false;
            };
            let Some(commit) = self.commits.remove(&round) else { return false };
            let stats = self.round_stats(round, &commit, now);
            let members: Vec<MemberId> = commit.delivered.iter().map(|d| d.member).collect();
            info!(round, members = members.len(), "ring aggregate ready");
            self.retire(round);
            self.events.push_back(Event::AggregateReady { round, members, aggregate, stats });
            return true;
        }
        let mut payloads = Vec::with_capacity(commit.delivered.len());
        for d in &commit.delivered {
            match self.matching(round, d.member, d.digest) {
                Some(bytes) => payloads.push((d.member, bytes.clone())),
                None => return false,
            }
        }
        let Some(commit) = self.commits.remove(&round) else { return false };
        let stats = self.round_stats(round, &commit, now);
        info!(round, payloads = payloads.len(), "round ready");
        self.retire(round);
        self.events.push_back(Event::RoundReady { round, payloads, stats });
        true
    }

    /// Marks `round` applied and forgets what only older rounds need.
    fn retire(&mut self, round: Round) {
        self.applied = Some(round);
        self.release_held_state(round);
        self.fetches.retain(|&(r, _), _| r > round);
        // Applied payloads and aggregates stay a while to serve other members' fetches.
        let keep = self.config.keep_rounds;
        let recent = |r: &Round| r.saturating_add(keep) > round;
        self.store.retain(|r, _| recent(r));
        self.own.retain(|r, _| recent(r));
        self.aggregates.retain(|r, _| recent(r));
        self.early.retain(|r, _| *r > round);
        if self.ring.as_ref().is_some_and(|r| r.round <= round) {
            self.ring = None;
        }
        self.traffic.retain(|r, _| *r > round);
        self.opened.retain(|r, _| *r > round);
    }

    /// Creates a fetch for every committed payload not held (unless one runs already).
    fn start_fetches(&mut self, now: Instant) {
        let Some(me) = self.member else { return };
        let mut wanted = Vec::new();
        for (&round, commit) in &self.commits {
            if let Some(digest) = commit.aggregate {
                // Fetched as the payload of the commit's first member, from any member.
                let held = self.aggregates.get(&round).is_some_and(|h| h.digest == digest);
                let Some(first) = commit.delivered.first().map(|d| d.member) else { continue };
                if !held && !self.fetches.contains_key(&(round, first)) {
                    let holders = commit
                        .delivered
                        .iter()
                        .map(|d| d.member)
                        .filter(|&m| m != me)
                        .map(Dest::Member)
                        .collect();
                    wanted.push((round, Delivery { member: first, digest }, holders));
                }
                continue;
            }
            for d in &commit.delivered {
                let missing = self.matching(round, d.member, d.digest).is_none();
                if missing && !self.fetches.contains_key(&(round, d.member)) {
                    wanted.push((round, *d, self.holders(me, d.member, &commit.delivered)));
                }
            }
        }
        for (round, d, holders) in wanted {
            let due = now + self.config.fetch_grace;
            let fetch = Fetch { digest: d.digest, holders, next: 0, asked: None, due };
            self.fetches.insert((round, d.member), fetch);
        }
    }

    fn holders(&self, me: MemberId, author: MemberId, delivered: &[Delivery]) -> Vec<Dest> {
        match self.topology {
            Some(crate::protocol::Topology::AllGather) => std::iter::once(author)
                .chain(delivered.iter().map(|d| d.member).filter(|&m| m != author))
                .filter(|&m| m != me)
                .map(Dest::Member)
                .collect(),
            _ => vec![Dest::Coordinator, Dest::Coordinator],
        }
    }

    /// Asks the next holder for every fetch that is due; asks for state when one ran out.
    pub(super) fn run_fetches(&mut self, now: Instant) {
        let mut exhausted = None;
        let mut requests = Vec::new();
        for (&(round, member), fetch) in self.fetches.iter_mut().filter(|(_, f)| f.due <= now) {
            let Some(&holder) = fetch.holders.get(fetch.next) else {
                exhausted = Some(round);
                break;
            };
            fetch.next += 1;
            fetch.asked = Some(holder);
            fetch.due = now + self.config.fetch_timeout;
            requests.push((holder, round, member, fetch.digest));
        }
        if let Some(round) = exhausted {
            warn!(round, "no holder has a committed payload, asking for state");
            self.events.push_back(Event::FellBehind { round });
            self.ask_state(now);
            return;
        }
        for (holder, round, member, digest) in requests {
            debug!(round, member, ?holder, "fetching");
            let transmit = match holder {
                Dest::Coordinator => {
                    Transmit::Control { msg: ToCoordinator::Fetch { round, member, digest } }
                }
                Dest::Member(to) => {
                    Transmit::Peer { to, msg: PeerMessage::Fetch { round, member, digest } }
                }
            };
            self.transmits.push_back(transmit);
        }
    }

    /// A new connection to the coordinator was welcomed: requests it had been sent died with
    /// the old connection (or with the coordinator), and no answer will come. Each is asked
    /// again, of the same holder, after `fetch_grace`: left alone it would wait out its
    /// `fetch_timeout` first, straggling meanwhile in every round it is a member of.
    pub(super) fn refetch_after_reconnect(&mut self, now: Instant) {
        let due = now + self.config.fetch_grace;
        for fetch in self.fetches.values_mut().filter(|f| f.asked == Some(Dest::Coordinator)) {
            fetch.next = fetch.next.saturating_sub(1);
            fetch.asked = None;
            fetch.due = fetch.due.min(due);
        }
    }

    /// `from` does not hold the payload: ask the next holder now.
    pub(super) fn fetch_unavailable(
        &mut self,
        now: Instant,
        from: Dest,
        round: Round,
        member: MemberId,
    ) {
        match self.fetches.get_mut(&(round, member)) {
            Some(fetch) if fetch.asked == Some(from) => {
                fetch.asked = None;
                fetch.due = now;
                self.run_fetches(now);
            }
            _ => self.reject(from, Some(round), RejectReason::Unsolicited),
        }
    }
}
