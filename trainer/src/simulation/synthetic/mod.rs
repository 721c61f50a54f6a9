//! `meridian simulate --model synthetic --params N`: the network side of a run at any
//! model size, without training.
//!
//! A synthetic worker holds no model. Per algorithm, the payloads a worker of an
//! N-parameter model sends are made before the run by the algorithm's own encoder
//! ([`payload`], over the tensors of [`model`]; two encodings that each worker's own
//! payload mixes); then every worker charges compute per inner step as a training worker
//! does and, on the algorithm's schedule, publishes its payload under its own member id and
//! round, over the same QUIC, coordinator, routes and deadlines, blocking or landing
//! overlapped rounds where training would ([`worker`]). Receivers decode and validate every
//! payload as a training worker would, and stop short of what needs the dense model: the
//! mean and the outer step ([`receive`]). A memory model refuses sizes that cannot fit
//! this machine before anything runs ([`memory`]).

pub mod memory;
pub mod model;
pub mod payload;
pub mod receive;
pub mod worker;

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_comm::quic::TransportTuning;
use meridian_optimizer::config::AlgoConfig;
use meridian_simulate::Fabric;

use super::report::{FaultTally, SimAlgo, SimSummary};
use super::{coordinator, limits, process, progress};
use crate::cli::args::{RouteArg, DEFAULT_STEPS};
use crate::cli::simulate::SimulateArgs;
use crate::model::ModelKind;
use crate::report::frontier::{DdpBaseline, Frontier};
use crate::run_config::RunConfig;
use model::SyntheticModel;

/// What a synthetic run's summary says its workers did not do.
pub const NOT_DONE: &str = "synthetic model: workers send and validate payloads of the real \
     encoders' size and structure but train nothing and apply no update; losses are n/a, and \
     replicas = every worker received the same committed bytes in every round.";

/// Parameters the memory model measures payloads on before scaling them to `--params`.
const PROBE_PARAMS: u64 = 1 << 20;

/// Everything a synthetic run's algorithms share.
struct Setup {
    network: String,
    topology: meridian_simulate::Topology,
    placement: Vec<String>,
    config: RunConfig,
    model: SyntheticModel,
    step_time: Duration,
    steps: u64,
    links: Vec<String>,
}

/// Runs `meridian simulate --model synthetic --params N`.
pub fn run(args: &SimulateArgs) -> Result<()> {
    let setup = prepare(args)?;
    let started = Instant::now();
    let mut algorithms = Vec::new();
    for algo in &setup.config.algos {
        let t = Instant::now();
        let a = simulate_one(args, &setup, algo)
            .with_context(|| format!("simulating {} (synthetic)", algo.algorithm()))?;
        tracing::info!(algo = %algo.algorithm(), wall_s = t.elapsed().as_secs_f64(), "simulated");
        algorithms.push(a);
    }
    let parameters = i64::try_from(setup.model.parameters).unwrap_or(i64::MAX);
    let mut summary = SimSummary {
        network: setup.network.clone(),
        links: setup.links.clone(),
        uneven_compute: !setup.topology.uniform_speed(),
        chaos: None,
        workers: args.workers,
        steps: setup.steps,
        seed: args.run.seed,
        compute: format!("{} per inner step (given)", crate::units::human(setup.step_time)),
        deterministic: true,
        model: setup.model.describe(),
        parameters,
        device: "none (synthetic)".into(),
        route: route_name(args.route).into(),
        target_loss: f64::NAN,
        ddp_bf16_ring: DdpBaseline::bf16_ring(parameters, args.workers, setup.steps),
        algorithms,
        synthetic: Some(NOT_DONE.into()),
    };
    summary.set_frontier();
    std::fs::create_dir_all(&args.run.out)
        .with_context(|| format!("creating {}", args.run.out.display()))?;
    summary.write(&args.run.out.join("summary.json"))?;
    println!();
    summary.print_table();
    println!(
        "\nWrote summary.json in {} ({:.0} s of wall-clock time).",
        args.run.out.display(),
        started.elapsed().as_secs_f64()
    );
    super::check(&[("synthetic", &summary)])
}

fn route_name(route: RouteArg) -> &'static str {
    match route {
        RouteArg::Relay => "relay",
        RouteArg::AllGather => "all-gather",
        RouteArg::Ring => "ring",
    }
}

/// Checks the arguments (every refusal names its setting) and the memory the run would
/// hold, before anything runs.
fn prepare(args: &SimulateArgs) -> Result<Setup> {
    let Some(params) = args.params else {
        bail!(
            "--model synthetic needs --params N: the model size whose payloads to simulate \
             (e.g. --params 1e9), from {} to {:.0e}",
            model::MIN_PARAMS,
            model::MAX_PARAMS as f64
        );
    };
    if args.source.model != ModelKind::Synthetic {
        bail!(
            "--params applies to --model synthetic only (--model {} has the size its settings \
             give); add --model synthetic",
            args.source.model
        );
    }
    if let Some(c) = args.chaos {
        bail!(
            "--chaos {}: a synthetic run has no model state for a restarted or late worker to \
             take, nor updates to attack; run the faults with --model gpt",
            c.name()
        );
    }
    if args.tflops.is_some() {
        bail!("--tflops: a synthetic model has no tokens per step to count FLOPs of; give --step-time");
    }
    if args.measured_compute {
        bail!("--measured-compute: a synthetic run computes nothing to measure; give --step-time");
    }
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    if args.algos.is_empty() {
        bail!("--algos needs at least one algorithm");
    }
    if args.step_time.is_zero() {
        bail!("--step-time must be positive");
    }
    let model = SyntheticModel::new(params)?;
    let (network, topology) = super::network(args)?;
    let placement = topology.place_workers(args.workers as usize).context("--workers")?;
    let steps = args.schedule.steps_or(if args.quick { 60 } else { DEFAULT_STEPS });
    if steps == 0 {
        bail!("--steps must be at least 1");
    }
    let inner_steps = args.schedule.inner_steps.or(Some(if args.quick { 10 } else { 30 }));
    let config = RunConfig::build(
        &ModelKind::Synthetic,
        &args.algos,
        args.source.config.as_deref(),
        inner_steps,
        &args.source.set,
    )?;
    let run = limits::Run {
        step: Some(args.step_time),
        step_flag: format!("--step-time {}", limits::duration(args.step_time)),
        steps,
        workers: placement.len(),
        route: args.route,
        parameters: i64::try_from(params).unwrap_or(i64::MAX),
        algos: &config.algos,
    };
    limits::check_time(&run)?;
    check_memory(&config.algos, &model, placement.len(), args.route)?;
    println!(
        "Simulating {} workers on {network} ({}), sending the payloads of a {} ({:.3e} \
         parameters) for {steps} inner steps each, training nothing.\nCompute: {} per inner \
         step (given).\n",
        args.workers,
        placement.join(", "),
        model.describe(),
        params as f64,
        crate::units::human(args.step_time),
    );
    let links = super::print_links(&topology);
    Ok(Setup {
        network,
        topology,
        placement,
        config,
        model,
        step_time: args.step_time,
        steps,
        links,
    })
}

/// Refuses algorithms whose payloads the protocol would refuse, or whose copies would not
/// fit this machine: payload sizes are measured by encoding a model of [`PROBE_PARAMS`]
/// (or the model itself, when smaller) and scaled to its size.
fn check_memory(
    algos: &[AlgoConfig],
    model: &SyntheticModel,
    workers: usize,
    route: RouteArg,
) -> Result<()> {
    let probe = SyntheticModel::new(model.parameters.min(PROBE_PARAMS))?;
    let scale = model.parameters as f64 / probe.parameters as f64;
    let max_payload = meridian_comm::protocol::WorkerConfig::new("probe").max_payload as f64;
    for algo in algos {
        if route == RouteArg::Ring && worker::Schedule::new(algo, 1, 1)?.ring.is_none() {
            bail!("{}", ring_refused(algo));
        }
        let p = payload::encode(algo, &probe, 0, 1)?;
        let largest = p.largest() as f64 * scale;
        // Encodings' sizes differ only in Rice-coded indices, by a fraction of a percent.
        let total = p.total() as f64 * scale * payload::ENCODINGS as f64;
        if largest > max_payload {
            bail!(
                "--params {:.3e}: a {} payload would be about {:.2} GB, over the protocol's \
                 largest payload ({:.2} GB); use at most --params {:.2e}, or a sparser encoding",
                model.parameters as f64,
                algo.algorithm(),
                largest / 1e9,
                max_payload / 1e9,
                (model.parameters as f64 * max_payload / largest).floor()
            );
        }
        let estimate = memory::estimate(
            workers,
            route,
            largest,
            total,
            model.largest_tensor(),
            model.parameters,
        );
        if let Some(memory) = memory::available_bytes() {
            let name = algo.algorithm().to_string();
            memory::check(model.parameters, &name, workers, estimate, largest, memory as f64)?;
        }
    }
    Ok(())
}

/// Why `algo` cannot take `--route ring`.
fn ring_refused(algo: &AlgoConfig) -> String {
    format!(
        "--route ring: {} payloads do not add up in a ring (sparse payloads, a robust \
         aggregation mode, or balance = true); use --route relay or all-gather",
        algo.algorithm()
    )
}

/// Encodes `algo`'s payloads, then runs it over a fresh simulated network in virtual time.
fn simulate_one(args: &SimulateArgs, setup: &Setup, algo: &AlgoConfig) -> Result<SimAlgo> {
    let encoding = Instant::now();
    let payloads = payload::encode(algo, &setup.model, args.run.seed, payload::ENCODINGS)?;
    println!(
        "{}: payload {:.3} MB per exchange ({} segments), {} encodings in {:.1} s.",
        algo.algorithm(),
        payloads.largest() as f64 / 1e6,
        payloads.segments(),
        payload::ENCODINGS,
        encoding.elapsed().as_secs_f64()
    );
    let rt = super::virtual_runtime()?;
    let local = tokio::task::LocalSet::new();
    let clock = rt.handle().clone();
    // The peak from here on is this algorithm's (its payloads included).
    let reset = memory::reset_peak();
    let mut result = local.block_on(&rt, simulate_async(args, setup, algo, payloads, clock))?;
    result.peak_memory_bytes = memory::peak_rss().filter(|_| reset);
    Ok(result)
}

async fn simulate_async(
    args: &SimulateArgs,
    setup: &Setup,
    algo: &AlgoConfig,
    payloads: payload::Payloads,
    clock: tokio::runtime::Handle,
) -> Result<SimAlgo> {
    let n = setup.placement.len();
    let seed = args.run.seed;
    let start = tokio::time::Instant::now();
    let fabric = Fabric::new(setup.topology.clone(), seed);
    let mut tuning: TransportTuning = setup.config.transport.clone();
    // QUIC's own random choices follow the run's seed (only ever in a simulation).
    tuning.rng_seed = Some(seed);
    let mut ccfg = super::coordinator_config(args.route, &tuning, n, Some(setup.step_time), algo)?;
    ccfg.protocol.keep_rounds = worker::KEEP_ROUNDS;
    let region = setup.topology.coordinator_region();
    let coordinator = super::start_coordinator(&fabric, region, ccfg, seed, None, None)?;
    let schedule = worker::Schedule::new(algo, setup.model.shapes.len(), setup.steps)?;
    let ring = match args.route {
        RouteArg::Ring => Some(
            schedule
                .ring
                .clone()
                .with_context(|| ring_refused(algo))?
                .with_shapes(setup.model.shapes.clone()),
        ),
        _ => None,
    };
    let display = progress::Progress::start(
        &algo.algorithm().to_string(),
        setup.steps,
        n,
        clock,
        start,
        args.progress_every,
    );
    let ctx = Rc::new(worker::Ctx {
        start,
        fabric: fabric.clone(),
        join: coordinator.join_string(),
        tuning,
        seed,
        algo: algo.clone(),
        step_time: setup.step_time,
        steps: setup.steps,
        workers: n,
        schedule,
        payloads,
        receiver: receive::Receiver::new(algo, &setup.model.shapes)?,
        progress: display.bar(),
        ring,
    });
    let mut tasks = Vec::new();
    // Workers join one after another, so member ids follow the placement order.
    for (index, region) in setup.placement.iter().enumerate() {
        let node = worker::join(&ctx, index, region).await?;
        display.joined();
        let pace = meridian_simulate::Pace::of(&setup.topology, region, seed, index as u64);
        tasks.push(tokio::task::spawn_local(worker::live(
            ctx.clone(),
            index,
            region.clone(),
            pace,
            node,
        )));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.context("a simulated worker panicked")??);
    }
    display.finish();
    let tally = coordinator.finish().await?;
    let wire_bytes = fabric.stats().links.values().map(|l| l.offered.bytes).sum();
    Ok(summarize(algo, &outcomes, &tally, wire_bytes))
}

fn summarize(
    algo: &AlgoConfig,
    outcomes: &[process::Outcome],
    tally: &coordinator::CoordinatorTally,
    wire_bytes: u64,
) -> SimAlgo {
    let n = outcomes.len().max(1) as f64;
    let utilization = outcomes
        .iter()
        .map(|o| if o.finished > 0.0 { o.compute.as_secs_f64() / o.finished } else { 1.0 })
        .sum::<f64>()
        / n;
    let mut commit_error =
        process::check_commits(&tally.committed, outcomes).err().map(|e| e.to_string());
    if let Some(round) = tally.conflicting.first() {
        commit_error = Some(format!("round {round} was committed twice with different members"));
    }
    SimAlgo {
        algorithm: algo.algorithm().to_string(),
        settings: toml::from_str::<serde_json::Value>(&algo.to_toml()).unwrap_or_default(),
        initial_val_loss: f64::NAN,
        final_val_loss: f64::NAN,
        final_train_loss: f64::NAN,
        rounds: outcomes.first().map_or(0, |o| o.rounds),
        bytes_sent_per_worker: outcomes.iter().map(|o| o.sent as f64).sum::<f64>() / n,
        bytes_received_per_worker: outcomes.iter().map(|o| o.received as f64).sum::<f64>() / n,
        wire_bytes,
        simulated_seconds: outcomes.iter().map(|o| o.finished).fold(0.0, f64::max),
        compute_utilization: utilization,
        seconds_to_target: None,
        replicas_identical: super::agree_round_by_round(outcomes),
        rounds_committed: outcomes.iter().map(|o| o.rounds_done).max().unwrap_or(0),
        commit_error,
        peak_memory_bytes: None,
        faults: FaultTally {
            workers_lost: tally.lost,
            workers_rejoined: tally.rejoined,
            worker_restarts: 0,
            coordinator_restarts: tally.restarts,
            payloads_rejected: tally.rejected
                + outcomes.iter().map(|o| o.rejected).max().unwrap_or(0),
        },
        workers: super::worker_rows(outcomes),
        frontier: Frontier::default(),
        curve: Vec::new(),
        local_curve: Vec::new(),
    }
}
