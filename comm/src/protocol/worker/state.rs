//! Catch-up by state, both sides: a donor serving the state it provided, and a newcomer
//! fetching an offered state in chunks from several members at once.
//!
//! A donor keeps the state it provided (for [`SnapshotRequest`](ToWorker::SnapshotRequest))
//! until it applied `keep_rounds` rounds past it, so that later requests for that round,
//! and every member's chunk fetches, are served without asking the application again. A
//! direct request is answered with the state's [`StateManifest`] (chunks of `state_chunk`
//! bytes, each with its digest); a relayed one with the whole state in a `State` frame.
//!
//! A newcomer given a [`StateOffer`](ToWorker::StateOffer) takes one consistent state: every
//! chunk is the *reference* donor's, or equal to it. Chunks whose digests agree on every
//! donor (replicated state: parameters, the outer optimizer's) come from all of them;
//! chunks that differ (per-member state: inner optimizer moments) come from the reference
//! alone. The reference is the first donor to deliver a chunk, the one with the fastest
//! path here; until there is one, each donor serves shared chunks, or one chunk of its own
//! as a probe. Each donor has up to [`CHUNK_WINDOW`] requests in flight, rarest chunk
//! first, and every chunk is checked against the serving donor's digest.
//!
//! A donor that answers `ChunkUnavailable` or a wrong chunk, leaves the members, or leaves
//! a request unanswered for `fetch_timeout` is dropped and its requests go to the others;
//! when it was the reference, the next donor to deliver becomes the reference and the
//! chunks that differ from its state are fetched again (shared ones are kept). With every
//! donor gone the worker asks for state again, keeping the chunks it verified: a later
//! offer of the same round takes the ones whose digests match, so the transfer resumes. A
//! worker that got no chunk at all (it cannot reach the members) asks for the state relayed
//! by the coordinator instead.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tracing::{debug, info, warn};

use super::{Transmit, WorkerProto};
use crate::ids::{MemberId, Round};
use crate::protocol::messages::{
    chunk_count, chunk_range, Donor, PeerMessage, StateManifest, ToCoordinator,
};
use crate::protocol::types::{strictly_ascending, Dest, Digest, RejectReason};

/// Chunk requests in flight to one donor at a time.
pub(super) const CHUNK_WINDOW: usize = 16;

/// How a requested snapshot is answered once the application provided it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Serve {
    /// With its manifest (its chunks are fetched by members).
    direct: bool,
    /// Uploaded whole to the coordinator.
    upload: bool,
}

/// The state this worker provided, served to members that catch up.
#[derive(Debug)]
pub(super) struct HeldState {
    pub(super) round: Round,
    bytes: Bytes,
    manifest: StateManifest,
}

/// An offered state being fetched.
#[derive(Debug)]
pub(super) struct StateFetch {
    round: Round,
    len: u64,
    chunk_len: u32,
    /// The chunks held, each with its digest.
    chunks: Vec<Option<(Bytes, Digest)>>,
    /// The donors still used, with their chunks' digests.
    donors: BTreeMap<MemberId, Vec<Digest>>,
    /// The donor whose state this worker takes (chunks that differ between donors come
    /// from it alone).
    reference: Option<MemberId>,
    /// Chunk requests in flight: chunk → (donor, when asked).
    inflight: BTreeMap<u32, (MemberId, Instant)>,
    /// Whether any chunk arrived since the offer.
    progressed: bool,
}

impl StateFetch {
    /// The digest chunk `i` must have: the reference's, or, before there is one, the one
    /// every donor agrees on (`None`: the donors differ).
    fn target(&self, i: usize) -> Option<Digest> {
        if let Some(r) = self.reference.and_then(|r| self.donors.get(&r)) {
            return Some(r[i]);
        }
        let mut digests = self.donors.values().map(|d| d[i]);
        let first = digests.next()?;
        digests.all(|d| d == first).then_some(first)
    }

    /// Whether chunk `i` is still needed.
    fn needed(&self, i: usize) -> bool {
        match (&self.chunks[i], self.target(i)) {
            (None, _) => true,
            (Some((_, have)), Some(want)) => *have != want,
            // Held, and the donors differ with no reference yet: decided when one is chosen.
            (Some(_), None) => false,
        }
    }

    fn complete(&self) -> bool {
        (0..self.chunks.len())
            .all(|i| self.chunks[i].is_some() && self.target(i).is_some() && !self.needed(i))
    }

    /// Donors that can serve chunk `i` as this worker needs it.
    fn holders(&self, i: usize) -> usize {
        match self.target(i) {
            Some(want) => self.donors.values().filter(|d| d[i] == want).count(),
            None => 0,
        }
    }

    /// The next chunk to ask `donor` for: needed, not asked, served by it; rarest first.
    /// Before a reference is chosen, with nothing shared left to ask for and no request in
    /// flight, every donor probes with one chunk of its own (the first to arrive decides).
    fn pick(&self, donor: MemberId) -> Option<u32> {
        let digests = self.donors.get(&donor)?;
        let free = |i: &usize| self.needed(*i) && !self.inflight.contains_key(&(*i as u32));
        let shared = (0..self.chunks.len())
            .filter(free)
            .filter(|&i| self.target(i) == Some(digests[i]))
            .min_by_key(|&i| (self.holders(i), i));
        if shared.is_some() || self.reference.is_some() {
            return shared.map(|i| i as u32);
        }
        let probing = self.inflight.values().all(|(m, _)| *m != donor)
            && self.inflight.keys().all(|&i| self.target(i as usize).is_none());
        let probe = (0..self.chunks.len())
            .filter(|i| !self.inflight.contains_key(&(*i as u32)))
            .find(|&i| self.target(i).is_none());
        probe.filter(|_| probing).map(|i| i as u32)
    }

    /// Whether a needed chunk can no longer be served.
    fn stuck(&self) -> bool {
        self.donors.is_empty()
            || (self.reference.is_some()
                && (0..self.chunks.len()).any(|i| {
                    self.needed(i)
                        && !self.inflight.contains_key(&(i as u32))
                        && self.holders(i) == 0
                }))
    }

    fn drop_donor(&mut self, member: MemberId) {
        if self.donors.remove(&member).is_some() {
            self.inflight.retain(|_, (m, _)| *m != member);
            if self.reference == Some(member) {
                self.reference = None;
            }
        }
    }
}

impl WorkerProto {
    /// The coordinator asks for this worker's state as of `round` (or later).
    pub(super) fn on_snapshot_request(&mut self, round: Round, direct: bool) {
        if self.awaiting_state.is_some() {
            return;
        }
        if self.held_state.as_ref().is_some_and(|h| h.round >= round) {
            return self.serve_held(direct);
        }
        if direct {
            self.snapshot_serve.direct = true;
        } else {
            self.snapshot_serve.upload = true;
        }
        if self.snapshot_announced.is_some() {
            // The application is making it (a repeated request): answered when provided.
            return;
        }
        self.snapshot_wanted = self.snapshot_wanted.max(Some(round));
        self.announce_snapshot();
    }

    /// Keeps the state the application provided and answers the request it was for.
    pub(super) fn hold_state(&mut self, round: Round, bytes: Bytes) {
        let manifest = StateManifest::of(&bytes, self.config.state_chunk);
        self.held_state = Some(HeldState { round, bytes, manifest });
        let serve = std::mem::take(&mut self.snapshot_serve);
        if serve.direct {
            self.serve_held(true);
        }
        if serve.upload {
            self.serve_held(false);
        }
    }

    fn serve_held(&mut self, direct: bool) {
        let Some(held) = &self.held_state else { return };
        let round = held.round;
        if direct {
            info!(
                round,
                len = held.bytes.len(),
                chunks = held.manifest.digests.len(),
                "serving state"
            );
            let manifest = held.manifest.clone();
            self.transmits.push_back(Transmit::Control {
                msg: ToCoordinator::StateManifest { round, manifest },
            });
        } else if held.bytes.len() > self.config.max_whole_state {
            // The coordinator asks another member after its snapshot timeout; members fetch
            // a state this large only in chunks.
            warn!(
                round,
                len = held.bytes.len(),
                max = self.config.max_whole_state,
                "the state is too large to upload whole; it is served in chunks only"
            );
        } else {
            info!(round, len = held.bytes.len(), "uploading state");
            let bytes = held.bytes.clone();
            self.transmits.push_back(Transmit::State { round, bytes });
        }
    }

    /// Forgets a held state once `keep_rounds` rounds were applied past it.
    pub(super) fn release_held_state(&mut self, applied: Round) {
        if self
            .held_state
            .as_ref()
            .is_some_and(|h| h.round.saturating_add(self.config.keep_rounds) <= applied)
        {
            debug!("held state released");
            self.held_state = None;
        }
    }

    /// Member `from` asks for chunk `index` of the state of `round`.
    pub(super) fn on_fetch_chunk(&mut self, from: MemberId, round: Round, index: u32) {
        let chunk = self
            .held_state
            .as_ref()
            .filter(|h| h.round == round)
            .and_then(|h| h.manifest.range(index).map(|r| h.bytes.slice(r)));
        match chunk {
            Some(bytes) => {
                self.traffic.entry(round).or_default().sent(Dest::Member(from), bytes.len());
                self.transmits.push_back(Transmit::StateChunk { to: from, round, index, bytes });
            }
            None => self.transmits.push_back(Transmit::Peer {
                to: from,
                msg: PeerMessage::ChunkUnavailable { round, index },
            }),
        }
    }

    /// The coordinator offers the state of `round`, served by `donors`.
    pub(super) fn on_state_offer(
        &mut self,
        now: Instant,
        round: Round,
        len: u64,
        chunk_len: u32,
        donors: Vec<Donor>,
    ) {
        let from = Dest::Coordinator;
        if self.awaiting_state.is_none() {
            return self.reject(from, Some(round), RejectReason::Unsolicited);
        }
        if self.applied.is_some_and(|a| round <= a) {
            return self.reject(from, Some(round), RejectReason::WrongRound);
        }
        let Some(count) = chunk_count(len, chunk_len, self.config.max_state) else {
            return self.reject(from, Some(round), RejectReason::Oversized);
        };
        let me = self.member;
        if donors.is_empty()
            || !strictly_ascending(donors.iter().map(|d| d.member))
            || donors.iter().any(|d| d.digests.len() != count || Some(d.member) == me)
        {
            return self.reject(from, Some(round), RejectReason::Malformed);
        }
        let mut chunks = vec![None; count];
        // Chunks verified under an earlier offer of this round are kept: each is checked
        // against the new donors' digests like a fresh one.
        if let Some(old) = self.state_fetch.take() {
            if old.round == round && old.len == len && old.chunk_len == chunk_len {
                chunks = old.chunks;
            }
        }
        let kept = chunks.iter().filter(|c| c.is_some()).count();
        info!(round, len, donors = donors.len(), kept, "state offered");
        self.state_fetch = Some(StateFetch {
            round,
            len,
            chunk_len,
            chunks,
            donors: donors.into_iter().map(|d| (d.member, d.digests)).collect(),
            reference: None,
            inflight: BTreeMap::new(),
            progressed: false,
        });
        self.awaiting_state = Some(now);
        self.request_chunks(now);
    }

    /// A `StateChunk` frame from member `from`.
    pub fn handle_state_chunk(
        &mut self,
        now: Instant,
        from: MemberId,
        round: Round,
        index: u32,
        bytes: Bytes,
    ) {
        let src = Dest::Member(from);
        let Some(fetch) = self.state_fetch.as_mut().filter(|f| f.round == round) else {
            return self.reject(src, Some(round), RejectReason::Unsolicited);
        };
        let Some(digests) = fetch.donors.get(&from) else {
            return self.reject(src, Some(round), RejectReason::Unsolicited);
        };
        let Some(range) = chunk_range(fetch.len, fetch.chunk_len, index) else {
            return self.reject(src, Some(round), RejectReason::Malformed);
        };
        let i = index as usize;
        let digest = Digest::of(&bytes);
        if bytes.len() != range.len() || digest != digests[i] {
            fetch.drop_donor(from);
            warn!(from, round, index, "a state chunk does not match its digest; donor dropped");
            self.reject(src, Some(round), RejectReason::DigestMismatch);
            return self.request_chunks(now);
        }
        self.traffic.entry(round).or_default().received(src, bytes.len());
        if fetch.inflight.get(&index).is_some_and(|(m, _)| *m == from) {
            fetch.inflight.remove(&index);
        }
        fetch.progressed = true;
        if fetch.reference.is_none() && (0..fetch.chunks.len()).any(|i| fetch.target(i).is_none()) {
            // The first donor to deliver has the fastest path here: its state is the one
            // taken.
            info!(reference = from, round, "state reference chosen");
            fetch.reference = Some(from);
        }
        if fetch.needed(i) && fetch.target(i) == Some(digest) || fetch.target(i).is_none() {
            fetch.chunks[i] = Some((bytes, digest));
        }
        // Progress: the state is on its way.
        self.awaiting_state = Some(now);
        if fetch.complete() {
            let mut whole = BytesMut::with_capacity(usize::try_from(fetch.len).unwrap_or(0));
            for (chunk, _) in fetch.chunks.iter().flatten() {
                whole.extend_from_slice(chunk);
            }
            self.state_fetch = None;
            return self.take_state(now, round, whole.freeze());
        }
        self.request_chunks(now);
    }

    /// Member `from` no longer holds the state it was asked chunks of.
    pub(super) fn on_chunk_unavailable(&mut self, now: Instant, from: MemberId, round: Round) {
        if let Some(fetch) = self.state_fetch.as_mut().filter(|f| f.round == round) {
            debug!(from, round, "donor no longer holds the state");
            fetch.drop_donor(from);
            self.request_chunks(now);
        }
    }

    /// Drops donors that left the members.
    pub(super) fn recheck_donors(&mut self, now: Instant) {
        let Some(fetch) = &self.state_fetch else { return };
        let gone: BTreeSet<MemberId> =
            fetch.donors.keys().filter(|m| !self.members.contains_key(m)).copied().collect();
        self.drop_donors(now, gone, "left the members");
    }

    /// Drops donors with a request unanswered for `fetch_timeout`.
    pub(super) fn state_fetch_timeouts(&mut self, now: Instant) {
        let timeout = self.config.fetch_timeout;
        let Some(fetch) = &self.state_fetch else { return };
        let late: BTreeSet<MemberId> = fetch
            .inflight
            .values()
            .filter(|(_, at)| now >= *at + timeout)
            .map(|(m, _)| *m)
            .collect();
        self.drop_donors(now, late, "did not answer in time");
    }

    /// Drops `donors` (for `why`) and hands their chunks to the others.
    fn drop_donors(&mut self, now: Instant, donors: BTreeSet<MemberId>, why: &str) {
        let Some(fetch) = self.state_fetch.as_mut() else { return };
        if donors.is_empty() {
            return;
        }
        for member in donors {
            warn!(member, why, "state donor dropped; its chunks go to the others");
            fetch.drop_donor(member);
        }
        self.request_chunks(now);
    }

    /// When the oldest chunk request times out.
    pub(super) fn state_fetch_due(&self) -> Option<Instant> {
        let fetch = self.state_fetch.as_ref()?;
        fetch.inflight.values().map(|(_, at)| *at + self.config.fetch_timeout).min()
    }

    /// Fills every donor's window; asks for state again when a chunk has no donor left.
    fn request_chunks(&mut self, now: Instant) {
        let Some(fetch) = self.state_fetch.as_mut() else { return };
        if self.awaiting_state.is_none() {
            return;
        }
        // One request per donor per pass, so the shared chunks spread over every donor.
        let donors: Vec<MemberId> = fetch.donors.keys().copied().collect();
        loop {
            let mut asked = false;
            for &member in &donors {
                let busy = fetch.inflight.values().filter(|(m, _)| *m == member).count();
                let Some(index) = (busy < CHUNK_WINDOW).then(|| fetch.pick(member)).flatten()
                else {
                    continue;
                };
                fetch.inflight.insert(index, (member, now));
                self.transmits.push_back(Transmit::Peer {
                    to: member,
                    msg: PeerMessage::FetchChunk { round: fetch.round, index },
                });
                asked = true;
            }
            if !asked {
                break;
            }
        }
        if fetch.stuck() {
            // Members that served chunks can serve a fresh offer; a worker that got none
            // likely cannot reach them, and takes the state through the coordinator.
            let direct = fetch.progressed;
            warn!(
                round = fetch.round,
                direct, "state chunks have no donor left; asking for state again"
            );
            fetch.inflight.clear();
            fetch.progressed = false;
            self.ask_state_as(now, direct);
        }
    }
}
