//! `summary.json`: what a `meridian train` run did, per algorithm, and the table printed
//! at its end.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

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
    /// Validation loss of worker 0's parameters after the last step.
    pub final_val_loss: f64,
    /// Outer rounds (exchanges).
    pub rounds: u64,
    /// Exact encoded payload bytes each worker sent (mean over workers).
    pub bytes_sent_per_worker: f64,
    /// Bytes each worker received (all-gather; mean over workers).
    pub bytes_received_per_worker: f64,
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
    /// Validation loss over the run.
    pub curve: Vec<CurvePoint>,
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
    /// One entry per algorithm, in the order run.
    pub algorithms: Vec<AlgoSummary>,
}

impl Summary {
    /// Writes the summary as pretty JSON, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Prints one line per algorithm.
    pub fn print_table(&self) {
        let ddp =
            self.algorithms.iter().find(|a| a.algorithm == "ddp").map(|a| a.bytes_sent_per_worker);
        println!(
            "{:<11} {:>7} {:>7} {:>7} {:>7} {:>13} {:>9} {:>9} {:>7}",
            "algorithm",
            "val@0",
            "val",
            "train",
            "rounds",
            "MB/worker",
            "ddp/this",
            "replicas",
            "secs"
        );
        for a in &self.algorithms {
            let vs_ddp = match ddp {
                Some(d) if a.bytes_sent_per_worker > 0.0 => {
                    format!("{:.0}x", d / a.bytes_sent_per_worker)
                }
                _ => "-".into(),
            };
            println!(
                "{:<11} {:>7.4} {:>7.4} {:>7.4} {:>7} {:>13.3} {:>9} {:>9} {:>7.1}",
                a.algorithm,
                a.initial_val_loss,
                a.final_val_loss,
                a.final_train_loss,
                a.rounds,
                a.bytes_sent_per_worker / 1e6,
                vs_ddp,
                if a.replicas_identical { "identical" } else { "DIFFER" },
                a.wall_seconds
            );
        }
        println!(
            "\nval/train = cross-entropy in nats per token (held-out windows, worker 0's parameters;\n\
             training: mean over workers, last 5% of steps); MB/worker = exact encoded payload bytes\n\
             each worker sent (ddp/this: how many times fewer than DDP); replicas = whether every\n\
             worker held bit-identical parameters after every exchange."
        );
    }
}
