//! `meridian coordinator`: admits the workers that hold the run's join secret, closes
//! rounds and commits who delivered (see [`crate::networked::coordinator`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::args::RouteArg;

/// Options of `meridian coordinator`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Prints a join string (meridian://HOST:PORT/?fp=..&run=..&secret=..) that workers pass to
`meridian worker --join`. Keep it secret: it admits its holder to the run. With --state-dir
(default out/coordinator) a restarted coordinator keeps its certificate, run and rounds,
so the same join string keeps working and the workers carry on.

A run's settings travel with it (--config RUN.toml with a [run] table):
  [run]
  algo = \"sparseloco\"
  steps = 300
  shards = 4
  [sparseloco]
  topk = 32
then `meridian worker --join-file join.txt --name site-a --data corpus.txt` trains them.")]
pub struct CoordinatorArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7070", env = "MERIDIAN_LISTEN")]
    pub listen: SocketAddr,
    /// Host name or address workers reach this machine at (put in the join string).
    #[arg(long, env = "MERIDIAN_ADVERTISE")]
    pub advertise: Option<String>,
    /// Folder for the coordinator's certificate, run credentials and round state.
    #[arg(long, default_value = "out/coordinator", env = "MERIDIAN_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Workers to wait for before round 0 opens.
    #[arg(long, default_value_t = 1, env = "MERIDIAN_MIN_WORKERS")]
    pub min_workers: u32,
    /// Live workers a round needs once the run has started. The default, 1, keeps the run
    /// going when workers die (they catch up when they return); set it to --min-workers to
    /// pause instead.
    #[arg(long, default_value_t = 1, env = "MERIDIAN_MIN_LIVE")]
    pub min_live: u32,
    /// How payloads travel.
    #[arg(long, value_enum, default_value = "relay", env = "MERIDIAN_TOPOLOGY")]
    pub topology: RouteArg,
    /// A fixed round deadline in milliseconds; by default it adapts to observed rounds.
    #[arg(long, env = "MERIDIAN_DEADLINE_MS")]
    pub deadline_ms: Option<u64>,
    /// Also write the join string to this file (for scripts).
    #[arg(long)]
    pub join_file: Option<PathBuf>,
    /// Exit after this many rounds have committed (by default: run until interrupted).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// The run's TOML file. Its `[transport]` table tunes this coordinator's QUIC
    /// (bandwidth_bps, rtt_ms, congestion = "resilient" | "bbr" | "cubic" | "new_reno",
    /// ...). With a `[run]` table (algo, and optionally model, steps, seed, shards, vocab,
    /// corpus) the file is the run's settings, `[model]`, `[inner]`, `[data]` and the
    /// algorithm's table included: every worker is handed them when it joins (a worker
    /// then needs only --join-file, --name and --data), and one started with settings of
    /// its own that differ, or another model, is refused with each difference named. The
    /// coordinator builds the model once, on its CPU, to learn its parameters' shapes.
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Serve live metrics (rounds committed, bytes per worker, round durations,
    /// stragglers, rejections, round trips, catch-ups) in the Prometheus text
    /// format at http://ADDR/metrics, e.g. 127.0.0.1:9464 (port 0 picks a free one, logged
    /// at start). Off by default. Whoever reaches ADDR can read them: bind a private address.
    #[arg(long, env = "MERIDIAN_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Override a transport setting: `transport.KEY=VALUE`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Runs `meridian coordinator`.
pub fn run(args: &CoordinatorArgs) -> Result<()> {
    crate::networked::coordinator::run(args)
}
