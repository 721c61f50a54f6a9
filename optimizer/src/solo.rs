//! One worker on its own, exchanging through the network: the per-process twin of the
//! in-process [`crate::harness::Harness`].
//!
//! The call order is the harness's (see [`crate::outer`]), for one worker. At an exchange
//! the worker encodes its payload and hands it to an [`Exchange`], which returns the
//! encoded payloads of the round's committed members (its own among them if it delivered
//! in time) once the round has closed; the worker decodes and applies exactly those, in
//! member-id order. A worker whose own payload missed the round applies the others' and
//! goes on: it is never stalled.

use crate::divergence::{self, Place};
use crate::error::{OptimizerError, Result};
use crate::outer::{OuterOptimizer, Phase};
use crate::params::ParamSet;
use crate::payload::Payload;
use crate::rejection::{Rejection, Rejections};
use crate::train_step::TrainStep;

/// What a round committed, as an [`Exchange`] hands it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// The encoded payloads of the committed members, in any order.
    Payloads(Vec<Vec<u8>>),
    /// A ring all-reduce's aggregate: the sum of the payloads of `members` (ascending), as
    /// [`DenseRing::join`](crate::ring::DenseRing::join) packed it.
    Aggregate {
        /// The members it sums.
        members: Vec<u32>,
        /// The aggregate.
        bytes: Vec<u8>,
    },
}

/// Moves one round's payloads between workers (a network client, or a test double).
pub trait Exchange {
    /// Publishes this worker's encoded payload for `round` and returns the encoded
    /// payloads of the members the round committed, in any order.
    fn exchange(&mut self, round: u64, payload: Vec<u8>) -> Result<Vec<Vec<u8>>>;

    /// Like [`Exchange::exchange`], for exchanges that may commit a ring aggregate instead
    /// of payloads. By default the committed payloads.
    fn exchange_committed(&mut self, round: u64, payload: Vec<u8>) -> Result<Committed> {
        self.exchange(round, payload).map(Committed::Payloads)
    }
}

/// What one exchange did for this worker.
#[derive(Debug, Clone, PartialEq)]
pub struct SoloExchange {
    /// Round number.
    pub round: u64,
    /// Bytes this worker sent.
    pub sent: usize,
    /// Bytes of the committed payloads it received (its own excluded).
    pub received: usize,
    /// Members whose payloads were applied.
    pub applied: Vec<u32>,
    /// Members whose payloads were rejected, with the reason.
    pub rejected: Rejections,
    /// [`OuterOptimizer::consensus_hash`] after applying.
    pub hash: u64,
}

/// What one inner step did.
#[derive(Debug, Clone, PartialEq)]
pub struct SoloStep {
    /// Inner step index (from 0).
    pub step: u64,
    /// Training loss.
    pub loss: f64,
    /// Exchanges during this step.
    pub exchanges: Vec<SoloExchange>,
}

/// One worker: its training, parameters and outer optimizer.
pub struct SoloWorker<S> {
    /// Member id.
    pub id: u32,
    /// The wrapped training.
    pub train: S,
    /// Its parameters (sharing storage with `train`'s model).
    pub params: ParamSet,
    /// Its outer optimizer.
    pub outer: Box<dyn OuterOptimizer>,
    step: u64,
    round: u64,
}

impl<S: TrainStep> SoloWorker<S> {
    /// Wraps `train` as member `id` with the outer optimizer `make_outer` builds.
    pub fn new(
        id: u32,
        mut train: S,
        make_outer: impl FnOnce(&ParamSet) -> Result<Box<dyn OuterOptimizer>>,
    ) -> Result<Self> {
        let params = ParamSet::new(train.parameters())?;
        let outer = make_outer(&params)?;
        train.driven_by(outer.algorithm(), outer.divergence_suspects());
        Ok(Self { id, train, params, outer, step: 0, round: 0 })
    }

    /// Inner steps done.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Exchanges done.
    pub fn rounds_done(&self) -> u64 {
        self.round
    }

    /// Sets the progress counters (after restoring state from a checkpoint or a peer).
    pub fn resume_at(&mut self, step: u64, round: u64) {
        self.step = step;
        self.round = round;
    }

    /// `e` with this worker's algorithm, where it stands and the suspects, when it is a
    /// divergence ([`crate::divergence`]); any other error unchanged.
    fn placed(&self, e: OptimizerError, round: u64) -> OptimizerError {
        divergence::place(e, self.outer.algorithm(), Place { round, step: self.step }, || {
            let mut s = self.outer.divergence_suspects();
            s.extend(self.train.divergence_suspects());
            s
        })
    }

    /// Runs one inner step, exchanging through `net` when an exchange falls due. A loss or
    /// parameters that turn non-finite stop the worker ([`crate::divergence`]).
    pub fn step(&mut self, net: &mut dyn Exchange) -> Result<SoloStep> {
        let step = self.step;
        let loss = self
            .train
            .forward_backward()
            .and_then(|l| divergence::check_loss(l).map(|()| l))
            .map_err(|e| self.placed(e, self.round))?;
        let mut exchanges = Vec::new();
        if self.outer.exchange_due(Phase::AfterBackward, step) {
            exchanges.push(self.exchange(net)?);
        }
        if self.outer.runs_inner_optimizer() {
            self.train.inner_step().map_err(|e| self.placed(e, self.round))?;
        }
        self.outer.after_inner_step(&self.params, step).map_err(|e| self.placed(e, self.round))?;
        if self.outer.exchange_due(Phase::AfterInnerStep, step) {
            exchanges.push(self.exchange(net)?);
        }
        self.step += 1;
        Ok(SoloStep { step, loss, exchanges })
    }

    fn exchange(&mut self, net: &mut dyn Exchange) -> Result<SoloExchange> {
        let round = self.round;
        let mine = self
            .outer
            .prepare(&self.params, round, self.id)
            .map_err(|e| self.placed(e, round))?
            .encode();
        let sent = mine.len();
        let committed = net.exchange_committed(round, mine)?;
        let mut x = self.apply_round(round, &committed)?;
        x.sent = sent;
        Ok(x)
    }

    /// Applies what round `round` committed: payloads or a ring aggregate.
    pub fn apply_round(&mut self, round: u64, committed: &Committed) -> Result<SoloExchange> {
        match committed {
            Committed::Payloads(payloads) => self.apply_committed(round, payloads),
            Committed::Aggregate { members, bytes } => self.apply_aggregate(round, members, bytes),
        }
    }

    /// Applies round `round` from a ring aggregate of `members`' payloads. The round must be
    /// the next one this worker expects.
    pub fn apply_aggregate(
        &mut self,
        round: u64,
        members: &[u32],
        aggregate: &[u8],
    ) -> Result<SoloExchange> {
        self.expect_round(round)?;
        let report = self.outer.apply_aggregate(&self.params, round, members, aggregate)?;
        // Every replica holds these parameters: all of them stop here, or none.
        divergence::check_params(&self.params).map_err(|e| self.placed(e, round))?;
        self.round += 1;
        Ok(SoloExchange {
            round,
            sent: 0,
            received: aggregate.len(),
            applied: report.applied,
            rejected: report.rejected,
            hash: self.outer.consensus_hash(&self.params)?,
        })
    }

    fn expect_round(&self, round: u64) -> Result<()> {
        if round != self.round {
            return Err(crate::OptimizerError::State(format!(
                "round {round} committed, but this worker expects round {}",
                self.round
            )));
        }
        Ok(())
    }

    /// The step (from the current one on) at which the next exchange happens, if one does
    /// within 2^20 steps.
    pub fn next_exchange(&self) -> Option<u64> {
        (self.step..self.step.saturating_add(1 << 20)).find(|&s| {
            self.outer.exchange_due(Phase::AfterBackward, s)
                || self.outer.exchange_due(Phase::AfterInnerStep, s)
        })
    }

    /// Replays round `round`, which the others trained for while this worker was away:
    /// applies its committed payloads and moves the step counter past the step at which
    /// the round's exchange happens, as if this worker had trained through it.
    pub fn replay_committed(&mut self, round: u64, committed: &[Vec<u8>]) -> Result<SoloExchange> {
        self.replay_round(round, &Committed::Payloads(committed.to_vec()))
    }

    /// [`SoloWorker::replay_committed`] for payloads or a ring aggregate.
    pub fn replay_round(&mut self, round: u64, committed: &Committed) -> Result<SoloExchange> {
        let at = self.next_exchange().ok_or_else(|| {
            crate::OptimizerError::State("no exchange within 2^20 steps to replay".into())
        })?;
        // An exchange after the inner step follows `after_inner_step` of that step on the
        // live workers (Streaming DiLoCo learns there which fragment is due, and merges the
        // fragments whose overlap ended): the replay takes it too, without training.
        let after_inner = self.outer.exchange_due(Phase::AfterInnerStep, at)
            && !self.outer.exchange_due(Phase::AfterBackward, at);
        if after_inner {
            self.outer.after_inner_step(&self.params, at)?;
        }
        let x = self.apply_round(round, committed)?;
        // An exchange after the backward pass hands over the gradient: the replica moves
        // only once the inner optimizer steps with it, as it did on every live worker.
        if self.outer.exchange_due(Phase::AfterBackward, at) {
            if self.outer.runs_inner_optimizer() {
                self.train.inner_step()?;
            }
            self.outer.after_inner_step(&self.params, at)?;
        }
        self.step = at + 1;
        Ok(x)
    }

    /// Applies round `round`'s committed payloads without having trained for it: how a
    /// worker that caught up from a snapshot replays the rounds committed after it. The
    /// round must be the next one this worker expects.
    pub fn apply_committed(&mut self, round: u64, committed: &[Vec<u8>]) -> Result<SoloExchange> {
        self.expect_round(round)?;
        let mut received = 0;
        let mut payloads = Vec::with_capacity(committed.len());
        let mut rejected = Vec::new();
        for bytes in committed {
            match Payload::decode(bytes, self.params.shapes()) {
                Ok(p) => {
                    if p.worker != self.id {
                        received += bytes.len();
                    }
                    payloads.push(p);
                }
                // The sender is unknown when the bytes do not even decode; the driver
                // that knows who sent them logs it.
                Err(e) => rejected.push((u32::MAX, Rejection::Malformed(e.to_string()))),
            }
        }
        let report = self.outer.apply(&self.params, round, &payloads)?;
        // Every replica holds these parameters (but for Streaming DiLoCo's unsynced
        // fragments): all of them stop here, or none.
        divergence::check_params(&self.params).map_err(|e| self.placed(e, round))?;
        rejected.extend(report.rejected);
        self.round += 1;
        Ok(SoloExchange {
            round,
            sent: 0,
            received,
            applied: report.applied,
            rejected,
            hash: self.outer.consensus_hash(&self.params)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier, Mutex};

    use super::*;
    use crate::config::AlgoConfig;
    use crate::harness::Harness;
    use crate::toy::{ToyConfig, ToyMlp};
    use crate::Algorithm;

    /// An in-memory all-gather: every worker deposits its payload, waits for the others,
    /// and takes them all (optionally leaving one member out, as a missed deadline would).
    struct Board {
        slots: Mutex<Vec<Option<Vec<u8>>>>,
        arrived: Barrier,
        taken: Barrier,
        drop_member_in_round: Option<(u32, u64)>,
    }

    struct Seat {
        id: u32,
        board: Arc<Board>,
    }

    impl Exchange for Seat {
        fn exchange(&mut self, round: u64, payload: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            let late = self.board.drop_member_in_round == Some((self.id, round));
            self.board.slots.lock().unwrap()[self.id as usize] = (!late).then_some(payload);
            self.board.arrived.wait();
            let all: Vec<Vec<u8>> =
                self.board.slots.lock().unwrap().iter().flatten().cloned().collect();
            self.board.taken.wait();
            Ok(all)
        }
    }

    fn run_solo(algo: Algorithm, n: u32, steps: u64, drop: Option<(u32, u64)>) -> Vec<Vec<u64>> {
        let board = Arc::new(Board {
            slots: Mutex::new(vec![None; n as usize]),
            arrived: Barrier::new(n as usize),
            taken: Barrier::new(n as usize),
            drop_member_in_round: drop,
        });
        let handles: Vec<_> = (0..n)
            .map(|id| {
                let board = board.clone();
                std::thread::spawn(move || {
                    tch::set_num_threads(1);
                    let cfg = config(algo);
                    let train = ToyMlp::new(ToyConfig::default(), id).unwrap();
                    let mut w = SoloWorker::new(id, train, |p| cfg.build(p)).unwrap();
                    let mut seat = Seat { id, board };
                    let mut hashes = Vec::new();
                    for _ in 0..steps {
                        for x in w.step(&mut seat).unwrap().exchanges {
                            assert!(x.rejected.is_empty(), "{:?}", x.rejected);
                            hashes.push(x.hash);
                        }
                    }
                    hashes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn config(algo: Algorithm) -> AlgoConfig {
        let mut c = AlgoConfig::default_for(algo);
        if algo != Algorithm::Ddp && algo != Algorithm::Demo {
            c = AlgoConfig::from_parts(
                algo,
                toml::Table::new(),
                &[("inner_steps".into(), "4".into())],
            )
            .unwrap();
        }
        c
    }

    #[test]
    fn solo_workers_over_an_exchange_match_the_in_process_harness_bit_for_bit() {
        for algo in [Algorithm::Ddp, Algorithm::Diloco, Algorithm::Sparseloco, Algorithm::Demo] {
            let solo = run_solo(algo, 3, 8, None);
            assert!(solo.windows(2).all(|w| w[0] == w[1]), "{algo}: replicas differ");
            tch::set_num_threads(1);
            let trains = (0..3).map(|w| ToyMlp::new(ToyConfig::default(), w).unwrap()).collect();
            let cfg = config(algo);
            let mut h = Harness::new(trains, |_, p| cfg.build(p)).unwrap();
            let harness: Vec<u64> = h
                .run(8)
                .unwrap()
                .into_iter()
                .flat_map(|r| r.exchanges.into_iter().map(|x| x.hashes[0]))
                .collect();
            assert_eq!(solo[0], harness, "{algo}");
        }
    }

    #[test]
    fn a_member_left_out_of_a_round_still_applies_it_and_stays_identical() {
        let full = run_solo(Algorithm::Diloco, 3, 8, None);
        let partial = run_solo(Algorithm::Diloco, 3, 8, Some((1, 0)));
        assert!(partial.windows(2).all(|w| w[0] == w[1]), "replicas differ");
        assert_ne!(full[0][0], partial[0][0], "round 0 without member 1 is another average");
    }

    /// An in-memory ring: every worker deposits its payload, and each takes the aggregate
    /// the ring schedule computes over all of them.
    struct RingSeat {
        id: u32,
        board: Arc<Board>,
        ring: crate::ring::DenseRing,
    }

    impl Exchange for RingSeat {
        fn exchange(&mut self, _: u64, _: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            unreachable!("ring seats commit aggregates")
        }

        fn exchange_committed(&mut self, _: u64, payload: Vec<u8>) -> Result<Committed> {
            self.board.slots.lock().unwrap()[self.id as usize] = Some(payload);
            self.board.arrived.wait();
            let all: Vec<Vec<u8>> =
                self.board.slots.lock().unwrap().iter().flatten().cloned().collect();
            self.board.taken.wait();
            let members = (0..all.len() as u32).collect();
            Ok(Committed::Aggregate { members, bytes: crate::ring::ring_sum(&self.ring, &all)? })
        }
    }

    fn run_ring(cfg: AlgoConfig, n: u32, steps: u64) -> Vec<(Vec<u64>, f64, f64)> {
        let board = Arc::new(Board {
            slots: Mutex::new(vec![None; n as usize]),
            arrived: Barrier::new(n as usize),
            taken: Barrier::new(n as usize),
            drop_member_in_round: None,
        });
        let handles: Vec<_> = (0..n)
            .map(|id| {
                let (board, cfg) = (board.clone(), cfg.clone());
                std::thread::spawn(move || {
                    tch::set_num_threads(1);
                    let train = ToyMlp::new(ToyConfig::default(), id).unwrap();
                    let mut w = SoloWorker::new(id, train, |p| cfg.build(p)).unwrap();
                    let ring = w.outer.ring(&w.params).expect("a dense algorithm");
                    let mut seat = RingSeat { id, board, ring };
                    let before = w.train.eval_loss().unwrap();
                    let mut hashes = Vec::new();
                    for _ in 0..steps {
                        for x in w.step(&mut seat).unwrap().exchanges {
                            assert!(x.rejected.is_empty(), "{:?}", x.rejected);
                            assert_eq!(x.applied, (0..n).collect::<Vec<_>>());
                            hashes.push(x.hash);
                        }
                    }
                    (hashes, before, w.train.eval_loss().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn ring_aggregates_keep_ddp_and_diloco_replicas_identical_and_training() {
        let diloco = |transport: &str| {
            AlgoConfig::from_parts(
                Algorithm::Diloco,
                toml::Table::new(),
                &[("inner_steps".into(), "4".into()), ("transport".into(), transport.into())],
            )
            .unwrap()
        };
        let ddp = AlgoConfig::default_for(Algorithm::Ddp);
        for (name, cfg, steps) in [
            ("ddp", ddp, 12),
            ("diloco f32", diloco("f32"), 24),
            ("diloco int8", diloco("int8"), 24),
        ] {
            let runs = run_ring(cfg, 3, steps);
            assert!(runs.windows(2).all(|w| w[0].0 == w[1].0), "{name}: replicas differ");
            assert!(!runs[0].0.is_empty());
            let (_, before, after) = runs[0];
            assert!(after < before, "{name}: loss {before} -> {after}");
        }
    }

    #[test]
    fn sparse_algorithms_refuse_ring_aggregates() {
        tch::set_num_threads(1);
        for algo in [Algorithm::Demo, Algorithm::Sparseloco, Algorithm::Streaming] {
            let cfg = AlgoConfig::default_for(algo);
            let mut w =
                SoloWorker::new(0, ToyMlp::new(ToyConfig::default(), 0).unwrap(), |p| cfg.build(p))
                    .unwrap();
            assert!(w.outer.ring(&w.params).is_none(), "{algo}");
            let err = w.apply_aggregate(0, &[0], b"anything").unwrap_err();
            assert!(err.to_string().contains("cannot be summed by a ring"), "{algo}: {err}");
        }
    }

    /// One member alone: its own payload is the whole commit; keeps a copy.
    struct Alone(Vec<Vec<u8>>);
    impl Exchange for Alone {
        fn exchange(&mut self, _: u64, payload: Vec<u8>) -> Result<Vec<Vec<u8>>> {
            self.0.push(payload.clone());
            Ok(vec![payload])
        }
    }

    #[test]
    fn replaying_a_round_applies_it_and_skips_its_steps() {
        tch::set_num_threads(1);
        let cfg = config(Algorithm::Diloco);
        let mut a =
            SoloWorker::new(0, ToyMlp::new(ToyConfig::default(), 0).unwrap(), |p| cfg.build(p))
                .unwrap();
        let mut net = Alone(Vec::new());
        for _ in 0..4 {
            a.step(&mut net).unwrap();
        }
        let mut b =
            SoloWorker::new(0, ToyMlp::new(ToyConfig::default(), 1).unwrap(), |p| cfg.build(p))
                .unwrap();
        assert!(b.replay_committed(1, &net.0).is_err(), "rounds replay in order");
        b.replay_committed(0, &net.0).unwrap();
        assert_eq!((b.steps_done(), b.rounds_done()), (4, 1));
        assert_eq!(
            b.outer.consensus_hash(&b.params).unwrap(),
            a.outer.consensus_hash(&a.params).unwrap()
        );
    }

    fn diloco_worker(outer_lr: f64) -> SoloWorker<ToyMlp> {
        let cfg =
            crate::outer::diloco::DilocoConfig { inner_steps: 2, outer_lr, ..Default::default() };
        SoloWorker::new(0, ToyMlp::new(ToyConfig::default(), 0).unwrap(), |p| {
            Ok(Box::new(crate::outer::diloco::Diloco::new(cfg, p)?))
        })
        .unwrap()
    }

    #[test]
    fn a_diverging_worker_stops_naming_the_round_and_the_setting() {
        tch::set_num_threads(1);
        let mut w = diloco_worker(1e30);
        let mut net = Alone(Vec::new());
        let err = (0..40).find_map(|_| w.step(&mut net).err()).expect("the run must stop");
        let OptimizerError::Diverged(d) = &err else { panic!("{err}") };
        assert_eq!(d.algorithm, Some(Algorithm::Diloco));
        assert!(d.round.is_some() && d.step.is_some(), "{err}");
        let e = err.to_string();
        assert!(e.contains("diloco.outer_lr=1e30 is far above the published 0.7"), "{e}");
        assert!(!e.contains("inner."), "the outer rate is the one to blame: {e}");
    }

    #[test]
    fn parameters_that_overflow_in_the_outer_step_stop_the_worker() {
        tch::set_num_threads(1);
        let mut w = diloco_worker(2.0);
        let mut p = w.outer.prepare(&w.params, 0, 0).unwrap();
        // Finite and within the payload bound (half of f32::MAX for one member), but the
        // Nesterov step, 2 × 1.9 × Δ, overflows f32.
        let shape = w.params.shapes()[0].clone();
        let n: usize = shape.iter().product();
        p.segments[0] = crate::payload::Segment::dense(0, &shape, &vec![1.5e38; n], false);
        let err = w.apply_committed(0, &[p.encode()]).unwrap_err().to_string();
        let name = &w.params.names()[0];
        assert!(err.starts_with("diloco diverged in round 0"), "{err}");
        assert!(err.contains("diloco.outer_lr=2 is above the published 0.7"), "{err}");
        assert!(
            err.contains(&format!("after the outer step, parameter {name} holds -inf")),
            "{err}"
        );
        // A valid round goes through the same check untouched.
        let mut ok = diloco_worker(0.7);
        let mut net = Alone(Vec::new());
        for _ in 0..4 {
            ok.step(&mut net).unwrap();
        }
        assert_eq!(ok.rounds_done(), 2);
    }
}
