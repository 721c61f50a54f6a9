//! `meridian worker`: one worker of a run across processes, training its replica and
//! syncing through a coordinator over QUIC (see [`crate::networked::process`]).

use anyhow::Result;
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
Every worker of a run must be started with the same model, data, algorithm, settings and
seed (their parameters are compared by hash at the first round). Writes OUT/worker.json:
member id, rounds applied, bytes sent and received, final validation loss and the hash
every worker should agree on."
)]
pub struct WorkerArgs {
    /// The join string the coordinator printed.
    #[arg(long, env = "MERIDIAN_JOIN")]
    pub join: String,
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
}

impl WorkerArgs {
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
