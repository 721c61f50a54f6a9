//! N workers in one process, exchanging payloads through a function call.
//!
//! Each worker has its own model, inner optimizer, data shard and outer optimizer. At an
//! exchange every worker prepares its payload, the payload is encoded to bytes (counted:
//! these are the bytes a network would carry), and every worker decodes and applies all of
//! them. Arrival order can be shuffled per receiver to show it does not matter.

use std::time::Instant;

use meridian_kernels::rng::SplitMix64;

use crate::divergence::{self, Place};
use crate::error::{OptimizerError, Result};
use crate::outer::{OuterOptimizer, Phase};
use crate::params::ParamSet;
use crate::payload::Payload;
use crate::rejection::{Rejection, Rejections};
use crate::train_step::TrainStep;

/// One worker of the harness.
pub struct HarnessWorker<S> {
    /// Member id (position in the harness).
    pub id: u32,
    /// The wrapped training.
    pub train: S,
    /// Its parameters (sharing storage with `train`'s model).
    pub params: ParamSet,
    /// Its outer optimizer.
    pub outer: Box<dyn OuterOptimizer>,
}

impl<S: TrainStep> HarnessWorker<S> {
    /// `e` with this worker's algorithm, `place` and suspects when it is a divergence.
    fn placed(&self, e: OptimizerError, place: Place) -> OptimizerError {
        divergence::place(e, self.outer.algorithm(), place, || {
            let mut s = self.outer.divergence_suspects();
            s.extend(self.train.divergence_suspects());
            s
        })
    }
}

/// What one exchange did.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeReport {
    /// Round number (counts exchanges from 0).
    pub round: u64,
    /// Inner step after which it happened.
    pub step: u64,
    /// Encoded payload bytes sent by each worker.
    pub bytes_per_worker: Vec<usize>,
    /// Each worker's [`OuterOptimizer::consensus_hash`] after applying.
    pub hashes: Vec<u64>,
    /// Rejections reported by worker 0's apply (member, reason).
    pub rejected: Rejections,
    /// Wall seconds the exchange took in this process (every worker's prepare, encode,
    /// decode and apply, one after another; an overlapped round's decode and apply only).
    pub seconds: f64,
}

impl ExchangeReport {
    /// Whether every worker ended the round with bit-identical parameters.
    pub fn replicas_identical(&self) -> bool {
        self.hashes.windows(2).all(|w| w[0] == w[1])
    }
}

/// What one inner step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Inner step index (from 0).
    pub step: u64,
    /// Mean training loss over workers.
    pub mean_loss: f64,
    /// Exchanges during this step (at most two: after backward and after the inner step).
    pub exchanges: Vec<ExchangeReport>,
    /// Each worker's compute seconds this step (forward, backward, inner step, hooks):
    /// the workers run one after another here, so these say how long each would take on
    /// its own, and who straggles.
    pub compute_seconds: Vec<f64>,
}

/// A round every worker published and none has applied yet (overlap): its encoded
/// payloads, in worker order, and where it lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarnessFlight {
    /// The round.
    pub round: u64,
    /// The inner step at which it lands.
    pub lands_at: u64,
    /// The phase of that step (where it was launched).
    pub phase: Phase,
    /// Every worker's encoded payload.
    pub wire: Vec<Vec<u8>>,
}

/// The in-process harness.
pub struct Harness<S> {
    workers: Vec<HarnessWorker<S>>,
    step: u64,
    round: u64,
    shuffle: Option<SplitMix64>,
    in_flight: Option<HarnessFlight>,
}

impl<S: TrainStep> Harness<S> {
    /// Builds the harness from `(training, outer optimizer factory)` per worker. Checks that
    /// every worker starts from bit-identical parameters.
    pub fn new(
        trains: Vec<S>,
        mut make_outer: impl FnMut(u32, &ParamSet) -> Result<Box<dyn OuterOptimizer>>,
    ) -> Result<Self> {
        if trains.is_empty() {
            return Err(OptimizerError::Config("the harness needs at least one worker".into()));
        }
        let mut workers = Vec::with_capacity(trains.len());
        for (id, mut train) in trains.into_iter().enumerate() {
            let id = id as u32;
            let params = ParamSet::new(train.parameters())?;
            let outer = make_outer(id, &params)?;
            train.driven_by(outer.algorithm(), outer.divergence_suspects());
            workers.push(HarnessWorker { id, train, params, outer });
        }
        let first = workers[0].params.hash()?;
        for w in &workers[1..] {
            if w.params.hash()? != first {
                return Err(OptimizerError::Config(format!(
                    "worker {} starts from different parameters than worker 0",
                    w.id
                )));
            }
        }
        Ok(Self { workers, step: 0, round: 0, shuffle: None, in_flight: None })
    }

    /// Delivers payloads to each receiver in a seeded random order.
    pub fn shuffle_arrivals(&mut self, seed: u64) {
        self.shuffle = Some(SplitMix64::new(seed));
    }

    /// The workers.
    pub fn workers(&self) -> &[HarnessWorker<S>] {
        &self.workers
    }

    /// The workers, mutably (to evaluate, or to tamper in tests).
    pub fn workers_mut(&mut self) -> &mut [HarnessWorker<S>] {
        &mut self.workers
    }

    /// Inner steps done so far.
    pub fn steps_done(&self) -> u64 {
        self.step
    }

    /// Sets the progress counters, for a run resumed from a checkpoint taken after `step`
    /// inner steps and `round` exchanges (the workers' own state is restored separately).
    pub fn resume_at(&mut self, step: u64, round: u64) {
        self.step = step;
        self.round = round;
    }

    /// Rounds applied so far (a round in flight counts once it lands).
    pub fn rounds_done(&self) -> u64 {
        self.round
    }

    /// The round launched and not yet landed (overlap), to checkpoint with the workers.
    pub fn in_flight(&self) -> Option<&HarnessFlight> {
        self.in_flight.as_ref()
    }

    /// Puts back a round in flight from a checkpoint (after [`Harness::resume_at`]): it
    /// must be the next round to apply, land no earlier than the current step and hold one
    /// payload per worker.
    pub fn resume_in_flight(&mut self, flight: HarnessFlight) -> Result<()> {
        if flight.round != self.round
            || flight.lands_at < self.step
            || flight.wire.len() != self.workers.len()
        {
            return Err(OptimizerError::State(format!(
                "round {} in flight to land at step {} with {} payloads does not fit a run at \
                 step {} with {} rounds applied and {} workers",
                flight.round,
                flight.lands_at,
                flight.wire.len(),
                self.step,
                self.round,
                self.workers.len()
            )));
        }
        self.in_flight = Some(flight);
        Ok(())
    }

    /// Runs one inner step on every worker, with the exchanges that fall due. A loss or
    /// parameters that turn non-finite stop the run ([`crate::divergence`]).
    pub fn step(&mut self) -> Result<StepReport> {
        let step = self.step;
        let place = Place { round: self.round, step };
        let mut loss = 0.0;
        let mut compute_seconds = Vec::with_capacity(self.workers.len());
        for w in &mut self.workers {
            let start = Instant::now();
            let l = w
                .train
                .forward_backward()
                .and_then(|l| divergence::check_loss(l).map(|()| l))
                .map_err(|e| w.placed(e, place))?;
            loss += l;
            compute_seconds.push(start.elapsed().as_secs_f64());
        }
        let mut exchanges = Vec::new();
        self.exchange_point(Phase::AfterBackward, &mut exchanges)?;
        // Exchanges after the backward pass have moved the round on.
        let place = Place { round: self.round, step };
        for (w, seconds) in self.workers.iter_mut().zip(&mut compute_seconds) {
            let start = Instant::now();
            if w.outer.runs_inner_optimizer() {
                w.train.inner_step().map_err(|e| w.placed(e, place))?;
            }
            *seconds += start.elapsed().as_secs_f64();
        }
        self.exchange_point(Phase::AfterInnerStep, &mut exchanges)?;
        self.step += 1;
        Ok(StepReport {
            step,
            mean_loss: loss / self.workers.len() as f64,
            exchanges,
            compute_seconds,
        })
    }

    /// Runs `steps` inner steps; returns every step's report.
    pub fn run(&mut self, steps: u64) -> Result<Vec<StepReport>> {
        (0..steps).map(|_| self.step()).collect()
    }

    /// Lands the round in flight now, wherever its landing was due: how an overlapped run
    /// ends, so that the last round launched is in the final model. `None` when no round
    /// is in flight.
    pub fn land_now(&mut self) -> Result<Option<ExchangeReport>> {
        let Some(f) = self.in_flight.take() else { return Ok(None) };
        self.land(f.round, &f.wire, 0.0).map(Some)
    }

    /// Mean held-out loss over workers.
    pub fn eval_loss(&mut self) -> Result<f64> {
        let mut total = 0.0;
        for w in &mut self.workers {
            total += w.train.eval_loss()?;
        }
        Ok(total / self.workers.len() as f64)
    }

    /// At `phase` of the current step: lands the round in flight if it lands here, then
    /// launches the round due here, if any, and applies it at once unless overlapped.
    fn exchange_point(&mut self, phase: Phase, out: &mut Vec<ExchangeReport>) -> Result<()> {
        let step = self.step;
        if self.in_flight.as_ref().is_some_and(|f| f.lands_at == step && f.phase == phase) {
            out.extend(self.land_now()?);
        }
        if !self.workers[0].outer.exchange_due(phase, step) {
            return Ok(());
        }
        if let Some(f) = &self.in_flight {
            return Err(OptimizerError::State(format!(
                "round {} is due at step {step} while round {} is still in flight: overlap \
                 must not exceed the rounds' spacing",
                self.round + 1,
                f.round
            )));
        }
        let start = Instant::now();
        let wire = self.launch()?;
        let overlap = self.workers[0].outer.overlap();
        if overlap > 0 {
            let (round, lands_at) = (self.round, step + overlap);
            self.in_flight = Some(HarnessFlight { round, lands_at, phase, wire });
            return Ok(());
        }
        out.push(self.land(self.round, &wire, start.elapsed().as_secs_f64())?);
        Ok(())
    }

    /// Every worker's encoded payload for the next round.
    fn launch(&mut self) -> Result<Vec<Vec<u8>>> {
        let round = self.round;
        let mut wire = Vec::with_capacity(self.workers.len());
        let place = Place { round, step: self.step };
        for w in &mut self.workers {
            let payload =
                w.outer.prepare(&w.params, round, w.id).map_err(|e| w.placed(e, place))?;
            wire.push(payload.encode());
        }
        Ok(wire)
    }

    /// Every worker applies `wire`, the payloads of `round`; `seconds` the launch took.
    fn land(&mut self, round: u64, wire: &[Vec<u8>], seconds: f64) -> Result<ExchangeReport> {
        let start = Instant::now();
        let place = Place { round, step: self.step };
        let bytes_per_worker = wire.iter().map(Vec::len).collect();
        let mut hashes = Vec::with_capacity(self.workers.len());
        let mut rejected = Vec::new();
        for (i, w) in self.workers.iter_mut().enumerate() {
            let mut order: Vec<usize> = (0..wire.len()).collect();
            if let Some(rng) = &mut self.shuffle {
                for j in (1..order.len()).rev() {
                    order.swap(j, (rng.next_u64() % (j as u64 + 1)) as usize);
                }
            }
            let mut received = Vec::with_capacity(wire.len());
            for &j in &order {
                match Payload::decode(&wire[j], w.params.shapes()) {
                    Ok(p) => received.push(p),
                    Err(e) if i == 0 => {
                        rejected.push((j as u32, Rejection::Malformed(e.to_string())))
                    }
                    Err(_) => {}
                }
            }
            let report = w.outer.apply(&w.params, round, &received)?;
            // The parameters are the same on every replica here (but for Streaming DiLoCo's
            // unsynced fragments): all of them diverged, or none.
            divergence::check_params(&w.params).map_err(|e| w.placed(e, place))?;
            if i == 0 {
                rejected.extend(report.rejected);
            }
            hashes.push(w.outer.consensus_hash(&w.params)?);
        }
        self.round += 1;
        Ok(ExchangeReport {
            round,
            step: self.step,
            bytes_per_worker,
            hashes,
            rejected,
            seconds: seconds + start.elapsed().as_secs_f64(),
        })
    }
}
