//! What `meridian simulate` writes and prints: `summary.json` (deterministic for a seed
//! unless compute is measured: no wall-clock figure goes in it), the table, the plots.

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::atomic_write;
use crate::report::frontier::{self, DdpBaseline, Frontier};
use crate::report::plot::{write_loss_plot, Curve, CurvePoint, XAxis};

/// One algorithm over the simulated network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimAlgo {
    /// Algorithm name.
    pub algorithm: String,
    /// Its settings.
    pub settings: serde_json::Value,
    /// Validation loss (nats per token) before training.
    pub initial_val_loss: f64,
    /// Validation loss of the synchronized model after the last round evaluated (the last
    /// point of `curve`): what every replica held, not one worker's mid-round copy.
    pub final_val_loss: f64,
    /// Mean training loss over the last 5% of steps (mean over workers).
    pub final_train_loss: f64,
    /// Rounds each worker applied (worker 0).
    pub rounds: u64,
    /// Payload bytes each worker put on its links (mean over workers): relay, its upload;
    /// all-gather, a copy per peer; ring, its segments (2(N-1)/N of a payload per round).
    pub bytes_sent_per_worker: f64,
    /// Payload bytes each worker took off its links (mean over workers).
    pub bytes_received_per_worker: f64,
    /// Sent + received per worker against the run's bf16 ring DDP baseline, and the final
    /// validation loss against DDP's where DDP ran too.
    #[serde(default)]
    pub frontier: Frontier,
    /// Bytes the simulated network carried for this run, all links together (QUIC
    /// packets with their headers, acknowledgements and retransmissions, relayed copies).
    pub wire_bytes: u64,
    /// Simulated seconds until the last worker finished.
    pub simulated_seconds: f64,
    /// Compute time over total time, mean over workers (1.0: never waited for the network).
    pub compute_utilization: f64,
    /// Simulated seconds until the validation loss first reached the run's target, if it did.
    pub seconds_to_target: Option<f64>,
    /// Whether every worker ended with the same consensus hash.
    pub replicas_identical: bool,
    /// Rounds the coordinator committed.
    pub rounds_committed: u64,
    /// `None` when every worker applied exactly the committed rounds, each once, with the
    /// committed members' payloads; otherwise what went wrong.
    pub commit_error: Option<String>,
    /// The process's resident-memory high-water mark while this algorithm ran, in bytes
    /// (synthetic runs, where Linux reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// What failed and recovered during the run.
    pub faults: FaultTally,
    /// Per worker: (region, simulated seconds to finish, compute seconds, hash as hex).
    pub workers: Vec<SimWorker>,
    /// Validation loss of the synchronized model (worker 0's parameters right after a
    /// round; Streaming DiLoCo's global copy) against steps, bytes and simulated seconds:
    /// before training, at the round that closes at or first after each evaluation point,
    /// and after the last round.
    pub curve: Vec<CurvePoint>,
    /// Validation loss of worker 0's own parameters at every evaluation point: mid-round
    /// for the algorithms that sync every H steps, so not a model the replicas agree on;
    /// for DDP and DeMo the same as `curve`.
    #[serde(default)]
    pub local_curve: Vec<CurvePoint>,
}

frontier::frontier_row!(SimAlgo);

/// What failed and recovered during one run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultTally {
    /// Member connections the coordinator saw close or time out.
    pub workers_lost: u64,
    /// Admissions of a worker admitted before (restarted, or reconnecting).
    pub workers_rejoined: u64,
    /// Worker processes killed and restarted.
    pub worker_restarts: u64,
    /// Coordinator processes killed and restarted.
    pub coordinator_restarts: u64,
    /// Frames, connections and payloads refused by the coordinator, plus payloads the
    /// workers' outer optimizers rejected (every replica rejects the same: counted once).
    pub payloads_rejected: u64,
}

/// One row of `meridian simulate --chaos`: a scenario against the clean run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChaosRow {
    /// The scenario.
    pub scenario: String,
    /// What it did.
    pub description: String,
    /// The algorithm.
    pub algorithm: String,
    /// Rounds committed.
    pub rounds: u64,
    /// What failed and recovered.
    pub faults: FaultTally,
    /// Final validation loss.
    pub final_val_loss: f64,
    /// The clean run's.
    pub clean_final_val_loss: f64,
    /// (final - clean) / clean.
    pub loss_vs_clean: f64,
    /// loss_vs_clean <= [`LOSS_MARGIN`] (a lower loss, say with a worker more, is fine).
    pub within_margin: bool,
    /// Every live worker held identical parameters after every round it applied.
    pub replicas_identical: bool,
    /// No payload applied twice or lost from a committed round.
    pub commits_consistent: bool,
    /// Simulated seconds.
    pub simulated_seconds: f64,
    /// The clean run's.
    pub clean_simulated_seconds: f64,
}

/// How much higher a faulted run's final validation loss may be than the clean run's,
/// relative: faults cost time and, where a worker misses rounds, a little of its data.
pub const LOSS_MARGIN: f64 = 0.02;

impl ChaosRow {
    /// `run` (scenario `scenario`) against `clean`, the same algorithm without faults.
    pub fn new(scenario: &str, description: &str, run: &SimAlgo, clean: &SimAlgo) -> Self {
        let rel = (run.final_val_loss - clean.final_val_loss) / clean.final_val_loss;
        ChaosRow {
            scenario: scenario.to_string(),
            description: description.to_string(),
            algorithm: run.algorithm.clone(),
            rounds: run.rounds_committed,
            faults: run.faults.clone(),
            final_val_loss: run.final_val_loss,
            clean_final_val_loss: clean.final_val_loss,
            loss_vs_clean: rel,
            within_margin: rel <= LOSS_MARGIN,
            replicas_identical: run.replicas_identical,
            commits_consistent: run.commit_error.is_none(),
            simulated_seconds: run.simulated_seconds,
            clean_simulated_seconds: clean.simulated_seconds,
        }
    }

    /// Prints `rows` as a table.
    pub fn print_table(rows: &[ChaosRow]) {
        println!(
            "{:<20} {:<10} {:>6} {:>5} {:>8} {:>8} {:>8} {:>9} {:>10} {:>9} {:>8} {:>8}",
            "scenario",
            "algorithm",
            "rounds",
            "lost",
            "rejoined",
            "rejected",
            "val",
            "vs clean",
            "sim time",
            "delay",
            "replicas",
            "commits"
        );
        for r in rows {
            println!(
                "{:<20} {:<10} {:>6} {:>5} {:>8} {:>8} {:>8.4} {:>+8.2}% {:>10} {:>9} {:>8} {:>8}",
                r.scenario,
                r.algorithm,
                r.rounds,
                r.faults.workers_lost,
                r.faults.workers_rejoined,
                r.faults.payloads_rejected,
                r.final_val_loss,
                r.loss_vs_clean * 100.0,
                seconds(r.simulated_seconds),
                format!("+{}", seconds((r.simulated_seconds - r.clean_simulated_seconds).max(0.0))),
                if r.replicas_identical { "same" } else { "DIFFER" },
                if r.commits_consistent { "exact" } else { "BROKEN" },
            );
        }
        let off: Vec<String> = rows
            .iter()
            .filter(|r| !r.within_margin)
            .map(|r| format!("{} ({})", r.scenario, r.algorithm))
            .collect();
        println!(
            "\nrounds = rounds committed; lost / rejoined = worker connections the coordinator\n\
             lost and workers it admitted again; rejected = frames, connections and payloads\n\
             refused; val = final validation loss, vs clean = against the same run without\n\
             faults (margin: at most {:.0}% higher{}); delay = simulated time the faults cost;\n\
             replicas = every worker held identical parameters after every round; commits = every worker\n\
             applied each committed round once, with exactly the committed payloads.",
            LOSS_MARGIN * 100.0,
            if off.is_empty() { String::new() } else { format!("; outside: {}", off.join(", ")) }
        );
    }
}

/// One worker's totals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimWorker {
    /// Member id.
    pub member: u32,
    /// Region it ran in.
    pub region: String,
    /// Simulated seconds until it finished its steps.
    pub finished_seconds: f64,
    /// Simulated seconds it spent computing.
    pub compute_seconds: f64,
    /// Payload bytes it sent.
    pub bytes_sent: u64,
    /// Its consensus hash right after the last round it applied (hex; empty if none).
    pub hash: String,
}

/// The whole simulated run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimSummary {
    /// The preset or topology file.
    pub network: String,
    /// One line per link of the topology.
    pub links: Vec<String>,
    /// The network fault the run was put through (`--chaos`), if any.
    pub chaos: Option<String>,
    /// Workers.
    pub workers: u32,
    /// Inner steps per worker.
    pub steps: u64,
    /// Seed of the model, the data and the network.
    pub seed: u64,
    /// How compute time was charged.
    pub compute: String,
    /// Whether the same seed reproduces this file byte for byte.
    pub deterministic: bool,
    /// The model's description.
    pub model: String,
    /// Its parameter count.
    pub parameters: i64,
    /// Where the workers trained: `cpu` or `cuda:N`.
    #[serde(default)]
    pub device: String,
    /// How payloads travelled (relay, all-gather).
    pub route: String,
    /// The validation loss `seconds_to_target` refers to.
    pub target_loss: f64,
    /// What a bf16 ring all-reduce DDP of this model, workers and steps would send and
    /// receive per worker (computed): the reference of every algorithm's `frontier`.
    #[serde(default)]
    pub ddp_bf16_ring: DdpBaseline,
    /// One entry per algorithm, in the order run.
    pub algorithms: Vec<SimAlgo>,
    /// `--model synthetic`: what its workers do not do (train, apply updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<String>,
    /// Whether regions compute at different speeds (`--speed`, a topology's `speed` or
    /// `speed_jitter`): the table then adds each region's compute utilization.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uneven_compute: bool,
}

impl SimSummary {
    /// The target: the lowest loss every algorithm reached.
    pub fn common_target(algos: &[SimAlgo]) -> f64 {
        algos
            .iter()
            .map(|a| a.curve.iter().map(|p| p.val_loss).fold(f64::INFINITY, f64::min))
            .fold(f64::NEG_INFINITY, f64::max)
    }

    /// Fills each algorithm's `seconds_to_target` for `target`.
    pub fn set_target(&mut self, target: f64) {
        self.target_loss = target;
        for a in &mut self.algorithms {
            a.seconds_to_target = a.curve.iter().find(|p| p.val_loss <= target).map(|p| p.seconds);
        }
    }

    /// Fills every algorithm's `frontier` from the baseline and DDP's final loss.
    pub fn set_frontier(&mut self) {
        frontier::fill(&self.ddp_bf16_ring, &mut self.algorithms);
    }

    /// Writes `summary.json` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        atomic_write::write(path, text.as_bytes())
    }

    /// The plots: validation loss against simulated seconds and against bytes.
    pub fn plot(&self, dir: &Path) -> Vec<PathBuf> {
        let curves: Vec<Curve> = self
            .algorithms
            .iter()
            .map(|a| Curve { label: a.algorithm.clone(), points: a.curve.clone() })
            .collect();
        let mut written = Vec::new();
        for (stem, title, x) in [
            (
                "val_loss_vs_time",
                "Validation loss of the synchronized model against simulated time",
                XAxis::SimulatedSeconds,
            ),
            (
                "val_loss_vs_bytes",
                "Validation loss of the synchronized model against bytes sent per worker",
                XAxis::BytesPerWorker,
            ),
        ] {
            match write_loss_plot(dir, stem, title, x, &curves) {
                Ok(paths) => written.extend(paths),
                Err(e) => tracing::warn!("{stem} not plotted: {e:#}"),
            }
        }
        written
    }

    /// The table.
    pub fn print_table(&self) {
        let peaks = self.algorithms.iter().any(|a| a.peak_memory_bytes.is_some());
        println!(
            "{:<11} {:>8} {:>8} {:>11} {:>11} {:>9} {:>10} {:>8} {:>11} {:>9}{}",
            "algorithm",
            "val",
            "vs DDP",
            "sent",
            "received",
            "x fewer",
            "sim time",
            "compute",
            "to target",
            "replicas",
            if peaks { format!(" {:>10}", "peak mem") } else { String::new() },
        );
        for a in &self.algorithms {
            let to_target = match a.seconds_to_target {
                Some(s) => seconds(s),
                None => "-".into(),
            };
            let peak = match (peaks, a.peak_memory_bytes) {
                (false, _) => String::new(),
                (true, Some(b)) => format!(" {:>6.2} GiB", b as f64 / f64::from(1u32 << 30)),
                (true, None) => format!(" {:>10}", "n/a"),
            };
            println!(
                "{:<11} {:>8} {:>8} {:>11} {:>11} {:>9} {:>10} {:>7.1}% {:>11} {:>9}{peak}",
                a.algorithm,
                loss(a.final_val_loss),
                frontier::show_relative(a.frontier.val_loss_vs_ddp),
                frontier::show_bytes(a.bytes_sent_per_worker),
                frontier::show_bytes(a.bytes_received_per_worker),
                frontier::show_ratio(a.frontier.fewer_bytes_than_ddp_bf16),
                seconds(a.simulated_seconds),
                a.compute_utilization * 100.0,
                to_target,
                if a.replicas_identical { "identical" } else { "DIFFER" },
            );
        }
        println!(
            "\nval = validation cross-entropy (nats per token) of the synchronized model, right\n\
             after the last round; vs DDP = against DDP's val in this run (n/a without DDP);\n\
             sent / received = payload bytes each worker put on and took off its links;\n\
             x fewer = how many times fewer bytes (sent + received) than a bf16 ring DDP;\n\
             sim time = simulated wall-clock until the last worker finished;\n\
             compute = time computing over total time (mean over workers);\n\
             to target = simulated time until the validation loss first reached {}\n\
             (the lowest every algorithm reached, unless --target-loss);\n\
             replicas = every worker held identical parameters after every round.\n{}",
            loss(self.target_loss),
            frontier::baseline_line(&self.ddp_bf16_ring)
        );
        if let Some(note) = &self.synthetic {
            println!("{note}");
        }
        if self.uneven_compute {
            println!("compute by region (regions compute at different speeds):");
            for a in &self.algorithms {
                let regions: Vec<String> = a
                    .region_utilization()
                    .iter()
                    .map(|(r, u)| format!("{r} {:.1}%", u * 100.0))
                    .collect();
                println!("  {:<11} {}", a.algorithm, regions.join(", "));
            }
        }
    }
}

impl SimAlgo {
    /// Each region's compute utilization (its workers' compute over their time to
    /// finish, mean over them), in the order the regions first appear among the workers.
    pub fn region_utilization(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64, f64)> = Vec::new();
        for w in &self.workers {
            let u =
                if w.finished_seconds > 0.0 { w.compute_seconds / w.finished_seconds } else { 0.0 };
            match out.iter_mut().find(|(r, ..)| *r == w.region) {
                Some((_, sum, n)) => {
                    *sum += u;
                    *n += 1.0;
                }
                None => out.push((w.region.clone(), u, 1.0)),
            }
        }
        out.into_iter().map(|(r, sum, n)| (r, sum / n)).collect()
    }
}

/// Seconds as a short human string.
/// A loss to 4 decimals, or `n/a` where there is none (a synthetic run trains nothing).
fn loss(l: f64) -> String {
    if l.is_finite() {
        format!("{l:.4}")
    } else {
        "n/a".into()
    }
}

fn seconds(s: f64) -> String {
    if s >= 3600.0 {
        format!("{:.2} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}
