//! `meridian train`: N workers in one process through the in-process harness, one or
//! several outer algorithms on the same model, data and step budget.
//!
//! Today's model is the small MLP regression task (`--model mlp`); the byte-level GPT and
//! TorchScript models arrive with the trainer's model work.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::harness::Harness;
use meridian_optimizer::toy::{ToyConfig, ToyMlp};
use meridian_optimizer::Algorithm;

/// Options of `meridian train`.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Outer algorithms to run, comma separated; each runs on the same model, data and
    /// steps so their losses and bytes compare: ddp, diloco, demo, sparseloco, streaming.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ddp,diloco,sparseloco,demo,streaming",
        env = "MERIDIAN_ALGO"
    )]
    pub algo: Vec<Algorithm>,
    /// Workers, each with its own data shard.
    #[arg(long, default_value_t = 4, env = "MERIDIAN_WORKERS")]
    pub workers: u32,
    /// Inner steps per worker.
    #[arg(long, default_value_t = 300, env = "MERIDIAN_STEPS")]
    pub steps: u64,
    /// Inner steps per outer round (H) for the algorithms that have one; overrides the
    /// config file and the published default.
    #[arg(long, env = "MERIDIAN_INNER_STEPS")]
    pub inner_steps: Option<u64>,
    /// The model: `mlp` (a small regression MLP).
    #[arg(long, default_value = "mlp", env = "MERIDIAN_MODEL")]
    pub model: String,
    /// A TOML file with one table per algorithm, e.g. `[diloco]` `inner_steps = 100`.
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override one setting: `KEY=VALUE` for every selected algorithm that has KEY, or
    /// `ALGO.KEY=VALUE` for one. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Seed of the model's initial parameters (the data shards derive from it).
    #[arg(long, default_value_t = 0, env = "MERIDIAN_SEED")]
    pub seed: i64,
}

/// The settings of one algorithm after the config file, `--inner-steps` and `--set`.
pub fn algo_config(
    args: &TrainArgs,
    algorithm: Algorithm,
    file: &toml::Table,
) -> Result<AlgoConfig> {
    let fields = match file.get(algorithm.name()) {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("config: [{algorithm}] must be a table"),
        None => toml::Table::new(),
    };
    let defaults: toml::Table = AlgoConfig::default_for(algorithm).to_toml().parse()?;
    let mut overrides = Vec::new();
    if let Some(h) = args.inner_steps {
        if defaults.contains_key("inner_steps") {
            overrides.push(("inner_steps".to_string(), h.to_string()));
        }
    }
    for s in &args.set {
        let (key, value) =
            s.split_once('=').with_context(|| format!("--set {s:?}: expected KEY=VALUE"))?;
        let (scope, key) = match key.split_once('.') {
            Some((a, k)) => (Some(a.parse::<Algorithm>().map_err(anyhow::Error::msg)?), k),
            None => (None, key),
        };
        match scope {
            Some(a) if a != algorithm => {}
            Some(_) => overrides.push((key.trim().to_string(), value.trim().to_string())),
            None if defaults.contains_key(key.trim()) => {
                overrides.push((key.trim().to_string(), value.trim().to_string()))
            }
            None => {}
        }
    }
    Ok(AlgoConfig::from_parts(algorithm, fields, &overrides)?)
}

/// Result of one algorithm's run.
#[derive(Debug, Clone)]
pub struct AlgoOutcome {
    /// The algorithm and its settings.
    pub config: AlgoConfig,
    /// Held-out loss before training.
    pub initial_loss: f64,
    /// Held-out loss after training (mean over workers).
    pub final_loss: f64,
    /// Outer rounds (exchanges).
    pub rounds: u64,
    /// Payload bytes each worker sent over the run (mean over workers).
    pub bytes_per_worker: f64,
    /// Whether the replicas' parameters hashed identically after every exchange.
    pub replicas_identical: bool,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Runs one algorithm on the toy task.
pub fn run_one(args: &TrainArgs, config: AlgoConfig) -> Result<AlgoOutcome> {
    let toy = ToyConfig { model_seed: args.seed, ..ToyConfig::default() };
    let trains = (0..args.workers).map(|w| ToyMlp::new(toy, w)).collect::<Result<Vec<_>, _>>()?;
    let mut h = Harness::new(trains, |_, p| config.build(p))?;
    let start = Instant::now();
    let initial_loss = h.eval_loss()?;
    let (mut rounds, mut bytes, mut identical) = (0u64, 0usize, true);
    for _ in 0..args.steps {
        for x in h.step()?.exchanges {
            rounds += 1;
            bytes += x.bytes_per_worker.iter().sum::<usize>();
            identical &= x.replicas_identical();
            for (worker, reason) in &x.rejected {
                tracing::warn!(round = x.round, worker, %reason, "payload rejected");
            }
        }
    }
    let final_loss = h.eval_loss()?;
    if rounds == 0 {
        tracing::warn!(
            algo = %config.algorithm(),
            steps = args.steps,
            "no outer round completed: its inner steps per round exceed --steps; lower --inner-steps"
        );
    }
    Ok(AlgoOutcome {
        config,
        initial_loss,
        final_loss,
        rounds,
        bytes_per_worker: bytes as f64 / f64::from(args.workers),
        replicas_identical: identical,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Runs `meridian train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    if args.model != "mlp" {
        bail!("--model {:?}: only `mlp` is available in this build", args.model);
    }
    if args.workers == 0 || args.steps == 0 {
        bail!("--workers and --steps must be at least 1");
    }
    if args.algo.is_empty() {
        bail!("--algo: name at least one algorithm");
    }
    let file: toml::Table = match &args.config {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?,
        None => toml::Table::new(),
    };
    if let Some(unknown) = file.keys().find(|k| k.parse::<Algorithm>().is_err()) {
        bail!(
            "config: [{unknown}] is not an algorithm; use one table per algorithm, e.g. [diloco]"
        );
    }
    // A KEY=VALUE meant for "every algorithm that has it" must fit at least one, or a typo
    // would pass silently.
    for s in &args.set {
        let key = s.split_once('=').map_or(s.as_str(), |(k, _)| k).trim();
        if key.contains('.') {
            continue;
        }
        let mut known = std::collections::BTreeSet::new();
        for &a in &args.algo {
            let defaults: toml::Table = AlgoConfig::default_for(a).to_toml().parse()?;
            known.extend(defaults.keys().filter(|k| *k != "algo").cloned());
        }
        if !known.contains(key) {
            let known: Vec<String> = known.into_iter().collect();
            bail!(
                "--set {key}: no selected algorithm has this setting; they have {}",
                known.join(", ")
            );
        }
    }
    // Validate every configuration before training anything.
    let configs =
        args.algo.iter().map(|&a| algo_config(args, a, &file)).collect::<Result<Vec<_>>>()?;
    tch::set_num_threads(1);
    println!(
        "Training a small MLP with {} workers for {} inner steps each, per algorithm.\n",
        args.workers, args.steps
    );
    let mut outcomes = Vec::new();
    for config in configs {
        tracing::info!(algo = %config.algorithm(), "training");
        outcomes.push(run_one(args, config)?);
    }
    let ddp_bytes = outcomes
        .iter()
        .find(|o| o.config.algorithm() == Algorithm::Ddp)
        .map(|o| o.bytes_per_worker);
    println!(
        "{:<11} {:>9} {:>9} {:>7} {:>14} {:>9} {:>9} {:>6}",
        "algorithm", "loss@0", "loss", "rounds", "bytes/worker", "ddp/this", "replicas", "secs"
    );
    for o in &outcomes {
        let vs_ddp = match ddp_bytes {
            Some(d) if o.bytes_per_worker > 0.0 => format!("{:.0}x", d / o.bytes_per_worker),
            _ => "-".into(),
        };
        println!(
            "{:<11} {:>9.4} {:>9.4} {:>7} {:>14.0} {:>9} {:>9} {:>6.1}",
            o.config.algorithm().name(),
            o.initial_loss,
            o.final_loss,
            o.rounds,
            o.bytes_per_worker,
            vs_ddp,
            if o.replicas_identical { "identical" } else { "DIFFER" },
            o.seconds
        );
    }
    println!(
        "\nloss = held-out MSE (mean over workers); bytes are the exact encoded payloads each\n\
         worker sent (ddp/this: how many times fewer than DDP's); replicas = whether every\n\
         worker held bit-identical parameters after every exchange (for Streaming DiLoCo,\n\
         which keeps fragments local between syncs, its global copy)."
    );
    if outcomes.iter().any(|o| !o.replicas_identical) {
        bail!("replicas diverged");
    }
    Ok(())
}
