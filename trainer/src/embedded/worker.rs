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

use meridian_optimizer::params::hash_records;
use meridian_optimizer::train_step::TrainStep;

use super::script_step::{ScriptOptimizer, ScriptStep};
use super::shard::{check_shardable, ShardLayout};
use super::site::{SiteChannel, SiteLink};
use crate::model::ModelKind;
use crate::networked::drive::{AppliedRound, DriveObserver, Driver, RoundLink};
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
}

/// A rank's place in its site, kept after its channel went to the link.
struct SiteRole {
    leads: bool,
    shard: Option<(Vec<String>, ShardLayout)>,
}

/// This process is one rank of a site: several ranks training as one worker
/// ([`crate::embedded::site`]).
pub struct SiteSpec {
    /// Whether this rank leads (rank 0: it alone holds the connection).
    pub leads: bool,
    /// How the site's ranks talk.
    pub channel: Box<dyn SiteChannel>,
    /// When the site shards its outer state: the whole model's names (canonical order)
    /// and which rank holds which; this rank was given its own tensors only.
    pub shard: Option<(Vec<String>, ShardLayout)>,
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
    /// Peers' states taken (catching up).
    pub states_taken: u64,
    /// Parameter elements this process's outer algorithm covers (its outer state grows
    /// with them): the whole model's, or on a rank of a sharded site its part's.
    pub outer_elements: u64,
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
    /// The site's set-up until joined (the link then holds it).
    site: Option<SiteRole>,
    /// The site's channel until the link takes it at join.
    channel: Option<Box<dyn SiteChannel>>,
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
    /// As a rank of a site (the leader's connection inside on the leader).
    Site(SiteLink<HandleLink>),
}

impl Link {
    fn round_link(&mut self) -> &mut dyn RoundLink {
        match self {
            Link::Solo(l) => l,
            Link::Site(l) => l,
        }
    }

    fn network(&self) -> Option<&HandleLink> {
        match self {
            Link::Solo(l) => Some(l),
            Link::Site(l) => l.network(),
        }
    }
}

/// What a site's leader tells the other ranks once it has joined: the welcome (member,
/// expected members, whether a peer's state comes first, whether rounds go round a ring).
const SITE_WELCOME_LEN: usize = 10;

/// Collects the rounds applied and, on a rank holding part of the model, the hash records
/// of its part right after each (see [`agree`]).
#[derive(Default)]
struct Collected {
    applied: Vec<AppliedRound>,
    records: Option<Vec<Vec<u8>>>,
}

impl<S: TrainStep> DriveObserver<S> for Collected {
    fn round_applied(&mut self, round: &AppliedRound) {
        self.applied.push(round.clone());
    }

    fn round_applied_to(&mut self, w: &SoloWorker<S>, round: &AppliedRound) {
        if let Some(records) = &mut self.records {
            // A part that cannot be hashed leaves no records, which `agree` refuses.
            let agreed = w.outer.consensus_params().unwrap_or(w.params.tensors());
            records.push(hash_records(w.params.names(), agreed).unwrap_or_default());
        }
        DriveObserver::<S>::round_applied(self, round);
    }
}

/// Whether a site running `algorithm` with `sets` (as [`JoinSpec::sets`]) on a model of
/// `tensors` tensors can shard its outer state across its ranks; the reason when it cannot.
pub fn shardable(algorithm: Algorithm, sets: &[String], tensors: usize) -> Result<()> {
    let config = RunConfig::build(&ModelKind::Mlp, &[algorithm], None, None, sets)?;
    check_shardable(config.algos.first().context("no algorithm configured")?, tensors)
}

/// The algorithm's settings for `spec`, parsed as the CLI parses them.
fn algo_config(spec: &JoinSpec) -> Result<(AlgoConfig, TransportTuning)> {
    let config =
        RunConfig::build(&ModelKind::Mlp, &[spec.algorithm], None, spec.inner_steps, &spec.sets)?;
    let algo = config.algos.into_iter().next().context("no algorithm configured")?;
    Ok((algo, config.transport))
}

/// The welcome as a site's leader passes it on: member, expected members, whether a
/// peer's state comes first, whether rounds go round a ring.
#[derive(Debug, Clone, Copy)]
struct Welcome {
    member: u32,
    expected: u32,
    need_state: bool,
    ring: bool,
}

impl Welcome {
    fn encode(&self) -> Vec<u8> {
        [
            &self.member.to_le_bytes()[..],
            &self.expected.to_le_bytes(),
            &[u8::from(self.need_state), u8::from(self.ring)],
        ]
        .concat()
    }

    fn decode(b: &[u8]) -> Result<Self> {
        ensure!(
            b.len() == SITE_WELCOME_LEN,
            "a welcome of {} bytes from the site's leader",
            b.len()
        );
        Ok(Self {
            member: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            expected: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            need_state: b[8] != 0,
            ring: b[9] != 0,
        })
    }
}

/// A connection to the run, welcomed.
struct Connected {
    link: HandleLink,
    welcome: Welcome,
    waiting: Rc<Cell<Duration>>,
    rtt: Rc<Cell<Option<Duration>>>,
    runtime: tokio::runtime::Runtime,
}

impl EmbeddedWorker {
    /// A worker for the run of `spec` over the program's `params` and optimizer; nothing
    /// is sent until it joins. `interrupt` is asked a few times a second while waiting for
    /// the network; its error ends the wait. With `site`, this process is one rank of a
    /// site; a rank of a sharded site is given its own part of the model only.
    pub fn new(
        spec: JoinSpec,
        params: Vec<(String, Tensor)>,
        inner: Box<dyn ScriptOptimizer>,
        interrupt: Box<dyn FnMut() -> Result<()>>,
        site: Option<SiteSpec>,
    ) -> Result<Self> {
        // Refuse a malformed join string before anything is built.
        let _: JoinString = spec.join.parse().context("the join string")?;
        let (algo, tuning) = algo_config(&spec)?;
        let (mut site, channel) = match site {
            Some(SiteSpec { leads, channel, shard }) => {
                (Some(SiteRole { leads, shard }), Some(channel))
            }
            None => (None, None),
        };
        let mut first = 0;
        if let Some((names, layout)) = site.as_mut().and_then(|s| s.shard.as_mut()) {
            check_shardable(&algo, names.len())
                .context("this site cannot shard its outer state")?;
            if algo.algorithm() == Algorithm::Streaming {
                *layout = layout.clone().with_partial_payloads();
            }
            first = layout.range().start;
            ensure!(
                names.len() == layout.shapes().len(),
                "{} names for a model of {} tensors",
                names.len(),
                layout.shapes().len()
            );
            let mine = &names[layout.range()];
            let mut given: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
            given.sort_unstable();
            ensure!(
                given.iter().copied().eq(mine.iter().map(String::as_str)),
                "this rank was given parameters {given:?}, but its part of the model is {mine:?}"
            );
        }
        let w = SoloWorker::new(0, ScriptStep::new(params, inner), |p| algo.build_part(p, first))?;
        // A wrapped program runs forward and backward before Meridian sees the step, so a
        // step that balancing skips would still have cost its time.
        ensure!(
            !w.outer.balance(),
            "{}.balance = true is for runs whose steps Meridian drives (meridian worker, \
             meridian simulate): a wrapped program computes every step before handing it over, \
             so skipping one saves nothing; leave balance off",
            algo.algorithm().name()
        );
        let stats = WorkerStats { outer_elements: w.params.numel() as u64, ..Default::default() };
        Ok(Self {
            w,
            spec,
            algo,
            tuning,
            interrupt: Some(interrupt),
            net: None,
            site,
            channel,
            settled: Vec::new(),
            took_state: false,
            stats,
        })
    }

    /// Whether the worker has joined its run.
    pub fn joined(&self) -> bool {
        self.net.is_some()
    }

    /// Whether this rank holds a part of the model only (a sharded site).
    pub fn holds_part(&self) -> bool {
        match &self.net {
            Some(net) => matches!(&net.link, Link::Site(l) if l.shard().is_some()),
            None => self.site.as_ref().is_some_and(|s| s.shard.is_some()),
        }
    }

    /// The run's facts as this worker sees them: its model (the whole one, on a rank that
    /// holds a part) and its algorithm's settings.
    fn signature(&self) -> RunSignature {
        let mut facts = meridian_optimizer::signature::run_signature(&self.w.params, &self.algo);
        if let Some((names, layout)) = self.site.as_ref().and_then(|s| s.shard.as_ref()) {
            // Parameters are f32 (a ParamSet holds nothing else).
            facts.retain(|k, _| !k.starts_with("param."));
            for (name, shape) in names.iter().zip(layout.shapes()) {
                let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                facts.insert(format!("param.{name}"), format!("f32[{}]", dims.join(", ")));
            }
        }
        RunSignature::from_facts(facts)
    }

    /// Why rounds that go round a ring cannot run here, or the ring's reducer.
    fn ring(&self, sharded: bool) -> Result<meridian_optimizer::ring::DenseRing> {
        ensure!(
            !sharded,
            "the coordinator sends rounds round a ring, which a site that shards its outer \
             state cannot take: start the coordinator with topology relay or all-gather, or \
             run the site unsharded (shard_outer_state=False)"
        );
        self.w.outer.ring(&self.w.params).with_context(|| {
            format!(
                "algorithm {} cannot run in a ring: sparse payloads (demo, sparseloco) do not \
                 add up in transit, a robust aggregation mode needs every member's update, and \
                 balance = true needs each member's weight; start the coordinator with \
                 topology relay or all-gather",
                self.spec.algorithm.name()
            )
        })
    }

    /// Joins the run (done by the first [`EmbeddedWorker::step`] otherwise). A worker that
    /// loaded a state joins as the member that applied its rounds: the coordinator replays
    /// what it missed; a fresh one may first receive a live peer's state. Every rank of a
    /// site joins at once: the leader through the network, the others through it.
    pub fn join(&mut self) -> Result<()> {
        if self.net.is_some() {
            return Ok(());
        }
        let site = match &self.site {
            Some(s) => {
                let channel = self.channel.take().context("a failed join cannot be retried")?;
                let layout = s.shard.as_ref().map(|(_, l)| l.clone());
                Some((s.leads, SiteLink::new(None, channel, layout)))
            }
            None => None,
        };
        let (mut link, welcome, waiting, rtt, runtime) = match site {
            None => {
                let c = self.connect()?;
                (Link::Solo(c.link), c.welcome, c.waiting, c.rtt, Some(c.runtime))
            }
            Some((true, mut site)) => match self.connect() {
                Ok(c) => {
                    site.tell(Some(Ok(c.welcome.encode())))?;
                    site.set_network(c.link);
                    (Link::Site(site), c.welcome, c.waiting, c.rtt, Some(c.runtime))
                }
                // The other ranks wait for the welcome: they get the reason instead.
                Err(e) => return Err(site.fail(e)),
            },
            Some((false, mut site)) => {
                let welcome = Welcome::decode(&site.tell(None)?)?;
                if welcome.ring {
                    self.ring(site.shard().is_some())?;
                }
                (Link::Site(site), welcome, Rc::default(), Rc::default(), None)
            }
        };
        let Welcome { member, expected, need_state, .. } = welcome;
        self.w.id = member;
        self.took_state = need_state;
        tracing::info!(member, need_state, "joined the run");
        let mut driver = Driver::start(link.round_link(), need_state)?;
        // A peer's state (and the rounds after it) is taken now, before the program's next
        // forward pass: a gradient computed on the parameters it is about to replace would
        // otherwise go into its first step.
        self.settle(&mut driver, &mut link)?;
        self.net = Some(Net { link, driver, member, expected, waiting, rtt, runtime });
        Ok(())
    }

    /// Connects to the run and waits for its welcome.
    fn connect(&mut self) -> Result<Connected> {
        let join: JoinString = self.spec.join.parse().context("the join string")?;
        let runtime = crate::networked::runtime()?;
        let mut node_cfg = WorkerNodeConfig::new(join, self.spec.name.clone());
        node_cfg.tuning = self.tuning.clone();
        node_cfg.signature = self.signature();
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
            counters: None,
        };
        let member = link.handle.member();
        let (need_state, topology, expected) = welcomed(&mut link, self.spec.connect_timeout)?;
        link.ring = topology == Topology::Ring;
        if link.ring {
            let sharded = self.site.as_ref().is_some_and(|s| s.shard.is_some());
            reducer.set(self.ring(sharded)?);
        }
        let welcome = Welcome { member, expected, need_state, ring: link.ring };
        Ok(Connected { link, welcome, waiting, rtt, runtime })
    }

    /// An observer for the rounds about to be applied.
    fn collector(&self) -> Collected {
        Collected { applied: Vec::new(), records: self.holds_part().then(Vec::new) }
    }

    /// On a sharded site, the ranks check they applied the same rounds alike and take the
    /// whole model's hash for each.
    fn agreed(link: &mut Link, mut seen: Collected) -> Result<Vec<AppliedRound>> {
        if let (Link::Site(site), Some(records)) = (link, &seen.records) {
            if !seen.applied.is_empty() {
                site.agree(&mut seen.applied, records)?;
            }
        }
        Ok(seen.applied)
    }

    /// Takes what the network already delivered (a peer's state, rounds to replay) without
    /// training; the rounds applied are reported by the next step.
    fn settle(&mut self, driver: &mut Driver, link: &mut Link) -> Result<()> {
        let total = self.spec.total_steps.unwrap_or(u64::MAX);
        let mut seen = self.collector();
        driver.settle(&mut self.w, link.round_link(), total, &mut seen)?;
        let applied = Self::agreed(link, seen)?;
        self.settled.extend(applied);
        self.stats.steps = self.w.steps_done();
        self.stats.states_taken = driver.states_taken();
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
        let mut seen = self.collector();
        let Some(net) = self.net.as_mut() else { bail!("not joined") };
        self.w.train.loss = loss.unwrap_or(0.0);
        let total = self.spec.total_steps.unwrap_or(u64::MAX);
        let before = net.waiting.get();
        if net.driver.step(&mut self.w, net.link.round_link(), total, &mut seen)?.is_none() {
            // Caught up past the run's last step (a peer's state from its end): nothing
            // is left to train; the program's loop may simply run out.
            tracing::debug!(total, "the run's last step is done");
        }
        let mut applied = std::mem::take(&mut self.settled);
        applied.extend(Self::agreed(&mut net.link, seen)?);
        if !applied.is_empty() {
            self.stats.last_round_seconds = (net.waiting.get() - before).as_secs_f64();
        }
        self.stats.states_taken = net.driver.states_taken();
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

    /// The hash every worker of the run shares after the same round. On a rank holding part
    /// of the model it is the whole model's, from every rank's part: a collective, which
    /// every rank of the site calls together (after joining).
    pub fn consensus_hash(&mut self) -> Result<u64> {
        if !self.holds_part() {
            return Ok(self.w.outer.consensus_hash(&self.w.params)?);
        }
        let agreed = self.w.outer.consensus_params().unwrap_or(self.w.params.tensors());
        let records = hash_records(self.w.params.names(), agreed)?;
        match self.net.as_mut().map(|n| &mut n.link) {
            Some(Link::Site(site)) => site.whole_hash(records),
            _ => {
                bail!("a rank holding part of the model hashes the whole with its site: join first")
            }
        }
    }

    /// Inner steps and rounds done.
    pub fn progress(&self) -> (u64, u64) {
        (self.w.steps_done(), self.w.rounds_done())
    }

    /// The worker's whole state (parameters, outer and inner optimizer, counters) as
    /// bytes, as a newcomer receives it; on a rank of a sharded site, its part.
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
            Link::Site(l) => match l.into_network() {
                Some(l) => l.handle,
                None => return Ok(()),
            },
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
