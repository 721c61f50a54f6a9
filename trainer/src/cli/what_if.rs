//! `meridian what-if`: sizes a real run without training it (see [`crate::what_if`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use meridian_optimizer::Algorithm;

use super::args::RouteArg;
use crate::units::{parse_count, parse_duration};

/// Options of `meridian what-if`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Example: how much uplink does a 1B-parameter model need across four continents?
  meridian what-if --params 1e9 --step-time 1s --workers 8 --preset cross-continent

Payload sizes come from the algorithms' real encoders (their settings from --config and
--set, as for `meridian train`); link delays, rates and loss from the preset or --topology.
A round's communication is modelled from them: each transfer takes its path's delay, its
bytes at the path's rate less QUIC's headers (5%; the default controller keeps the rest
busy up to 2% loss), and a round trip more where a datagram is likely to be lost; every
pair of hosts has its own path, as in the simulator; the relay's coordinator forwards each
payload as it arrives; a ring member sends its next segment once its predecessor's
arrived, so a ring round is its longest chain of 2(N-1) edges. A round in flight (--set
ALGO.overlap=N) hides N steps of it. Left out: the run's first handshakes and its last
round (which a run waits for), the time to encode and decode payloads, and queueing between
a worker's own flows. Against `meridian simulate` on cross-continent the estimate is within
1.25x from 10 MB to 250 MB payloads on the relay, all-gather and ring routes (the 100 MB
ring rounds run up to 1.24x longer than estimated; BENCHMARKS.md, \"What-if against the
simulation\"); larger payloads were not simulated.
See `meridian simulate` to run a small model over the same network for real.")]
pub struct WhatIfArgs {
    /// Model parameters: 1e9, 1.3B, 350M, 125k or a plain number.
    #[arg(long, value_parser = parse_count)]
    pub params: f64,
    /// Time one inner step takes on one worker's accelerator.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub step_time: Duration,
    /// Workers, placed round-robin over the topology's regions.
    #[arg(long, default_value_t = 8)]
    pub workers: u32,
    /// The network: lan, cross-continent, home or lossy.
    #[arg(long, default_value = "cross-continent")]
    pub preset: String,
    /// A topology TOML file instead of a preset.
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// Outer algorithms, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "ddp,diloco,sparseloco,demo,streaming")]
    pub algos: Vec<Algorithm>,
    /// Inner steps per round (H) for the algorithms that have one (default: each
    /// algorithm's published default).
    #[arg(long)]
    pub inner_steps: Option<u64>,
    /// How payloads travel.
    #[arg(long, value_enum, default_value = "relay")]
    pub route: RouteArg,
    /// The utilization to size links for.
    #[arg(long, default_value_t = 0.95)]
    pub target: f64,
    /// A TOML file with the algorithms' tables.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override one algorithm setting (as for `meridian train`). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the estimates as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Runs `meridian what-if`.
pub fn run(args: &WhatIfArgs) -> Result<()> {
    crate::what_if::run(args)
}
