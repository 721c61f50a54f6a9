//! The simulation behind `meridian simulate`: what a cross-continent run will do, on one
//! machine.
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
pub mod coordinator;
pub mod limits;
pub mod process;
pub mod progress;
pub mod report;
pub mod synthetic;

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_comm::node::CoordinatorNodeConfig;
use meridian_comm::protocol::DeadlinePolicy;
use meridian_comm::quic::{NodeIdentity, TransportTuning};
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::Algorithm;
use meridian_simulate::{Fabric, Pace, Topology};
use tch::Tensor;

use crate::cli::args::{RouteArg, DEFAULT_STEPS};
use crate::cli::simulate::SimulateArgs;
use crate::data::Split;
use crate::model::build_model;
use crate::model::{parameter_count, ModelKind};
use crate::report::frontier::{DdpBaseline, Frontier};
use crate::run_config::RunConfig;
use compute::ComputeModel;
use report::{SimAlgo, SimSummary, SimWorker};

/// The GPT the simulation trains unless told otherwise: small enough that four workers
/// and four algorithms fit in minutes on two cores.
const DEFAULT_GPT: [&str; 4] =
    ["model.d_model=128", "model.layers=2", "model.heads=2", "model.context=128"];
const QUICK_GPT: [&str; 4] =
    ["model.d_model=64", "model.layers=2", "model.heads=2", "model.context=64"];

/// SparseLoCo's settings on the demo's run, from the frontier search
/// (`scripts/frontier.py`, BENCHMARKS.md "The bytes/loss frontier"): on 300 steps of this
/// GPT, 30 rounds of top-32 with 1-bit values (a sign and one magnitude per sign and block)
/// beat 10 rounds of the published top-64 with 2-bit values on both bytes and loss.
/// Applied unless `--inner-steps` or `--config` says otherwise; `--set` still overrides.
const DEMO_SPARSELOCO: [&str; 3] =
    ["sparseloco.inner_steps=10", "sparseloco.topk=32", "sparseloco.value_bits=1"];

/// Everything one algorithm's run needs, shared by its workers.
struct Plan {
    topology: Topology,
    placement: Vec<String>,
    /// Process faults.
    schedule: chaos::Schedule,
    /// Where a late joiner runs.
    late_region: Option<String>,
    /// Where a coordinator that will be restarted keeps its state.
    state_dir: PathBuf,
    config: RunConfig,
    corpus: Arc<crate::data::Corpus>,
    compute: ComputeModel,
    route: RouteArg,
    steps: u64,
    eval_every: u64,
    seed: u64,
    tokens_per_step: u64,
    /// The model's context length (tokens per sequence).
    context: usize,
    /// Where every worker trains.
    device: tch::Device,
    /// Wall time between progress lines when the bar is hidden.
    progress_every: Duration,
}

/// The run's fixed parts, shared by every scenario.
struct Setup {
    network: String,
    topology: Topology,
    placement: Vec<String>,
    config: RunConfig,
    corpus: Arc<crate::data::Corpus>,
    compute: ComputeModel,
    steps: u64,
    parameters: i64,
    model: String,
    tokens_per_step: u64,
    context: usize,
    links: Vec<String>,
    device: tch::Device,
}

/// Runs `meridian simulate`.
pub fn run(args: &SimulateArgs) -> Result<()> {
    if args.source.model == ModelKind::Synthetic || args.params.is_some() {
        return synthetic::run(args);
    }
    let setup = prepare(args)?;
    let started = Instant::now();
    let Some(chaos) = args.chaos else {
        let summary = run_scenario(args, &setup, None, None, &args.run.out)?;
        println!();
        summary.print_table();
        println!(
            "\nWrote summary.json and plots in {} ({:.0} s of wall-clock time).",
            args.run.out.display(),
            started.elapsed().as_secs_f64()
        );
        return check(&[("clean", &summary)]);
    };
    // Every scenario is measured against the clean run with the same seed.
    println!("clean run (no faults):");
    let clean = run_scenario(args, &setup, None, None, &args.run.out.join("clean"))?;
    let mut runs = Vec::new();
    for scenario in chaos.scenarios() {
        let summary =
            run_scenario(args, &setup, Some(scenario), None, &args.run.out.join(scenario.name()))
                .with_context(|| format!("--chaos {}", scenario.name()))?;
        runs.push((scenario, summary));
    }
    let mut rows = Vec::new();
    for (scenario, summary) in &runs {
        for (run, base) in summary.algorithms.iter().zip(&clean.algorithms) {
            let description = summary.chaos.clone().unwrap_or_default();
            rows.push(report::ChaosRow::new(scenario.name(), &description, run, base));
        }
    }
    let mut text = serde_json::to_string_pretty(&rows)?;
    text.push('\n');
    crate::atomic_write::write(&args.run.out.join("chaos.json"), text.as_bytes())?;
    println!();
    report::ChaosRow::print_table(&rows);
    println!(
        "\nWrote chaos.json and one folder per scenario (summary.json, plots) in {} ({:.0} s of \
         wall-clock time).",
        args.run.out.display(),
        started.elapsed().as_secs_f64()
    );
    let mut all = vec![("clean", &clean)];
    all.extend(runs.iter().map(|(c, s)| (c.name(), s)));
    check(&all)
}

/// Whether every worker that applied a round held the same model right after it.
fn agree_round_by_round(outcomes: &[process::Outcome]) -> bool {
    let mut seen = std::collections::BTreeMap::new();
    outcomes
        .iter()
        .flat_map(|o| &o.round_hashes)
        .all(|&(round, hash)| *seen.entry(round).or_insert(hash) == hash)
}

/// Fails when a run broke an invariant: diverged replicas, or commits not applied exactly.
fn check(runs: &[(&str, &SimSummary)]) -> Result<()> {
    let mut broken = Vec::new();
    for (name, summary) in runs {
        for a in &summary.algorithms {
            if !a.replicas_identical {
                broken.push(format!("{name}, {}: replicas diverged", a.algorithm));
            }
            if let Some(e) = &a.commit_error {
                broken.push(format!("{name}, {}: {e}", a.algorithm));
            }
        }
    }
    if !broken.is_empty() {
        bail!("{}", broken.join("; "));
    }
    Ok(())
}

/// The network `--topology` or `--preset` names, with its name for the summary, and the
/// compute speeds `--speed`, `--worker-speed` and `--speed-jitter` give its regions and
/// workers.
fn network(args: &SimulateArgs) -> Result<(String, Topology)> {
    let (name, mut topology) = match &args.topology {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--topology: cannot read {}", path.display()))?;
            let t = Topology::from_toml(&text)
                .with_context(|| format!("--topology {}", path.display()))?;
            (path.display().to_string(), t)
        }
        None => (args.preset.clone(), Topology::preset(&args.preset).context("--preset")?),
    };
    for given in &args.speeds {
        let parsed = given.split_once('=').and_then(|(r, f)| Some((r, f.trim().parse().ok()?)));
        let Some((region, factor)) = parsed else {
            bail!("--speed {given:?}: give REGION=FACTOR, e.g. --speed ap-southeast=0.5");
        };
        topology.set_speed(region.trim(), factor);
    }
    for given in &args.worker_speeds {
        let parsed = given
            .split_once('=')
            .and_then(|(w, f)| Some((w.trim().parse::<usize>().ok()?, f.trim().parse().ok()?)));
        let Some((worker, factor)) = parsed else {
            bail!("--worker-speed {given:?}: give INDEX=FACTOR, e.g. --worker-speed 7=0.5");
        };
        if worker >= args.workers as usize {
            bail!(
                "--worker-speed {given:?}: there is no worker {worker} (--workers {})",
                args.workers
            );
        }
        topology.set_worker_speed(worker, factor);
    }
    if let Some(jitter) = args.speed_jitter {
        topology.set_speed_jitter(jitter);
    }
    topology.validate().context("--speed")?;
    Ok((name, topology))
}

/// Checks the arguments and builds what every scenario shares; prints the run's header.
fn prepare(args: &SimulateArgs) -> Result<Setup> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.algos.is_empty() {
        bail!("--algos needs at least one algorithm");
    }
    let (network, topology) = network(args)?;
    let placement = topology.place_workers(args.workers as usize).context("--workers")?;
    let steps = args.schedule.steps_or(if args.quick { 60 } else { DEFAULT_STEPS });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let inner_steps = args.schedule.inner_steps.or(Some(if args.quick { 10 } else { 30 }));
    let mut sets: Vec<String> = Vec::new();
    if matches!(args.source.model, ModelKind::Gpt) {
        let defaults = if args.quick { QUICK_GPT } else { DEFAULT_GPT };
        sets.extend(defaults.iter().map(|s| s.to_string()));
        let tuned = !args.quick
            && args.schedule.inner_steps.is_none()
            && args.source.config.is_none()
            && args.algos.contains(&Algorithm::Sparseloco);
        if tuned {
            sets.extend(DEMO_SPARSELOCO.iter().map(|s| s.to_string()));
        }
    }
    let config = args.source.config(&args.algos, inner_steps, &sets)?;
    let corpus = Arc::new(args.source.data.load()?);
    tch::set_num_threads(args.run.threads.unwrap_or(1).max(1) as i32);
    let device = args.source.device.resolve()?;
    let probe = build_model(&config.model, corpus.vocab(), args.run.seed, device)?;
    let parameters = parameter_count(probe.as_ref());
    let tokens_per_step = config.data.batch * probe.context() as u64;
    let compute = ComputeModel::from_args(
        args.step_time,
        args.tflops,
        args.measured_compute,
        parameters,
        tokens_per_step,
    )?;
    let step_flag = match (args.tflops, compute.step_time()) {
        (Some(t), Some(step)) => {
            format!(
                "--tflops {} ({} per step)",
                meridian_optimizer::divergence::show_number(t),
                limits::duration(step)
            )
        }
        _ => format!("--step-time {}", limits::duration(args.step_time)),
    };
    let run = limits::Run {
        step: compute.step_time(),
        step_flag,
        steps,
        workers: placement.len(),
        route: args.route,
        parameters,
        algos: &config.algos,
    };
    limits::check(&run, crate::what_if::payload_bytes_per_param)?;
    std::fs::create_dir_all(&args.run.out)
        .with_context(|| format!("creating {}", args.run.out.display()))?;
    if args.route == RouteArg::Ring {
        if let Some(a) =
            args.algos.iter().find(|a| !matches!(a, Algorithm::Ddp | Algorithm::Diloco))
        {
            bail!("--route ring: {a} sends sparse payloads, which do not add up in transit; use --route relay");
        }
    }
    println!(
        "Simulating {} workers on {network} ({}), training {} ({:.2}M parameters) for {steps} \
         inner steps each.\nCompute: {}.\n",
        args.workers,
        placement.join(", "),
        probe.describe(),
        parameters as f64 / 1e6,
        compute.describe()
    );
    let links = print_links(&topology);
    Ok(Setup {
        network,
        topology,
        placement,
        config,
        corpus,
        compute,
        steps,
        parameters,
        model: probe.describe(),
        tokens_per_step,
        context: probe.context() as usize,
        links,
        device,
    })
}

/// Runs every algorithm under `chaos` (or none), writes `out`/summary.json and the plots.
fn run_scenario(
    args: &SimulateArgs,
    setup: &Setup,
    chaos: Option<chaos::Chaos>,
    target: Option<f64>,
    out: &std::path::Path,
) -> Result<SimSummary> {
    let n = setup.placement.len();
    let mut topology = setup.topology.clone();
    let mut schedule = chaos::Schedule::default();
    let description = match chaos {
        None => None,
        Some(c) if chaos::is_network_fault(c) => {
            Some(chaos::apply(c, &mut topology, &setup.placement)?)
        }
        Some(c) => {
            // Fixed step times give the schedule; measured compute, about 250 ms a step.
            let step = setup.compute.step_time().unwrap_or(Duration::from_millis(250));
            let compute = u32::try_from(setup.steps)
                .ok()
                .and_then(|steps| step.checked_mul(steps))
                .context("--steps: the run's compute is too long to schedule faults in")?;
            let (s, line) = chaos::schedule(c, n, compute)?;
            schedule = s;
            Some(line)
        }
    };
    let late_region = match schedule.late_join {
        Some(_) => Some(
            topology
                .place_workers(n + 1)
                .context("--chaos late-join: no room for one more worker")?[n]
                .clone(),
        ),
        None => None,
    };
    if let (Some(c), Some(d)) = (chaos, &description) {
        println!("chaos {}: {d}", c.name());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let state_dir = out.join("coordinator-state");
    let plan = Plan {
        topology,
        placement: setup.placement.clone(),
        schedule,
        late_region,
        state_dir: state_dir.clone(),
        config: setup.config.clone(),
        corpus: setup.corpus.clone(),
        compute: setup.compute,
        route: args.route,
        steps: setup.steps,
        eval_every: args.eval_every.unwrap_or((setup.steps / 20).max(1)).max(1),
        seed: args.run.seed,
        tokens_per_step: setup.tokens_per_step,
        context: setup.context,
        device: setup.device,
        progress_every: args.progress_every,
    };
    let mut algorithms = Vec::new();
    for algo in &plan.config.algos {
        let t = Instant::now();
        let result = simulate_one(&plan, algo)
            .with_context(|| format!("simulating {}", algo.algorithm()))?;
        tracing::info!(algo = %algo.algorithm(), wall_s = t.elapsed().as_secs_f64(), "simulated");
        algorithms.push(result);
    }
    // The state folder only mattered while the run lasted.
    if state_dir.exists() {
        let _ = std::fs::remove_dir_all(&state_dir);
    }
    let target =
        target.or(args.target_loss).unwrap_or_else(|| SimSummary::common_target(&algorithms));
    let mut summary = SimSummary {
        network: setup.network.clone(),
        links: setup.links.clone(),
        uneven_compute: !setup.topology.uniform_speed(),
        chaos: description,
        workers: args.workers,
        steps: setup.steps,
        seed: args.run.seed,
        compute: plan.compute.describe(),
        // LibTorch's GPU kernels may reduce in a different order from run to run.
        deterministic: plan.compute.deterministic() && plan.device == tch::Device::Cpu,
        model: setup.model.clone(),
        parameters: setup.parameters,
        device: crate::device::name(plan.device),
        route: match args.route {
            RouteArg::Relay => "relay".into(),
            RouteArg::AllGather => "all-gather".into(),
            RouteArg::Ring => "ring".into(),
        },
        target_loss: target,
        ddp_bf16_ring: DdpBaseline::bf16_ring(setup.parameters, args.workers, setup.steps),
        algorithms,
        synthetic: None,
    };
    summary.set_target(target);
    summary.set_frontier();
    summary.write(&out.join("summary.json"))?;
    summary.plot(out);
    Ok(summary)
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

/// The coordinator of a simulated run of `workers` workers: round 0 waits for all of them,
/// and rounds of `step`-long inner steps get deadlines that can hold them.
fn coordinator_config(
    route: RouteArg,
    tuning: &TransportTuning,
    workers: usize,
    step: Option<Duration>,
    algo: &AlgoConfig,
) -> Result<CoordinatorNodeConfig> {
    // The virtual address is known before binding: the coordinator is the first host.
    let mut ccfg = CoordinatorNodeConfig::new("0.0.0.0:0".parse()?, route.route());
    ccfg.tuning = tuning.clone();
    // Round 0 waits for every starting worker; after that the run goes on with whoever is
    // live, as `meridian coordinator` does by default.
    ccfg.protocol.min_members = workers;
    ccfg.protocol.min_live = Some(1);
    // A round must outlast its compute: with long steps the default deadlines would close
    // every round before anyone delivered (empty rounds, nothing trained).
    if let (Some(step), DeadlinePolicy::Adaptive(a)) = (step, &mut ccfg.protocol.deadline) {
        let h = u32::try_from(limits::steps_per_round(algo)).unwrap_or(u32::MAX);
        let round = step.saturating_mul(h);
        let (initial, max) = limits::round_deadline(round, a.initial, a.max);
        if initial != a.initial {
            // A snapshot waits for its provider to finish the round it is computing.
            ccfg.protocol.snapshot_timeout = ccfg.protocol.snapshot_timeout.max(initial);
        }
        (a.initial, a.max) = (initial, max);
    }
    Ok(ccfg)
}

/// The runtime a simulation runs on: one thread, and a clock that is virtual (paused,
/// jumping ahead whenever every task waits on a timer).
fn virtual_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .context("starting the simulation runtime")
}

/// A simulated run's coordinator, with the identity its seed gives it, in `region`; with
/// `outage` it keeps its state in `state_dir` to come back from (see
/// [`coordinator::SimCoordinator::start`]).
fn start_coordinator(
    fabric: &meridian_simulate::Fabric,
    region: &str,
    config: CoordinatorNodeConfig,
    seed: u64,
    state_dir: Option<std::path::PathBuf>,
    outage: Option<(tokio::time::Instant, tokio::time::Instant)>,
) -> Result<coordinator::SimCoordinator> {
    let identity = NodeIdentity::deterministic("coordinator", identity_seed(seed, 0))?;
    let launch = coordinator::Launch { config, identity, state_dir };
    coordinator::SimCoordinator::start(fabric, region, launch, outage)
}

/// Runs one algorithm over a fresh simulated network, in virtual time.
fn simulate_one(plan: &Plan, algo: &AlgoConfig) -> Result<SimAlgo> {
    let rt = virtual_runtime()?;
    let local = tokio::task::LocalSet::new();
    let clock = rt.handle().clone();
    local.block_on(&rt, simulate_async(plan, algo, clock))
}

async fn simulate_async(
    plan: &Plan,
    algo: &AlgoConfig,
    clock: tokio::runtime::Handle,
) -> Result<SimAlgo> {
    let n = plan.placement.len();
    let start = tokio::time::Instant::now();
    let fabric = Fabric::new(plan.topology.clone(), plan.seed);
    let mut tuning: TransportTuning = plan.config.transport.clone();
    // QUIC's own random choices follow the run's seed, so the run replays exactly. Only
    // ever in a simulation: on a real network they must be unpredictable.
    tuning.rng_seed = Some(plan.seed);

    let region = plan.topology.coordinator_region();
    let ccfg = coordinator_config(plan.route, &tuning, n, plan.compute.step_time(), algo)?;
    let outage = plan.schedule.coordinator_outage.map(|(down, back)| (start + down, start + back));
    if outage.is_some() && plan.state_dir.exists() {
        std::fs::remove_dir_all(&plan.state_dir)
            .with_context(|| format!("clearing {}", plan.state_dir.display()))?;
    }
    let state_dir = outage.map(|_| plan.state_dir.join(algo.algorithm().to_string()));
    let coordinator = start_coordinator(&fabric, region, ccfg, plan.seed, state_dir, outage)?;

    let display = progress::Progress::start(
        &algo.algorithm().to_string(),
        plan.steps,
        n,
        clock,
        start,
        plan.progress_every,
    );
    let split = Split::new(plan.corpus.clone(), plan.context)?;
    let batch = plan.config.data.batch as usize;
    let validation: Rc<Vec<(Tensor, Tensor)>> =
        Rc::new(split.validation(batch, plan.config.data.eval_batches as usize));
    let total = n + usize::from(plan.late_region.is_some());
    let ctx = Rc::new(process::Ctx {
        start,
        fabric: fabric.clone(),
        join: coordinator.join_string(),
        tuning,
        route: plan.route.route(),
        config: plan.config.clone(),
        algo: algo.clone(),
        corpus: plan.corpus.clone(),
        split,
        validation,
        device: plan.device,
        shards: n as u32,
        step_time: plan.compute.step_time(),
        seed: plan.seed,
        steps: plan.steps,
        eval_every: plan.eval_every,
        tokens_per_step: plan.tokens_per_step,
        progress: display.bar(),
        sent: RefCell::new(vec![0; total]),
        curve: RefCell::new(Vec::new()),
        local_curve: RefCell::new(Vec::new()),
    });

    // Workers join one after another, so member ids follow the placement order.
    let mut lives: Vec<process::Life> = plan
        .placement
        .iter()
        .enumerate()
        .map(|(index, region)| process::Life {
            index,
            region: region.clone(),
            pace: Pace::of(&plan.topology, region, plan.seed, index as u64),
            joins_at: None,
            outages: plan
                .schedule
                .worker_outages
                .iter()
                .filter(|o| o.0 == index)
                .map(|o| (o.1, o.2))
                .collect(),
            attack: plan.schedule.byzantine.filter(|b| b.0 == index).map(|b| b.1),
        })
        .collect();
    if let (Some(at), Some(region)) = (plan.schedule.late_join, &plan.late_region) {
        lives.push(process::Life {
            index: n,
            region: region.clone(),
            pace: Pace::of(&plan.topology, region, plan.seed, n as u64),
            joins_at: Some(at),
            outages: vec![],
            attack: None,
        });
    }
    let mut tasks = Vec::new();
    for life in lives {
        // The starting workers join one after another, so member ids follow the placement.
        let first = match life.joins_at {
            None => {
                let joined = process::join(&ctx, &life, 0).await?;
                display.joined();
                Some(joined)
            }
            Some(_) => None,
        };
        tasks.push(tokio::task::spawn_local(process::live(ctx.clone(), life, first)));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.context("a simulated worker panicked")??);
    }
    display.finish();
    let tally = coordinator.finish().await?;
    let stats = fabric.stats();
    let wire_bytes = stats.links.values().map(|l| l.offered.bytes).sum();
    Ok(summarize(algo, &ctx, &outcomes, &tally, wire_bytes))
}

fn summarize(
    algo: &AlgoConfig,
    ctx: &process::Ctx,
    outcomes: &[process::Outcome],
    tally: &coordinator::CoordinatorTally,
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
    let mut commit_error =
        process::check_commits(&tally.committed, outcomes).err().map(|e| e.to_string());
    if let Some(round) = tally.conflicting.first() {
        commit_error = Some(format!("round {round} was committed twice with different members"));
    }
    SimAlgo {
        algorithm: algo.algorithm().to_string(),
        settings: toml::from_str::<serde_json::Value>(&algo.to_toml()).unwrap_or_default(),
        initial_val_loss: first.and_then(|o| o.initial_val_loss).unwrap_or(f64::NAN),
        // The synchronized model after the last round evaluated.
        final_val_loss: ctx.curve.borrow().last().map_or(f64::NAN, |p| p.val_loss),
        final_train_loss,
        rounds: first.map_or(0, |o| o.rounds),
        bytes_sent_per_worker: outcomes.iter().map(|o| o.sent as f64).sum::<f64>() / n,
        bytes_received_per_worker: outcomes.iter().map(|o| o.received as f64).sum::<f64>() / n,
        wire_bytes,
        simulated_seconds: simulated,
        compute_utilization: utilization,
        seconds_to_target: None,
        replicas_identical: agree_round_by_round(outcomes),
        rounds_committed: outcomes.iter().map(|o| o.rounds_done).max().unwrap_or(0),
        commit_error,
        peak_memory_bytes: None,
        faults: report::FaultTally {
            workers_lost: tally.lost,
            workers_rejoined: tally.rejoined,
            worker_restarts: outcomes.iter().map(|o| o.restarts).sum(),
            coordinator_restarts: tally.restarts,
            // Every replica rejects the same payloads: count them once.
            payloads_rejected: tally.rejected
                + outcomes.iter().map(|o| o.rejected).max().unwrap_or(0),
        },
        workers: worker_rows(outcomes),
        // Filled once every algorithm has run (it needs DDP's loss).
        frontier: Frontier::default(),
        curve: ctx.curve.borrow().clone(),
        local_curve: ctx.local_curve.borrow().clone(),
    }
}

/// One summary row per worker: where it ran, when it finished, what it computed and sent,
/// and the hash of the last round it applied.
fn worker_rows(outcomes: &[process::Outcome]) -> Vec<SimWorker> {
    outcomes
        .iter()
        .map(|o| SimWorker {
            member: o.member,
            region: o.region.clone(),
            finished_seconds: o.finished,
            compute_seconds: o.compute.as_secs_f64(),
            bytes_sent: o.sent,
            hash: o.round_hashes.last().map_or_else(String::new, |h| format!("{:016x}", h.1)),
        })
        .collect()
}

/// Prints the topology's links, one indented line each, and returns the lines for the
/// summary.
fn print_links(topology: &Topology) -> Vec<String> {
    let links: Vec<String> = topology.describe().lines().map(str::to_string).collect();
    for l in &links {
        println!("  {l}");
    }
    println!();
    links
}
