//! A wrapped program's worker: joins a run, then advances one inner step per
//! [`EmbeddedWorker::step`], exchanging when the algorithm's schedule says so.
//!
//! The program calls it after its backward pass; the parameters it handed over share
//! storage with its model, so every update Meridian applies is the program's at once.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use meridian_comm::node::{WorkerHandle, WorkerNode, WorkerNodeConfig, WorkerNodeEvent};
use meridian_comm::protocol::{RunSignature, Topology};
use meridian_comm::quic::{JoinString, TransportTuning};
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::solo::SoloWorker;
use meridian_optimizer::Algorithm;
use tch::Tensor;

use super::script_step::{ScriptOptimizer, ScriptStep};
use super::site::{Recording, Replay};
use crate::model::ModelKind;
use crate::networked::drive::{AppliedRound, Driver, RoundLink};
use crate::networked::quic_link::HandleLink;
use crate::networked::ring_reducer::RingCell;
use crate::networked::snapshot;
use crate::run_config::RunConfig;

/// How a program joins a run.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// The join string the coordinator printed.
    pub join: String,
    /// This worker's stable name: a restarted worker with the same name keeps its member id.
    pub name: String,
    /// The outer algorithm.
    pub algorithm: Algorithm,
    /// Settings as `meridian worker --set` takes them (`outer_lr=0.7`, `transport.X=…`).
    pub sets: Vec<String>,
    /// Inner steps per round (H); the algorithm's default when `None`.
    pub inner_steps: Option<u64>,
    /// The run's last inner step, if the program knows it: a round committed after it
    /// is not applied (see [`Driver::step`]).
    pub total_steps: Option<u64>,
    /// How long to try reaching the coordinator and being welcomed.
    pub connect_timeout: Duration,
    /// How long a joined worker keeps trying to reach a coordinator it lost before its
    /// step fails (a restarted coordinator is found again within this).
    pub reconnect_timeout: Duration,
    /// This process leads a site (several ranks training as one worker): it records its
    /// link's answers for the other ranks ([`crate::embedded::site`]).
    pub leads_site: bool,
    /// This process is another rank of a site: it follows the leader and sends nothing.
    pub follows_site: bool,
}

/// What a worker has done so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerStats {
    /// Inner steps taken.
    pub steps: u64,
    /// Rounds applied (trained through or replayed).
    pub rounds: u64,
    /// Rounds replayed while catching up.
    pub rounds_replayed: u64,
    /// Payload bytes sent and received.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Rounds this worker's own payload missed (it applied the others' and went on).
    pub straggled: u64,
    /// Members' payloads rejected (malformed, wrong round, out of range, ...).
    pub rejected: u64,
    /// Why the latest rejected payload was refused, with its member.
    pub last_rejection: Option<String>,
    /// Seconds the last exchange waited for its round to commit.
    pub last_round_seconds: f64,
    /// Seconds spent waiting for the network in all.
    pub waiting_seconds: f64,
    /// QUIC's round-trip estimate to the coordinator, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The consensus hash after the last applied round.
    pub last_hash: Option<u64>,
}

/// One worker of a run inside a program's training loop. It joins at its first step (or
/// [`EmbeddedWorker::join`]), so that a program may first load its checkpoint into it.
pub struct EmbeddedWorker {
    w: SoloWorker<ScriptStep>,
    spec: JoinSpec,
    algo: AlgoConfig,
    tuning: TransportTuning,
    interrupt: Option<Box<dyn FnMut() -> Result<()>>>,
    net: Option<Net>,
    site_welcome: Option<Vec<u8>>,
    /// Rounds applied while joining, reported by the next step.
    settled: Vec<AppliedRound>,
    /// The welcome said a peer's state came first (taken while joining).
    took_state: bool,
    stats: WorkerStats,
}

/// A joined worker's connection.
struct Net {
    // Declared before the runtime: the node's handle is dropped while the runtime that
    // drives it still runs.
    link: Link,
    driver: Driver,
    member: u32,
    expected: u32,
    waiting: Rc<Cell<Duration>>,
    rtt: Rc<Cell<Option<Duration>>>,
    /// `None` for a site's follower, which has no connection.
    runtime: Option<tokio::runtime::Runtime>,
}

/// How a worker reaches its run.
enum Link {
    /// On its own.
    Solo(HandleLink),
    /// As the leader of a site: its answers are recorded for the other ranks.
    Leader(Recording<HandleLink>),
    /// As another rank of a site: the leader's answers, nothing sent.
    Follower(Replay),
}

impl Link {
    fn round_link(&mut self) -> &mut dyn RoundLink {
        match self {
            Link::Solo(l) => l,
            Link::Leader(l) => l,
            Link::Follower(l) => l,
        }
    }

    fn network(&self) -> Option<&HandleLink> {
        match self {
            Link::Solo(l) => Some(l),
            Link::Leader(l) => Some(&l.inner),
            Link::Follower(_) => None,
        }
    }
}

/// What a site's leader tells the other ranks once it has joined: the welcome (member,
/// expected members, whether a peer's state comes first, whether rounds go round a ring).
const SITE_WELCOME_LEN: usize = 10;

/// The algorithm's settings for `spec`, parsed as the CLI parses them.
fn algo_config(spec: &JoinSpec) -> Result<(AlgoConfig, TransportTuning)> {
    let config =
        RunConfig::build(&ModelKind::Mlp, &[spec.algorithm], None, spec.inner_steps, &spec.sets)?;
    let algo = config.algos.into_iter().next().context("no algorithm configured")?;
    Ok((algo, config.transport))
}

impl EmbeddedWorker {
    /// A worker for the run of `spec` over the program's `params` and optimizer; nothing
    /// is sent until it joins. `interrupt` is asked a few times a second while waiting for
    /// the network; its error ends the wait.
    pub fn new(
        spec: JoinSpec,
        params: Vec<(String, Tensor)>,
        inner: Box<dyn ScriptOptimizer>,
        interrupt: Box<dyn FnMut() -> Result<()>>,
    ) -> Result<Self> {
        // Refuse a malformed join string before anything is built.
        let _: JoinString = spec.join.parse().context("the join string")?;
        let (algo, tuning) = algo_config(&spec)?;
        let w = SoloWorker::new(0, ScriptStep::new(params, inner), |p| algo.build(p))?;
        Ok(Self {
            w,
            spec,
            algo,
            tuning,
            interrupt: Some(interrupt),
            net: None,
            site_welcome: None,
            settled: Vec::new(),
            took_state: false,
            stats: WorkerStats::default(),
        })
    }

    /// Whether the worker has joined its run.
    pub fn joined(&self) -> bool {
        self.net.is_some()
    }

    /// Joins the run (done by the first [`EmbeddedWorker::step`] otherwise). A worker that
    /// loaded a state joins as the member that applied its rounds: the coordinator replays
    /// what it missed; a fresh one may first receive a live peer's state.
    pub fn join(&mut self) -> Result<()> {
        if self.net.is_some() {
            return Ok(());
        }
        ensure!(
            !self.spec.follows_site,
            "a site's follower joins through its leader's message, not the network"
        );
        let join: JoinString = self.spec.join.parse().context("the join string")?;
        let signature = meridian_optimizer::signature::run_signature(&self.w.params, &self.algo);
        let runtime = crate::networked::runtime()?;
        let mut node_cfg = WorkerNodeConfig::new(join, self.spec.name.clone());
        node_cfg.tuning = self.tuning.clone();
        node_cfg.signature = RunSignature::from_facts(signature);
        node_cfg.last_applied = self.w.rounds_done().checked_sub(1);
        node_cfg.reconnect.give_up_after = self.spec.reconnect_timeout;
        let reducer = Arc::new(RingCell::default());
        node_cfg.reducer = Some(reducer.clone());
        let mut interrupt = self.interrupt.take().context("a failed join cannot be retried")?;
        let handle = connect(&runtime, node_cfg, self.spec.connect_timeout, &mut interrupt)?;
        let waiting = Rc::new(Cell::new(Duration::ZERO));
        let rtt = Rc::new(Cell::new(None));
        let mut link = HandleLink {
            handle,
            sent: 0,
            received: 0,
            waiting: waiting.clone(),
            ring: false,
            links: Rc::new(RefCell::new(BTreeMap::new())),
            rtt: rtt.clone(),
            interrupt: Some(interrupt),
        };
        let member = link.handle.member();
        let (need_state, topology, expected) = welcomed(&mut link, self.spec.connect_timeout)?;
        link.ring = topology == Topology::Ring;
        self.w.id = member;
        if link.ring {
            let Some(ring) = self.w.outer.ring(&self.w.params) else {
                bail!(
                    "algorithm {} cannot run in a ring: sparse payloads (demo, sparseloco) do \
                     not add up in transit; start the coordinator with topology relay or \
                     all-gather",
                    self.spec.algorithm.name()
                );
            };
            reducer.set(ring);
        }
        tracing::info!(member, need_state, "joined the run");
        let mut link = match self.spec.leads_site {
            false => Link::Solo(link),
            true => Link::Leader(Recording::new(link)),
        };
        self.took_state = need_state;
        let mut driver = Driver::start(link.round_link(), need_state)?;
        // A peer's state (and the rounds after it) is taken now, before the program's next
        // forward pass: a gradient computed on the parameters it is about to replace would
        // otherwise go into its first step.
        self.settle(&mut driver, link.round_link())?;
        self.site_welcome = Some(
            [
                &member.to_le_bytes()[..],
                &expected.to_le_bytes(),
                &[u8::from(need_state), u8::from(topology == Topology::Ring)],
            ]
            .concat(),
        );
        self.net =
            Some(Net { link, driver, member, expected, waiting, rtt, runtime: Some(runtime) });
        Ok(())
    }

    /// For a site's leader, once joined: what the other ranks need to follow it (the
    /// welcome, then the answers its link gave so far). Empty for a solo worker.
    pub fn site_message(&mut self) -> Result<Vec<u8>> {
        self.join()?;
        let welcome = self.site_welcome.clone().unwrap_or_default();
        match self.net.as_mut().map(|n| &mut n.link) {
            Some(Link::Leader(l)) => Ok([welcome, l.take_log()].concat()),
            _ => Ok(Vec::new()),
        }
    }

    /// For a site's other ranks: joins by following the leader's [`site_message`]
    /// (nothing is sent; the leader alone talks to the run).
    ///
    /// [`site_message`]: EmbeddedWorker::site_message
    pub fn follow(&mut self, message: &[u8]) -> Result<()> {
        ensure!(self.net.is_none(), "this rank already follows its site's leader");
        ensure!(
            message.len() >= SITE_WELCOME_LEN,
            "the site leader's message is {} bytes, too short for a welcome",
            message.len()
        );
        let (welcome, log) = message.split_at(SITE_WELCOME_LEN);
        let member = u32::from_le_bytes([welcome[0], welcome[1], welcome[2], welcome[3]]);
        let expected = u32::from_le_bytes([welcome[4], welcome[5], welcome[6], welcome[7]]);
        let (need_state, ring) = (welcome[8] != 0, welcome[9] != 0);
        self.w.id = member;
        if ring && self.w.outer.ring(&self.w.params).is_none() {
            bail!("algorithm {} cannot run in a ring", self.spec.algorithm.name());
        }
        let mut replay = Replay::default();
        replay.feed(log)?;
        self.took_state = need_state;
        let mut driver = Driver::start(&mut replay, need_state)?;
        self.settle(&mut driver, &mut replay)?;
        self.net = Some(Net {
            link: Link::Follower(replay),
            driver,
            member,
            expected,
            waiting: Rc::new(Cell::new(Duration::ZERO)),
            rtt: Rc::new(Cell::new(None)),
            runtime: None,
        });
        Ok(())
    }

    /// For a site's leader after each step: the answers its link gave, for the other
    /// ranks' [`EmbeddedWorker::feed`].
    pub fn take_site_log(&mut self) -> Result<Vec<u8>> {
        match self.net.as_mut().map(|n| &mut n.link) {
            Some(Link::Leader(l)) => Ok(l.take_log()),
            _ => bail!("only a site's leader has a log to share"),
        }
    }

    /// For a site's other ranks before each step: the leader's answers for it.
    pub fn feed(&mut self, log: &[u8]) -> Result<()> {
        match self.net.as_mut().map(|n| &mut n.link) {
            Some(Link::Follower(r)) => r.feed(log),
            _ => bail!("only a rank that follows its site's leader is fed its log"),
        }
    }

    /// Takes what the network already delivered (a peer's state, rounds to replay) without
    /// training; the rounds applied are reported by the next step.
    fn settle(&mut self, driver: &mut Driver, link: &mut dyn RoundLink) -> Result<()> {
        let total = self.spec.total_steps.unwrap_or(u64::MAX);
        let mut applied = Vec::new();
        driver.settle(&mut self.w, link, total, &mut |r: &AppliedRound| applied.push(r.clone()))?;
        self.settled.extend(applied);
        self.stats.steps = self.w.steps_done();
        Ok(())
    }

    /// This worker's member id (0-based, in join order); joins first if needed.
    pub fn member(&mut self) -> Result<u32> {
        self.join()?;
        Ok(self.net.as_ref().map_or(0, |n| n.member))
    }

    /// The number of workers the run was started for (the coordinator's minimum); joins
    /// first if needed.
    pub fn expected_workers(&mut self) -> Result<u32> {
        self.join()?;
        Ok(self.net.as_ref().map_or(1, |n| n.expected))
    }

    /// One inner step: the program has run backward (and reports `loss`, if it knows it).
    /// Exchanges when a round falls due, which may wait for the network. Returns the rounds
    /// applied during the step (replays included).
    pub fn step(&mut self, loss: Option<f64>) -> Result<Vec<AppliedRound>> {
        let joining = self.net.is_none();
        self.join()?;
        if joining && self.took_state {
            // The program's gradient was computed on the parameters a peer's state just
            // replaced: this step is not taken (join first, e.g. through `member`, to
            // avoid losing it).
            let applied = std::mem::take(&mut self.settled);
            self.count(&applied);
            return Ok(applied);
        }
        let Some(net) = self.net.as_mut() else { bail!("not joined") };
        self.w.train.loss = loss.unwrap_or(0.0);
        let total = self.spec.total_steps.unwrap_or(u64::MAX);
        let mut applied = Vec::new();
        let before = net.waiting.get();
        applied.append(&mut self.settled);
        let mut observe = |r: &AppliedRound| applied.push(r.clone());
        if net.driver.step(&mut self.w, net.link.round_link(), total, &mut observe)?.is_none() {
            // Caught up past the run's last step (a peer's state from its end): nothing
            // is left to train; the program's loop may simply run out.
            tracing::debug!(total, "the run's last step is done");
        }
        if !applied.is_empty() {
            self.stats.last_round_seconds = (net.waiting.get() - before).as_secs_f64();
        }
        self.count(&applied);
        Ok(applied)
    }

    /// Adds `applied` and the link's counters to the stats.
    fn count(&mut self, applied: &[AppliedRound]) {
        let stats = &mut self.stats;
        stats.steps = self.w.steps_done();
        let Some(net) = self.net.as_ref() else { return };
        for r in applied {
            stats.rounds += 1;
            stats.rounds_replayed += u64::from(r.replayed);
            stats.straggled += u64::from(!r.replayed && !r.exchange.applied.contains(&net.member));
            for (member, why) in &r.exchange.rejected {
                stats.rejected += 1;
                stats.last_rejection = Some(format!("member {member}: {why}"));
            }
            stats.last_hash = Some(r.exchange.hash);
        }
        if let Some(link) = net.link.network() {
            stats.bytes_sent = link.sent;
            stats.bytes_received = link.received;
        }
        stats.waiting_seconds = net.waiting.get().as_secs_f64();
        stats.rtt_ms = net.rtt.get().map(|d| d.as_secs_f64() * 1e3);
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// The hash every worker of the run shares after the same round.
    pub fn consensus_hash(&self) -> Result<u64> {
        Ok(self.w.outer.consensus_hash(&self.w.params)?)
    }

    /// Inner steps and rounds done.
    pub fn progress(&self) -> (u64, u64) {
        (self.w.steps_done(), self.w.rounds_done())
    }

    /// The worker's whole state (parameters, outer and inner optimizer, counters) as
    /// bytes, as a newcomer receives it.
    pub fn state(&self) -> Result<Vec<u8>> {
        snapshot::encode(&self.w)
    }

    /// Replaces the worker's state with `bytes` from [`EmbeddedWorker::state`] (of a run
    /// with the same model and algorithm), before it joins; changes nothing on error.
    pub fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        if self.net.is_some() {
            bail!(
                "load the state before the first step: this worker has joined its run and \
                 follows it now"
            );
        }
        snapshot::restore(&mut self.w, bytes)?;
        self.stats.steps = self.w.steps_done();
        Ok(())
    }

    /// Leaves the run (a worker that never joined has nothing to leave).
    pub fn close(self) -> Result<()> {
        let Some(Net { link, runtime, .. }) = self.net else { return Ok(()) };
        let handle = match link {
            Link::Solo(l) => l.handle,
            Link::Leader(l) => l.inner.handle,
            Link::Follower(_) => return Ok(()),
        };
        let result = handle.leave().context("leaving the run");
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
        result
    }
}

/// Connects in the background, asking `interrupt` while it waits.
fn connect(
    runtime: &tokio::runtime::Runtime,
    cfg: WorkerNodeConfig,
    timeout: Duration,
    interrupt: &mut Box<dyn FnMut() -> Result<()>>,
) -> Result<WorkerHandle> {
    let host = cfg.join.address();
    let mut task = runtime.spawn(WorkerNode::connect(cfg));
    let start = Instant::now();
    loop {
        // The timer is built inside the runtime (it needs its time driver).
        let poll = async { tokio::time::timeout(Duration::from_millis(100), &mut task).await };
        match runtime.block_on(poll) {
            Ok(joined) => {
                let node =
                    joined.context("the connecting task failed")?.context("joining the run")?;
                return Ok(WorkerHandle::from_node(node, runtime.handle()));
            }
            Err(_) => {
                if let Err(e) = interrupt() {
                    task.abort();
                    return Err(e);
                }
                if start.elapsed() > timeout {
                    task.abort();
                    bail!(
                        "could not join the run within {:.0} s: is the coordinator at {host} \
                         running and reachable?",
                        timeout.as_secs_f64()
                    );
                }
            }
        }
    }
}

/// Waits for the welcome: whether to take a peer's state first, how payloads travel, and
/// how many members the run was started for.
fn welcomed(link: &mut HandleLink, timeout: Duration) -> Result<(bool, Topology, u32)> {
    let start = Instant::now();
    loop {
        if let Some(interrupt) = &mut link.interrupt {
            interrupt()?;
        }
        match link.handle.next_event(Some(Duration::from_millis(100)))? {
            Some(WorkerNodeEvent::Welcomed { need_state, topology, expected, .. }) => {
                return Ok((need_state, topology, expected))
            }
            Some(_) => {}
            None if start.elapsed() > timeout => {
                bail!("joined, but no welcome came within {timeout:?}")
            }
            None => {}
        }
    }
}
