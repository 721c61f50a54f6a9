//! The bytes/loss frontier of a run: what each algorithm sent and received per worker,
//! against what a bf16 ring all-reduce DDP of the same run would have moved (computed
//! from the run's size, never trained), and its final validation loss against DDP's
//! where DDP ran in the same invocation.
//!
//! The baseline is the one published low-communication results are quoted against
//! (DiLoCo, DisTrO, INTELLECT-1, SparseLoCo): data parallelism whose gradients, in bf16,
//! are summed by a ring all-reduce every inner step. In a ring of N workers each worker
//! sends, and receives, 2(N−1)/N of the gradient per step (a reduce-scatter and an
//! all-gather of N−1 segments of 1/N each), so per worker and per step it sends
//! 2(N−1)/N × 2 bytes × parameters, and receives as much.

use serde::{Deserialize, Serialize};

/// Bytes of one bf16 value.
const BF16_BYTES: f64 = 2.0;

/// What a bf16 ring all-reduce DDP of the same model, workers and inner steps would have
/// sent and received per worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DdpBaseline {
    /// How it is computed, for a reader of `summary.json`.
    pub formula: String,
    /// Parameters the gradient has.
    pub parameters: i64,
    /// Workers in the ring.
    pub workers: u32,
    /// Inner steps (one all-reduce each).
    pub steps: u64,
    /// Bytes each worker would send: 2(N−1)/N × 2 × parameters × steps.
    pub bytes_sent_per_worker: f64,
    /// Bytes each worker would receive: the same.
    pub bytes_received_per_worker: f64,
}

impl DdpBaseline {
    /// The baseline of a run of `parameters`, `workers` and `steps` inner steps. One
    /// worker (or none) has no ring: zero bytes.
    pub fn bf16_ring(parameters: i64, workers: u32, steps: u64) -> Self {
        let n = f64::from(workers.max(1));
        let per_step = 2.0 * (n - 1.0) / n * BF16_BYTES * parameters.max(0) as f64;
        let bytes = per_step * steps as f64;
        DdpBaseline {
            formula: "bf16 ring all-reduce every inner step: each worker sends and receives \
                      2(N-1)/N x 2 bytes x parameters per step"
                .into(),
            parameters,
            workers,
            steps,
            bytes_sent_per_worker: bytes,
            bytes_received_per_worker: bytes,
        }
    }

    /// Bytes each worker would send and receive, together.
    pub fn bytes_per_worker(&self) -> f64 {
        self.bytes_sent_per_worker + self.bytes_received_per_worker
    }
}

/// One algorithm's place on the frontier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Frontier {
    /// Bytes each worker sent and received, together (mean over workers).
    pub bytes_per_worker: f64,
    /// How many times fewer bytes (sent + received) than the bf16 ring DDP baseline:
    /// baseline / this. `None` when this algorithm moved no bytes (nothing to divide by).
    pub fewer_bytes_than_ddp_bf16: Option<f64>,
    /// (final validation loss − DDP's) / DDP's, a fraction (0.0282 is 2.82% worse), when
    /// DDP ran in the same invocation; `None` otherwise.
    pub val_loss_vs_ddp: Option<f64>,
}

impl Frontier {
    /// The frontier of an algorithm that sent `sent` and received `received` bytes per
    /// worker and ended at validation loss `val`, against `baseline` and, when DDP ran
    /// beside it, DDP's final validation loss `ddp_val`.
    pub fn new(
        baseline: &DdpBaseline,
        sent: f64,
        received: f64,
        val: f64,
        ddp_val: Option<f64>,
    ) -> Self {
        let ours = sent + received;
        let fewer = (ours > 0.0).then(|| baseline.bytes_per_worker() / ours);
        // A loss that is not a number, or a zero one, gives no meaningful relative figure.
        let vs = ddp_val
            .filter(|d| d.is_finite() && *d != 0.0 && val.is_finite())
            .map(|d| (val - d) / d);
        Frontier { bytes_per_worker: ours, fewer_bytes_than_ddp_bf16: fewer, val_loss_vs_ddp: vs }
    }
}

/// A row of a summary that carries the frontier: an algorithm's name, final loss and
/// bytes per worker, and where its [`Frontier`] goes.
pub trait FrontierRow {
    /// The algorithm's name (`ddp` marks the baseline loss).
    fn algorithm(&self) -> &str;
    /// Its final validation loss.
    fn final_val_loss(&self) -> f64;
    /// Bytes sent and received per worker.
    fn bytes_per_worker(&self) -> (f64, f64);
    /// Where the frontier goes.
    fn frontier_mut(&mut self) -> &mut Frontier;
}

/// Implements [`FrontierRow`] for a summary row with fields `algorithm`, `final_val_loss`,
/// `bytes_sent_per_worker`, `bytes_received_per_worker` and `frontier`.
macro_rules! frontier_row {
    ($row:ty) => {
        impl $crate::report::frontier::FrontierRow for $row {
            fn algorithm(&self) -> &str {
                &self.algorithm
            }
            fn final_val_loss(&self) -> f64 {
                self.final_val_loss
            }
            fn bytes_per_worker(&self) -> (f64, f64) {
                (self.bytes_sent_per_worker, self.bytes_received_per_worker)
            }
            fn frontier_mut(&mut self) -> &mut $crate::report::frontier::Frontier {
                &mut self.frontier
            }
        }
    };
}
pub(crate) use frontier_row;

/// Fills every row's frontier from `baseline` and DDP's final loss (if a row is DDP's).
pub fn fill<R: FrontierRow>(baseline: &DdpBaseline, rows: &mut [R]) {
    let ddp = ddp_loss(rows.iter().map(|r| (r.algorithm(), r.final_val_loss())));
    for r in rows {
        let (sent, received) = r.bytes_per_worker();
        *r.frontier_mut() = Frontier::new(baseline, sent, received, r.final_val_loss(), ddp);
    }
}

/// DDP's final validation loss among `(algorithm, final validation loss)`, if DDP ran.
pub fn ddp_loss<'a>(algos: impl IntoIterator<Item = (&'a str, f64)>) -> Option<f64> {
    algos.into_iter().find(|(name, _)| *name == "ddp").map(|(_, v)| v)
}

/// A ratio for a table: `1473x`, `11.2x`, `0.50x`; `n/a` without one.
pub fn show_ratio(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) if r >= 100.0 => format!("{r:.0}x"),
        Some(r) if r >= 10.0 => format!("{r:.1}x"),
        Some(r) => format!("{r:.2}x"),
        None => "n/a".into(),
    }
}

/// A relative difference for a table: `+4.96%`; `n/a` without one.
pub fn show_relative(rel: Option<f64>) -> String {
    match rel {
        Some(r) => format!("{:+.2}%", r * 100.0),
        None => "n/a".into(),
    }
}

/// Bytes for a table, in decimal units: `584.8 kB`, `76.6 MB`, `1.23 GB`.
pub fn show_bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

/// The line under a table that states the baseline.
pub fn baseline_line(b: &DdpBaseline) -> String {
    format!(
        "bf16 ring DDP (computed, not trained): {} sent + {} received per worker \
         = 2({n}-1)/{n} x 2 B x {} parameters x {} steps, each way.",
        show_bytes(b.bytes_sent_per_worker),
        show_bytes(b.bytes_received_per_worker),
        b.parameters,
        b.steps,
        n = b.workers,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_is_the_ring_formula() {
        // The run: 4 workers, 300 steps; 2·3/4·2 = 3 bytes per parameter per step.
        let b = DdpBaseline::bf16_ring(478_848, 4, 300);
        assert_eq!(b.bytes_sent_per_worker, 3.0 * 478_848.0 * 300.0);
        assert_eq!(b.bytes_received_per_worker, b.bytes_sent_per_worker);
        assert_eq!(b.bytes_per_worker(), 2.0 * 3.0 * 478_848.0 * 300.0);
        // Two workers: each sends the whole gradient once, in bf16.
        assert_eq!(DdpBaseline::bf16_ring(10, 2, 7).bytes_sent_per_worker, 2.0 * 10.0 * 7.0);
        // One worker has no ring.
        assert_eq!(DdpBaseline::bf16_ring(10, 1, 7).bytes_per_worker(), 0.0);
    }

    #[test]
    fn the_ratio_counts_sent_and_received_and_the_loss_is_relative_to_ddp() {
        let b = DdpBaseline::bf16_ring(1000, 4, 100); // 300 kB each way
        let f = Frontier::new(&b, 100.0, 300.0, 2.2, Some(2.0));
        assert_eq!(f.bytes_per_worker, 400.0);
        assert_eq!(f.fewer_bytes_than_ddp_bf16, Some(600_000.0 / 400.0));
        let rel = f.val_loss_vs_ddp.unwrap_or(f64::NAN);
        assert!((rel - 0.1).abs() < 1e-12, "{rel}");
        let alone = Frontier::new(&b, 0.0, 0.0, 2.2, None);
        assert_eq!((alone.fewer_bytes_than_ddp_bf16, alone.val_loss_vs_ddp), (None, None));
        assert_eq!(Frontier::new(&b, 1.0, 0.0, 2.2, Some(f64::NAN)).val_loss_vs_ddp, None);
    }

    #[test]
    fn table_cells() {
        assert_eq!(show_ratio(Some(1473.2)), "1473x");
        assert_eq!(show_ratio(Some(11.24)), "11.2x");
        assert_eq!(show_ratio(Some(0.5)), "0.50x");
        assert_eq!(show_ratio(None), "n/a");
        assert_eq!(show_relative(Some(0.0496)), "+4.96%");
        assert_eq!(show_relative(Some(-0.01)), "-1.00%");
        assert_eq!(show_relative(None), "n/a");
        assert_eq!(show_bytes(584_800.0), "584.8 kB");
        assert_eq!(show_bytes(861.7e6), "861.7 MB");
        assert_eq!(
            ddp_loss([("diloco", 2.4), ("ddp", 2.3), ("demo", 2.35)]),
            Some(2.3),
            "DDP's loss, wherever it ran"
        );
        assert_eq!(ddp_loss([("diloco", 2.4)]), None);
    }
}
