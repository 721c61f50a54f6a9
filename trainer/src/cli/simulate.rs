//! `meridian simulate`: every algorithm trains over the same simulated wide-area network
//! in virtual time (see [`crate::simulation`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use meridian_optimizer::Algorithm;

use super::args::{RouteArg, RunArgs, RunSource, ScheduleArgs};
use crate::simulation::chaos;
use crate::units::parse_duration;

/// Options of `meridian simulate`.
#[derive(Debug, Clone, Args)]
#[command(
    mut_arg("steps", |a| a.help("Inner steps per worker (default 300, or 60 with --quick)")),
    mut_arg("inner_steps", |a| {
        a.help("Inner steps per round (H) for the algorithms that have one (default 30, or 10 with --quick; SparseLoCo 10, with top-32 and 1-bit values, on the default GPT)")
    }),
    mut_arg("out", |a| {
        a.default_value("out/simulate").required(false).help("Directory for summary.json and the plots")
    }),
    // Default 1: the simulation runs every worker on one thread, and with small models a
    // second intra-op thread mostly spins (measured: the run takes twice as long with 2 on
    // 2 cores).
    mut_arg("threads", |a| a.default_value("1")),
    after_help = "\
Trains the built-in GPT on the shipped corpus with each algorithm over the same simulated
wide-area network, in virtual time: real QUIC and the real round protocol, over links that
delay, queue and lose datagrams as configured. Presets: lan, cross-continent (us-east,
us-west, eu-west, ap-southeast), home (consumer uplinks), lossy (bursty loss); or a TOML
topology with --topology. Compute is charged at --step-time per inner step (or modelled
from FLOPs with --tflops), so simulated seconds mean what they would on that hardware.

Writes OUT/summary.json (byte-identical for the same seed unless --measured-compute) and
OUT/val_loss_vs_{time,bytes}.{svg,png}. Per algorithm: bytes each worker sent and received, how
many times fewer (sent + received) than a bf16 ring all-reduce DDP of the same run (computed:
2(N-1)/N x 2 bytes x parameters per inner step, each way), and the final validation loss
against DDP's when ddp is among --algos (n/a otherwise). Validation losses are the synchronized
model's, evaluated right after a round when every replica holds the same parameters;
local_curve holds worker 0's own, mid-round ones. The default run takes about 4 minutes on 2 cores,
--quick about 15 seconds. A bar shows progress and the simulated clock; without a terminal,
a line goes to stderr every --progress-every.

Virtual time is not free: every QUIC connection keeps alive every 10 simulated seconds, and
every round puts a payload per pair of workers in flight in this one process. Settings that
could not finish are refused before anything runs: a round of more than 15 days of compute,
over 1e7 connection-seconds of simulated compute, over 2 GB of payloads per round, fewer
steps than one round.

At scale, without training: --model synthetic --params N (e.g. 1e9). No model is built and
nothing trains; each worker charges --step-time per inner step as above and, where its
algorithm exchanges, publishes a valid payload of exactly the size and structure the
algorithm's real encoder produces for N parameters, over the same QUIC, coordinator, routes
and deadlines, landing overlapped rounds (--set overlap=N) as training does. The N
parameters are split as a large transformer's matrices are: 2-D tensors 1024 wide of at most
2^24 elements (at least 16 of them), plus one 1-D tensor of the N mod 1024 left over. The
payloads are encoded before the run by each algorithm's own encoder, tensor by tensor, on
a seeded heavy-tailed pseudo-gradient: twice, from two seeds (not once per worker, which at
1e9 parameters would take minutes and a copy of the payloads per worker). Each worker's
payload takes each segment from one of the two encodings, chosen by a bit of its index, so
every worker sends its own bytes (distinct from every other worker's whenever a payload has
at least log2(--workers) segments), under its own member id, every round. A synthetic
worker decodes and validates every payload it receives as a training worker would (shapes,
indices, codes, finiteness), but applies no update: loss columns are n/a and replicas agree
on the committed bytes, not on parameters. Rounds block, or land --set overlap=N steps
later, where the algorithm's optimizer says training does (Streaming DiLoCo's tau is its
overlap: each fragment's round lands tau steps after its launch). On --route ring the
workers sum their real payloads with the real reducer and agree on the aggregate's bytes.
With balance = true a synthetic worker skips the steps its pace leaves out, as a training
worker does. Not with --chaos, --tflops or --measured-compute. Instead of the 2 GB per
round limit, a memory model refuses a run whose payload copies (every member's payload on
every worker for the rounds kept; on the ring, each worker's own, its segments and the
aggregates kept, and one dense split at a time) would not fit the memory available now,
naming the largest --params that does; the summary reports each algorithm's peak resident
memory."
)]
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
    /// Seed (model, data shards and network), output folder and threads.
    #[command(flatten)]
    pub run: RunArgs,
    /// A short run: 60 steps on a smaller model (about 15 seconds on 2 cores).
    #[arg(long)]
    pub quick: bool,
    /// How long it trains.
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    /// Simulated time one inner step takes: what a step costs on your accelerator.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    pub step_time: Duration,
    /// A region's compute speed against --step-time (REGION=FACTOR, repeatable; 0.5: an
    /// accelerator half as fast, its steps twice as long); over the topology file's `speed`.
    #[arg(long = "speed", value_name = "REGION=FACTOR")]
    pub speeds: Vec<String>,
    /// One worker's compute speed, over its region's (INDEX=FACTOR, repeatable; workers
    /// count from 0 in placement order): one slow machine beside fast ones; over the
    /// topology file's `worker_speed`.
    #[arg(long = "worker-speed", value_name = "INDEX=FACTOR")]
    pub worker_speeds: Vec<String>,
    /// How far each step's time strays from its region's, as a fraction either way
    /// (seeded; 0 to 0.5); over the topology file's `speed_jitter`.
    #[arg(long)]
    pub speed_jitter: Option<f64>,
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
    /// Put the run through a fault, after a clean run to compare with: a 30 s partition
    /// between two continents that heals, a link whose bandwidth drops 10x, 5% bursty loss
    /// (each between the coordinator's region and worker 1's), a worker killed and restarted
    /// twice, the coordinator killed and restarted from its state, a worker joining late, a
    /// Byzantine worker (defend with --set aggregation=clip_median, trimmed_mean or
    /// reject_outliers); or all of them, with a table.
    #[arg(long, value_enum)]
    pub chaos: Option<chaos::Chaos>,
    /// The loss "time to target" refers to (default: the lowest every algorithm reached).
    #[arg(long)]
    pub target_loss: Option<f64>,
    /// Evaluate validation loss every this many inner steps (default: 20 times per run);
    /// the synchronized model at the round that closes at or first after each such step,
    /// and after the last round.
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// When stderr is not a terminal (no progress bar), write a progress line this often
    /// (wall-clock time; 0 for never).
    #[arg(long, default_value = "60s", value_parser = parse_duration, env = "MERIDIAN_PROGRESS_EVERY")]
    pub progress_every: Duration,
    /// With `--model synthetic`: the model size, in parameters (e.g. 1e9 or 250000000).
    #[arg(long, value_parser = parse_params, env = "MERIDIAN_PARAMS")]
    pub params: Option<u64>,
    /// The model, data and settings (`--model gpt`, the default, is d_model 128, 2 layers,
    /// 2 heads, context 128 unless set otherwise; 64/2/2/64 with --quick).
    #[command(flatten)]
    pub source: RunSource,
}

/// `--params`: a whole number of parameters, written plainly or as `1e9`.
fn parse_params(text: &str) -> std::result::Result<u64, String> {
    let value: f64 = text
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{text:?} is not a number of parameters (e.g. 1e9)"))?;
    // Below 2^53 every whole f64 is exact.
    if !(value.is_finite() && value >= 1.0 && value.fract() == 0.0 && value < 9.0e15) {
        return Err(format!("{text:?}: a whole number of parameters from 1 to 9e15"));
    }
    Ok(value as u64)
}

/// Runs `meridian simulate`.
pub fn run(args: &SimulateArgs) -> Result<()> {
    crate::simulation::run(args)
}
