//! `meridian simulate`: what a cross-continent run will do, on one machine.
//!
//! Every worker trains the real model with the real outer optimizer, and every payload
//! crosses the real comm stack (the round protocol over authenticated QUIC) — but the UDP
//! datagrams travel through [`meridian_simulate::Fabric`], a model of the links between
//! regions (delay, bandwidth, queues, loss), in virtual time. The coordinator, the workers
//! and the fabric share one thread and one paused tokio clock; each worker's training loop
//! is a coroutine ([`colink`]) charging its compute to that clock
//! ([`compute::ComputeModel`]). Simulated seconds therefore mean "on this network, with
//! steps this long", and the same seed replays the same run.

pub mod chaos;
pub mod colink;
pub mod compute;
pub mod report;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use meridian_comm::node::{
    CoordinatorNode, CoordinatorNodeConfig, CoordinatorNodeEvent, WorkerNode, WorkerNodeConfig,
};
use meridian_comm::protocol::Topology as Route;
use meridian_comm::quic::{NodeIdentity, TransportTuning};
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::solo::{SoloStep, SoloWorker};
use meridian_optimizer::train_step::TrainStep;
use meridian_optimizer::Algorithm;
use meridian_simulate::{Fabric, Topology};
use quinn::AsyncUdpSocket;
use tch::Tensor;

use crate::data::Split;
use crate::model::{parameter_count, ModelKind};
use crate::net_worker::{drive, AppliedRound, DriveObserver};
use crate::plot::CurvePoint;
use crate::ring_reducer::RingCell;
use crate::run_config::{RunConfig, RunSource};
use crate::train::build_model;
use crate::worker::LmWorker;
use compute::{parse_duration, ComputeModel};
use report::{SimAlgo, SimSummary, SimWorker};

/// How payloads travel in the simulated run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteArg {
    /// Each worker uploads once to the coordinator, which forwards to the others.
    Relay,
    /// Each worker sends directly to every other worker.
    AllGather,
    /// Workers sum dense payloads around a ring (each sends 2(N-1)/N of its payload; ddp
    /// and diloco only). Fewer bytes, but 2(N-1) sequential hops: on long links with
    /// payloads of a few MB the relay's two hops finish first.
    Ring,
}

impl RouteArg {
    /// The protocol topology.
    fn route(self) -> Route {
        match self {
            RouteArg::Relay => Route::Relay,
            RouteArg::AllGather => Route::AllGather,
            RouteArg::Ring => Route::Ring,
        }
    }
}

/// Options of `meridian simulate`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Trains the built-in GPT on the shipped corpus with each algorithm over the same simulated
wide-area network, in virtual time: real QUIC and the real round protocol, over links that
delay, queue and lose datagrams as configured. Presets: lan, cross-continent (us-east,
us-west, eu-west, ap-southeast), home (consumer uplinks), lossy (bursty loss); or a TOML
topology with --topology. Compute is charged at --step-time per inner step (or modelled
from FLOPs with --tflops), so simulated seconds mean what they would on that hardware.

Writes OUT/summary.json (byte-identical for the same seed unless --measured-compute) and
OUT/val_loss_vs_{time,bytes}.{svg,png}. The default run takes about 4 minutes on 2 cores,
--quick about 15 seconds.")]
pub struct SimulateArgs {
    /// The network: lan, cross-continent, home or lossy.
    #[arg(long, default_value = "cross-continent", env = "MERIDIAN_PRESET")]
    pub preset: String,
    /// A topology TOML file instead of a preset (regions, links, placement).
    #[arg(long, env = "MERIDIAN_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// Outer algorithms, comma separated: ddp, diloco, sparseloco, demo.
    #[arg(long, value_delimiter = ',', default_value = "ddp,diloco,sparseloco,demo")]
    pub algos: Vec<Algorithm>,
    /// Workers, placed round-robin over the topology's regions.
    #[arg(long, default_value_t = 4, env = "MERIDIAN_WORKERS")]
    pub workers: u32,
    /// Seed of the model, the data shards and the network.
    #[arg(long, default_value_t = 0, env = "MERIDIAN_SEED")]
    pub seed: u64,
    /// Directory for summary.json and the plots.
    #[arg(long, default_value = "out/simulate", env = "MERIDIAN_OUT")]
    pub out: PathBuf,
    /// A short run: 60 steps on a smaller model (about 15 seconds on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// Inner steps per worker (default 300, or 60 with --quick).
    #[arg(long, env = "MERIDIAN_STEPS")]
    pub steps: Option<u64>,
    /// Inner steps per round (H) for the algorithms that have one (default 30, or 10 with
    /// --quick).
    #[arg(long, env = "MERIDIAN_INNER_STEPS")]
    pub inner_steps: Option<u64>,
    /// Simulated time one inner step takes: what a step costs on your accelerator.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub step_time: Duration,
    /// Model the step time from FLOPs instead: 6 x parameters x tokens per step at this
    /// sustained rate in TFLOP/s (e.g. 400 for an H100 at 40% of its dense bf16 peak).
    #[arg(long)]
    pub tflops: Option<f64>,
    /// Charge each step's measured time on this machine (the run is then not reproducible).
    #[arg(long)]
    pub measured_compute: bool,
    /// How payloads travel.
    #[arg(long, value_enum, default_value = "relay")]
    pub route: RouteArg,
    /// Put the run through a network fault: a 30 s partition between two continents that
    /// heals, a link whose bandwidth drops 10x mid-run, or sustained 5% bursty loss on one
    /// link (each between the coordinator's region and worker 1's).
    #[arg(long, value_enum)]
    pub chaos: Option<chaos::Chaos>,
    /// The loss "time to target" refers to (default: the lowest every algorithm reached).
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Evaluate validation loss every this many inner steps (default: 20 times per run).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// The model, data and settings (`--model gpt`, the default, is d_model 128, 2 layers,
    /// 2 heads, context 128 unless set otherwise; 64/2/2/64 with --quick).
    #[command(flatten)]
    pub source: RunSource,
    /// LibTorch intra-op threads. Default 1: the simulation runs every worker on one
    /// thread, and with small models a second intra-op thread mostly spins (measured: the
    /// run takes twice as long with 2 on 2 cores).
    #[arg(long, default_value_t = 1, env = "MERIDIAN_THREADS")]
    pub threads: usize,
}

/// The GPT the simulation trains unless told otherwise: small enough that four workers
/// and four algorithms fit in minutes on two cores.
const DEFAULT_GPT: [&str; 4] =
    ["model.d_model=128", "model.layers=2", "model.heads=2", "model.context=128"];
const QUICK_GPT: [&str; 4] =
    ["model.d_model=64", "model.layers=2", "model.heads=2", "model.context=64"];

/// Everything one algorithm's run needs, shared by its workers.
struct Plan {
    topology: Topology,
    placement: Vec<String>,
    config: RunConfig,
    corpus: Arc<crate::data::Corpus>,
    compute: ComputeModel,
    route: RouteArg,
    steps: u64,
    eval_every: u64,
    seed: u64,
    tokens_per_step: u64,
}

/// Runs `meridian simulate`.
pub fn run(args: &SimulateArgs) -> Result<()> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if let Some(a) = args.algos.iter().find(|a| **a == Algorithm::Streaming) {
        bail!("--algos {a}: Streaming DiLoCo does not run across the network yet; use ddp, diloco, sparseloco or demo");
    }
    if args.algos.is_empty() {
        bail!("--algos needs at least one algorithm");
    }
    let (network, mut topology) = match &args.topology {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--topology: cannot read {}", path.display()))?;
            let t = Topology::from_toml(&text)
                .with_context(|| format!("--topology {}", path.display()))?;
            (path.display().to_string(), t)
        }
        None => (args.preset.clone(), Topology::preset(&args.preset).context("--preset")?),
    };
    let placement = topology.place_workers(args.workers as usize).context("--workers")?;
    let chaos = match args.chaos {
        Some(c) => Some(chaos::apply(c, &mut topology, &placement).context("--chaos")?),
        None => None,
    };
    let steps = args.steps.unwrap_or(if args.quick { 60 } else { 300 });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let inner_steps = args.inner_steps.or(Some(if args.quick { 10 } else { 30 }));
    let mut sets: Vec<String> = Vec::new();
    if matches!(args.source.model, ModelKind::Gpt) {
        let defaults = if args.quick { QUICK_GPT } else { DEFAULT_GPT };
        sets.extend(defaults.iter().map(|s| s.to_string()));
    }
    let config = args.source.config(&args.algos, inner_steps, &sets)?;
    let corpus = Arc::new(args.source.data.load()?);
    tch::set_num_threads(args.threads.max(1) as i32);
    let probe = build_model(&config.model, corpus.vocab(), args.seed)?;
    let parameters = parameter_count(probe.as_ref());
    let tokens_per_step = config.data.batch * probe.context() as u64;
    let compute = ComputeModel::from_args(
        args.step_time,
        args.tflops,
        args.measured_compute,
        parameters,
        tokens_per_step,
    )?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    if args.route == RouteArg::Ring {
        if let Some(a) =
            args.algos.iter().find(|a| !matches!(a, Algorithm::Ddp | Algorithm::Diloco))
        {
            bail!("--route ring: {a} sends sparse payloads, which do not add up in transit; use --route relay");
        }
    }
    let route = args.route;
    println!(
        "Simulating {} workers on {network} ({}), training {} ({:.2}M parameters) for {steps} \
         inner steps each.\nCompute: {}.\n",
        args.workers,
        placement.join(", "),
        probe.describe(),
        parameters as f64 / 1e6,
        compute.describe()
    );
    let links: Vec<String> = topology.describe().lines().map(str::to_string).collect();
    for l in &links {
        println!("  {l}");
    }
    if let Some(c) = &chaos {
        println!("  chaos: {c}");
    }
    println!();
    let plan = Plan {
        topology,
        placement,
        config,
        corpus,
        compute,
        route,
        steps,
        eval_every: args.eval_every.unwrap_or((steps / 20).max(1)).max(1),
        seed: args.seed,
        tokens_per_step,
    };
    let started = Instant::now();
    let mut algorithms = Vec::new();
    for algo in &plan.config.algos {
        let t = Instant::now();
        let result = simulate_one(&plan, algo)
            .with_context(|| format!("simulating {}", algo.algorithm()))?;
        tracing::info!(algo = %algo.algorithm(), wall_s = t.elapsed().as_secs_f64(), "simulated");
        algorithms.push(result);
    }
    let target = args.target_loss.unwrap_or_else(|| SimSummary::common_target(&algorithms));
    let mut summary = SimSummary {
        network,
        links,
        chaos,
        workers: args.workers,
        steps,
        seed: args.seed,
        compute: plan.compute.describe(),
        deterministic: plan.compute.deterministic(),
        model: probe.describe(),
        parameters,
        route: match args.route {
            RouteArg::Relay => "relay".into(),
            RouteArg::AllGather => "all-gather".into(),
            RouteArg::Ring => "ring".into(),
        },
        target_loss: target,
        algorithms,
    };
    summary.set_target(target);
    summary.write(&args.out.join("summary.json"))?;
    let plots = summary.plot(&args.out);
    println!();
    summary.print_table();
    println!(
        "\nWrote summary.json and {} plots in {} ({:.0} s of wall-clock time).",
        plots.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if summary.algorithms.iter().any(|a| !a.replicas_identical) {
        bail!("replicas diverged");
    }
    Ok(())
}

/// A seed for node `index`'s deterministic identity in a run seeded `seed`.
fn identity_seed(seed: u64, index: u64) -> [u8; 32] {
    let mut rng = meridian_kernels::rng::SplitMix64::new(seed ^ 0x6d65_7269_6469_616e);
    let mut out = [0u8; 32];
    for _ in 0..=index {
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
    }
    out
}

/// Runs one algorithm over a fresh simulated network, in virtual time.
fn simulate_one(plan: &Plan, algo: &AlgoConfig) -> Result<SimAlgo> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .context("starting the simulation runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, simulate_async(plan, algo))
}

/// What the workers of one run share: the clock's origin, the progress display, bytes so
/// far (for the curve's x axis) and the curve itself.
struct Shared {
    start: tokio::time::Instant,
    sent: RefCell<Vec<u64>>,
    curve: RefCell<Vec<CurvePoint>>,
    progress: ProgressBar,
    workers: u64,
    tokens_per_step: u64,
    eval_every: u64,
    steps: u64,
}

impl Shared {
    fn now(&self) -> f64 {
        (tokio::time::Instant::now() - self.start).as_secs_f64()
    }
}

/// What one worker's coroutine returns.
struct Outcome {
    member: u32,
    rounds: u64,
    sent: u64,
    received: u64,
    compute: Duration,
    finished: f64,
    hash: u64,
    initial_val_loss: Option<f64>,
    final_val_loss: Option<f64>,
    tail_losses: Vec<f64>,
}

async fn simulate_async(plan: &Plan, algo: &AlgoConfig) -> Result<SimAlgo> {
    let n = plan.placement.len();
    let fabric = Fabric::new(plan.topology.clone(), plan.seed);
    let mut tuning: TransportTuning = plan.config.transport.clone();
    // QUIC's own random choices follow the run's seed, so the run replays exactly. Only
    // ever in a simulation: on a real network they must be unpredictable.
    tuning.rng_seed = Some(plan.seed);

    let socket = fabric.bind(plan.topology.coordinator_region())?;
    let addr = socket.local_addr().context("the coordinator's virtual address")?;
    let route = plan.route.route();
    let mut ccfg = CoordinatorNodeConfig::new(addr, route);
    ccfg.socket = Some(socket);
    ccfg.identity = Some(NodeIdentity::deterministic("coordinator", identity_seed(plan.seed, 0))?);
    ccfg.tuning = tuning.clone();
    ccfg.protocol.min_members = n;
    let mut coordinator = CoordinatorNode::start(ccfg).context("starting the coordinator")?;
    let join = coordinator.join_string();
    // The coordinator's events are only logged, but they must be read: its queue is bounded.
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let events = tokio::task::spawn_local(async move {
        let mut committed = 0u64;
        loop {
            let event = tokio::select! {
                _ = &mut stopped => break,
                event = coordinator.next_event() => event,
            };
            match event {
                Some(CoordinatorNodeEvent::Protocol(
                    meridian_comm::protocol::CoordinatorEvent::RoundCommitted { .. },
                )) => committed += 1,
                Some(CoordinatorNodeEvent::Failed { reason }) => {
                    tracing::error!(%reason, "coordinator stopped");
                    break;
                }
                Some(other) => tracing::debug!(event = ?other, "coordinator"),
                None => break,
            }
        }
        (coordinator, committed)
    });

    let progress = ProgressBar::new(plan.steps);
    progress.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    progress.set_prefix(algo.algorithm().to_string());
    let shared = Rc::new(Shared {
        start: tokio::time::Instant::now(),
        sent: RefCell::new(vec![0; n]),
        curve: RefCell::new(Vec::new()),
        progress: progress.clone(),
        workers: n as u64,
        tokens_per_step: plan.tokens_per_step,
        eval_every: plan.eval_every,
        steps: plan.steps,
    });

    let probe = build_model(&plan.config.model, plan.corpus.vocab(), plan.seed)?;
    let split = Split::new(plan.corpus.clone(), probe.context() as usize)?;
    let batch = plan.config.data.batch as usize;
    let validation: Rc<Vec<(Tensor, Tensor)>> =
        Rc::new(split.validation(batch, plan.config.data.eval_batches as usize));
    drop(probe);

    // Workers join one after another, so member ids follow the placement order.
    let mut tasks = Vec::new();
    for (index, region) in plan.placement.iter().enumerate() {
        let mut wcfg = WorkerNodeConfig::new(join.clone(), format!("w{index}"));
        wcfg.socket = Some(fabric.bind(region)?);
        wcfg.identity = Some(NodeIdentity::deterministic(
            &format!("w{index}"),
            identity_seed(plan.seed, index as u64 + 1),
        )?);
        wcfg.tuning = tuning.clone();
        let reducer = Arc::new(RingCell::default());
        wcfg.reducer = Some(reducer.clone());
        let mut node = WorkerNode::connect(wcfg).await.context("a worker joining")?;
        let member = node.member();
        let model = build_model(&plan.config.model, plan.corpus.vocab(), plan.seed)?;
        let shard = split.shard(member % n as u32, n as u32, plan.seed, batch)?;
        let lm = LmWorker::new(model, plan.config.inner, shard, validation.clone(), plan.steps)?;
        let build = algo.clone();
        let solo = SoloWorker::new(member, lm, |p| build.build(p))?;
        if route == Route::Ring {
            let ring = solo.outer.ring(&solo.params).with_context(|| {
                format!(
                    "{} cannot run in a ring (sparse payloads, or a robust aggregation mode \
                     that needs every member's update): use --route relay",
                    algo.algorithm()
                )
            })?;
            reducer.set(ring);
        }
        let shared = shared.clone();
        let charger = colink::Charger::new(plan.compute.step_time());
        let bytes = Rc::new(colink::LinkBytes::default());
        let steps = plan.steps;
        tasks.push(tokio::task::spawn_local(async move {
            let (c, b) = (charger.clone(), bytes.clone());
            let outcome = colink::run(&mut node, &charger, &bytes, move |y| {
                run_worker(y, solo, index, steps, c, b, &shared)
            })
            .await;
            if let Err(e) = node.leave().await {
                tracing::debug!(error = %e, "leaving");
            }
            outcome
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.context("a simulated worker panicked")??);
    }
    progress.finish_and_clear();
    // Every worker left: stop reading events and shut the coordinator down.
    let _ = stop.send(());
    let (coordinator, committed) = events.await.context("the coordinator's event task")?;
    if let Err(e) = coordinator.shutdown().await {
        tracing::debug!(error = %e, "coordinator shutdown");
    }
    tracing::debug!(committed, "coordinator done");
    let stats = fabric.stats();
    let wire_bytes = stats.links.values().map(|l| l.offered.bytes).sum();
    Ok(summarize(plan, algo, &shared, &outcomes, wire_bytes))
}

/// The body of one worker's coroutine: train `steps` steps through the simulated network.
fn run_worker(
    y: &corosensei::Yielder<colink::Reply, colink::Request>,
    mut w: SoloWorker<LmWorker>,
    index: usize,
    steps: u64,
    charger: Rc<colink::Charger>,
    bytes: Rc<colink::LinkBytes>,
    shared: &Shared,
) -> Result<Outcome> {
    let initial_val_loss = if index == 0 {
        let loss = w.train.eval_loss()?;
        shared.curve.borrow_mut().push(CurvePoint {
            step: 0,
            tokens: 0,
            bytes_per_worker: 0.0,
            seconds: 0.0,
            val_loss: loss,
        });
        Some(loss)
    } else {
        None
    };
    charger.skip();
    let mut link = colink::CoLink::new(y, charger.clone());
    let mut observer = Observer {
        y,
        index,
        shared,
        rounds: 0,
        bytes: bytes.clone(),
        charger: charger.clone(),
        losses: Vec::new(),
    };
    drive(&mut w, &mut link, steps, false, &mut observer)?;
    let finished = shared.now();
    let final_val_loss = if index == 0 { Some(w.train.eval_loss()?) } else { None };
    let tail = ((steps as f64 * 0.05).ceil() as usize).max(1);
    let skip = observer.losses.len().saturating_sub(tail);
    Ok(Outcome {
        member: w.id,
        rounds: observer.rounds,
        sent: bytes.sent.get(),
        received: bytes.received.get(),
        compute: charger.charged(),
        finished,
        hash: w.outer.consensus_hash(&w.params)?,
        initial_val_loss,
        final_val_loss,
        tail_losses: observer.losses[skip..].to_vec(),
    })
}

/// Counts a worker's rounds and bytes, charges measured compute, and evaluates worker 0.
struct Observer<'a, 'y> {
    y: &'y corosensei::Yielder<colink::Reply, colink::Request>,
    index: usize,
    shared: &'a Shared,
    rounds: u64,
    bytes: Rc<colink::LinkBytes>,
    charger: Rc<colink::Charger>,
    losses: Vec<f64>,
}

impl DriveObserver for &mut Observer<'_, '_> {
    fn round_applied(&mut self, _round: &AppliedRound) {
        self.rounds += 1;
        self.shared.sent.borrow_mut()[self.index] = self.bytes.sent.get();
    }

    fn step_done(&mut self, w: &mut SoloWorker<LmWorker>, step: &SoloStep) -> Result<()> {
        // Measured compute: the rest of the step (after its exchange) is charged now.
        self.charger.flush(self.y)?;
        self.losses.push(step.loss);
        let done = w.steps_done();
        if self.index == 0 {
            self.shared.progress.set_position(done);
            if done % self.shared.eval_every == 0 || done == self.shared.steps {
                let val_loss = w.train.eval_loss()?;
                let sent = self.shared.sent.borrow();
                let point = CurvePoint {
                    step: done,
                    tokens: done * self.shared.tokens_per_step * self.shared.workers,
                    bytes_per_worker: sent.iter().sum::<u64>() as f64 / sent.len() as f64,
                    seconds: self.shared.now(),
                    val_loss,
                };
                self.shared.progress.set_message(format!(
                    "simulated {:.1} s, val loss {val_loss:.4}",
                    point.seconds
                ));
                self.shared.curve.borrow_mut().push(point);
            }
        }
        // Evaluating is for the report, not training: it costs no simulated time.
        self.charger.skip();
        Ok(())
    }
}

fn summarize(
    plan: &Plan,
    algo: &AlgoConfig,
    shared: &Shared,
    outcomes: &[Outcome],
    wire_bytes: u64,
) -> SimAlgo {
    let n = outcomes.len().max(1) as f64;
    let simulated = outcomes.iter().map(|o| o.finished).fold(0.0, f64::max);
    let utilization = outcomes
        .iter()
        .map(|o| if o.finished > 0.0 { o.compute.as_secs_f64() / o.finished } else { 1.0 })
        .sum::<f64>()
        / n;
    let tail: Vec<f64> = outcomes.iter().flat_map(|o| o.tail_losses.iter().copied()).collect();
    let final_train_loss = tail.iter().sum::<f64>() / tail.len().max(1) as f64;
    let first = outcomes.first();
    SimAlgo {
        algorithm: algo.algorithm().to_string(),
        settings: toml::from_str::<serde_json::Value>(&algo.to_toml()).unwrap_or_default(),
        initial_val_loss: first.and_then(|o| o.initial_val_loss).unwrap_or(f64::NAN),
        final_val_loss: first.and_then(|o| o.final_val_loss).unwrap_or(f64::NAN),
        final_train_loss,
        rounds: first.map_or(0, |o| o.rounds),
        bytes_sent_per_worker: outcomes.iter().map(|o| o.sent as f64).sum::<f64>() / n,
        bytes_received_per_worker: outcomes.iter().map(|o| o.received as f64).sum::<f64>() / n,
        wire_bytes,
        simulated_seconds: simulated,
        compute_utilization: utilization,
        seconds_to_target: None,
        replicas_identical: outcomes.windows(2).all(|p| p[0].hash == p[1].hash),
        workers: outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| SimWorker {
                member: o.member,
                region: plan.placement.get(i).cloned().unwrap_or_default(),
                finished_seconds: o.finished,
                compute_seconds: o.compute.as_secs_f64(),
                bytes_sent: o.sent,
                hash: format!("{:016x}", o.hash),
            })
            .collect(),
        curve: shared.curve.borrow().clone(),
    }
}
