//! Argument groups more than one subcommand takes, declared once and flattened into each
//! subcommand's `Args`: the model, data and settings ([`RunSource`], [`DataArgs`]), how
//! long a run trains ([`ScheduleArgs`]), its seed, output folder and threads
//! ([`RunArgs`]), and how payloads travel ([`RouteArg`]).
//!
//! A group's flag may default differently per subcommand (`--out` is `out/train` for
//! `train`, `out/worker` for `worker`): the subcommand sets it with
//! `#[command(mut_arg(..))]`, so `--help` still shows each default.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use meridian_comm::protocol::Topology as Route;
use meridian_optimizer::Algorithm;

use crate::data::{Corpus, TokenFormat};
use crate::model::ModelKind;
use crate::run_config::RunConfig;

/// Inner steps per worker when `--steps` is not given (`simulate --quick` uses fewer).
pub const DEFAULT_STEPS: u64 = 300;

/// The `--data`, `--data-format` and `--vocab` flags every training command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Training text (any file, read as bytes) or pre-tokenized ids (`.u16`/`.u32` files,
    /// or --data-format). The default is the corpus the set-up installs.
    #[arg(long, default_value = "data/corpus.txt", env = "MERIDIAN_DATA")]
    pub data: std::path::PathBuf,
    /// How --data stores tokens: text, u16 or u32 (little-endian); by default from the
    /// file's extension.
    #[arg(long, env = "MERIDIAN_DATA_FORMAT")]
    pub data_format: Option<TokenFormat>,
    /// Vocabulary size of pre-tokenized data (every id must be below it).
    #[arg(long, env = "MERIDIAN_VOCAB")]
    pub vocab: Option<u32>,
}

impl DataArgs {
    /// Loads the corpus the flags name, with a hint when the default one is missing.
    pub fn load(&self) -> Result<Corpus> {
        let format = self.data_format.unwrap_or_else(|| TokenFormat::from_extension(&self.data));
        if format == TokenFormat::Text && self.vocab.is_some() {
            bail!("--vocab applies to pre-tokenized data (u16/u32); text is byte-level (256)");
        }
        if !self.data.exists() {
            let hint = if self.data == Path::new("data/corpus.txt") {
                " (the set-up installs it: run `make setup`, or pass --data FILE)"
            } else {
                ""
            };
            bail!("data: {} does not exist{hint}", self.data.display());
        }
        Corpus::load(&self.data, format, self.vocab)
    }
}

/// The flags `meridian train`, `worker` and `simulate` share: which model, which data, and
/// the settings file with its overrides.
#[derive(Debug, Clone, clap::Args)]
pub struct RunSource {
    /// The model: `gpt` (built-in byte-level GPT), `mlp` (small and fast),
    /// `torchscript:PATH` (a module saved with torch.jit.save whose forward(tokens,
    /// targets) returns the loss; see examples/README.md), or, for `meridian simulate`
    /// only, `synthetic` with --params N (payloads of that size, no training).
    #[arg(long, default_value = "gpt", env = "MERIDIAN_MODEL")]
    pub model: ModelKind,
    /// The data.
    #[command(flatten)]
    pub data: DataArgs,
    /// A TOML file with `[model]`, `[inner]`, `[data]`, `[transport]` and one table per
    /// algorithm.
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Override one setting: `KEY=VALUE` for every selected algorithm that has KEY, or
    /// `SCOPE.KEY=VALUE` for one table (model, inner, data, transport or an algorithm).
    /// Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where each worker trains: `cpu`, `cuda` (the first GPU), `cuda:N`, or `auto` (the
    /// first GPU when there is one). On a GPU the outer optimizer's state stays there too
    /// and its compression runs on the CUDA kernels; only payloads, checkpoints and
    /// catch-up state cross to the host. Runs on the CPU are bit-reproducible across
    /// machines; on a GPU, replicas still agree bit for bit within the run.
    #[arg(long, default_value = "cpu", env = "MERIDIAN_DEVICE")]
    pub device: crate::device::DeviceChoice,
}

impl RunSource {
    /// The run's settings for `algos`, with `extra_sets` applied before the user's own.
    pub fn config(
        &self,
        algos: &[Algorithm],
        inner_steps: Option<u64>,
        extra_sets: &[String],
    ) -> Result<RunConfig> {
        if self.model == ModelKind::Synthetic {
            bail!(
                "--model synthetic: only `meridian simulate --model synthetic --params N` runs a \
                 synthetic model (it trains nothing); choose gpt, mlp or torchscript:PATH"
            );
        }
        let sets: Vec<String> = extra_sets.iter().chain(&self.set).cloned().collect();
        RunConfig::build(&self.model, algos, self.config.as_deref(), inner_steps, &sets)
    }
}

/// How long a run trains: `--steps` and `--inner-steps`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScheduleArgs {
    /// Inner steps per worker (also the length of the learning-rate schedule).
    #[arg(long, env = "MERIDIAN_STEPS")]
    pub steps: Option<u64>,
    /// Inner steps per outer round (H) for the algorithms that have one; overrides the
    /// config file and the published default.
    #[arg(long, env = "MERIDIAN_INNER_STEPS")]
    pub inner_steps: Option<u64>,
}

impl ScheduleArgs {
    /// `--steps`, or `default` when it was not given.
    pub fn steps_or(&self, default: u64) -> u64 {
        self.steps.unwrap_or(default)
    }
}

/// A run's seed, output folder and LibTorch threads: `--seed`, `--out`, `--threads`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Seed of the initial parameters and the data shards (and, in a simulation, of the
    /// network); every worker of a run must use the same one.
    #[arg(long, default_value_t = 0, env = "MERIDIAN_SEED")]
    pub seed: u64,
    /// Directory for what the run writes.
    #[arg(long, env = "MERIDIAN_OUT")]
    pub out: PathBuf,
    /// LibTorch intra-op threads.
    #[arg(long, env = "MERIDIAN_THREADS")]
    pub threads: Option<usize>,
}

/// How payloads travel between the workers of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RouteArg {
    /// Each worker uploads once to the coordinator, which forwards to the others.
    Relay,
    /// Each worker sends directly to every other worker.
    AllGather,
    /// The workers sum their payloads around a ring (reduce-scatter, then all-gather):
    /// each sends 2(N−1)/N of its payload, to its ring successor. For the dense
    /// algorithms (ddp, diloco in f32, bf16 or int8); a round whose ring cannot finish
    /// falls back to relay. Fewer bytes, but 2(N−1) sequential hops: on long links with
    /// payloads of a few MB the relay's two hops finish first.
    Ring,
}

impl RouteArg {
    /// The protocol topology.
    pub fn route(self) -> Route {
        match self {
            RouteArg::Relay => Route::Relay,
            RouteArg::AllGather => Route::AllGather,
            RouteArg::Ring => Route::Ring,
        }
    }
}
