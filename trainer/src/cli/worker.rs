//! `meridian worker`: one worker of a run across processes, training its replica and
//! syncing through a coordinator over QUIC (see [`crate::networked::process`]).

use anyhow::{Context, Result};
use clap::Args;
use meridian_optimizer::Algorithm;

use super::args::{RunArgs, RunSource, ScheduleArgs, DEFAULT_STEPS};

/// Options of `meridian worker`.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("steps", |a| a.default_value("300")),
    mut_arg("out", |a| a.default_value("out/worker").required(false).help("Directory for worker.json")),
    mut_arg("threads", |a| a.default_value("1")),
    after_help = "\
A worker given none of the run's flags (--algo, --steps, --inner-steps, --seed, --shards,
--model, --config, --set other than transport.*) takes the run's settings from a
coordinator started with --config RUN.toml holding a [run] table: it needs only
--join-file, --name and its --data (and --device). A worker given them must match the
run's model, data, algorithm, settings and seed: one that differs is refused when it
joins, with every difference named. The log names this worker's data fingerprint, which
[run] corpus = \"...\" may require of every worker.

The join string holds the run's secret: pass it with --join-file (or MERIDIAN_JOIN_FILE,
or MERIDIAN_JOIN), not on the command line, where `ps` shows it to every user. Writes
OUT/worker.json: member id, rounds applied, bytes sent and received, final validation
loss and the hash every worker should agree on."
)]
pub struct WorkerArgs {
    /// The join string the coordinator printed (prefer --join-file: a command line is
    /// visible to every user of the machine).
    #[arg(
        long,
        env = "MERIDIAN_JOIN",
        required_unless_present = "join_file",
        hide_env_values = true
    )]
    pub join: Option<String>,
    /// A file holding the join string, as `meridian coordinator --join-file` writes it.
    #[arg(long, env = "MERIDIAN_JOIN_FILE", value_name = "PATH", conflicts_with = "join")]
    pub join_file: Option<std::path::PathBuf>,
    /// Serve live metrics (rounds applied, bytes per peer, time waiting, round latency,
    /// compute utilization, round trip, catch-ups, stragglers, input rejected by reason)
    /// in the Prometheus text
    /// format at http://ADDR/metrics, e.g. 127.0.0.1:9464 (port 0 picks a free one, logged
    /// at start). Off by default. Whoever reaches ADDR can read them: bind a private address.
    #[arg(long, env = "MERIDIAN_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The address other members dial to reach this worker directly (all-gather and ring
    /// payloads, state chunks for a member that catches up): behind NAT, the forwarded
    /// public address. By default the local IP the OS routes to the coordinator, with the
    /// port this worker listens on. Members that cannot reach it hand their frames for it to
    /// the coordinator, which passes them on.
    #[arg(long, env = "MERIDIAN_ADVERTISE", value_name = "ADDR")]
    pub advertise: Option<std::net::SocketAddr>,
    /// This worker's stable name: a restarted worker gives the same name to take its place.
    #[arg(long, env = "MERIDIAN_NAME")]
    pub name: String,
    /// The outer algorithm: ddp, diloco, demo or sparseloco.
    #[arg(long, default_value = "diloco", env = "MERIDIAN_ALGO")]
    pub algo: Algorithm,
    /// Data shards: this worker trains shard (member id mod shards).
    #[arg(long, default_value_t = 1, env = "MERIDIAN_SHARDS")]
    pub shards: u32,
    /// How long it trains.
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// The model, data and settings.
    #[command(flatten)]
    pub source: RunSource,
    /// Seed, output folder and threads.
    #[command(flatten)]
    pub run: RunArgs,
    /// The run-defining flags given on the command line or in the environment, as
    /// `--NAME` (see [`WorkerArgs::note_explicit`]); none: this worker follows the run's
    /// settings from the coordinator.
    #[arg(skip)]
    pub explicit: Vec<String>,
}

/// The ids of the flags that define what a worker trains.
const RUN_FLAGS: [&str; 8] =
    ["algo", "steps", "inner_steps", "seed", "shards", "model", "config", "set"];

/// Whether a flag's value came from the user rather than its default.
fn given(matches: &clap::ArgMatches, id: &str) -> bool {
    use clap::parser::ValueSource;
    matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

impl WorkerArgs {
    /// Records which run-defining flags `matches` (this subcommand's) were given; a
    /// `--set transport.KEY=VALUE` tunes this worker's own link and does not count.
    pub fn note_explicit(&mut self, matches: &clap::ArgMatches) {
        self.explicit = RUN_FLAGS
            .iter()
            .filter(|&&id| given(matches, id))
            .filter(|&&id| {
                id != "set" || self.source.set.iter().any(|s| !s.starts_with("transport."))
            })
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
    }

    /// Whether this worker takes the run's settings from the coordinator (it was given
    /// none of its own).
    pub fn follows(&self) -> bool {
        self.explicit.is_empty()
    }

    /// The join string, from `--join` or read from `--join-file`.
    pub fn join_string(&self) -> Result<String> {
        if let Some(join) = &self.join {
            return Ok(join.clone());
        }
        let Some(path) = &self.join_file else {
            anyhow::bail!("give --join-file PATH (or --join) with the coordinator's join string");
        };
        let shown = path.display();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--join-file {shown}: cannot read the join string"))?;
        let join = text.trim();
        if join.is_empty() {
            anyhow::bail!("--join-file {shown} is empty; the coordinator writes the join string there once it listens");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        file = %shown,
                        "the join file is readable by other users: it holds the run's secret (chmod 600 it)"
                    );
                }
            }
        }
        Ok(join.to_string())
    }

    /// Inner steps to train.
    pub fn steps(&self) -> u64 {
        self.schedule.steps_or(DEFAULT_STEPS)
    }

    /// LibTorch intra-op threads (at least 1).
    pub fn threads(&self) -> usize {
        self.run.threads.unwrap_or(1).max(1)
    }
}

/// Runs `meridian worker`.
pub fn run(args: &WorkerArgs) -> Result<()> {
    crate::networked::process::run(args)
}
