//! One worker on its own, exchanging through the network: the per-process twin of the
//! in-process [`crate::harness::Harness`].
//!
//! The call order is the harness's (see [`crate::outer`]), for one worker. At an exchange
//! the worker encodes its payload and hands it to an [`Exchange`], which returns the
//! encoded payloads of the round's committed members (its own among them if it delivered
//! in time) once the round has closed; the worker decodes and applies exactly those, in
//! member-id order. A worker whose own payload missed the round applies the others' and
//! goes on: it is never stalled.
//!
//! With an overlapped algorithm ([`OuterOptimizer::overlap`] τ > 0) the worker publishes
//! its payload where the round is due ([`Exchange::publish`]), trains on, and collects and
//! applies the round τ inner steps later at the same phase ([`Exchange::collect`]); the
//! round is then [`InFlight`].

use crate::balance::Balance;
use crate::divergence::{self, Place};
use crate::error::{OptimizerError, Result};
use crate::outer::{OuterOptimizer, Phase};
use crate::params::ParamSet;
use crate::payload::{Effort, Payload};
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

    /// Publishes this worker's payload for `round` without waiting for the round to
    /// commit: an overlapped round's launch. [`Exchange::collect`] takes the commit later.
    /// An exchange that can only block says so (the default).
    fn publish(&mut self, round: u64, _payload: Vec<u8>) -> Result<()> {
        Err(OptimizerError::Config(format!(
            "round {round}: this exchange cannot run a round in the background; set the \
             algorithm's overlap to 0"
        )))
    }

    /// Waits for the commit of `round`, published earlier with [`Exchange::publish`].
    fn collect(&mut self, round: u64) -> Result<Committed> {
        Err(OptimizerError::Config(format!("round {round} was never published in the background")))
    }
}

/// A round published and not yet applied (overlap): where it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    /// The round.
    pub round: u64,
    /// The inner step at which it lands.
    pub lands_at: u64,
    /// The phase of that step at which it lands (where it was launched).
    pub phase: Phase,
    /// Bytes this worker sent for it.
    pub sent: usize,
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
    /// Whether the step trained: a balanced worker skips the steps its pace leaves out
    /// ([`crate::balance`]); a skipped step only exchanges, where an exchange falls.
    pub trained: bool,
    /// Training loss (NaN for a skipped step).
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
    in_flight: Option<InFlight>,
    balance: Balance,
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
        let balance = Balance::new(outer.balance());
        Ok(Self { id, train, params, outer, step: 0, round: 0, in_flight: None, balance })
    }

    /// Inner steps done.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Rounds applied (a round in flight is not counted until it lands).
    pub fn rounds_done(&self) -> u64 {
        self.round
    }

    /// The round published and not yet applied, if any (overlap).
    pub fn in_flight(&self) -> Option<InFlight> {
        self.in_flight
    }

    /// Whether the next inner step trains (a balanced worker skips some; see
    /// [`crate::balance`]): a driver that charges compute charges only these.
    pub fn trains_next(&self) -> bool {
        self.balance.trains(self.step)
    }

    /// The share of inner steps this worker trains (1 unless balanced and slower).
    pub fn duty(&self) -> f64 {
        self.balance.duty()
    }

    /// Another member's payload for `round` arrived before the commit, stating `effort`:
    /// when this worker has not launched that round yet, balancing may size its remaining
    /// steps by it ([`Balance::early`]).
    pub fn peer_launched(&mut self, round: u64, effort: Effort) {
        let preparing = self.round + u64::from(self.in_flight.is_some());
        if round == preparing {
            self.balance.early(effort);
        }
    }

    /// The compute time of the step just trained, as the driver measured or charged it:
    /// the pace a balanced run sizes its workers' shares by.
    pub fn step_took(&mut self, seconds: f64) {
        self.balance.timed(seconds);
    }

    /// Sets the progress counters (after restoring state from a checkpoint or a peer):
    /// `step` inner steps and `round` rounds applied, and the round in flight then, which
    /// must be round `round` (rounds land in order).
    pub fn resume_at(&mut self, step: u64, round: u64) {
        self.step = step;
        self.round = round;
        self.in_flight = None;
        // The pace is measured afresh from here on: the worker sizes its share as it does
        // in its first round.
        self.balance = Balance::new(self.outer.balance());
    }

    /// [`SoloWorker::resume_at`] with a round in flight, which must be round `round` and
    /// land after `step` inner steps are done at the earliest.
    pub fn resume_in_flight(&mut self, step: u64, round: u64, in_flight: InFlight) -> Result<()> {
        if in_flight.round != round || in_flight.lands_at < step {
            return Err(OptimizerError::State(format!(
                "a state with {round} rounds applied at step {step} cannot have round {} in \
                 flight to land at step {}",
                in_flight.round, in_flight.lands_at
            )));
        }
        self.resume_at(step, round);
        self.in_flight = Some(in_flight);
        Ok(())
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
        let trained = self.trains_next();
        let loss = if trained {
            self.train
                .forward_backward()
                .and_then(|l| divergence::check_loss(l).map(|()| l))
                .map_err(|e| self.placed(e, self.round))?
        } else {
            f64::NAN
        };
        let mut exchanges = Vec::new();
        self.exchange_point(Phase::AfterBackward, net, &mut exchanges)?;
        if trained && self.outer.runs_inner_optimizer() {
            self.train.inner_step().map_err(|e| self.placed(e, self.round))?;
        }
        self.balance.stepped(trained);
        self.exchange_point(Phase::AfterInnerStep, net, &mut exchanges)?;
        self.step += 1;
        Ok(SoloStep { step, trained, loss, exchanges })
    }

    /// Lands the round in flight now, wherever its landing was due: how a run ends, so that
    /// the last round launched is in the final model on every replica. `None` when no
    /// round is in flight.
    pub fn land_now(&mut self, net: &mut dyn Exchange) -> Result<Option<SoloExchange>> {
        let Some(f) = self.in_flight else { return Ok(None) };
        let committed = net.collect(f.round)?;
        self.in_flight = None;
        let mut x = self.apply_round(f.round, &committed)?;
        x.sent = f.sent;
        Ok(Some(x))
    }

    /// At `phase` of the current step: lands the round in flight if it lands here, then
    /// launches the round due here, if any (blocking until it commits unless overlapped).
    fn exchange_point(
        &mut self,
        phase: Phase,
        net: &mut dyn Exchange,
        out: &mut Vec<SoloExchange>,
    ) -> Result<()> {
        let step = self.step;
        if self.in_flight.is_some_and(|f| f.lands_at == step && f.phase == phase) {
            out.extend(self.land_now(net)?);
        }
        if !self.outer.exchange_due(phase, step) {
            return Ok(());
        }
        if let Some(f) = self.in_flight {
            return Err(OptimizerError::State(format!(
                "round {} is due at step {step} while round {} is still in flight (it lands \
                 at step {}): overlap must not exceed the rounds' spacing",
                self.round + 1,
                f.round,
                f.lands_at
            )));
        }
        let round = self.round;
        let mut payload =
            self.outer.prepare(&self.params, round, self.id).map_err(|e| self.placed(e, round))?;
        payload.effort = self.balance.launch();
        let mine = payload.encode();
        let sent = mine.len();
        let overlap = self.outer.overlap();
        if overlap > 0 {
            net.publish(round, mine)?;
            self.in_flight = Some(InFlight { round, lands_at: step + overlap, phase, sent });
            return Ok(());
        }
        let committed = net.exchange_committed(round, mine)?;
        let mut x = self.apply_round(round, &committed)?;
        x.sent = sent;
        out.push(x);
        Ok(())
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
        let overlap = self.outer.overlap();
        if overlap > 0 {
            return self.replay_overlapped(round, committed, overlap);
        }
        let at = self.next_exchange().ok_or_else(|| {
            crate::OptimizerError::State("no exchange within 2^20 steps to replay".into())
        })?;
        let x = self.apply_round(round, committed)?;
        // An exchange after the backward pass hands over the gradient: the replica moves
        // only once the inner optimizer steps with it, as it did on every live worker.
        if self.outer.exchange_due(Phase::AfterBackward, at) && self.outer.runs_inner_optimizer() {
            self.train.inner_step()?;
        }
        self.step = at + 1;
        Ok(x)
    }

    /// [`SoloWorker::replay_round`] for an overlapped algorithm: the live workers launched
    /// the round where it was due and applied it `overlap` steps later; this worker applies
    /// it now and moves to where they stood right after it landed. Landing after the inner
    /// step, that step was trained; after the backward pass (DeMo), or where the next round
    /// launches at the same point, the step is still to finish, so it is trained next.
    fn replay_overlapped(
        &mut self,
        round: u64,
        committed: &Committed,
        overlap: u64,
    ) -> Result<SoloExchange> {
        let (lands_at, phase) = match self.in_flight {
            Some(f) => (f.lands_at, f.phase),
            None => {
                let at = self.next_exchange().ok_or_else(|| {
                    OptimizerError::State("no exchange within 2^20 steps to replay".into())
                })?;
                let phase = if self.outer.exchange_due(Phase::AfterBackward, at) {
                    Phase::AfterBackward
                } else {
                    Phase::AfterInnerStep
                };
                (at + overlap, phase)
            }
        };
        let x = self.apply_round(round, committed)?;
        self.in_flight = None;
        // Where the next round launches at the landing point (overlap = H), the step is
        // trained again so that it does; otherwise a landing after the inner step skips it.
        let trained = phase == Phase::AfterInnerStep && !self.outer.exchange_due(phase, lands_at);
        self.step = if trained { lands_at + 1 } else { lands_at };
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
        let efforts: Vec<_> = payloads
            .iter()
            .filter(|p| report.applied.contains(&p.worker))
            .map(|p| p.effort)
            .collect();
        self.balance.landed(&efforts);
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
            Exchange::publish(self, round, payload)?;
            match self.collect(round)? {
                Committed::Payloads(all) => Ok(all),
                Committed::Aggregate { .. } => unreachable!("a board commits payloads"),
            }
        }

        fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()> {
            let late = self.board.drop_member_in_round == Some((self.id, round));
            self.board.slots.lock().unwrap()[self.id as usize] = (!late).then_some(payload);
            Ok(())
        }

        fn collect(&mut self, _round: u64) -> Result<Committed> {
            self.board.arrived.wait();
            let all: Vec<Vec<u8>> =
                self.board.slots.lock().unwrap().iter().flatten().cloned().collect();
            self.board.taken.wait();
            Ok(Committed::Payloads(all))
        }
    }

    fn run_solo(algo: Algorithm, n: u32, steps: u64, drop: Option<(u32, u64)>) -> Vec<Vec<u64>> {
        run_solo_with(config(algo), n, steps, drop)
    }

    /// Runs `body` for each of `n` toy workers of `cfg`, each on its own thread, seated at
    /// one board (member `drop.0` missing round `drop.1`), and returns what each returned.
    fn on_board<T: Send + 'static>(
        cfg: &AlgoConfig,
        n: u32,
        drop: Option<(u32, u64)>,
        body: impl Fn(SoloWorker<ToyMlp>, Seat) -> T + Clone + Send + 'static,
    ) -> Vec<T> {
        let board = Arc::new(Board {
            slots: Mutex::new(vec![None; n as usize]),
            arrived: Barrier::new(n as usize),
            taken: Barrier::new(n as usize),
            drop_member_in_round: drop,
        });
        let handles: Vec<_> = (0..n)
            .map(|id| {
                let (board, cfg, body) = (board.clone(), cfg.clone(), body.clone());
                std::thread::spawn(move || {
                    tch::set_num_threads(1);
                    let train = ToyMlp::new(ToyConfig::default(), id).unwrap();
                    let w = SoloWorker::new(id, train, |p| cfg.build(p)).unwrap();
                    body(w, Seat { id, board })
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn run_solo_with(
        cfg: AlgoConfig,
        n: u32,
        steps: u64,
        drop: Option<(u32, u64)>,
    ) -> Vec<Vec<u64>> {
        on_board(&cfg, n, drop, move |mut w, mut seat| {
            let mut hashes = Vec::new();
            for _ in 0..steps {
                for x in w.step(&mut seat).unwrap().exchanges {
                    assert!(x.rejected.is_empty(), "{:?}", x.rejected);
                    hashes.push(x.hash);
                }
            }
            hashes
        })
    }

    #[test]
    fn balanced_workers_train_a_share_sized_to_their_pace_and_stay_identical() {
        // Worker 2 steps at half the others' pace; replicas agree after every round.
        for algo in [Algorithm::Diloco, Algorithm::Sparseloco, Algorithm::Streaming] {
            let mut sets =
                vec![("inner_steps".into(), "4".into()), ("balance".into(), "true".into())];
            if algo == Algorithm::Streaming {
                sets.extend([("fragments".into(), "2".into()), ("overlap".into(), "1".into())]);
            }
            let cfg = AlgoConfig::from_parts(algo, toml::Table::new(), &sets).unwrap();
            let runs = on_board(&cfg, 3, None, |mut w, mut seat| {
                let (mut hashes, mut trained) = (Vec::new(), 0);
                for _ in 0..16 {
                    let s = w.step(&mut seat).unwrap();
                    if s.trained {
                        trained += 1;
                        w.step_took(if w.id == 2 { 2.0 } else { 1.0 });
                    } else {
                        assert!(s.loss.is_nan(), "a skipped step reports no loss");
                    }
                    hashes.extend(s.exchanges.iter().map(|x| x.hash));
                }
                if let Some(x) = w.land_now(&mut seat).unwrap() {
                    hashes.push(x.hash);
                }
                (hashes, trained, w.duty())
            });
            assert!(runs.windows(2).all(|r| r[0].0 == r[1].0), "{algo}: replicas differ");
            assert!(!runs[0].0.is_empty());
            assert_eq!((runs[0].1, runs[0].2), (16, 1.0), "{algo}: a fast worker trains all");
            assert_eq!(runs[2].2, 0.5, "{algo}");
            // Until the first round landed it trained every step at 2 s, falling behind;
            // then it trained less to catch up, and every other step after. Over the run its
            // compute is the fast workers' 16 s, within one of its steps.
            let slow = runs[2].1 as f64 * 2.0;
            assert!((slow - 16.0).abs() <= 2.0, "{algo}: {} steps trained", runs[2].1);
        }
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

    /// `algo` with a round every 4 steps (where it has H; Streaming DiLoCo: H = 8 in two
    /// fragments) and `overlap`.
    fn overlapped(algo: Algorithm, overlap: u64) -> AlgoConfig {
        let mut set = vec![("overlap".to_string(), overlap.to_string())];
        match algo {
            Algorithm::Demo => {}
            Algorithm::Streaming => {
                set.push(("inner_steps".into(), "8".into()));
                set.push(("fragments".into(), "2".into()));
            }
            _ => set.push(("inner_steps".into(), "4".into())),
        }
        AlgoConfig::from_parts(algo, toml::Table::new(), &set).unwrap()
    }

    fn harness_hashes(cfg: &AlgoConfig, n: u32, steps: u64) -> Vec<(u64, u64)> {
        tch::set_num_threads(1);
        let trains = (0..n).map(|w| ToyMlp::new(ToyConfig::default(), w).unwrap()).collect();
        let mut h = Harness::new(trains, |_, p| cfg.build(p)).unwrap();
        let mut out = Vec::new();
        for r in h.run(steps).unwrap() {
            for x in r.exchanges {
                assert!(x.replicas_identical(), "round {}", x.round);
                out.push((x.step, x.hashes[0]));
            }
        }
        out
    }

    #[test]
    fn overlapped_rounds_land_later_and_solo_workers_match_the_harness() {
        for (algo, overlap) in [
            (Algorithm::Diloco, 2),
            (Algorithm::Diloco, 4),
            (Algorithm::Sparseloco, 3),
            (Algorithm::Demo, 1),
            (Algorithm::Streaming, 2),
            (Algorithm::Streaming, 3),
        ] {
            let cfg = overlapped(algo, overlap);
            let solo = run_solo_with(cfg.clone(), 3, 12, None);
            assert!(solo.windows(2).all(|w| w[0] == w[1]), "{algo}: replicas differ");
            let harness = harness_hashes(&cfg, 3, 12);
            let hashes: Vec<u64> = harness.iter().map(|&(_, h)| h).collect();
            assert_eq!(solo[0], hashes, "{algo} overlap {overlap}");
            // Each round lands `overlap` steps after it was due.
            let period = if algo == Algorithm::Demo { 1 } else { 4 };
            let steps: Vec<u64> = harness.iter().map(|&(s, _)| s).collect();
            let due = (0..).map(|r| r * period + period - 1 + overlap);
            assert_eq!(steps, due.take(steps.len()).collect::<Vec<_>>(), "{algo}");
            // And it is another run than the blocking one.
            let blocking = harness_hashes(&overlapped(algo, 0), 3, 12);
            assert_ne!(blocking[1].1, harness[1].1, "{algo}: overlap changed nothing");
        }
    }

    #[test]
    fn an_overlap_beyond_the_schedule_is_refused_before_anything_runs() {
        let bad = |algo, set: &[(&str, &str)]| {
            let set: Vec<(String, String)> =
                set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            AlgoConfig::from_parts(algo, toml::Table::new(), &set).unwrap_err().to_string()
        };
        let e = bad(Algorithm::Diloco, &[("inner_steps", "10"), ("overlap", "11")]);
        assert!(e.contains("diloco.overlap = 11") && e.contains("at most 10"), "{e}");
        let e = bad(Algorithm::Demo, &[("overlap", "2")]);
        assert!(e.contains("demo.overlap = 2") && e.contains("at most 1"), "{e}");
        let e = bad(Algorithm::Sparseloco, &[("inner_steps", "5"), ("overlap", "6")]);
        assert!(e.contains("sparseloco.overlap = 6"), "{e}");
    }

    #[test]
    fn an_overlapped_replay_lands_where_the_live_worker_did() {
        for (algo, overlap) in [
            (Algorithm::Diloco, 2),
            (Algorithm::Diloco, 4),
            (Algorithm::Demo, 1),
            (Algorithm::Streaming, 3),
        ] {
            tch::set_num_threads(1);
            let cfg = overlapped(algo, overlap);
            let mut a =
                SoloWorker::new(0, ToyMlp::new(ToyConfig::default(), 0).unwrap(), |p| cfg.build(p))
                    .unwrap();
            let mut net = Alone(Vec::new());
            let mut live = Vec::new();
            for _ in 0..10 {
                for x in a.step(&mut net).unwrap().exchanges {
                    live.push((x.hash, a.steps_done()));
                }
            }
            let mut b =
                SoloWorker::new(0, ToyMlp::new(ToyConfig::default(), 1).unwrap(), |p| cfg.build(p))
                    .unwrap();
            for (r, &(hash, _)) in live.iter().enumerate() {
                let x = b.replay_committed(r as u64, &net.0[r..=r]).unwrap();
                assert_eq!(x.hash, hash, "{algo}: round {r} replayed differently");
            }
            // The replica continues from where the live worker's schedule stands: its next
            // launch is the live worker's next one.
            assert_eq!(
                b.next_exchange(),
                Some(
                    live.len() as u64 * if algo == Algorithm::Demo { 1 } else { 4 }
                        + if algo == Algorithm::Demo { 0 } else { 3 }
                ),
                "{algo}"
            );
            assert!(b.in_flight().is_none());
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

        fn publish(&mut self, _: u64, payload: Vec<u8>) -> Result<()> {
            self.0.push(payload);
            Ok(())
        }

        fn collect(&mut self, round: u64) -> Result<Committed> {
            let mine = self
                .0
                .get(round as usize)
                .cloned()
                .ok_or(OptimizerError::State(format!("round {round} was not published")))?;
            Ok(Committed::Payloads(vec![mine]))
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
