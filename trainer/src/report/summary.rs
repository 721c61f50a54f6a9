//! `summary.json`: what a `meridian train` run did, per algorithm, and the table printed
//! at its end.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::frontier::{self, DdpBaseline, Frontier};
use crate::report::metrics::RoundTotals;
use crate::report::plot::CurvePoint;
use crate::step::adamw::InnerConfig;

/// The data a run trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Path of the data.
    pub source: String,
    /// Tokens in it.
    pub tokens: u64,
    /// Tokens in the training blocks.
    pub train_tokens: u64,
    /// Tokens held out for validation.
    pub val_tokens: u64,
    /// Vocabulary size.
    pub vocab: u32,
}

/// One algorithm's run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlgoSummary {
    /// Algorithm name.
    pub algorithm: String,
    /// Its settings.
    pub settings: serde_json::Value,
    /// Validation loss (nats per token) before training.
    pub initial_val_loss: f64,
    /// Mean training loss over the last 5% of steps (mean over workers).
    pub final_train_loss: f64,
    /// Validation loss of the synchronized model after the last round evaluated (the last
    /// point of `curve`): what every replica held, not one worker's mid-round copy.
    pub final_val_loss: f64,
    /// Outer rounds (exchanges).
    pub rounds: u64,
    /// Exact encoded payload bytes each worker sent (mean over workers).
    pub bytes_sent_per_worker: f64,
    /// Bytes each worker received (all-gather; mean over workers).
    pub bytes_received_per_worker: f64,
    /// Sent + received per worker against the run's bf16 ring DDP baseline, and the final
    /// validation loss against DDP's where DDP ran too.
    #[serde(default)]
    pub frontier: Frontier,
    /// Training tokens processed by all workers together.
    pub tokens: u64,
    /// Training tokens processed by each worker.
    pub tokens_per_worker: u64,
    /// Wall-clock seconds of training (all workers in one process).
    pub wall_seconds: f64,
    /// Whether every worker held bit-identical parameters after every exchange (for
    /// Streaming DiLoCo, its global copy).
    pub replicas_identical: bool,
    /// The step this run was resumed from, if it was.
    pub resumed_from_step: Option<u64>,
    /// Per-worker round metrics.
    pub round_totals: RoundTotals,
    /// Validation loss of the synchronized model (every replica's parameters right after
    /// a round; Streaming DiLoCo's global copy): before training, at the round that closes
    /// at or first after each evaluation point, and after the last round.
    pub curve: Vec<CurvePoint>,
    /// Validation loss of worker 0's own parameters at every evaluation point: mid-round
    /// for the algorithms that sync every H steps (DiLoCo, SparseLoCo, Streaming DiLoCo),
    /// so not a model the replicas agree on; for DDP and DeMo the same as `curve`.
    #[serde(default)]
    pub local_curve: Vec<CurvePoint>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The model's description.
    pub model: String,
    /// Its parameter count.
    pub parameters: i64,
    /// Where it trained: `cpu` or `cuda:N`.
    #[serde(default)]
    pub device: String,
    /// The data.
    pub data: DataSummary,
    /// Workers.
    pub workers: u32,
    /// Inner steps per worker.
    pub steps: u64,
    /// Seed.
    pub seed: u64,
    /// Windows per batch.
    pub batch: u64,
    /// Tokens per window.
    pub context: u64,
    /// Inner optimizer settings.
    pub inner: InnerConfig,
    /// What a bf16 ring all-reduce DDP of this model, workers and steps would send and
    /// receive per worker (computed): the reference of every algorithm's `frontier`.
    #[serde(default)]
    pub ddp_bf16_ring: DdpBaseline,
    /// One entry per algorithm, in the order run.
    pub algorithms: Vec<AlgoSummary>,
}

frontier::frontier_row!(AlgoSummary);

impl Summary {
    /// Writes the summary as pretty JSON, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Fills every algorithm's `frontier` from the baseline and DDP's final loss.
    pub fn set_frontier(&mut self) {
        frontier::fill(&self.ddp_bf16_ring, &mut self.algorithms);
    }

    /// Prints one line per algorithm.
    pub fn print_table(&self) {
        println!(
            "{:<11} {:>7} {:>7} {:>8} {:>7} {:>7} {:>11} {:>11} {:>9} {:>9} {:>7}",
            "algorithm",
            "val@0",
            "val",
            "vs DDP",
            "train",
            "rounds",
            "sent",
            "received",
            "x fewer",
            "replicas",
            "secs"
        );
        for a in &self.algorithms {
            println!(
                "{:<11} {:>7.4} {:>7.4} {:>8} {:>7.4} {:>7} {:>11} {:>11} {:>9} {:>9} {:>7.1}",
                a.algorithm,
                a.initial_val_loss,
                a.final_val_loss,
                frontier::show_relative(a.frontier.val_loss_vs_ddp),
                a.final_train_loss,
                a.rounds,
                frontier::show_bytes(a.bytes_sent_per_worker),
                frontier::show_bytes(a.bytes_received_per_worker),
                frontier::show_ratio(a.frontier.fewer_bytes_than_ddp_bf16),
                if a.replicas_identical { "identical" } else { "DIFFER" },
                a.wall_seconds
            );
        }
        println!(
            "\nval = validation cross-entropy (nats per token, held-out windows) of the synchronized\n\
             model, right after the last round (val@0: before training); vs DDP = against DDP's val\n\
             in this run (n/a without DDP); train = training loss, mean over workers, last 5% of\n\
             steps; sent / received = exact encoded payload bytes per worker; x fewer = how many\n\
             times fewer bytes (sent + received) than a bf16 ring DDP of the same run; replicas =\n\
             whether every worker held bit-identical parameters after every exchange.\n{}",
            frontier::baseline_line(&self.ddp_bf16_ring)
        );
    }
}
