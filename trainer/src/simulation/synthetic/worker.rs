//! One synthetic worker: the training loop's schedule without the training.
//!
//! Every inner step charges its compute to the virtual clock, as a training worker does;
//! where the algorithm's schedule has an exchange the worker publishes its payload (the
//! real encoder's bytes, under its own member id and the round) and waits for the round
//! to commit: at once without overlap, or `overlap` inner steps later (the round lands
//! there; the worker waits only if the commit has not arrived by then). Every committed
//! round is checked as a real worker would receive it ([`Receiver`]).
//!
//! The schedule comes from the algorithm's own optimizer built over one element per
//! tensor: its `exchange_due` and `overlap`, exactly as the training loop reads them
//! (`SoloWorker` and the networked driver), so a round blocks here wherever it blocks in
//! training (Streaming DiLoCo's τ is its overlap: each fragment's round lands τ steps
//! after its launch).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use indicatif::ProgressBar;
use meridian_comm::node::{WorkerNode, WorkerNodeConfig, WorkerNodeEvent};
use meridian_comm::protocol::WorkerEvent;
use meridian_comm::quic::{JoinString, NodeIdentity, TransportTuning};
use meridian_optimizer::balance::Balance;
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::outer::Phase;
use meridian_optimizer::payload::{Effort, Payload};
use meridian_optimizer::ring::DenseRing;
use meridian_simulate::Fabric;
use tch::{Kind, Tensor};

use super::payload::Payloads;
use super::receive::Receiver;
use crate::networked::node_link::published;
use crate::networked::ring_reducer::RingCell;
use crate::simulation::process::Outcome;

/// Committed rounds whose payloads a synthetic run's nodes keep to serve late fetches.
/// The protocol's default, 8, is for runs with faults; a synthetic run injects none, and
/// at a billion parameters eight rounds of every member's payload on every worker of one
/// process would not fit in memory.
pub const KEEP_ROUNDS: u64 = 2;

/// Phases of a step, in the order an inner step reaches them.
const PHASES: [Phase; 2] = [Phase::AfterBackward, Phase::AfterInnerStep];

/// When one algorithm exchanges: every exchange of a run, in order, and how many inner
/// steps after its launch a round lands.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// (inner step, phase) of round `r` at index `r`.
    pub exchanges: Vec<(u64, Phase)>,
    /// Inner steps from a round's launch to its landing (0: it blocks at once).
    pub delay: u64,
    /// Whether workers train a share of the steps sized to their pace (the algorithm's
    /// `balance`; see `meridian_optimizer::balance`).
    pub balance: bool,
    /// How the algorithm's payloads add up in a ring (over the stand-in model's shapes),
    /// `None` when they do not.
    pub ring: Option<DenseRing>,
}

impl Schedule {
    /// `algo`'s schedule over `steps` inner steps for a model of `tensors` tensors.
    pub fn new(algo: &AlgoConfig, tensors: usize, steps: u64) -> Result<Self> {
        let one = (0..tensors)
            .map(|i| (format!("t{i:06}"), Tensor::zeros([1], (Kind::Float, tch::Device::Cpu))))
            .collect();
        let params = meridian_optimizer::params::ParamSet::new(one)?;
        let outer = algo.build(&params)?;
        let mut exchanges = Vec::new();
        for step in 0..steps {
            for phase in PHASES {
                if outer.exchange_due(phase, step) {
                    exchanges.push((step, phase));
                }
            }
        }
        let ring = outer.ring(&params);
        Ok(Self { exchanges, delay: outer.overlap(), balance: outer.balance(), ring })
    }
}

/// What the workers of one synthetic run share.
pub struct Ctx {
    /// Virtual time zero.
    pub start: tokio::time::Instant,
    /// The network.
    pub fabric: Fabric,
    /// The run to join.
    pub join: JoinString,
    /// QUIC settings (seeded).
    pub tuning: TransportTuning,
    /// Run seed (identities).
    pub seed: u64,
    /// The algorithm.
    pub algo: AlgoConfig,
    /// Compute per inner step.
    pub step_time: Duration,
    /// Inner steps per worker.
    pub steps: u64,
    /// Workers in the run (which encoding each segment of a worker's payload comes from).
    pub workers: usize,
    /// When rounds go out and land.
    pub schedule: Schedule,
    /// The payloads, encoded once.
    pub payloads: Payloads,
    /// The receive checks.
    pub receiver: Receiver,
    /// Progress display (worker 0 moves it).
    pub progress: ProgressBar,
    /// The ring's reducer over the model's shapes, on `--route ring`.
    pub ring: Option<DenseRing>,
}

impl Ctx {
    fn now(&self) -> f64 {
        (tokio::time::Instant::now() - self.start).as_secs_f64()
    }

    /// The tensors round `round`'s payloads carry (`None`: every tensor).
    fn tensors_of(&self, round: u64) -> Option<Vec<usize>> {
        let &(step, _) = self.schedule.exchanges.get(usize::try_from(round).ok()?)?;
        match self.algo {
            AlgoConfig::Streaming(_) => {
                let p = self.payloads.for_step(&self.algo, step)?;
                Some(p.segments.iter().map(|s| s.tensor as usize).collect())
            }
            _ => None,
        }
    }
}

/// Joins worker `index` in `region` and waits for its welcome.
pub async fn join(ctx: &Ctx, index: usize, region: &str) -> Result<WorkerNode> {
    let name = format!("w{index}");
    let socket = ctx.fabric.bind(region)?;
    let mut cfg = WorkerNodeConfig::new(ctx.join.clone(), name.clone());
    cfg.socket = Some(socket);
    let seed = crate::simulation::identity_seed(ctx.seed, 1 + index as u64);
    cfg.identity = Some(NodeIdentity::deterministic(&name, seed)?);
    cfg.tuning = ctx.tuning.clone();
    cfg.protocol.keep_rounds = KEEP_ROUNDS;
    if let Some(ring) = &ctx.ring {
        // The real reducer: each worker splits its payload, sums and checks segments, and
        // joins the aggregate exactly as a training worker does.
        let cell = RingCell::default();
        cell.set(ring.clone());
        cfg.reducer = Some(Arc::new(cell));
    }
    let mut node = WorkerNode::connect(cfg).await.with_context(|| format!("{name} joining"))?;
    loop {
        match node.next_event().await? {
            WorkerNodeEvent::Welcomed { .. } => return Ok(node),
            other => tracing::debug!(event = ?other, "before the welcome"),
        }
    }
}

/// What one worker saw of the committed rounds.
#[derive(Default)]
struct Seen {
    /// Round → (members taken, accepted or rejected; hash of the commit).
    rounds: BTreeMap<u64, (Vec<u32>, u64)>,
    /// Round → what its accepted members stated they trained.
    efforts: BTreeMap<u64, Vec<Effort>>,
    /// Peers' launches (round, what they stated) heard of since the worker last looked.
    launched: Vec<(u64, Effort)>,
    rejected: u64,
    sent: u64,
    received: u64,
}

/// Runs worker `index` (joined as `node`) through every step; `region` for its outcome.
pub async fn live(
    ctx: Rc<Ctx>,
    index: usize,
    region: String,
    pace: meridian_simulate::Pace,
    mut node: WorkerNode,
) -> Result<Outcome> {
    let me = node.member();
    let seen = RefCell::new(Seen::default());
    let mut compute = Duration::ZERO;
    let mut round = 0u64;
    let mut in_flight: Option<(u64, u64, Phase)> = None;
    let mut balance = Balance::new(ctx.schedule.balance);
    for step in 0..ctx.steps {
        // A step balancing skips costs no time (as a training worker's).
        let trains = balance.trains(step);
        if trains {
            let step_time = pace.step(ctx.step_time, step);
            tokio::time::sleep(step_time).await;
            compute += step_time;
            balance.timed(step_time.as_secs_f64());
        }
        balance.stepped(trains);
        for phase in PHASES {
            if let Some((r, at, p)) = in_flight {
                if (at, p) == (step, phase) {
                    wait(&ctx, &mut node, &seen, r).await?;
                    in_flight = None;
                    landed(&mut balance, &seen, r);
                }
            }
            let due = ctx.schedule.exchanges.get(round as usize) == Some(&(step, phase));
            if !due {
                continue;
            }
            // This worker's own bytes of the real encoder under its header: one copy per
            // publish, as a training worker makes a fresh payload every round.
            let mut p =
                ctx.payloads
                    .for_worker(&ctx.algo, step, index, ctx.workers, (round, me))
                    .with_context(|| format!("no payload for the exchange after step {step}"))?;
            p.effort = balance.launch();
            let bytes = Bytes::from(p.encode());
            drop(p);
            published(round, node.publish(round, bytes).await)?;
            if ctx.schedule.delay == 0 {
                wait(&ctx, &mut node, &seen, round).await?;
                landed(&mut balance, &seen, round);
            } else {
                in_flight = Some((round, step + ctx.schedule.delay, phase));
            }
            round += 1;
        }
        // Commits that arrived meanwhile are checked as they come, as a real worker's
        // node receives them while it trains.
        while let Some(event) = node.try_next_event()? {
            handle(&ctx, &seen, me, event)?;
        }
        // A peer done with the round this worker still trains for: a slow worker's first
        // round is sized by it (the round in flight, if any, launched already).
        for (r, effort) in std::mem::take(&mut seen.borrow_mut().launched) {
            if r == round {
                balance.early(effort);
            }
        }
        if index == 0 {
            ctx.progress.set_position(step + 1);
        }
    }
    // The run's last round launched: it lands before the worker finishes.
    if let Some((r, ..)) = in_flight {
        wait(&ctx, &mut node, &seen, r).await?;
    }
    let finished = ctx.now();
    if let Err(e) = node.leave().await {
        tracing::debug!(error = %e, "leaving");
    }
    let seen = seen.into_inner();
    let rounds = seen.rounds.len() as u64;
    Ok(Outcome {
        member: me,
        region,
        rounds,
        rounds_done: rounds,
        applied: seen.rounds.iter().map(|(r, (m, _))| (0, *r, m.clone())).collect(),
        rejected: seen.rejected,
        restarts: 0,
        sent: seen.sent,
        received: seen.received,
        compute,
        finished,
        round_hashes: seen.rounds.iter().map(|(r, (_, h))| (*r, *h)).collect(),
        initial_val_loss: None,
        tail_losses: Vec::new(),
    })
}

/// Round `round` landed: balancing sizes the next steps from what its members stated.
fn landed(balance: &mut Balance, seen: &RefCell<Seen>, round: u64) {
    if let Some(efforts) = seen.borrow().efforts.get(&round) {
        balance.landed(efforts);
    }
}

/// Waits until round `round` has committed and been checked.
async fn wait(ctx: &Ctx, node: &mut WorkerNode, seen: &RefCell<Seen>, round: u64) -> Result<()> {
    let me = node.member();
    while !seen.borrow().rounds.contains_key(&round) {
        let event = node.next_event().await?;
        handle(ctx, seen, me, event)?;
    }
    Ok(())
}

/// Takes one node event: a commit is checked and counted; failures end the worker.
fn handle(ctx: &Ctx, seen: &RefCell<Seen>, me: u32, event: WorkerNodeEvent) -> Result<()> {
    match event {
        WorkerNodeEvent::Protocol(WorkerEvent::RoundReady { round, payloads, stats }) => {
            let tensors = ctx.tensors_of(round);
            let checked = ctx.receiver.check(round, tensors.as_deref(), &payloads);
            let mut seen = seen.borrow_mut();
            for t in &stats.traffic {
                seen.sent += t.sent;
                seen.received += t.received;
            }
            seen.rejected += checked.rejected.len() as u64;
            let mut members = checked.accepted;
            members.extend(checked.rejected);
            members.sort_unstable();
            seen.rounds.insert(round, (members, checked.hash));
            seen.efforts.insert(round, checked.efforts);
            tracing::debug!(round, me, "synthetic round checked");
        }
        WorkerNodeEvent::Protocol(WorkerEvent::PayloadArrived { round, member, head }) => {
            if let Some(effort) = Payload::peek_effort(&head, round, member) {
                seen.borrow_mut().launched.push((round, effort));
            }
        }
        WorkerNodeEvent::Protocol(WorkerEvent::AggregateReady {
            round,
            members,
            aggregate,
            stats,
        }) => {
            // Every replica must hold the same aggregate bytes; decoding it would take the
            // dense sums (4 bytes a parameter), which is what a synthetic run avoids.
            let mut hasher = xxhash_rust::xxh3::Xxh3::new();
            hasher.update(&round.to_le_bytes());
            hasher.update(&aggregate);
            let mut seen = seen.borrow_mut();
            for t in &stats.traffic {
                seen.sent += t.sent;
                seen.received += t.received;
            }
            seen.rounds.insert(round, (members, hasher.digest()));
            seen.efforts.insert(round, Vec::new());
            tracing::debug!(round, me, "synthetic ring round checked");
        }
        WorkerNodeEvent::Protocol(WorkerEvent::SnapshotRequested { round }) => {
            // No model, no state: the coordinator asks another member after its timeout.
            tracing::warn!(round, "a synthetic worker has no state to serve");
        }
        WorkerNodeEvent::Protocol(WorkerEvent::FellBehind { round }) => {
            // A training worker would catch up from a peer's state; this one has none to
            // take, and waiting for it would run the virtual clock on forever.
            bail!(
                "round {round}: no member still held a committed payload this worker lacked, \
                 and a synthetic worker cannot catch up from a peer's state"
            )
        }
        WorkerNodeEvent::Protocol(WorkerEvent::StateReceived { round, .. }) => {
            bail!("a peer's state as of round {round} arrived; a synthetic worker cannot take one")
        }
        WorkerNodeEvent::Refused(r) => bail!("{r}"),
        WorkerNodeEvent::Failed { reason } => bail!("worker stopped: {reason}"),
        other => tracing::debug!(event = ?other, "network"),
    }
    Ok(())
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;
    use meridian_optimizer::Algorithm;

    /// `algo` with its settings overridden.
    fn algo(a: Algorithm, sets: &[(&str, &str)]) -> AlgoConfig {
        let sets: Vec<(String, String)> =
            sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AlgoConfig::from_parts(a, toml::Table::new(), &sets).unwrap()
    }

    #[test]
    fn rounds_block_or_land_later_exactly_where_the_optimizer_says() {
        for (a, sets) in [
            (Algorithm::Sparseloco, vec![("inner_steps", "10"), ("overlap", "4")]),
            (Algorithm::Diloco, vec![("inner_steps", "10"), ("overlap", "0")]),
            (Algorithm::Streaming, vec![("inner_steps", "8"), ("overlap", "1")]),
        ] {
            let cfg = algo(a, &sets);
            let schedule = Schedule::new(&cfg, 16, 40).unwrap();
            let one = (0..16)
                .map(|i| (format!("t{i}"), Tensor::zeros([1], (Kind::Float, tch::Device::Cpu))))
                .collect();
            let outer = cfg.build(&meridian_optimizer::params::ParamSet::new(one).unwrap());
            // The delay is the trait's, not a rule of this module.
            assert_eq!(schedule.delay, outer.unwrap().overlap(), "{a}");
            assert!(!schedule.exchanges.is_empty(), "{a}");
        }
    }
}
