//! Per-round metrics of an in-process run: bytes sent and received per peer, round
//! latency, compute against waiting time, and who straggled.
//!
//! The harness runs the workers one after another, so each worker's compute time is
//! measured on its own; a round's latency is then modelled as if they had run in parallel:
//! the slowest worker's compute since the previous round plus the exchange itself. A
//! worker's waiting time is that latency minus its own compute. Every payload is
//! all-gathered: a worker sends its payload once and receives every other worker's.

use serde::{Deserialize, Serialize};

/// One round, as logged and written to `rounds-ALGO.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundRecord {
    /// Round number.
    pub round: u64,
    /// Inner step after which it closed.
    pub step: u64,
    /// Bytes each worker sent.
    pub sent: Vec<u64>,
    /// Bytes each worker received.
    pub received: Vec<u64>,
    /// Each worker's compute seconds since the previous round.
    pub compute_seconds: Vec<f64>,
    /// Modelled round latency in seconds (slowest compute plus the exchange).
    pub latency_seconds: f64,
    /// The worker with the most compute this round.
    pub straggler: u32,
}

/// Totals over a run, per worker and overall; part of `summary.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RoundTotals {
    /// Rounds closed.
    pub rounds: u64,
    /// Bytes each worker sent in total.
    pub sent: Vec<u64>,
    /// Bytes each worker received in total.
    pub received: Vec<u64>,
    /// Each worker's compute seconds in total.
    pub compute_seconds: Vec<f64>,
    /// Each worker's waiting seconds in total (latency minus own compute, summed).
    pub waiting_seconds: Vec<f64>,
    /// How many rounds each worker was the straggler.
    pub straggled: Vec<u64>,
    /// Mean modelled round latency, seconds.
    pub mean_latency_seconds: f64,
    /// Largest modelled round latency, seconds.
    pub max_latency_seconds: f64,
}

/// Accumulates compute between rounds and turns each exchange into a [`RoundRecord`].
#[derive(Debug, Clone)]
pub struct RoundMeter {
    pending: Vec<f64>,
    totals: RoundTotals,
    latency_sum: f64,
}

impl RoundMeter {
    /// A meter for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            pending: vec![0.0; workers],
            totals: RoundTotals {
                sent: vec![0; workers],
                received: vec![0; workers],
                compute_seconds: vec![0.0; workers],
                waiting_seconds: vec![0.0; workers],
                straggled: vec![0; workers],
                ..RoundTotals::default()
            },
            latency_sum: 0.0,
        }
    }

    /// A meter continuing from `totals` (a resumed run).
    pub fn resume(totals: RoundTotals) -> Self {
        let latency_sum = totals.mean_latency_seconds * totals.rounds as f64;
        Self { pending: vec![0.0; totals.sent.len()], totals, latency_sum }
    }

    /// Adds one step's compute seconds per worker.
    pub fn add_compute(&mut self, seconds: &[f64]) {
        for (p, s) in self.pending.iter_mut().zip(seconds) {
            *p += s;
        }
    }

    /// Closes a round in which worker i sent `sent[i]` bytes and the exchange itself took
    /// `exchange_seconds`.
    pub fn close(
        &mut self,
        round: u64,
        step: u64,
        sent: &[usize],
        exchange_seconds: f64,
    ) -> RoundRecord {
        let total: u64 = sent.iter().map(|&b| b as u64).sum();
        let sent: Vec<u64> = sent.iter().map(|&b| b as u64).collect();
        let received: Vec<u64> = sent.iter().map(|&b| total - b).collect();
        let compute = std::mem::replace(&mut self.pending, vec![0.0; sent.len()]);
        let (straggler, slowest) = compute
            .iter()
            .copied()
            .enumerate()
            .fold((0, 0.0f64), |best, (i, c)| if c > best.1 { (i, c) } else { best });
        let latency = slowest + exchange_seconds;
        let t = &mut self.totals;
        t.rounds += 1;
        for i in 0..sent.len() {
            t.sent[i] += sent[i];
            t.received[i] += received[i];
            t.compute_seconds[i] += compute[i];
            t.waiting_seconds[i] += latency - compute[i];
        }
        t.straggled[straggler] += 1;
        t.max_latency_seconds = t.max_latency_seconds.max(latency);
        self.latency_sum += latency;
        t.mean_latency_seconds = self.latency_sum / t.rounds as f64;
        RoundRecord {
            round,
            step,
            sent,
            received,
            compute_seconds: compute,
            latency_seconds: latency,
            straggler: straggler as u32,
        }
    }

    /// The totals so far.
    pub fn totals(&self) -> &RoundTotals {
        &self.totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_waiting_and_straggler_follow_the_slowest_worker() {
        let mut m = RoundMeter::new(3);
        m.add_compute(&[1.0, 2.0, 0.5]);
        m.add_compute(&[1.0, 1.0, 0.5]);
        let r = m.close(0, 1, &[10, 20, 30], 0.5);
        assert_eq!(r.straggler, 1);
        assert_eq!(r.latency_seconds, 3.5);
        assert_eq!(r.received, vec![50, 40, 30]);
        assert_eq!(m.totals().waiting_seconds, vec![1.5, 0.5, 2.5]);
        m.add_compute(&[3.0, 0.0, 0.0]);
        let r = m.close(1, 2, &[1, 1, 1], 0.0);
        assert_eq!((r.straggler, r.compute_seconds[1]), (0, 0.0), "compute resets per round");
        assert_eq!(m.totals().straggled, vec![1, 1, 0]);
        assert_eq!(m.totals().sent, vec![11, 21, 31]);
        assert_eq!(m.totals().mean_latency_seconds, 3.25);
    }
}
