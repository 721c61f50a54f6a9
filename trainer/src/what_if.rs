//! The estimates behind `meridian what-if`: sizes a real run without training it.
//!
//! For a model of `--params` parameters whose inner step takes `--step-time`, with
//! `--workers` workers placed on a topology, it estimates per algorithm the bytes each
//! worker sends per round, how long a round's communication takes on those links, and the
//! compute utilization that leaves — and what link rate would reach a target utilization.
//!
//! # The model
//! - **Payload bytes** are measured, not assumed: the algorithm's real encoder runs on a
//!   synthetic parameter set (the shapes of a transformer block), and its bytes per
//!   parameter scale to `--params`. Exchanges per step come from the optimizer's own
//!   schedule.
//! - **A transfer** of `b` bytes over a link takes its one-way delay plus
//!   `b × overhead / (rate × efficiency)`: `overhead` is what QUIC, UDP and IP add to each
//!   1472-byte datagram (≈ 5%), `efficiency` the share of a link QUIC's congestion
//!   controller sustains at the link's loss rate (measured over the simulator with the
//!   default controller, BBR, and windows, BENCHMARKS.md: 0.79 clean, 0.76 at 0.5% loss,
//!   0.67 at 2%; interpolated). Flows from the workers of
//!   one region to another share that region pair's link.
//! - **A round**, by route: relay = the slowest upload to the coordinator plus the slowest
//!   forward of the others' payloads to each region; all-gather = the slowest direct
//!   transfer plus the delivery notices to and the commit from the coordinator; ring =
//!   2(N−1) sequential hops of 1/N of the payload over the slowest ring edge, plus the
//!   same notices and commit.
//! - **Utilization**: rounds block training (DDP, DiLoCo, SparseLoCo and DeMo all wait for
//!   the commit), so `H·T / (H·T + comm)`; the column "overlapped" is the bound
//!   `H·T / max(H·T, comm)` an implementation that overlaps communication with the next
//!   round's compute (Streaming DiLoCo's idea) could reach.
//!
//! Validated against `meridian simulate` at small scale: see BENCHMARKS.md ("What-if
//! against the simulation").

use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::outer::Phase;
use meridian_optimizer::params::ParamSet;
use meridian_optimizer::Algorithm;
use meridian_simulate::{LinkSpec, Topology};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::cli::args::RouteArg;
use crate::cli::what_if::WhatIfArgs;
use crate::model::ModelKind;
use crate::run_config::RunConfig;
use crate::units::human;

/// Bytes QUIC, UDP and IPv4 put on the wire per payload byte with 1472-byte datagrams:
/// 28 bytes of IP and UDP header, about 20 of QUIC short header and stream frame, 16 of
/// AEAD tag.
pub const WIRE_OVERHEAD: f64 = (1472.0 + 28.0) / (1472.0 - 36.0);

/// Share of a link's rate QUIC sustains at random loss `p` with the default controller
/// (BBR) and windows, interpolated from the simulator's goodput benchmark (BENCHMARKS.md):
/// 0.791 at 0, 0.757 at 0.5%, 0.674 at 2%.
pub fn efficiency(p: f64) -> f64 {
    const POINTS: [(f64, f64); 3] = [(0.0, 0.791), (0.005, 0.757), (0.02, 0.674)];
    if p <= 0.0 {
        return POINTS[0].1;
    }
    for w in POINTS.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if p <= x1 {
            return y0 + (y1 - y0) * (p - x0) / (x1 - x0);
        }
    }
    // Beyond the measured range: keep the last slope, but never below 5%.
    let ((x0, y0), (x1, y1)) = (POINTS[1], POINTS[2]);
    (y1 + (y1 - y0) / (x1 - x0) * (p - x1)).max(0.05)
}

/// The largest `--params` the estimate takes: a thousand times the largest models trained
/// so far. Beyond it the figures (years per round, exabyte payloads) say nothing a smaller
/// value would not, and the times stop fitting the tables' duration arithmetic.
pub const MAX_PARAMS: f64 = 1e15;

/// The largest link speed-up the estimate searches for. A target that needs more is out
/// of reach: a factor this large says "not on any network" better than a number would.
pub const MAX_RATE_FACTOR: f64 = 1e12;

/// A link as the estimate sees it.
#[derive(Debug, Clone, Copy)]
struct Path {
    delay: f64,
    /// Effective payload bytes per second (infinite without a rate limit).
    bytes_per_sec: f64,
}

impl Path {
    fn of(spec: &LinkSpec) -> Path {
        let loss = spec.loss.get() + spec.burst.as_ref().map_or(0.0, |b| b.mean_loss());
        let bytes_per_sec = match spec.rate {
            Some(r) => r.bits_per_sec() / 8.0 * efficiency(loss) / WIRE_OVERHEAD,
            None => f64::INFINITY,
        };
        Path { delay: spec.delay.0.as_secs_f64(), bytes_per_sec }
    }

    /// Seconds to move `bytes` (latency part, transfer part) with rates scaled by `scale`.
    fn time(&self, bytes: f64, scale: f64) -> (f64, f64) {
        (self.delay, bytes / (self.bytes_per_sec * scale))
    }
}

/// The network a run would use: workers' regions and the coordinator's.
struct Network<'a> {
    topology: &'a Topology,
    placement: Vec<String>,
}

impl Network<'_> {
    fn path(&self, from: &str, to: &str) -> Result<Path> {
        Ok(Path::of(self.topology.link(from, to)?))
    }

    /// Workers per region, in placement order of first appearance.
    fn regions(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for r in &self.placement {
            match out.iter_mut().find(|(name, _)| name == r) {
                Some((_, k)) => *k += 1.0,
                None => out.push((r.clone(), 1.0)),
            }
        }
        out
    }

    /// The slowest of `legs`, each (latency, transfer) at rate scale 1, at `scale`.
    fn slowest(legs: &[(f64, f64)], scale: f64) -> f64 {
        legs.iter().map(|(l, t)| l + t / scale).fold(0.0, f64::max)
    }

    /// Latency and transfer legs of each phase of a round for `route`, payload `bytes`.
    fn phases(&self, route: RouteArg, bytes: f64) -> Result<Vec<Vec<(f64, f64)>>> {
        let c = self.topology.coordinator_region();
        let n = self.placement.len() as f64;
        let regions = self.regions();
        let notices = || -> Result<Vec<Vec<(f64, f64)>>> {
            let mut to_c = Vec::new();
            let mut from_c = Vec::new();
            for (r, _) in &regions {
                to_c.push((self.path(r, c)?.delay, 0.0));
                from_c.push((self.path(c, r)?.delay, 0.0));
            }
            Ok(vec![to_c, from_c])
        };
        Ok(match route {
            RouteArg::Relay => {
                let mut up = Vec::new();
                let mut down = Vec::new();
                for (r, k) in &regions {
                    up.push(self.path(r, c)?.time(k * bytes, 1.0));
                    down.push(self.path(c, r)?.time(k * (n - 1.0) * bytes, 1.0));
                }
                vec![up, down]
            }
            RouteArg::AllGather => {
                let mut direct = Vec::new();
                for (a, ka) in &regions {
                    for (b, kb) in &regions {
                        let copies = if a == b { ka * (ka - 1.0) } else { ka * kb };
                        if copies > 0.0 {
                            direct.push(self.path(a, b)?.time(copies * bytes, 1.0));
                        }
                    }
                }
                let mut phases = vec![direct];
                phases.extend(notices()?);
                phases
            }
            RouteArg::Ring => {
                let mut edges = Vec::new();
                let m = self.placement.len();
                for i in 0..m {
                    let (a, b) = (&self.placement[i], &self.placement[(i + 1) % m]);
                    edges.push(self.path(a, b)?.time(bytes / n, 1.0));
                }
                let hops = 2 * m.saturating_sub(1);
                let mut phases = vec![edges; hops];
                phases.extend(notices()?);
                phases
            }
        })
    }

    /// Seconds a round takes with every link's rate scaled by `scale`.
    fn round_seconds(phases: &[Vec<(f64, f64)>], scale: f64) -> f64 {
        phases.iter().map(|legs| Self::slowest(legs, scale)).sum()
    }
}

/// One algorithm's estimate.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// Algorithm name.
    pub algorithm: String,
    /// Payload bytes per parameter, measured on the real encoder.
    pub bytes_per_param: f64,
    /// Payload bytes each worker publishes per round.
    pub payload_bytes: f64,
    /// Inner steps per round.
    pub steps_per_round: f64,
    /// Seconds of compute per round.
    pub compute_seconds: f64,
    /// Seconds of communication per round.
    pub comm_seconds: f64,
    /// Compute over total time, rounds blocking.
    pub utilization: f64,
    /// The bound with communication fully overlapped.
    pub utilization_overlapped: f64,
    /// How much faster every link must be for the target utilization (`None`: latency
    /// alone exceeds the budget, or it would take more than [`MAX_RATE_FACTOR`]; 1.0 or
    /// less: already met).
    pub rate_factor_for_target: Option<f64>,
    /// The smallest steps per round that reach the target on these links, if any.
    pub steps_per_round_for_target: Option<f64>,
    /// The target needs links more than [`MAX_RATE_FACTOR`] times faster (the table says
    /// "out of reach" rather than print a number that large).
    #[serde(skip)]
    beyond_rate_limit: bool,
}

/// Payload bytes per parameter and steps per round of `algo`, from its real encoder on a
/// synthetic transformer block.
pub fn measure(algo: &AlgoConfig) -> Result<(f64, f64)> {
    measure_on(algo, |shape| Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)))
}

/// Payload bytes per parameter of `algo`, as [`measure`] finds them, but on values that
/// draw nothing from LibTorch's global random generator: a simulation measures before
/// it trains, and its runs must replay exactly.
pub fn payload_bytes_per_param(algo: &AlgoConfig) -> Result<f64> {
    let mut offset = 0.0;
    let (bytes, _) = measure_on(algo, |shape| {
        let n: i64 = shape.iter().product();
        offset += 1.0;
        // Varied, signed, deterministic values: a top-k has something to choose.
        (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.7 + offset).sin().reshape(shape)
    })?;
    Ok(bytes)
}

/// [`measure`] on parameters whose values `values` makes from their shapes.
fn measure_on(algo: &AlgoConfig, mut values: impl FnMut(&[i64]) -> Tensor) -> Result<(f64, f64)> {
    let d = 256i64;
    let shapes: [&[i64]; 6] = [&[d, 3 * d], &[d, d], &[d, 4 * d], &[4 * d, d], &[d], &[d]];
    let mut named = Vec::new();
    for (i, shape) in shapes.iter().enumerate() {
        let t = values(shape).set_requires_grad(true);
        named.push((format!("block.{i}"), t));
    }
    let numel: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
    // Gradients for the algorithms that send them (DDP, DeMo).
    let loss = named
        .iter()
        .map(|(_, t)| (t * t).sum(Kind::Float))
        .reduce(|a, b| a + b)
        .context("no parameters")?;
    loss.backward();
    let params = ParamSet::new(named)?;
    let mut outer = algo.build(&params)?;
    // The schedule: the steps between the first two exchanges.
    let horizon = 1_000_000u64;
    let mut due = (0..horizon).filter(|&step| {
        [Phase::AfterBackward, Phase::AfterInnerStep].iter().any(|&p| outer.exchange_due(p, step))
    });
    let (Some(first), Some(second)) = (due.next(), due.next()) else {
        bail!("{} exchanges less than twice within {horizon} steps", algo.algorithm());
    };
    let bytes = outer.prepare(&params, 0, 0)?.encode().len() as f64;
    Ok((bytes / numel as f64, (second - first) as f64))
}

/// Runs `meridian what-if`.
/// Estimates every selected algorithm on the network `args` describe and prints the table.
pub fn run(args: &WhatIfArgs) -> Result<()> {
    if !args.params.is_finite() || args.params > MAX_PARAMS {
        bail!(
            "--params {:e}: the estimate covers models of up to {MAX_PARAMS:e} parameters \
             (a thousand times the largest trained so far)",
            args.params
        );
    }
    if args.workers < 2 {
        bail!("--workers must be at least 2 (one worker sends nothing)");
    }
    if !(args.target > 0.0 && args.target < 1.0) {
        bail!("--target must be between 0 and 1, got {}", args.target);
    }
    if args.step_time.is_zero() {
        bail!("--step-time must be positive");
    }
    if let Some(a) = args.algos.iter().find(|a| **a == Algorithm::Streaming) {
        bail!("--algos {a}: the estimate covers ddp, diloco, sparseloco and demo");
    }
    let (network_name, topology) = match &args.topology {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--topology: cannot read {}", path.display()))?;
            (path.display().to_string(), Topology::from_toml(&text)?)
        }
        None => (args.preset.clone(), Topology::preset(&args.preset).context("--preset")?),
    };
    let placement = topology.place_workers(args.workers as usize).context("--workers")?;
    let config = RunConfig::build(
        &ModelKind::Gpt,
        &args.algos,
        args.config.as_deref(),
        args.inner_steps,
        &args.set,
    )?;
    let network = Network { topology: &topology, placement };
    let estimates: Vec<Estimate> =
        config.algos.iter().map(|algo| estimate(&network, args, algo)).collect::<Result<_>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&estimates)?);
        return Ok(());
    }
    println!(
        "{} parameters, {} per inner step, {} workers on {network_name} ({}), route {:?}.\n",
        count(args.params),
        human(args.step_time),
        args.workers,
        network.placement.join(", "),
        args.route
    );
    println!(
        "{:<11} {:>12} {:>8} {:>11} {:>11} {:>8} {:>11} {:>22}",
        "algorithm",
        "payload",
        "H",
        "compute/rd",
        "comm/rd",
        "util",
        "overlapped",
        format!("for {:.0}% utilization", args.target * 100.0)
    );
    for e in &estimates {
        let need = match (e.rate_factor_for_target, e.steps_per_round_for_target) {
            _ if e.beyond_rate_limit => "out of reach".to_string(),
            (Some(f), _) if f <= 1.0 => "met".to_string(),
            (Some(f), _) => format!("links {f:.1}x faster"),
            (None, Some(h)) => format!("H >= {h:.0}"),
            (None, None) => "out of reach".to_string(),
        };
        println!(
            "{:<11} {:>12} {:>8} {:>11} {:>11} {:>7.1}% {:>10.1}% {:>22}",
            e.algorithm,
            bytes(e.payload_bytes),
            format!("{:.0}", e.steps_per_round),
            seconds(e.compute_seconds),
            seconds(e.comm_seconds),
            e.utilization * 100.0,
            e.utilization_overlapped * 100.0,
            need
        );
    }
    println!(
        "\npayload = bytes each worker publishes per round (the real encoder's bytes per parameter\n\
         x parameters); H = inner steps per round; comm/rd = estimated communication per round\n\
         on these links (see `meridian what-if --help` and the module docs for the model);\n\
         util = compute / (compute + comm); overlapped = the bound if communication overlapped\n\
         compute. \"links Nx faster\": every link's rate times N reaches the target; \"H >= N\":\n\
         latency alone exceeds the budget, so only more steps per round reach it."
    );
    if estimates.iter().any(|e| e.beyond_rate_limit) {
        println!(
            "\"out of reach\": no link speed-up up to {MAX_RATE_FACTOR:e}x reaches the target."
        );
    }
    Ok(())
}

/// `seconds` for the table: as every other duration, or in scientific notation where it
/// is beyond what a `Duration` holds (about 585 billion years).
fn seconds(seconds: f64) -> String {
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) => human(d),
        Err(_) => format!("{seconds:.3e} s"),
    }
}

fn estimate(network: &Network<'_>, args: &WhatIfArgs, algo: &AlgoConfig) -> Result<Estimate> {
    if args.route == RouteArg::Ring
        && !matches!(algo.algorithm(), Algorithm::Ddp | Algorithm::Diloco)
    {
        bail!(
            "--route ring: {} sends sparse payloads, which do not add up in transit",
            algo.algorithm()
        );
    }
    let (bytes_per_param, h) = measure(algo)?;
    let payload = bytes_per_param * args.params;
    let phases = network.phases(args.route, payload)?;
    let comm = Network::round_seconds(&phases, 1.0);
    let compute = h * args.step_time.as_secs_f64();
    let budget = compute * (1.0 / args.target - 1.0);
    let latency = Network::round_seconds(&phases, f64::INFINITY);
    // comm(scale) falls monotonically towards `latency` as the rates grow: bisect on it.
    let mut beyond_rate_limit = false;
    let rate_factor = if comm <= budget {
        Some(comm / budget.max(f64::MIN_POSITIVE)).map(|f| f.min(1.0))
    } else if latency >= budget {
        None
    } else if Network::round_seconds(&phases, MAX_RATE_FACTOR) > budget {
        // Even links MAX_RATE_FACTOR times faster miss it: no number to show.
        beyond_rate_limit = true;
        None
    } else {
        let (mut lo, mut hi) = (1.0f64, 2.0f64);
        while Network::round_seconds(&phases, hi) > budget && hi < MAX_RATE_FACTOR {
            hi *= 2.0;
        }
        for _ in 0..60 {
            let mid = (lo * hi).sqrt();
            if Network::round_seconds(&phases, mid) > budget {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    };
    // Steps per round that reach the target on these links: H·T ≥ comm × U / (1 − U).
    let h_for_target = (comm * args.target / (1.0 - args.target)) / args.step_time.as_secs_f64();
    let adjustable = matches!(algo.algorithm(), Algorithm::Diloco | Algorithm::Sparseloco);
    Ok(Estimate {
        algorithm: algo.algorithm().to_string(),
        bytes_per_param,
        payload_bytes: payload,
        steps_per_round: h,
        compute_seconds: compute,
        comm_seconds: comm,
        utilization: compute / (compute + comm),
        utilization_overlapped: compute / compute.max(comm),
        rate_factor_for_target: rate_factor,
        steps_per_round_for_target: adjustable.then_some(h_for_target.ceil().max(1.0)),
        beyond_rate_limit,
    })
}

fn count(v: f64) -> String {
    match v {
        v if v >= 1e12 => format!("{:.3}T", v / 1e12),
        v if v >= 1e9 => format!("{:.3}B", v / 1e9),
        v if v >= 1e6 => format!("{:.3}M", v / 1e6),
        v if v >= 1e3 => format!("{:.3}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn bytes(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.2} GB", v / 1e9),
        v if v >= 1e6 => format!("{:.2} MB", v / 1e6),
        v if v >= 1e3 => format!("{:.2} kB", v / 1e3),
        v => format!("{v:.0} B"),
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn efficiency_follows_the_measured_points_and_falls_with_loss() {
        assert_eq!(efficiency(0.0), 0.791);
        assert!((efficiency(0.005) - 0.757).abs() < 1e-12);
        assert!((efficiency(0.02) - 0.674).abs() < 1e-12);
        assert!(efficiency(0.01) < efficiency(0.005) && efficiency(0.01) > efficiency(0.02));
        assert!(efficiency(0.5) >= 0.05);
    }

    #[test]
    fn payload_sizes_come_from_the_encoders() {
        let ddp = AlgoConfig::default_for(Algorithm::Ddp);
        let (b, h) = measure(&ddp).unwrap();
        // DDP sends every gradient as f32, every step.
        assert!((b - 4.0).abs() < 0.01, "{b}");
        assert_eq!(h, 1.0);
        let diloco =
            AlgoConfig::from_toml("algo = \"diloco\"\ninner_steps = 50\ntransport = \"int8\"")
                .unwrap();
        let (b, h) = measure(&diloco).unwrap();
        assert!((b - 1.0).abs() < 0.05, "int8: {b}");
        assert_eq!(h, 50.0);
        let (sparse, _) = measure(&AlgoConfig::default_for(Algorithm::Sparseloco)).unwrap();
        assert!(sparse < 0.1, "SparseLoCo sends a few percent of a byte per parameter: {sparse}");
    }

    fn network(topology: &Topology, n: usize) -> Network<'_> {
        Network { topology, placement: topology.place_workers(n).unwrap() }
    }

    #[test]
    fn a_target_beyond_any_link_speed_up_is_out_of_reach_not_the_search_cap() {
        let t = Topology::preset("cross-continent").unwrap();
        let net = network(&t, 4);
        let ddp = AlgoConfig::default_for(Algorithm::Ddp);
        let (bytes_per_param, _) = measure(&ddp).unwrap();
        let params = MAX_PARAMS;
        let phases = net.phases(RouteArg::Relay, bytes_per_param * params).unwrap();
        let latency = Network::round_seconds(&phases, f64::INFINITY);
        // A step whose budget at 95% is a hair above the round's latency: only links
        // astronomically faster would move the payload in what is left.
        let target = 0.95;
        let step = latency * (1.0 + 1e-6) / (1.0 / target - 1.0);
        let args = WhatIfArgs {
            params,
            step_time: Duration::from_secs_f64(step),
            workers: 4,
            preset: "cross-continent".into(),
            topology: None,
            algos: vec![Algorithm::Ddp],
            inner_steps: None,
            route: RouteArg::Relay,
            target,
            config: None,
            set: vec![],
            json: false,
        };
        let e = estimate(&net, &args, &ddp).unwrap();
        assert!(e.beyond_rate_limit, "{e:?}");
        // It used to report the doubling's cap, 2^40, as the speed-up needed.
        assert_eq!(e.rate_factor_for_target, None, "{e:?}");
        // Over the table's duration range, times are written, not converted.
        assert_eq!(seconds(1e30), "1.000e30 s");
        assert_eq!(seconds(2.5), human(Duration::from_millis(2500)));
    }

    #[test]
    fn a_round_costs_at_least_its_latency_and_more_bytes_cost_more() {
        let t = Topology::preset("cross-continent").unwrap();
        let net = network(&t, 4);
        for route in [RouteArg::Relay, RouteArg::AllGather, RouteArg::Ring] {
            let small = Network::round_seconds(&net.phases(route, 1e3).unwrap(), 1.0);
            let big = Network::round_seconds(&net.phases(route, 1e9).unwrap(), 1.0);
            let latency = Network::round_seconds(&net.phases(route, 1e9).unwrap(), f64::INFINITY);
            assert!(latency > 0.1, "{route:?}: cross-continent latency {latency}");
            assert!(small >= latency && big > small * 10.0, "{route:?}: {small} {big}");
        }
        // 1 GB through a 1 Gb/s relay: the coordinator forwards 3 GB to each remote region.
        let relay = Network::round_seconds(&net.phases(RouteArg::Relay, 1e9).unwrap(), 1.0);
        assert!(relay > 3.0 * 8.0, "{relay}");
        // The ring moves 2(N-1)/N of a payload per worker, so for large payloads it wins.
        let ring = Network::round_seconds(&net.phases(RouteArg::Ring, 1e9).unwrap(), 1.0);
        assert!(ring < relay, "ring {ring} relay {relay}");
    }
}
