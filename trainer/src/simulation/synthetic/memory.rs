//! How much memory a synthetic run holds at once, checked before it runs, and how much it
//! held ([`peak_rss`]).
//!
//! One process holds every node of the run, so a round's payloads are held many times
//! over: each worker's fresh copy of its own, the coordinator's copy of each (relay) for
//! the rounds it keeps, and on every worker every member's payload for the rounds its
//! node keeps, plus the one it is decoding. Every other part is small beside them at
//! scale: the encoded payloads themselves, and the one tensor being encoded.
//!
//! The encoding happens before the run and its scratch is freed before the payload
//! copies pile up, so the peak is the larger of the two, not their sum.
//!
//! The limit is the memory available now ([`available_bytes`]), not the machine's total:
//! on a machine shared with other work a run sized to the total would be killed mid-run.
//! Against measured peaks (8 workers, cross-continent: SparseLoCo at 10^8 and 10^9,
//! DiLoCo int8 at 2·10^7 and 8·10^7 parameters; on the ring, DiLoCo int8 at 10^8 and
//! 4·10^8) the estimate is within 5 %.

use anyhow::{bail, Result};

use super::worker::KEEP_ROUNDS;
use crate::cli::args::RouteArg;

/// Bytes of everything that does not grow with the model: LibTorch, the runtime, QUIC
/// (a peak of 0.80 GiB at 10^8 SparseLoCo parameters, 0.59 GiB of it payload copies).
pub const BASE_BYTES: f64 = 256e6;

/// Bytes per element of the tensor being encoded: its values, the tensor, its gradient,
/// the optimizer's global copy and buffer, the pseudo-gradient and the encoder's scratch.
pub const ENCODE_BYTES_PER_ELEMENT: f64 = 32.0;

/// What the run holds, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// The route it was made for (what the copies are).
    pub route: RouteArg,
    /// Copies of the largest payload held at once.
    pub copies: f64,
    /// The part that does not grow with the model: the base.
    pub fixed: f64,
    /// The total, in bytes.
    pub bytes: f64,
}

/// The memory a run of `workers` on `route` holds, with payloads of `largest` bytes at
/// most, `total` bytes of encoded payloads, `largest_tensor` elements to encode and a
/// model of `parameters`.
///
/// On the ring no worker holds another's payload: each holds its own (published, and kept
/// for a fallback to relay), its split segments, the finished segments, the joined
/// aggregate and the aggregates of the rounds kept, each about a payload; and one worker at
/// a time splits its payload through the dense values (4 bytes a parameter). Measured
/// peaks (8 workers, DiLoCo int8): 5.98 GiB at 10^8 parameters over four rounds (this
/// estimate: 6.0), 22.35 GiB at 4·10^8 over three (23.3).
pub fn estimate(
    workers: usize,
    route: RouteArg,
    largest: f64,
    total: f64,
    largest_tensor: usize,
    parameters: u64,
) -> Estimate {
    let n = workers as f64;
    // Rounds kept, plus the one open.
    let kept = KEEP_ROUNDS as f64 + 1.0;
    let (copies, dense) = match route {
        // Sent copy + every member's payload on every worker + the coordinator's + the one
        // being decoded.
        RouteArg::Relay => (n + n * n * kept + n * kept + n, 0.0),
        RouteArg::AllGather => (n + n * n * kept + n, 0.0),
        RouteArg::Ring => (n * (4.0 + kept), 4.0 * parameters as f64),
    };
    let encoding = largest_tensor as f64 * ENCODE_BYTES_PER_ELEMENT;
    let bytes = BASE_BYTES + total + (copies * largest + dense).max(encoding);
    Estimate { route, copies, fixed: BASE_BYTES, bytes }
}

/// Refuses a run whose [`estimate`] exceeds `memory` bytes: the error names `--params`,
/// the limit and the largest `--params` that fits (payloads grow linearly with it).
pub fn check(
    params: u64,
    algo: &str,
    workers: usize,
    estimate: Estimate,
    largest: f64,
    memory: f64,
) -> Result<()> {
    if estimate.bytes <= memory {
        return Ok(());
    }
    // Payloads grow with the parameters; the fixed part does not.
    let per_param = (estimate.bytes - estimate.fixed) / params as f64;
    let most = ((memory - estimate.fixed) / per_param).max(0.0);
    let (copies, instead) = match estimate.route {
        RouteArg::Ring => (
            format!(
                "every worker's own, published and kept for a fallback, its ring segments \
                 split and finished, the joined aggregate and those of the {KEEP_ROUNDS} \
                 rounds kept and the round open, plus one dense split"
            ),
            "",
        ),
        _ => (
            format!(
                "every worker's own, every member's on every worker for the {KEEP_ROUNDS} \
                 rounds kept and the round open, the coordinator's"
            ),
            ", --route ring (a dense algorithm)",
        ),
    };
    bail!(
        "--params {:.3e}: {algo} with {workers} workers holds about {:.1} GiB at once in this one \
         process (its payload, {:.1} MB, held {:.0} times: {copies}), more than the {:.1} GiB \
         this machine has available; use at most --params {:.2e}, fewer --workers{instead}, or \
         a sparse algorithm (sparseloco, demo)",
        params as f64,
        estimate.bytes / GIB,
        largest / 1e6,
        estimate.copies,
        memory / GIB,
        most.floor(),
    )
}

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes this process can still take: the kernel's MemAvailable (free memory plus caches
/// it can drop), and under a cgroup v2 limit no more than the limit's headroom.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 =
        line["MemAvailable:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    let available = kib.checked_mul(1024)?;
    // `max` (no limit) does not parse, and leaves MemAvailable as the bound.
    let read = |f: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok()?.trim().parse().ok()
    };
    Some(match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(used)) => available.min(max.saturating_sub(used)),
        _ => available,
    })
}

/// The process's resident-set high-water mark in bytes (VmHWM), where Linux reports it.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line["VmHWM:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Resets the high-water mark to the current resident set, so the next [`peak_rss`]
/// measures from here (one algorithm's run). Returns whether the kernel allowed it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn a_run_too_large_is_refused_naming_params_and_the_size_that_fits() {
        // DiLoCo int8 at 1e9: a 1 GB payload held some 200 times.
        let e = estimate(8, RouteArg::Relay, 1e9, 1e9, 1 << 24, 1_000_000_000);
        let err = check(1_000_000_000, "diloco", 8, e, 1e9, 24.0 * GIB).unwrap_err().to_string();
        assert!(err.contains("--params 1.000e9") && err.contains("at most --params"), "{err}");
        // The size it names fits.
        let most: f64 = err
            .split("at most --params ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let scale = most / 1e9;
        let smaller = estimate(8, RouteArg::Relay, 1e9 * scale, 1e9 * scale, 1 << 24, most as u64);
        assert!(smaller.bytes <= 24.0 * GIB * 1.01, "{}", smaller.bytes);
        // SparseLoCo's 30 MB payload at 1e9 fits.
        let sparse = estimate(8, RouteArg::Relay, 3e7, 3e7, 1 << 24, 1_000_000_000);
        check(1_000_000_000, "sparseloco", 8, sparse, 3e7, 24.0 * GIB).unwrap();
        // On the ring no worker holds the others' payloads: DiLoCo int8 at 1e9 holds some
        // 56 payload copies and one dense split, not 232 copies.
        let ring = estimate(8, RouteArg::Ring, 1e9, 1e9, 1 << 24, 1_000_000_000);
        assert!(ring.copies < 0.3 * e.copies, "{} against {}", ring.copies, e.copies);
        let err = check(1_000_000_000, "diloco", 8, ring, 1e9, 24.0 * GIB).unwrap_err();
        assert!(err.to_string().contains("ring segments"), "{err}");
    }

    #[test]
    fn the_peak_and_the_memory_available_are_read_where_linux_reports_them() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss().unwrap() > 0);
            let available = available_bytes().unwrap();
            let total = crate::model::size::memory_bytes().unwrap();
            assert!(available > 0 && available <= total, "{available} of {total}");
        }
    }
}
