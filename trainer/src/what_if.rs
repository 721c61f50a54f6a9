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
//!   `b × overhead / (rate × efficiency)`, plus one round trip when the link loses packets
//!   and the transfer is likely to lose one: `overhead` is what QUIC, UDP and IP add to each
//!   1472-byte datagram (≈ 5%), `efficiency` the share of what is left that the default
//!   congestion controller (Resilient) sustains at the link's loss rate (measured over the
//!   simulator, BENCHMARKS.md: all of it up to 2% loss, 99% at 3%), and the round trip is
//!   what recovering a lost datagram near a transfer's end costs (the same benchmark: a
//!   frame at 1% loss arrives 1 to 1.8 round trips after the lossless time). The window
//!   opens at the configured rate at the connection's first round trip, so no slow start
//!   is modelled. Every pair of hosts has its own path at its regions' link rate, as in
//!   the simulator's topologies (a rate is per path, not a site's uplink shared by its
//!   flows), and no path runs faster than the transport's `bandwidth_bps`: Resilient
//!   paces at about that rate, so inside a region (10 Gb/s in the presets) a transfer
//!   measured in the simulator moves at it, not at the link's rate.
//! - **A round**, by route: relay = until the last worker holds the others' payloads, which
//!   the coordinator forwards each as it arrives: for each worker, the later of (the first
//!   other payload's arrival + all n − 1 forwarded to it) and (the last one's arrival + one
//!   forward), plus the delay to it; all-gather = the longer of the slowest direct
//!   transfer and the delivery notices to and the commit from the coordinator (sent as the
//!   pushes leave); ring = 2(N−1) hops of 1/N of the payload, each member sending its
//!   next segment once its predecessor's arrived: the longest chain of 2(N−1) consecutive
//!   ring edges (latency and transfer each) ending at a member, then the same notices and
//!   commit.
//! - **Utilization**: a round launched where it is due lands `overlap` inner steps later
//!   (the algorithm's setting; 0 blocks), and a worker waits only for the communication
//!   those steps do not cover: `H·T / (H·T + max(0, comm − overlap·T))`. The column
//!   "overlapped" is the bound `H·T / max(H·T, comm)` with the largest overlap. Streaming
//!   DiLoCo's round is one fragment's: its payload and H are the average over its F
//!   fragments. The estimate is the steady state: a run's first handshakes and its last
//!   round (which a run waits for, to end holding it) are left out.
//!
//! Validated against `meridian simulate` at small scale: see BENCHMARKS.md ("What-if
//! against the simulation").

use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_comm::quic::Congestion;
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

/// Share of a link's rate, after [`WIRE_OVERHEAD`], that QUIC sustains at random loss `p`
/// with the default controller (Resilient), interpolated from the simulator's goodput
/// benchmark (BENCHMARKS.md, 2026-12-07: 0.957 of capacity steady at 0 to 2% loss, which
/// is the headers' ceiling 1 / [`WIRE_OVERHEAD`], and 0.948 at 3%).
pub fn efficiency(p: f64) -> f64 {
    const POINTS: [(f64, f64); 3] = [(0.0, 1.0), (0.02, 1.0), (0.03, 0.99)];
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

/// Payload bytes in one full datagram (1472 bytes of UDP payload less QUIC's share).
const DATAGRAM_PAYLOAD: f64 = 1472.0 - 36.0;

/// A link as the estimate sees it.
#[derive(Debug, Clone, Copy)]
struct Path {
    delay: f64,
    /// Random loss rate, bursts' mean included.
    loss: f64,
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
        Path { delay: spec.delay.0.as_secs_f64(), loss, bytes_per_sec }
    }

    /// Seconds to move `bytes` (latency part, transfer part) with rates scaled by `scale`.
    /// The latency part holds the expected cost of a lost datagram: a round trip (this
    /// link's delay both ways), times the chance that one of the transfer's datagrams is
    /// lost.
    fn time(&self, bytes: f64, scale: f64) -> (f64, f64) {
        let datagrams = (bytes / DATAGRAM_PAYLOAD).ceil();
        let some_lost = 1.0 - (1.0 - self.loss.clamp(0.0, 1.0)).powf(datagrams);
        (self.delay * (1.0 + 2.0 * some_lost), bytes / (self.bytes_per_sec * scale))
    }
}

/// The network a run would use: workers' regions and the coordinator's.
struct Network<'a> {
    topology: &'a Topology,
    placement: Vec<String>,
    /// The transport's configured rate, bits per second, when the congestion controller
    /// keeps to about it (Resilient): a faster path (a region's own network) counts at it.
    configured_bps: Option<f64>,
}

impl Network<'_> {
    fn path(&self, from: &str, to: &str) -> Result<Path> {
        let mut path = Path::of(self.topology.link(from, to)?);
        if let Some(bps) = self.configured_bps {
            let most = bps / 8.0 / WIRE_OVERHEAD;
            path.bytes_per_sec = path.bytes_per_sec.min(most);
        }
        Ok(path)
    }

    /// The legs of a round for `route`, payload `bytes`, as (latency, transfer) each.
    /// Every pair of hosts has its own path at its regions' link rate (as in the
    /// simulator's topologies: a rate is per path, not a site's shared uplink), so
    /// transfers between different pairs do not slow each other.
    fn round(&self, route: RouteArg, bytes: f64) -> Result<Round> {
        let c = self.topology.coordinator_region();
        let n = self.placement.len() as f64;
        let workers = &self.placement;
        // The delivery notices to the coordinator, then its commit back: (latency, 0).
        let notices = || -> Result<(f64, f64)> {
            let (mut to_c, mut from_c) = (0.0f64, 0.0f64);
            for w in workers {
                to_c = to_c.max(self.path(w, c)?.delay);
                from_c = from_c.max(self.path(c, w)?.delay);
            }
            Ok((to_c + from_c, 0.0))
        };
        Ok(match route {
            RouteArg::Relay => {
                let mut up = Vec::new();
                let mut down = Vec::new();
                for w in workers {
                    up.push(self.path(w, c)?.time(bytes, 1.0));
                    // The loss term counts the n − 1 payloads forwarded to `w` as one
                    // transfer.
                    let (latency, all) = self.path(c, w)?.time((n - 1.0) * bytes, 1.0);
                    down.push((latency, all / (n - 1.0).max(1.0)));
                }
                Round::Relay { up, down }
            }
            RouteArg::AllGather => {
                // A member's notice goes once its pushes are written, so the commit travels
                // while the payloads do: the round takes the longer of the two.
                let mut direct = vec![notices()?];
                for (i, a) in workers.iter().enumerate() {
                    for (j, b) in workers.iter().enumerate() {
                        if i != j {
                            direct.push(self.path(a, b)?.time(bytes, 1.0));
                        }
                    }
                }
                Round::Phases(vec![direct])
            }
            RouteArg::Ring => {
                let mut edges = Vec::new();
                let m = workers.len();
                for i in 0..m {
                    let (a, b) = (&workers[i], &workers[(i + 1) % m]);
                    edges.push(self.path(a, b)?.time(bytes / n, 1.0));
                }
                let hops = 2 * m.saturating_sub(1);
                // Each member's notice names the aggregate's digest: it goes after the ring.
                Round::Ring { edges, hops, notices: notices()? }
            }
        })
    }
}

/// A round's legs, each (latency, transfer at rate scale 1).
#[derive(Debug, Clone)]
enum Round {
    /// Relay: each worker's upload to the coordinator, and the coordinator's forward of one
    /// payload to it. The coordinator forwards each payload as it arrives (cut-through), so
    /// a worker has the others' payloads once the last of them arrived and was forwarded,
    /// and not before the first arrived plus all n − 1 forwarded.
    Relay { up: Vec<(f64, f64)>, down: Vec<(f64, f64)> },
    /// Phases one after another, each as slow as its slowest leg.
    Phases(Vec<Vec<(f64, f64)>>),
    /// A ring of `hops` steps over `edges` (member i to i + 1), then the notices and the
    /// commit. A member sends its next segment once its predecessor's arrived, so the
    /// steps are not in lockstep: a member finishes after the chain of the `hops` edges
    /// behind it, each edge's latency and transfer in turn.
    Ring { edges: Vec<(f64, f64)>, hops: usize, notices: (f64, f64) },
}

impl Round {
    /// Seconds the round takes with every link's rate scaled by `scale`.
    fn seconds(&self, scale: f64) -> f64 {
        let leg = |(latency, transfer): &(f64, f64)| latency + transfer / scale;
        match self {
            Round::Phases(phases) => {
                phases.iter().map(|legs| legs.iter().map(leg).fold(0.0, f64::max)).sum()
            }
            Round::Ring { edges, hops, notices } => {
                let m = edges.len();
                // Member `end` finishes after the edges into it, its predecessor, and so on.
                let chain = |end: usize| -> f64 {
                    (0..*hops).map(|j| leg(&edges[(end + m * hops - 1 - j) % m])).sum()
                };
                (0..m).map(chain).fold(0.0, f64::max) + leg(notices)
            }
            Round::Relay { up, down } => {
                let arrivals: Vec<f64> = up.iter().map(leg).collect();
                let others = (arrivals.len() as f64 - 1.0).max(0.0);
                let mut round: f64 = 0.0;
                for (w, (latency, one)) in down.iter().enumerate() {
                    let from_others = arrivals.iter().enumerate().filter(|&(j, _)| j != w);
                    let (first, last) = from_others
                        .fold((f64::INFINITY, 0.0f64), |(lo, hi), (_, &a)| (lo.min(a), hi.max(a)));
                    if !first.is_finite() {
                        continue;
                    }
                    let forward = one / scale;
                    round = round.max((first + others * forward).max(last + forward) + latency);
                }
                round
            }
        }
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
    /// Inner steps a round is in flight before it lands (the algorithm's `overlap`).
    pub overlap_steps: f64,
    /// Seconds of compute per round.
    pub compute_seconds: f64,
    /// Seconds of communication per round.
    pub comm_seconds: f64,
    /// Compute over total time, with the rounds in flight for `overlap_steps`.
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
    measure_random(algo).map(|m| (m.bytes_per_param, m.steps_per_round))
}

/// [`measure_on`] random normal parameters.
fn measure_random(algo: &AlgoConfig) -> Result<Measured> {
    measure_on(algo, |shape| Tensor::randn(shape, (Kind::Float, tch::Device::Cpu)))
}

/// What [`measure_on`] finds on the real encoder.
struct Measured {
    bytes_per_param: f64,
    steps_per_round: f64,
    overlap: f64,
}

/// Payload bytes per parameter of `algo`, as [`measure`] finds them, but on values that
/// draw nothing from LibTorch's global random generator: a simulation measures before
/// it trains, and its runs must replay exactly.
pub fn payload_bytes_per_param(algo: &AlgoConfig) -> Result<f64> {
    let mut offset = 0.0;
    let m = measure_on(algo, |shape| {
        let n: i64 = shape.iter().product();
        offset += 1.0;
        // Varied, signed, deterministic values: a top-k has something to choose.
        (Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) * 0.7 + offset).sin().reshape(shape)
    })?;
    Ok(m.bytes_per_param)
}

/// [`measure`] on parameters whose values `values` makes from their shapes. Streaming
/// DiLoCo's figures are the mean over its F rounds (one per fragment); every other
/// algorithm's are its first round's.
fn measure_on(algo: &AlgoConfig, mut values: impl FnMut(&[i64]) -> Tensor) -> Result<Measured> {
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
    let rounds = match algo {
        AlgoConfig::Streaming(c) => c.fragments.max(1),
        _ => 1,
    };
    // The schedule: the steps between the first exchange and the one `rounds` later.
    let horizon = 1_000_000u64;
    let due: Vec<u64> = (0..horizon)
        .filter(|&step| {
            [Phase::AfterBackward, Phase::AfterInnerStep]
                .iter()
                .any(|&p| outer.exchange_due(p, step))
        })
        .take(rounds as usize + 1)
        .collect();
    if due.len() < rounds as usize + 1 {
        bail!(
            "{} exchanges less than {} times within {horizon} steps",
            algo.algorithm(),
            rounds + 1
        );
    }
    let mut bytes = 0.0;
    for round in 0..rounds {
        bytes += outer.prepare(&params, round, 0)?.encode().len() as f64;
    }
    let rounds = rounds as f64;
    Ok(Measured {
        bytes_per_param: bytes / rounds / numel as f64,
        steps_per_round: (due[due.len() - 1] - due[0]) as f64 / rounds,
        overlap: outer.overlap() as f64,
    })
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
    let resilient = config.transport.congestion == Congestion::Resilient;
    let configured_bps = resilient.then_some(config.transport.bandwidth_bps);
    let network = Network { topology: &topology, placement, configured_bps };
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
        "{:<11} {:>12} {:>8} {:>8} {:>11} {:>11} {:>8} {:>11} {:>22}",
        "algorithm",
        "payload",
        "H",
        "overlap",
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
            "{:<11} {:>12} {:>8} {:>8} {:>11} {:>11} {:>7.1}% {:>10.1}% {:>22}",
            e.algorithm,
            bytes(e.payload_bytes),
            format!("{:.0}", e.steps_per_round),
            format!("{:.0}", e.overlap_steps),
            seconds(e.compute_seconds),
            seconds(e.comm_seconds),
            e.utilization * 100.0,
            e.utilization_overlapped * 100.0,
            need
        );
    }
    println!(
        "\npayload = bytes each worker publishes per round (the real encoder's bytes per parameter\n\
         x parameters); H = inner steps per round (Streaming DiLoCo: per fragment's round);\n\
         overlap = inner steps a round is in flight (the algorithm's setting, 0 = blocking);\n\
         comm/rd = estimated communication per round on these links (see `meridian what-if\n\
         --help` for the model); util = compute / (compute + the comm the overlap leaves);\n\
         overlapped = the bound if all communication overlapped compute. \"links Nx faster\": every link's rate times N reaches the target; \"H >= N\":\n\
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
        && !matches!(algo.algorithm(), Algorithm::Ddp | Algorithm::Diloco | Algorithm::Streaming)
    {
        bail!(
            "--route ring: {} sends sparse payloads, which do not add up in transit",
            algo.algorithm()
        );
    }
    let m = measure_random(algo)?;
    let (bytes_per_param, h) = (m.bytes_per_param, m.steps_per_round);
    let payload = bytes_per_param * args.params;
    let round = network.round(args.route, payload)?;
    let step = args.step_time.as_secs_f64();
    let hidden = m.overlap * step;
    let comm = round.seconds(1.0);
    let compute = h * step;
    // What the target leaves for waiting, plus what the steps in flight hide.
    let budget = compute * (1.0 / args.target - 1.0) + hidden;
    let latency = round.seconds(f64::INFINITY);
    // comm(scale) falls monotonically towards `latency` as the rates grow: bisect on it.
    let mut beyond_rate_limit = false;
    let rate_factor = if comm <= budget {
        Some(comm / budget.max(f64::MIN_POSITIVE)).map(|f| f.min(1.0))
    } else if latency >= budget {
        None
    } else if round.seconds(MAX_RATE_FACTOR) > budget {
        // Even links MAX_RATE_FACTOR times faster miss it: no number to show.
        beyond_rate_limit = true;
        None
    } else {
        let (mut lo, mut hi) = (1.0f64, 2.0f64);
        while round.seconds(hi) > budget && hi < MAX_RATE_FACTOR {
            hi *= 2.0;
        }
        for _ in 0..60 {
            let mid = (lo * hi).sqrt();
            if round.seconds(mid) > budget {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Some(hi)
    };
    // Steps per round that reach the target on these links: H·T ≥ wait × U / (1 − U).
    let wait = (comm - hidden).max(0.0);
    let h_for_target = (wait * args.target / (1.0 - args.target)) / step;
    let adjustable = matches!(algo.algorithm(), Algorithm::Diloco | Algorithm::Sparseloco);
    Ok(Estimate {
        algorithm: algo.algorithm().to_string(),
        bytes_per_param,
        payload_bytes: payload,
        steps_per_round: h,
        overlap_steps: m.overlap,
        compute_seconds: compute,
        comm_seconds: comm,
        utilization: compute / (compute + wait),
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
        assert_eq!(efficiency(0.0), 1.0);
        assert_eq!(efficiency(0.01), 1.0);
        assert!((efficiency(0.03) - 0.99).abs() < 1e-12);
        assert!(efficiency(0.05) < efficiency(0.03));
        assert!(efficiency(0.5) >= 0.05);
    }

    #[test]
    fn a_lossy_link_adds_a_round_trip_once_a_loss_is_likely() {
        let path = |loss| Path { delay: 0.1, loss, bytes_per_sec: 1e8 };
        // Lossless: the delay and the bytes at the rate.
        assert_eq!(path(0.0).time(1e7, 1.0), (0.1, 0.1));
        // At 1% loss a 10 MB transfer (7,000 datagrams) surely loses one: a round trip more.
        let (latency, transfer) = path(0.01).time(1e7, 1.0);
        assert!((latency - 0.3).abs() < 1e-9 && transfer == 0.1, "{latency}");
        // One datagram at 0.1% rarely does.
        let (latency, _) = path(0.001).time(100.0, 1.0);
        assert!(latency > 0.1 && latency < 0.1003, "{latency}");
    }

    #[test]
    fn the_rounds_in_flight_hide_what_they_cover_and_streaming_is_one_fragment() {
        let t = Topology::preset("cross-continent").unwrap();
        let net = network(&t, 4);
        let args = |set: &[&str], algo| WhatIfArgs {
            params: 1e8,
            step_time: Duration::from_secs(1),
            workers: 4,
            preset: "cross-continent".into(),
            topology: None,
            algos: vec![algo],
            inner_steps: None,
            route: RouteArg::Relay,
            target: 0.99,
            config: None,
            set: set.iter().map(|s| s.to_string()).collect(),
            json: false,
        };
        let at = |set: &[&str], algo| {
            let a = args(set, algo);
            let cfg = RunConfig::build(&ModelKind::Gpt, &a.algos, None, None, &a.set).unwrap();
            estimate(&net, &a, &cfg.algos[0]).unwrap()
        };
        let blocking = at(&["diloco.inner_steps=10"], Algorithm::Diloco);
        let hidden = at(&["diloco.inner_steps=10", "diloco.overlap=3"], Algorithm::Diloco);
        assert_eq!((blocking.overlap_steps, hidden.overlap_steps), (0.0, 3.0));
        assert_eq!(blocking.comm_seconds, hidden.comm_seconds);
        let wait = (blocking.comm_seconds - 3.0).max(0.0);
        assert!((hidden.utilization - 10.0 / (10.0 + wait)).abs() < 1e-12, "{hidden:?}");
        assert!(hidden.utilization > blocking.utilization);
        // Streaming DiLoCo: a quarter of the model per round, a round every H/F steps, in
        // flight for its τ.
        let s = at(&["streaming.inner_steps=100"], Algorithm::Streaming);
        assert_eq!((s.steps_per_round, s.overlap_steps), (25.0, 5.0));
        let diloco = at(&["diloco.inner_steps=100"], Algorithm::Diloco);
        let ratio = diloco.bytes_per_param / s.bytes_per_param;
        // f32 against a quarter of the tensors in 4 bits (plus scales): about 30x.
        assert!(ratio > 25.0 && ratio < 35.0, "{ratio}");
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
        let configured_bps = Some(meridian_comm::quic::TransportTuning::default().bandwidth_bps);
        Network { topology, placement: topology.place_workers(n).unwrap(), configured_bps }
    }

    #[test]
    fn a_target_beyond_any_link_speed_up_is_out_of_reach_not_the_search_cap() {
        let t = Topology::preset("cross-continent").unwrap();
        let net = network(&t, 4);
        let ddp = AlgoConfig::default_for(Algorithm::Ddp);
        let (bytes_per_param, _) = measure(&ddp).unwrap();
        let params = MAX_PARAMS;
        let round = net.round(RouteArg::Relay, bytes_per_param * params).unwrap();
        let latency = round.seconds(f64::INFINITY);
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
            let small = net.round(route, 1e3).unwrap().seconds(1.0);
            let big = net.round(route, 1e9).unwrap().seconds(1.0);
            let latency = net.round(route, 1e3).unwrap().seconds(f64::INFINITY);
            assert!(latency > 0.1, "{route:?}: cross-continent latency {latency}");
            assert!(small >= latency && big > small * 10.0, "{route:?}: {small} {big}");
        }
        // 1 GB through a 1 Gb/s relay: the coordinator forwards 3 GB to each remote worker.
        let relay = net.round(RouteArg::Relay, 1e9).unwrap().seconds(1.0);
        assert!(relay > 3.0 * 8.0, "{relay}");
        // The ring moves 2(N-1)/N of a payload per worker, so for large payloads it wins.
        let ring = net.round(RouteArg::Ring, 1e9).unwrap().seconds(1.0);
        assert!(ring < relay, "ring {ring} relay {relay}");
    }

    #[test]
    fn a_ring_is_as_slow_as_its_longest_chain_of_edges_not_its_slowest_edge_every_hop() {
        // Three members, one long edge (0 → 1, 100 ms) and two short ones; four hops. The
        // member after the long edge waits for it twice, the others once: 202 ms, where
        // lockstep hops at the slowest edge would take 400.
        let edges = vec![(0.1, 0.0), (0.001, 0.0), (0.001, 0.0)];
        let ring = Round::Ring { edges, hops: 4, notices: (0.05, 0.0) };
        assert!((ring.seconds(1.0) - (0.202 + 0.05)).abs() < 1e-9, "{}", ring.seconds(1.0));
        // Transfers count along the chain too, at the rate's scale.
        let edges = vec![(0.0, 1.0), (0.0, 1.0), (0.0, 1.0)];
        let ring = Round::Ring { edges, hops: 4, notices: (0.0, 0.0) };
        assert_eq!(ring.seconds(2.0), 2.0);
    }
}
