//! One simulated worker over its whole life: it joins (at the start, or later under
//! `--chaos late-join`), trains through the network as a coroutine, and under
//! `--chaos worker-restart` is killed and restarted, each time as a fresh process would:
//! a new socket, a new model from the seed, and a peer's state to continue from.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use meridian_comm::node::{WorkerNode, WorkerNodeConfig, WorkerNodeEvent};
use meridian_comm::protocol::Topology as Route;
use meridian_comm::quic::{JoinString, NodeIdentity, TransportTuning};
use meridian_optimizer::byzantine::Attack;
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::solo::{SoloStep, SoloWorker};
use meridian_optimizer::train_step::TrainStep;
use meridian_simulate::Fabric;
use tch::Tensor;

use super::colink::{self, Charger, Ended, LinkBytes};
use crate::data::Split;
use crate::model::build_model;
use crate::networked::drive::{drive, AppliedRound, DriveObserver};
use crate::networked::ring_reducer::RingCell;
use crate::report::plot::CurvePoint;
use crate::report::sync_eval;
use crate::run_config::RunConfig;
use crate::step::lm_step::LmStep;

/// What every worker of one simulated run shares: the clock's origin, the network, the
/// run's settings, the progress display, bytes so far (the curve's x axis), the curve.
pub struct Ctx {
    /// Virtual time zero.
    pub start: tokio::time::Instant,
    /// The network.
    pub fabric: Fabric,
    /// The run to join.
    pub join: JoinString,
    /// QUIC settings (seeded).
    pub tuning: TransportTuning,
    /// How payloads travel.
    pub route: Route,
    /// Model, data and inner-optimizer settings.
    pub config: RunConfig,
    /// The outer algorithm.
    pub algo: AlgoConfig,
    /// The corpus.
    pub corpus: Arc<crate::data::Corpus>,
    /// The corpus split.
    pub split: Split,
    /// Validation batches (worker 0 evaluates).
    pub validation: Rc<Vec<(Tensor, Tensor)>>,
    /// Where every worker's model trains.
    pub device: tch::Device,
    /// Workers at the start (data is sharded this many ways).
    pub shards: u32,
    /// Fixed compute per step, or `None` for measured.
    pub step_time: Option<Duration>,
    /// Run seed.
    pub seed: u64,
    /// Inner steps per worker.
    pub steps: u64,
    /// Evaluate every this many steps.
    pub eval_every: u64,
    /// Tokens one worker trains on per step.
    pub tokens_per_step: u64,
    /// Progress display.
    pub progress: ProgressBar,
    /// Payload bytes sent so far, per worker.
    pub sent: RefCell<Vec<u64>>,
    /// Validation curve of the synchronized model (worker 0 evaluates it right after
    /// rounds, [`crate::report::sync_eval`]).
    pub curve: RefCell<Vec<CurvePoint>>,
    /// Validation curve of worker 0's own parameters at every evaluation point (mid-round
    /// for the algorithms that sync every H steps).
    pub local_curve: RefCell<Vec<CurvePoint>>,
}

impl Ctx {
    /// Simulated seconds since the start.
    pub fn now(&self) -> f64 {
        (tokio::time::Instant::now() - self.start).as_secs_f64()
    }

    /// The moment `at` after the start.
    pub fn at(&self, at: Duration) -> tokio::time::Instant {
        self.start + at
    }
}

/// When a worker is in the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Life {
    /// Its index (0 evaluates the curve; names are `w<index>`).
    pub index: usize,
    /// Its region.
    pub region: String,
    /// It joins this long after the start (`None`: at once).
    pub joins_at: Option<Duration>,
    /// (killed at, restarted at), in order.
    pub outages: Vec<(Duration, Duration)>,
    /// It doctors every update it sends.
    pub attack: Option<Attack>,
    /// Its step times against the stated one (its region's compute speed, jitter).
    pub pace: meridian_simulate::Pace,
}

/// What one worker did over its life.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Member id.
    pub member: u32,
    /// Region.
    pub region: String,
    /// Rounds it applied (trained through or replayed), over every incarnation.
    pub rounds: u64,
    /// Rounds its final state includes (taken from a peer's state or applied).
    pub rounds_done: u64,
    /// (incarnation, round, members whose payloads it took: applied or rejected) for every
    /// round it applied, in order. A restarted process starts from a peer's state and may
    /// apply again a round its dead predecessor had applied.
    pub applied: Vec<(u64, u64, Vec<u32>)>,
    /// Payloads its outer optimizer rejected (failed validation or robust aggregation).
    pub rejected: u64,
    /// Times it was killed and restarted.
    pub restarts: u64,
    /// Payload bytes sent.
    pub sent: u64,
    /// Payload bytes received.
    pub received: u64,
    /// Simulated compute charged.
    pub compute: Duration,
    /// Simulated seconds when it finished.
    pub finished: f64,
    /// (round, consensus hash right after it) for every round it applied: replicas must
    /// agree round by round (between rounds, and after the last one when the run ends
    /// mid-round, their local parameters legitimately differ).
    pub round_hashes: Vec<(u64, u64)>,
    /// Worker 0: validation loss before training.
    pub initial_val_loss: Option<f64>,
    /// Training losses of its last 5% of steps.
    pub tail_losses: Vec<f64>,
}

/// What survives a worker's restarts: its tallies (the process dies, the record of it
/// does not).
#[derive(Default)]
struct Tally {
    rounds: u64,
    rejected: u64,
    incarnation: u64,
    applied: Vec<(u64, u64, Vec<u32>)>,
    losses: Vec<f64>,
    initial_val_loss: Option<f64>,
    round_hashes: Vec<(u64, u64)>,
}

/// A worker process's connection to the run.
pub struct Joined {
    node: WorkerNode,
    addr: std::net::SocketAddr,
    need_state: bool,
    reducer: Arc<RingCell>,
}

/// Starts incarnation `incarnation` of worker `life.index`: a new host in its region, a
/// new identity (the same on every run with the seed), admitted by the coordinator.
pub async fn join(ctx: &Ctx, life: &Life, incarnation: u64) -> Result<Joined> {
    let name = format!("w{}", life.index);
    let socket = ctx.fabric.bind(&life.region)?;
    let addr = socket.addr();
    let mut cfg = WorkerNodeConfig::new(ctx.join.clone(), name.clone());
    cfg.socket = Some(socket);
    let seed = super::identity_seed(ctx.seed, 1 + life.index as u64 + 1000 * incarnation);
    cfg.identity = Some(NodeIdentity::deterministic(&name, seed)?);
    cfg.tuning = ctx.tuning.clone();
    let reducer = Arc::new(RingCell::default());
    cfg.reducer = Some(reducer.clone());
    let mut node = WorkerNode::connect(cfg).await.with_context(|| format!("{name} joining"))?;
    let need_state = welcome(&mut node).await?;
    Ok(Joined { node, addr, need_state, reducer })
}

/// Runs worker `life.index` until it has trained every step; `first` is its first
/// incarnation when already joined.
pub async fn live(ctx: Rc<Ctx>, life: Life, mut first: Option<Joined>) -> Result<Outcome> {
    let name = format!("w{}", life.index);
    let charger = Charger::new(ctx.step_time, life.pace);
    let bytes = Rc::new(LinkBytes::default());
    let tally = Rc::new(RefCell::new(Tally::default()));
    if let Some(at) = life.joins_at {
        tokio::time::sleep_until(ctx.at(at)).await;
    }
    let mut outages = life.outages.iter();
    let mut incarnation = 0u64;
    loop {
        let outage = outages.next();
        let Joined { mut node, addr, need_state, reducer } = match first.take() {
            Some(joined) => joined,
            None => join(&ctx, &life, incarnation).await?,
        };
        let solo = build_worker(&ctx, node.member(), life.attack)?;
        if ctx.route == Route::Ring {
            let ring = solo.outer.ring(&solo.params).with_context(|| {
                format!(
                    "{} cannot run in a ring (sparse payloads, a robust aggregation mode \
                     that needs every member's update, or balance = true, which needs each \
                     member's weight): use --route relay",
                    ctx.algo.algorithm()
                )
            })?;
            reducer.set(ring);
        }
        let (c, b, t, shared) = (charger.clone(), bytes.clone(), tally.clone(), ctx.clone());
        let index = life.index;
        let kill_at = outage.map(|&(down, _)| ctx.at(down));
        let body = move |y: &corosensei::Yielder<colink::Reply, colink::Request>| {
            train(y, solo, index, need_state, c, b, &t, &shared)
        };
        match colink::run(&mut node, &charger, &bytes, kill_at, body).await? {
            Ended::Finished(mut outcome) => {
                if let Err(e) = node.leave().await {
                    tracing::debug!(error = %e, "leaving");
                }
                outcome.region = life.region.clone();
                outcome.restarts = incarnation;
                return Ok(outcome);
            }
            Ended::Killed => {
                // Killed: its host goes silent at once (no goodbye), its state is lost.
                ctx.fabric.set_host_down(addr, true);
                drop(node);
                tracing::info!(worker = %name, "worker killed (simulated fault)");
                incarnation += 1;
                tally.borrow_mut().incarnation = incarnation;
                if let Some(&(_, back)) = outage {
                    tokio::time::sleep_until(ctx.at(back)).await;
                }
            }
        }
    }
}

/// Waits for the coordinator's welcome; returns whether a peer's state comes first.
async fn welcome(node: &mut WorkerNode) -> Result<bool> {
    loop {
        match node.next_event().await? {
            WorkerNodeEvent::Welcomed { need_state, .. } => return Ok(need_state),
            other => tracing::debug!(event = ?other, "before the welcome"),
        }
    }
}

/// A fresh worker process's trainer for `member`: the model from the seed, its data shard
/// (members beyond the starting ones read a shard again, in another order).
fn build_worker(ctx: &Ctx, member: u32, attack: Option<Attack>) -> Result<SoloWorker<LmStep>> {
    let model = build_model(&ctx.config.model, ctx.corpus.vocab(), ctx.seed, ctx.device)?;
    let batch = ctx.config.data.batch as usize;
    let order = ctx.seed.wrapping_add(u64::from(member / ctx.shards));
    let shard = ctx.split.shard(member % ctx.shards, ctx.shards, order, batch)?;
    let lm = LmStep::new(model, ctx.config.inner, shard, ctx.validation.clone(), ctx.steps)?
        .with_round_steps(ctx.algo.round_steps());
    let (algo, seed) = (ctx.algo.clone(), ctx.seed);
    Ok(match attack {
        Some(attack) => SoloWorker::new(member, lm, |p| algo.build_byzantine(p, attack, seed))?,
        None => SoloWorker::new(member, lm, |p| algo.build(p))?,
    })
}

/// The body of one worker incarnation's coroutine: train until `ctx.steps` steps are done.
#[allow(clippy::too_many_arguments)]
fn train(
    y: &corosensei::Yielder<colink::Reply, colink::Request>,
    mut w: SoloWorker<LmStep>,
    index: usize,
    need_state: bool,
    charger: Rc<Charger>,
    bytes: Rc<LinkBytes>,
    tally: &RefCell<Tally>,
    ctx: &Ctx,
) -> Result<Outcome> {
    if index == 0 && tally.borrow().initial_val_loss.is_none() {
        // Every replica starts from the same seed: the first point is synchronized too.
        let loss = w.train.eval_loss()?;
        let point =
            CurvePoint { step: 0, tokens: 0, bytes_per_worker: 0.0, seconds: 0.0, val_loss: loss };
        ctx.curve.borrow_mut().push(point);
        ctx.local_curve.borrow_mut().push(point);
        tally.borrow_mut().initial_val_loss = Some(loss);
    }
    charger.skip();
    let mut link = colink::CoLink::new(y, charger.clone());
    let mut observer = Observer { y, index, ctx, tally, bytes: bytes.clone(), charger };
    drive(&mut w, &mut link, ctx.steps, need_state, &mut observer)?;
    let finished = ctx.now();
    let tally = tally.borrow();
    let tail = ((ctx.steps as f64 * 0.05).ceil() as usize).max(1);
    let skip = tally.losses.len().saturating_sub(tail);
    Ok(Outcome {
        member: w.id,
        region: String::new(),
        rounds: tally.rounds,
        rounds_done: w.rounds_done(),
        applied: tally.applied.clone(),
        rejected: tally.rejected,
        restarts: 0,
        sent: bytes.sent.get(),
        received: bytes.received.get(),
        compute: observer.charger.charged(),
        finished,
        round_hashes: tally.round_hashes.clone(),
        initial_val_loss: tally.initial_val_loss,
        tail_losses: tally.losses[skip..].to_vec(),
    })
}

/// Counts a worker's rounds and bytes, charges measured compute, and evaluates worker 0.
struct Observer<'a, 'y> {
    y: &'y corosensei::Yielder<colink::Reply, colink::Request>,
    index: usize,
    ctx: &'a Ctx,
    tally: &'a RefCell<Tally>,
    bytes: Rc<LinkBytes>,
    charger: Rc<Charger>,
}

impl DriveObserver<LmStep> for &mut Observer<'_, '_> {
    fn round_applied(&mut self, round: &AppliedRound) {
        let mut tally = self.tally.borrow_mut();
        tally.rounds += 1;
        let ex = &round.exchange;
        tally.rejected += ex.rejected.len() as u64;
        let mut members: Vec<u32> = ex.applied.clone();
        members.extend(ex.rejected.iter().map(|(m, _)| *m));
        members.sort_unstable();
        let incarnation = tally.incarnation;
        tally.applied.push((incarnation, ex.round, members));
        tally.round_hashes.push((ex.round, ex.hash));
        if let Some(sent) = self.ctx.sent.borrow_mut().get_mut(self.index) {
            *sent = self.bytes.sent.get();
        }
    }

    fn step_done(&mut self, w: &mut SoloWorker<LmStep>, step: &SoloStep) -> Result<()> {
        // Measured compute: the rest of the step (after its exchange) is charged now.
        self.charger.flush(self.y)?;
        if step.trained {
            self.tally.borrow_mut().losses.push(step.loss);
        }
        let done = w.steps_done();
        let ctx = self.ctx;
        if self.index == 0 {
            ctx.progress.set_position(done);
            let point = |val_loss: f64| {
                let sent = ctx.sent.borrow();
                CurvePoint {
                    step: done,
                    tokens: done * ctx.tokens_per_step * u64::from(ctx.shards),
                    bytes_per_worker: sent.iter().sum::<u64>() as f64 / sent.len() as f64,
                    seconds: ctx.now(),
                    val_loss,
                }
            };
            // Right after a round this worker trained through, every replica holds the
            // synchronized model (a replayed round is caught up on outside a step).
            let mut synced_loss = None;
            if !step.exchanges.is_empty()
                && sync_eval::due(&*w.outer, ctx.eval_every, ctx.steps, done)
            {
                let val_loss = sync_eval::eval_synchronized(&mut w.train, &w.params, &*w.outer)?;
                let p = point(val_loss);
                ctx.progress
                    .set_message(format!("simulated {:.1} s, val loss {val_loss:.4}", p.seconds));
                ctx.curve.borrow_mut().push(p);
                synced_loss = sync_eval::local_is_synchronized(&*w.outer).then_some(val_loss);
            }
            if done % ctx.eval_every == 0 || done == ctx.steps {
                let val_loss = match synced_loss {
                    Some(loss) => loss,
                    None => w.train.eval_loss()?,
                };
                ctx.local_curve.borrow_mut().push(point(val_loss));
            }
        }
        // Evaluating is for the report, not training: it costs no simulated time.
        self.charger.skip();
        Ok(())
    }
}

/// Checks what the workers applied against what the coordinator committed: no round
/// applied twice by a worker, every applied round with exactly the committed members'
/// payloads, and every worker's final state including every committed round (a round
/// that committed after the last worker finished must be empty: nothing lost).
pub fn check_commits(
    committed: &std::collections::BTreeMap<u64, Vec<u32>>,
    outcomes: &[Outcome],
) -> Result<()> {
    let rounds = outcomes.iter().map(|o| o.rounds_done).max().unwrap_or(0);
    for round in 0..rounds {
        if !committed.contains_key(&round) {
            bail!("round {round} was applied but never committed");
        }
    }
    if let Some((round, members)) = committed.range(rounds..).find(|(_, m)| !m.is_empty()) {
        bail!("round {round} committed {members:?} after every worker had finished");
    }
    for o in outcomes {
        let w = o.member;
        // Within one process, rounds are applied once each, in order.
        if let Some(p) = o.applied.windows(2).find(|p| p[1].0 == p[0].0 && p[1].1 <= p[0].1) {
            bail!("worker {w} applied round {} after round {}", p[1].1, p[0].1);
        }
        for (_, round, members) in &o.applied {
            match committed.get(round) {
                Some(c) if c == members => {}
                Some(c) => bail!(
                    "worker {w} applied round {round} with members {members:?}, the \
                     coordinator committed {c:?}"
                ),
                None => bail!("worker {w} applied round {round}, which never committed"),
            }
        }
        if o.rounds_done != rounds {
            bail!("worker {w} ends after {} rounds, the others after {rounds}", o.rounds_done);
        }
    }
    Ok(())
}
