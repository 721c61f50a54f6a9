//! `meridian train`: every selected outer algorithm trains N workers in this process on
//! the same model, data and token budget (see [`crate::local`]).

use anyhow::Result;
use clap::Args;
use meridian_optimizer::Algorithm;

use super::args::{RunArgs, RunSource, ScheduleArgs, DEFAULT_STEPS};

/// Options of `meridian train`.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("steps", |a| a.default_value("300")),
    mut_arg("out", |a| {
        a.default_value("out/train")
            .required(false)
            .help("Directory for the summary, plots, round logs and checkpoints")
    }),
    mut_arg("threads", |a| a.help("LibTorch intra-op threads (by default the machine's cores)")),
    after_help = "\
Examples:
  meridian train --algo diloco,sparseloco --workers 4 --steps 600 --inner-steps 30
  meridian train --model mlp --steps 200                     # seconds, for a quick look
  meridian train --model torchscript:model.pt --algo diloco  # your own PyTorch model
  meridian train --set model.d_model=128 --set inner.lr=3e-3 --set sparseloco.topk=32
  meridian train --resume ...same flags...                   # continue from --out's checkpoints
  meridian train --overwrite ...flags...                     # start afresh, replacing them

Writes OUT/summary.json (per algorithm: losses, bytes, rounds, tokens, time, per-worker round
metrics, the frontier), OUT/rounds-ALGO.jsonl (one line per round),
OUT/val_loss_vs_{steps,bytes}.{svg,png}, and OUT/checkpoints/ALGO/. Per-round metrics also go
to the log at debug level (RUST_LOG=meridian_trainer=debug).

The frontier: bytes each worker sent and received, how many times fewer (sent + received) than
a bf16 ring all-reduce DDP of the same run (computed: each worker sends and receives
2(N-1)/N x 2 bytes x parameters per inner step), and the final validation loss against DDP's
when ddp is among --algo (n/a otherwise). Validation losses (the table, final_val_loss, curve,
the plots) are the synchronized model's: evaluated right after a round, when every replica
holds the same parameters (Streaming DiLoCo: its global copy); local_curve holds worker 0's own
parameters at every evaluation point, mid-round for the algorithms that sync every H steps."
)]
pub struct TrainArgs {
    /// Outer algorithms to run, comma separated; each runs on the same model, data and
    /// token budget so their losses and bytes compare: ddp, diloco, demo, sparseloco,
    /// streaming.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ddp,diloco,sparseloco,demo,streaming",
        env = "MERIDIAN_ALGO"
    )]
    pub algo: Vec<Algorithm>,
    /// Workers, each with its own disjoint data shard.
    #[arg(long, default_value_t = 4, env = "MERIDIAN_WORKERS")]
    pub workers: u32,
    /// How long it trains.
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// The model, data and settings.
    #[command(flatten)]
    pub source: RunSource,
    /// Seed, output folder and threads.
    #[command(flatten)]
    pub run: RunArgs,
    /// Evaluate validation loss every this many inner steps; by default 20 times per
    /// run. The synchronized model is evaluated at the round that closes at or first after
    /// each such step, and after the last round.
    #[arg(long, env = "MERIDIAN_EVAL_EVERY")]
    pub eval_every: Option<u64>,
    /// Checkpoint every this many inner steps (0: only at the end).
    #[arg(long, default_value_t = 500, env = "MERIDIAN_CHECKPOINT_EVERY")]
    pub checkpoint_every: u64,
    /// Stop after this many inner steps, leaving a checkpoint, as if interrupted (the
    /// schedule still spans --steps); continue later with --resume.
    #[arg(long, env = "MERIDIAN_STOP_AFTER")]
    pub stop_after: Option<u64>,
    /// Continue each algorithm from its checkpoint in --out (refused if the checkpoint
    /// is from another model, config, seed or data, or was altered or is incomplete).
    #[arg(long)]
    pub resume: bool,
    /// Start afresh even though --out holds an earlier run's checkpoints, replacing them
    /// (and its summary, plots and round logs). Without it (or --resume) such a folder is
    /// refused, so a rerun cannot wipe a run's checkpoints by accident.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
}

impl TrainArgs {
    /// Inner steps per worker.
    pub fn steps(&self) -> u64 {
        self.schedule.steps_or(DEFAULT_STEPS)
    }
}

/// Runs `meridian train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    crate::local::run(args)
}
