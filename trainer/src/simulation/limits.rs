//! What a simulation can hold, checked before anything runs.
//!
//! Virtual time makes a long step cost no wall time *for the training*, but not for the
//! network: every QUIC connection sends a keep-alive every
//! [`keep_alive_ms`](meridian_comm::quic::TransportTuning::keep_alive_ms) of simulated time
//! (10 s), and each one is real work (a packet encrypted, carried by the fabric, decrypted,
//! acknowledged). A run's wall time therefore grows with its simulated seconds times its
//! connections: 60 steps of 10^8 s keep two workers busy for days of wall time. And every
//! round the coordinator relays (or the workers exchange directly) one payload per pair
//! of workers, all of it held at once in this one process: the volume grows with the
//! square of the workers. Settings beyond these limits cannot finish, so they are refused
//! with the setting to change; runs within them go as before.

use std::time::Duration;

use anyhow::{bail, Result};
use meridian_comm::protocol::MAX_TIMER;
use meridian_optimizer::config::AlgoConfig;

use crate::cli::args::RouteArg;
use crate::units::human;

/// `d` as the other durations are written, or in scientific notation beyond a day.
pub fn duration(d: Duration) -> String {
    if d.as_secs_f64() < 86_400.0 {
        human(d)
    } else {
        format!("{:.3e} s", d.as_secs_f64())
    }
}

/// The most compute one round may take: the simulation's coordinator gives a round twice
/// its compute as deadline ([`round_deadline`]), and a deadline is at most
/// [`MAX_TIMER`] (30 days).
pub const MAX_ROUND_COMPUTE: Duration = Duration::from_secs(MAX_TIMER.as_secs() / 2);

/// The most simulated compute a run may take, in connection-seconds: each worker's
/// simulated compute times the QUIC connections that stay open meanwhile. 10^7 is four
/// relayed workers for a month of simulated time, forty for three days. Measured on 2
/// cores, a connection-second costs about 3 microseconds of wall time in keep-alives, so
/// the limit keeps that part of a run to about half a minute.
pub const MAX_CONNECTION_SECONDS: f64 = 1e7;

/// The most payload bytes one round may put in flight between workers (the coordinator's
/// relayed copies, or all-gather's direct ones): 2 GB. Past a few GB the process spends
/// its time in the allocator (measured: 80 workers of a 0.14M-parameter model, 3.5 GB per
/// round, made no progress in minutes).
pub const MAX_ROUND_BYTES: f64 = 2e9;

/// Bytes per parameter no payload exceeds (a 4-byte value and a 4-byte index per entry):
/// when even this bound fits [`MAX_ROUND_BYTES`], no payload needs measuring.
const PAYLOAD_BOUND_PER_PARAM: f64 = 8.0;

/// Inner steps per round of `algo`: its `inner_steps` (H), or 1 for the algorithms that
/// exchange every step.
pub fn steps_per_round(algo: &AlgoConfig) -> u64 {
    algo.settings()
        .to_table()
        .ok()
        .and_then(|t| t.get("inner_steps").and_then(toml::Value::as_integer))
        .and_then(|h| u64::try_from(h).ok())
        .unwrap_or(1)
        .max(1)
}

/// The deadline policy's initial and longest deadline for rounds whose compute is
/// `round`, given the defaults `initial` and `max`: unchanged while they leave the
/// adaptive policy's own headroom (1.5×) over the compute, else twice the compute, so a
/// round of long steps is not closed before anyone could deliver.
pub fn round_deadline(round: Duration, initial: Duration, max: Duration) -> (Duration, Duration) {
    let fits = |d: Duration| round.mul_f64(1.5) <= d;
    let twice = round.saturating_mul(2);
    (if fits(initial) { initial } else { twice }, if fits(max) { max } else { twice })
}

/// What the checks need to know about the run.
pub struct Run<'a> {
    /// Simulated time per inner step (`None`: measured, unknown in advance).
    pub step: Option<Duration>,
    /// The flag the step time came from, as the user wrote it.
    pub step_flag: String,
    /// Inner steps per worker.
    pub steps: u64,
    /// Workers at the start.
    pub workers: usize,
    /// How payloads travel.
    pub route: RouteArg,
    /// Model parameters.
    pub parameters: i64,
    /// The algorithms, each run in turn.
    pub algos: &'a [AlgoConfig],
}

/// Refuses a run that cannot finish; `payload_bytes_per_param` measures an algorithm's
/// payload (only called when the bound does not settle it).
pub fn check(
    run: &Run<'_>,
    payload_bytes_per_param: impl Fn(&AlgoConfig) -> Result<f64>,
) -> Result<()> {
    check_time(run)?;
    check_round_bytes(run, payload_bytes_per_param)
}

/// The checks on time alone: at least one round, a round's compute within a deadline, the
/// run's connection-seconds. (A synthetic run checks its bytes with a memory model.)
pub fn check_time(run: &Run<'_>) -> Result<()> {
    for algo in run.algos {
        let h = steps_per_round(algo);
        if run.steps < h {
            bail!(
                "--steps {}: fewer than one round of {} ({h} inner steps), so the workers \
                 would never sync; give --steps at least {h} or fewer --inner-steps",
                run.steps,
                algo.algorithm()
            );
        }
    }
    if let Some(step) = run.step {
        for algo in run.algos {
            let h = steps_per_round(algo);
            let round = u32::try_from(h).ok().and_then(|h| step.checked_mul(h));
            if round.is_none_or(|r| r > MAX_ROUND_COMPUTE) {
                bail!(
                    "{}: a round of {} is {h} inner steps, {:.3e} s of compute; a simulated \
                     round holds at most {:.3e} s (15 days: the coordinator's deadline is at \
                     most 30 days and must hold the round twice over); use a shorter step \
                     time or fewer --inner-steps",
                    run.step_flag,
                    algo.algorithm(),
                    step.as_secs_f64() * h as f64,
                    MAX_ROUND_COMPUTE.as_secs_f64(),
                );
            }
        }
        let per_worker = step.as_secs_f64() * run.steps as f64;
        let connections = connections(run.route, run.workers);
        let total = per_worker * connections;
        if total > MAX_CONNECTION_SECONDS {
            bail!(
                "{} with --steps {} and --workers {}: {per_worker:.3e} s of simulated compute \
                 per worker over {connections} connections, {total:.3e} connection-seconds; the \
                 simulation takes at most {MAX_CONNECTION_SECONDS:.0e} (each simulated second \
                 of each QUIC connection costs wall time: a keep-alive every 10 s); use a \
                 shorter step time, fewer steps or fewer workers",
                run.step_flag,
                run.steps,
                run.workers,
            );
        }
    }
    Ok(())
}

/// The bytes one round puts in flight, at most [`MAX_ROUND_BYTES`].
fn check_round_bytes(
    run: &Run<'_>,
    payload_bytes_per_param: impl Fn(&AlgoConfig) -> Result<f64>,
) -> Result<()> {
    let n = run.workers as f64;
    // Ring rounds move 2(N-1) segments of 1/N of a payload per worker: linear in N.
    let copies = match run.route {
        RouteArg::Relay | RouteArg::AllGather => n * (n - 1.0),
        RouteArg::Ring => 2.0 * (n - 1.0),
    };
    let params = run.parameters as f64;
    if copies * params * PAYLOAD_BOUND_PER_PARAM <= MAX_ROUND_BYTES {
        return Ok(());
    }
    for algo in run.algos {
        let payload = payload_bytes_per_param(algo)? * params;
        let bytes = copies * payload;
        if bytes > MAX_ROUND_BYTES {
            let most = most_workers(run.route, payload);
            bail!(
                "--workers {}: every round of {} delivers each worker's payload ({:.0} kB) to \
                 the {} others, {:.1} GB in flight at once in this one process; the simulation \
                 takes at most {:.0} GB per round: use at most {most} workers, a smaller model \
                 or a sparse algorithm (sparseloco, demo)",
                run.workers,
                algo.algorithm(),
                payload / 1e3,
                run.workers - 1,
                bytes / 1e9,
                MAX_ROUND_BYTES / 1e9,
            );
        }
    }
    Ok(())
}

/// QUIC connections open while `workers` workers compute: one each to the coordinator,
/// plus one to the successor in a ring, plus one per ordered pair in all-gather (each
/// direction of a pair has its own).
fn connections(route: RouteArg, workers: usize) -> f64 {
    let n = workers as f64;
    match route {
        RouteArg::Relay => n,
        RouteArg::Ring => 2.0 * n,
        RouteArg::AllGather => n + n * (n - 1.0),
    }
}

/// The most workers whose round of `payload`-byte payloads fits [`MAX_ROUND_BYTES`].
fn most_workers(route: RouteArg, payload: f64) -> u64 {
    let fits = |n: u64| {
        let n = n as f64;
        let copies = match route {
            RouteArg::Relay | RouteArg::AllGather => n * (n - 1.0),
            RouteArg::Ring => 2.0 * (n - 1.0),
        };
        copies * payload <= MAX_ROUND_BYTES
    };
    let mut n = 1;
    while n < 1_000_000 && fits(n + 1) {
        n += 1;
    }
    n
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;
    use meridian_optimizer::Algorithm;

    /// DiLoCo with the simulation's quick H.
    fn diloco() -> [AlgoConfig; 1] {
        [AlgoConfig::from_toml("algo = \"diloco\"\ninner_steps = 10").unwrap()]
    }

    fn run(step: Option<Duration>, steps: u64, workers: usize, algos: &[AlgoConfig]) -> Run<'_> {
        Run {
            step,
            step_flag: "--step-time".into(),
            steps,
            workers,
            route: RouteArg::Relay,
            parameters: 140_000,
            algos,
        }
    }

    #[test]
    fn ordinary_runs_pass_and_need_no_measurement() {
        let algos = diloco();
        let r = run(Some(Duration::from_millis(250)), 300, 4, &algos);
        check(&r, |_| panic!("measured a payload the bound settles")).unwrap();
        check(&run(None, 1_000_000, 4, &algos), |_| panic!("measured")).unwrap();
    }

    #[test]
    fn absurd_step_times_worker_counts_and_volumes_are_refused_naming_the_setting() {
        let diloco = diloco();
        let long = run(Some(Duration::from_secs(429_000_000)), 60, 2, &diloco);
        let err = check(&long, |_| Ok(4.0)).unwrap_err().to_string();
        assert!(err.contains("--step-time") && err.contains("30"), "{err}");
        // H = 1 (DDP): the round fits, the run's total does not.
        let ddp = [AlgoConfig::default_for(Algorithm::Ddp)];
        let err = check(&run(Some(Duration::from_secs(100_000)), 300, 2, &ddp), |_| Ok(4.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--steps 300") && err.contains("1e7"), "{err}");
        let err = check(&run(Some(Duration::from_millis(250)), 10, 150, &diloco), |_| Ok(4.0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--workers 150") && err.contains("at most"), "{err}");
        // Fewer steps than one round: the workers would never sync, whatever the clock.
        let err = check(&run(None, 5, 2, &diloco), |_| Ok(4.0)).unwrap_err().to_string();
        assert!(err.contains("--steps 5") && err.contains("10 inner steps"), "{err}");
        // A payload thirty times smaller fits the same workers.
        check(&run(Some(Duration::from_millis(250)), 10, 150, &diloco), |_| Ok(0.13)).unwrap();
    }

    #[test]
    fn a_round_deadline_grows_only_where_the_defaults_cannot_hold_the_round() {
        let (initial, max) = (Duration::from_secs(600), Duration::from_secs(3600));
        assert_eq!(round_deadline(Duration::from_secs(30), initial, max), (initial, max));
        assert_eq!(round_deadline(Duration::from_secs(400), initial, max), (initial, max));
        let long = Duration::from_secs(10_000);
        assert_eq!(round_deadline(long, initial, max), (long * 2, long * 2));
        assert_eq!(steps_per_round(&AlgoConfig::default_for(Algorithm::Ddp)), 1);
        assert_eq!(steps_per_round(&AlgoConfig::default_for(Algorithm::Diloco)), 500);
    }
}
