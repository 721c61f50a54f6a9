//! A worker process's training loop against the network: the [`SoloWorker`] steps, and
//! each exchange goes through a [`RoundLink`] (the comm crate's worker node, or a test
//! double).
//!
//! Besides publishing payloads and applying commits, the loop answers the protocol's two
//! catch-up requests: it uploads its state when the coordinator asks it to serve a
//! newcomer (right after applying the round named), and it takes a peer's state when it
//! is the one catching up, then replays the rounds committed after that state.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_optimizer::outer::Phase;
use meridian_optimizer::payload::Effort;
use meridian_optimizer::solo::{Committed, Exchange, SoloExchange, SoloStep, SoloWorker};
use meridian_optimizer::train_step::TrainStep;
use meridian_optimizer::OptimizerError;

use crate::networked::snapshot::{self, InnerState};

/// What the network tells a training worker.
#[derive(Debug, Clone, PartialEq)]
pub enum NetEvent {
    /// Another member's payload for `round` arrived before the commit, stating what it
    /// trained (what balancing sizes a slow worker's first round by).
    PeerLaunched {
        /// The round.
        round: u64,
        /// What its header states.
        effort: Effort,
    },
    /// Round `round` committed: the committed members' payloads, in member-id order.
    RoundReady {
        /// The round.
        round: u64,
        /// The payloads to apply.
        payloads: Vec<Vec<u8>>,
    },
    /// Ring round `round` committed its aggregate: the sum of `members`' payloads.
    AggregateReady {
        /// The round.
        round: u64,
        /// The members it sums, ascending.
        members: Vec<u32>,
        /// The aggregate.
        bytes: Vec<u8>,
    },
    /// Upload this worker's state, as it is after applying `round`, for a newcomer.
    SnapshotRequested {
        /// The round just applied.
        round: u64,
    },
    /// A peer's state as of the end of `round`, for this worker to continue from.
    StateReceived {
        /// The round the state ends.
        round: u64,
        /// The state ([`snapshot::encode`]).
        bytes: Vec<u8>,
    },
}

/// The network as a training loop sees it; every call may block.
pub trait RoundLink {
    /// Publishes this worker's payload for `round`.
    fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()>;
    /// Waits for the next event; an error ends this worker's run (refused, coordinator
    /// gone for good).
    fn next_event(&mut self) -> Result<NetEvent>;
    /// The next event if one has arrived, without waiting.
    fn poll_event(&mut self) -> Result<Option<NetEvent>>;
    /// Uploads this worker's state as of the end of `round`.
    fn provide_state(&mut self, round: u64, state: Vec<u8>) -> Result<()>;
    /// Called before inner step `step` is trained (not before a step a balanced worker
    /// skips). A simulated network charges the step's compute time to its virtual clock
    /// here and returns it; a real one has nothing to do, and the step is timed instead.
    fn before_step(&mut self, _step: u64) -> Result<Option<Duration>> {
        Ok(None)
    }
}

/// Events that arrived while waiting for something else.
#[derive(Debug, Default)]
struct Pending {
    ready: BTreeMap<u64, Committed>,
    snapshot_requests: BTreeSet<u64>,
    state: Option<(u64, Vec<u8>)>,
    /// Peers' launches heard of since the worker last looked.
    launched: Vec<(u64, Effort)>,
}

impl Pending {
    fn take(&mut self, event: NetEvent) {
        match event {
            NetEvent::PeerLaunched { round, effort } => self.launched.push((round, effort)),
            NetEvent::RoundReady { round, payloads } => {
                self.ready.insert(round, Committed::Payloads(payloads));
            }
            NetEvent::AggregateReady { round, members, bytes } => {
                self.ready.insert(round, Committed::Aggregate { members, bytes });
            }
            NetEvent::SnapshotRequested { round } => {
                self.snapshot_requests.insert(round);
            }
            NetEvent::StateReceived { round, bytes } => self.state = Some((round, bytes)),
        }
    }
}

/// The exchange of one step: publish, then wait for the round's commit (at once, or, for
/// an overlapped round, where it lands).
struct LinkExchange<'a> {
    link: &'a mut dyn RoundLink,
    pending: &'a mut Pending,
    /// This worker's state from just before the step, with the rounds it has applied, to
    /// serve a newcomer while blocked here: rounds may not move on until the newcomer has
    /// it.
    state: Option<(snapshot::Captured, u64)>,
}

/// Serves the pending snapshot requests that `state` answers: those for rounds before
/// `applied`, the rounds the state has applied (a request names a round the state must
/// include; the others wait until this worker has applied theirs: an overlapped round
/// lands some steps after it commits). A request that cannot be served is logged, not
/// fatal: the coordinator asks another member after its timeout.
fn serve(
    link: &mut dyn RoundLink,
    requests: &mut BTreeSet<u64>,
    applied: u64,
    state: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<()> {
    let later = requests.split_off(&applied);
    let answered = std::mem::replace(requests, later);
    if answered.is_empty() {
        return Ok(());
    }
    let state = state()?;
    for round in answered {
        match link.provide_state(round, state.to_vec()) {
            Ok(()) => tracing::debug!(round, "state provided for a newcomer"),
            Err(e) => tracing::warn!(round, error = %format!("{e:#}"), "could not provide state"),
        }
    }
    Ok(())
}

const SUPERSEDED: &str = "a peer's state arrived while waiting for a commit";

impl Exchange for LinkExchange<'_> {
    fn exchange(
        &mut self,
        round: u64,
        payload: Vec<u8>,
    ) -> meridian_optimizer::Result<Vec<Vec<u8>>> {
        match self.exchange_committed(round, payload)? {
            Committed::Payloads(payloads) => Ok(payloads),
            Committed::Aggregate { .. } => Err(OptimizerError::TrainStep(format!(
                "round {round} committed a ring aggregate where payloads were expected"
            ))),
        }
    }

    fn exchange_committed(
        &mut self,
        round: u64,
        payload: Vec<u8>,
    ) -> meridian_optimizer::Result<Committed> {
        Exchange::publish(self, round, payload)?;
        self.collect(round)
    }

    fn publish(&mut self, round: u64, payload: Vec<u8>) -> meridian_optimizer::Result<()> {
        self.link.publish(round, payload).map_err(failed)
    }

    fn collect(&mut self, round: u64) -> meridian_optimizer::Result<Committed> {
        loop {
            if let Some(committed) = self.pending.ready.remove(&round) {
                return Ok(committed);
            }
            if self.pending.state.is_some() {
                return Err(OptimizerError::TrainStep(SUPERSEDED.into()));
            }
            if let Some((state, applied)) = &self.state {
                serve(self.link, &mut self.pending.snapshot_requests, *applied, || state.encode())
                    .map_err(failed)?;
            }
            let event = self.link.next_event().map_err(failed)?;
            self.pending.take(event);
        }
    }
}

/// A link failure as the optimizer's error type (the step that met it fails with it).
fn failed(e: anyhow::Error) -> OptimizerError {
    OptimizerError::TrainStep(format!("{e:#}"))
}

/// What [`drive`] reports per applied round.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedRound {
    /// The exchange as the worker saw it.
    pub exchange: SoloExchange,
    /// Whether the worker replayed it (caught up) instead of training through it.
    pub replayed: bool,
}

/// What a caller of [`drive`] sees as the worker trains.
pub trait DriveObserver<S> {
    /// A round was applied (trained through or replayed).
    fn round_applied(&mut self, round: &AppliedRound);
    /// [`DriveObserver::round_applied`], shown `w` as the round left it (before any
    /// further inner step).
    fn round_applied_to(&mut self, _w: &SoloWorker<S>, round: &AppliedRound) {
        self.round_applied(round)
    }
    /// An inner step finished (its exchanges already reported); `w` may be evaluated here.
    fn step_done(&mut self, _w: &mut SoloWorker<S>, _step: &SoloStep) -> Result<()> {
        Ok(())
    }
}

/// A closure observes applied rounds only.
impl<S, F: FnMut(&AppliedRound)> DriveObserver<S> for F {
    fn round_applied(&mut self, round: &AppliedRound) {
        self(round)
    }
}

/// Trains `w` until it has done `steps` inner steps, exchanging through `link`. With
/// `need_state` the worker first waits for a peer's state. `observer` sees every applied
/// round and every step.
pub fn drive<S: InnerState>(
    w: &mut SoloWorker<S>,
    link: &mut dyn RoundLink,
    steps: u64,
    need_state: bool,
    mut observer: impl DriveObserver<S>,
) -> Result<()> {
    let mut driver = Driver::start(link, need_state)?;
    while driver.step(w, link, steps, &mut observer)?.is_some() {}
    Ok(())
}

/// [`drive`] one inner step at a time, for a caller that owns the training loop (a
/// wrapped PyTorch script calls it once per step of its own).
#[derive(Debug, Default)]
pub struct Driver {
    pending: Pending,
    states_taken: u64,
}

impl Driver {
    /// A driver for a worker that has just joined; with `need_state` it first waits for a
    /// peer's state (applied by the first [`Driver::step`]).
    pub fn start(link: &mut dyn RoundLink, need_state: bool) -> Result<Self> {
        let mut pending = Pending::default();
        if need_state {
            while pending.state.is_none() {
                let event = link.next_event().context("waiting for a peer's state")?;
                pending.take(event);
            }
        }
        Ok(Self { pending, states_taken: 0 })
    }

    /// Peers' states taken so far (catching up).
    pub fn states_taken(&self) -> u64 {
        self.states_taken
    }

    /// Brings `w` up to date with the network without training: takes a peer's state that
    /// arrived, replays the rounds committed since (as far as `steps`), serves snapshot
    /// requests. Returns whether `w` has done its `steps`.
    pub fn settle<S: InnerState>(
        &mut self,
        w: &mut SoloWorker<S>,
        link: &mut dyn RoundLink,
        steps: u64,
        observer: &mut impl DriveObserver<S>,
    ) -> Result<bool> {
        loop {
            if let Some((round, bytes)) = self.pending.state.take() {
                snapshot::restore(w, &bytes).context("taking a peer's state")?;
                self.states_taken += 1;
                tracing::info!(round, step = w.steps_done(), "continuing from a peer's state");
                self.pending.ready.retain(|&r, _| r >= w.rounds_done());
            }
            // Requests that arrived while training: a snapshot is wanted right after the
            // round it names, so look before the next step moves the parameters on.
            while let Some(event) = link.poll_event()? {
                self.pending.take(event);
            }
            if self.pending.state.is_some() {
                continue;
            }
            for (round, effort) in self.pending.launched.drain(..) {
                w.peer_launched(round, effort);
            }
            // Rounds committed after that state (or while this worker waited): replay them,
            // as far as this worker's own steps go. A round committed after the last
            // exchange of the run (empty: nobody had anything left to send) is not this
            // worker's to apply: for DDP or DeMo it would still move the parameters.
            // (`next_exchange` scans ahead step by step: only when there is a round to replay.)
            // The round in flight is not replayed: this worker lands it where it is due.
            while !self.pending.ready.is_empty()
                && w.in_flight().is_none()
                && w.next_exchange().is_some_and(|at| at < steps)
            {
                let Some(committed) = self.pending.ready.remove(&w.rounds_done()) else { break };
                let exchange = w.replay_round(w.rounds_done(), &committed)?;
                observer.round_applied_to(w, &AppliedRound { exchange, replayed: true });
            }
            // A request names the last round this worker applied when it was made; the
            // state served may be later (it carries its own round counter, and the newcomer
            // drops the replays it already holds), never earlier: a request for a round
            // still in flight here waits until it has landed.
            serve(link, &mut self.pending.snapshot_requests, w.rounds_done(), || {
                snapshot::encode(w)
            })?;
            let done = w.steps_done() >= steps;
            if done && w.in_flight().is_some() {
                // The run's last round launched: every replica lands it before finishing.
                self.land_last(w, link, observer)?;
                continue;
            }
            return Ok(done);
        }
    }

    /// Lands the round in flight after the last step, serving requests from the state as it
    /// is (nothing trains meanwhile).
    fn land_last<S: InnerState>(
        &mut self,
        w: &mut SoloWorker<S>,
        link: &mut dyn RoundLink,
        observer: &mut impl DriveObserver<S>,
    ) -> Result<()> {
        let state = Some((snapshot::Captured::now(w)?, w.rounds_done()));
        let mut ex = LinkExchange { link, pending: &mut self.pending, state };
        match w.land_now(&mut ex) {
            Ok(landed) => {
                if let Some(exchange) = landed {
                    observer.round_applied_to(w, &AppliedRound { exchange, replayed: false });
                }
                Ok(())
            }
            // `settle` takes the peer's state next.
            Err(OptimizerError::TrainStep(msg)) if msg == SUPERSEDED => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Driver::settle`], then one inner step unless `w` has done `steps`. Returns the
    /// step's report, or `None` when the worker is done.
    pub fn step<S: InnerState>(
        &mut self,
        w: &mut SoloWorker<S>,
        link: &mut dyn RoundLink,
        steps: u64,
        observer: &mut impl DriveObserver<S>,
    ) -> Result<Option<SoloStep>> {
        loop {
            if self.settle(w, link, steps, observer)? {
                return Ok(None);
            }
            let pending = &mut self.pending;
            // A step blocks where a round lands (at once where it is due, unless
            // overlapped); keep a state at hand to serve from while it waits.
            let state = blocking_phase(w)
                .map(|phase| snapshot::Captured::before_step(w, phase))
                .transpose()?
                .map(|captured| (captured, w.rounds_done()));
            // A step a balanced worker skips costs no compute.
            let charged = if w.trains_next() { link.before_step(w.steps_done())? } else { None };
            let started = Instant::now();
            let mut ex = LinkExchange { link: &mut *link, pending: &mut *pending, state };
            match w.step(&mut ex) {
                Ok(report) => {
                    // The pace balancing sizes shares by: the charged time, or the wall time
                    // of a trained step that waited for no round.
                    let took =
                        charged.or_else(|| report.exchanges.is_empty().then(|| started.elapsed()));
                    if let Some(took) = took.filter(|_| report.trained) {
                        w.step_took(took.as_secs_f64());
                    }
                    for exchange in &report.exchanges {
                        observer.round_applied_to(
                            w,
                            &AppliedRound { exchange: exchange.clone(), replayed: false },
                        );
                    }
                    observer.step_done(w, &report)?;
                    if w.steps_done() >= steps && w.in_flight().is_some() {
                        // The run's last step launched a round: it lands now, so that a
                        // caller that stops after its last step (a wrapped script's loop)
                        // ends holding it, as every replica does.
                        self.land_last(w, link, observer)?;
                    }
                    return Ok(Some(report));
                }
                Err(OptimizerError::TrainStep(msg)) if msg == SUPERSEDED => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The phase at which `w`'s next step waits for a round to commit, if it does: where a
/// round in flight lands, or where a round is due without overlap.
fn blocking_phase<S: TrainStep>(w: &SoloWorker<S>) -> Option<Phase> {
    let step = w.steps_done();
    if let Some(f) = w.in_flight().filter(|f| f.lands_at == step) {
        return Some(f.phase);
    }
    if w.outer.overlap() > 0 {
        return None;
    }
    [Phase::AfterBackward, Phase::AfterInnerStep]
        .into_iter()
        .find(|&phase| w.outer.exchange_due(phase, step))
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use meridian_optimizer::Algorithm;

    use super::*;

    fn worker(id: u32) -> SoloWorker<crate::step::lm_step::LmStep> {
        crate::testing::tiny_diloco_worker(id)
    }

    /// A run with one member: every payload commits alone. Scripted extra events are
    /// delivered after the commit of the round they are keyed by.
    #[derive(Default)]
    struct Solo {
        queue: VecDeque<NetEvent>,
        after: BTreeMap<u64, Vec<NetEvent>>,
        published: Vec<(u64, Vec<u8>)>,
        states: Vec<(u64, Vec<u8>)>,
        /// Commit ring aggregates (of this one member) instead of payloads.
        ring: Option<meridian_optimizer::ring::DenseRing>,
        /// Commit nothing this worker publishes: the commits are scripted (a newcomer's
        /// rounds are the provider's).
        silent: bool,
    }

    impl RoundLink for Solo {
        fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()> {
            self.published.push((round, payload.clone()));
            if self.silent {
                return Ok(());
            }
            let event = match &self.ring {
                Some(ring) => {
                    let parts = ring.split(&payload, 1)?;
                    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                    NetEvent::AggregateReady { round, members: vec![0], bytes: ring.join(&refs)? }
                }
                None => NetEvent::RoundReady { round, payloads: vec![payload] },
            };
            self.queue.push_back(event);
            self.queue.extend(self.after.remove(&round).unwrap_or_default());
            Ok(())
        }
        fn next_event(&mut self) -> Result<NetEvent> {
            self.queue.pop_front().context("no more events")
        }
        fn poll_event(&mut self) -> Result<Option<NetEvent>> {
            Ok(self.queue.pop_front())
        }
        fn provide_state(&mut self, round: u64, state: Vec<u8>) -> Result<()> {
            self.states.push((round, state));
            Ok(())
        }
    }

    #[test]
    fn a_provider_serves_its_state_and_a_newcomer_continues_from_it_identically() {
        // The provider trains 4 rounds and is asked for its state after round 1.
        let mut a = worker(0);
        let mut link = Solo::default();
        link.after.insert(1, vec![NetEvent::SnapshotRequested { round: 1 }]);
        let mut hashes = Vec::new();
        drive(&mut a, &mut link, 12, false, |r: &AppliedRound| hashes.push(r.exchange.hash))
            .unwrap();
        assert_eq!(hashes.len(), 4);
        assert_eq!(link.states.len(), 1);
        let (round, state) = link.states[0].clone();
        assert_eq!(round, 1);
        // The newcomer takes that state, then the commits of rounds 2 and 3 are replayed.
        let mut b = worker(1);
        let mut net = Solo::default();
        net.queue.push_back(NetEvent::StateReceived { round, bytes: state });
        for (r, p) in link.published.iter().filter(|(r, _)| *r >= 2) {
            net.queue.push_back(NetEvent::RoundReady { round: *r, payloads: vec![p.clone()] });
        }
        let mut seen = Vec::new();
        drive(&mut b, &mut net, 12, true, |r: &AppliedRound| {
            seen.push((r.exchange.round, r.replayed))
        })
        .unwrap();
        assert_eq!(seen, vec![(2, true), (3, true)]);
        assert_eq!((b.steps_done(), b.rounds_done()), (12, 4));
        assert_eq!(b.outer.consensus_hash(&b.params).unwrap(), *hashes.last().unwrap());
        assert!(net.published.is_empty(), "nothing left to train");
    }

    #[test]
    fn a_newcomer_replaying_gradient_exchanges_ends_identical() {
        // DDP and DeMo exchange after the backward pass: a replayed round must also take
        // the step the live workers took with it.
        for algorithm in [Algorithm::Ddp, Algorithm::Demo] {
            let mut a = crate::testing::tiny_worker(0, algorithm, &[]);
            let mut link = Solo::default();
            link.after.insert(1, vec![NetEvent::SnapshotRequested { round: 1 }]);
            drive(&mut a, &mut link, 6, false, |_: &AppliedRound| {}).unwrap();
            let (round, state) = link.states[0].clone();
            let mut b = crate::testing::tiny_worker(1, algorithm, &[]);
            let mut net = Solo::default();
            net.queue.push_back(NetEvent::StateReceived { round, bytes: state });
            for (r, p) in link.published.iter().filter(|(r, _)| *r >= 2) {
                net.queue.push_back(NetEvent::RoundReady { round: *r, payloads: vec![p.clone()] });
            }
            drive(&mut b, &mut net, 6, true, |_: &AppliedRound| {}).unwrap();
            assert_eq!(b.rounds_done(), 6, "{algorithm}");
            // (A round's own hash is taken before the inner step its gradient feeds.)
            let (hb, ha) = (b.outer.consensus_hash(&b.params), a.outer.consensus_hash(&a.params));
            assert_eq!(hb.unwrap(), ha.unwrap(), "{algorithm}: the newcomer diverged");
        }
    }

    #[test]
    fn a_streaming_newcomer_replays_each_fragment_and_ends_identical() {
        // Streaming DiLoCo learns which fragment is due, and merges the ones whose overlap
        // ended, after the inner step: a replayed round must do the same, or it applies the
        // commit to the wrong fragment.
        let settings = [("inner_steps", "8"), ("fragments", "2"), ("overlap", "1")];
        let mut a = crate::testing::tiny_worker(0, Algorithm::Streaming, &settings);
        let mut link = Solo::default();
        link.after.insert(1, vec![NetEvent::SnapshotRequested { round: 1 }]);
        let mut hashes = Vec::new();
        drive(&mut a, &mut link, 24, false, |r: &AppliedRound| hashes.push(r.exchange.hash))
            .unwrap();
        assert_eq!(hashes.len(), 6, "two fragments per 8 steps");
        let (round, state) = link.states[0].clone();
        let mut b = crate::testing::tiny_worker(1, Algorithm::Streaming, &settings);
        let mut net = Solo::default();
        net.queue.push_back(NetEvent::StateReceived { round, bytes: state });
        for (r, p) in link.published.iter().filter(|(r, _)| *r >= 2) {
            net.queue.push_back(NetEvent::RoundReady { round: *r, payloads: vec![p.clone()] });
        }
        let mut seen = Vec::new();
        drive(&mut b, &mut net, 24, true, |r: &AppliedRound| {
            seen.push((r.exchange.round, r.exchange.hash))
        })
        .unwrap();
        assert_eq!(seen.len(), 4);
        for (round, hash) in seen {
            assert_eq!(hash, hashes[round as usize], "round {round} replayed differently");
        }
    }

    #[test]
    fn an_overlapped_provider_serves_a_newcomer_that_lands_every_round_identically() {
        // Rounds land `overlap` steps after they commit: a request for a round not yet
        // landed waits for it, and the state served may carry the next round in flight,
        // which the newcomer lands where the provider does. With overlap = H a round is
        // always in flight; with 2 of 4 there are gaps.
        for (algorithm, settings) in [
            (Algorithm::Diloco, vec![("inner_steps", "4"), ("overlap", "2")]),
            (Algorithm::Diloco, vec![("inner_steps", "4"), ("overlap", "4")]),
            (Algorithm::Sparseloco, vec![("inner_steps", "4"), ("overlap", "3")]),
            (Algorithm::Demo, vec![("overlap", "1")]),
        ] {
            let steps = if algorithm == Algorithm::Demo { 6 } else { 20 };
            let mut a = crate::testing::tiny_worker(0, algorithm, &settings);
            let mut link = Solo::default();
            link.after.insert(1, vec![NetEvent::SnapshotRequested { round: 1 }]);
            let mut hashes = Vec::new();
            drive(&mut a, &mut link, steps, false, |r: &AppliedRound| hashes.push(r.exchange.hash))
                .unwrap();
            let rounds = link.published.len();
            assert_eq!(hashes.len(), rounds, "{algorithm}: the last round landed too");
            assert!(a.in_flight().is_none());
            let (round, state) = link.states[0].clone();
            assert_eq!(round, 1);
            // With overlap = H (DeMo: 1) the state holds the next round in flight; with
            // gaps between rounds it was served from one.
            let carried = meridian_optimizer::outer::OptimizerState::from_bytes(&state)
                .unwrap()
                .tensors
                .contains_key("in_flight/lands_at");
            let always = settings.contains(&("overlap", "4")) || algorithm == Algorithm::Demo;
            assert_eq!(carried, always, "{algorithm} {settings:?}");
            let mut b = crate::testing::tiny_worker(1, algorithm, &settings);
            let mut net = Solo { silent: true, ..Solo::default() };
            net.queue.push_back(NetEvent::StateReceived { round, bytes: state });
            for (r, p) in link.published.iter().filter(|(r, _)| *r >= 2) {
                net.queue.push_back(NetEvent::RoundReady { round: *r, payloads: vec![p.clone()] });
            }
            let mut seen = Vec::new();
            drive(&mut b, &mut net, steps, true, |r: &AppliedRound| {
                seen.push((r.exchange.round, r.exchange.hash))
            })
            .unwrap();
            assert!(!seen.is_empty(), "{algorithm}");
            for (r, hash) in &seen {
                assert_eq!(*hash, hashes[*r as usize], "{algorithm}: round {r} differs");
            }
            assert_eq!(seen.last().unwrap().0 as usize, rounds - 1, "{algorithm}");
            assert_eq!(b.rounds_done(), a.rounds_done(), "{algorithm}");
        }
    }

    #[test]
    fn a_round_committed_after_the_runs_last_exchange_is_not_applied() {
        // DDP over 6 steps: rounds 0..=5. An empty round 6 (the coordinator opened it and
        // nobody delivered) arrives with round 5's commit: applying it would move DDP's
        // parameters by a momentum step the others never took.
        let run = |extra: bool| {
            let mut w = crate::testing::tiny_worker(0, Algorithm::Ddp, &[]);
            let mut link = Solo::default();
            if extra {
                link.after.insert(5, vec![NetEvent::RoundReady { round: 6, payloads: vec![] }]);
            }
            drive(&mut w, &mut link, 6, false, |_: &AppliedRound| {}).unwrap();
            (w.rounds_done(), w.outer.consensus_hash(&w.params).unwrap())
        };
        assert_eq!(run(true), run(false));
        assert_eq!(run(true).0, 6);
    }

    #[test]
    fn ring_aggregates_train_and_replay_like_payloads() {
        // One member: the f32 sum of one payload is the payload, so a ring run must end on
        // the very bits of a relay run.
        let mut relay = worker(0);
        let mut hashes = Vec::new();
        drive(&mut relay, &mut Solo::default(), 12, false, |r: &AppliedRound| {
            hashes.push(r.exchange.hash)
        })
        .unwrap();
        let mut ringed = worker(0);
        let ring = ringed.outer.ring(&ringed.params).unwrap();
        let mut link = Solo { ring: Some(ring.clone()), ..Solo::default() };
        link.after.insert(1, vec![NetEvent::SnapshotRequested { round: 1 }]);
        let mut ring_hashes = Vec::new();
        drive(&mut ringed, &mut link, 12, false, |r: &AppliedRound| {
            assert_eq!(r.exchange.applied, vec![0]);
            ring_hashes.push(r.exchange.hash);
        })
        .unwrap();
        assert_eq!(ring_hashes, hashes);
        // A newcomer takes the state after round 1 and replays rounds 2 and 3 from their
        // aggregates.
        let (round, state) = link.states[0].clone();
        let mut b = worker(1);
        let mut net = Solo::default();
        net.queue.push_back(NetEvent::StateReceived { round, bytes: state });
        for (r, p) in link.published.iter().filter(|(r, _)| *r >= 2) {
            let parts = ring.split(p, 1).unwrap();
            let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let bytes = ring.join(&refs).unwrap();
            net.queue.push_back(NetEvent::AggregateReady { round: *r, members: vec![0], bytes });
        }
        let mut seen = Vec::new();
        drive(&mut b, &mut net, 12, true, |r: &AppliedRound| {
            seen.push((r.exchange.round, r.replayed))
        })
        .unwrap();
        assert_eq!(seen, vec![(2, true), (3, true)]);
        assert_eq!(b.outer.consensus_hash(&b.params).unwrap(), *hashes.last().unwrap());
    }

    #[test]
    fn a_link_that_fails_ends_the_run_with_its_reason() {
        struct Refused;
        impl RoundLink for Refused {
            fn publish(&mut self, _: u64, _: Vec<u8>) -> Result<()> {
                anyhow::bail!("refused by coordinator: wrong join secret")
            }
            fn next_event(&mut self) -> Result<NetEvent> {
                anyhow::bail!("refused by coordinator: wrong join secret")
            }
            fn poll_event(&mut self) -> Result<Option<NetEvent>> {
                Ok(None)
            }
            fn provide_state(&mut self, _: u64, _: Vec<u8>) -> Result<()> {
                Ok(())
            }
        }
        let mut a = worker(0);
        let e = drive(&mut a, &mut Refused, 6, false, |_: &AppliedRound| {}).unwrap_err();
        assert!(format!("{e:#}").contains("wrong join secret"), "{e:#}");
    }
}
