//! Faults a simulated run can be put through (`meridian simulate --chaos`), each at fixed
//! virtual moments, so the same seed replays the same faults.
//!
//! Network faults rewrite the topology's schedules before the run starts. They strike the
//! link between the coordinator's region and the region of worker 1 (the first worker
//! outside the coordinator's region on the presets), both ways:
//! - `partition`: no datagram crosses for 30 s from t = 5 s, then the link heals (QUIC's 60 s
//!   idle timeout outlasts it);
//! - `slow-link`: from t = 5 s on the link runs at a tenth of its rate;
//! - `bursty-loss`: 5% Gilbert–Elliott loss in bursts of 4 datagrams on average, all run.
//!
//! Process faults are scheduled against the run's compute time C (steps × step time):
//! - `worker-restart`: the last worker is killed at 0.2 C and 0.55 C, each time restarted
//!   0.15 C later as a new process (it rejoins under its name and takes a peer's state);
//! - `coordinator-restart`: the coordinator is killed at 0.3 C and restarted from its state
//!   folder at 0.45 C, at the same address;
//! - `late-join`: one more worker, in the next region of the placement, joins at 0.4 C.
//!
//! Adversaries (`byzantine-scaled`, `byzantine-sign-flip`, `byzantine-noise`): the last
//! worker doctors every update it sends (see `meridian_optimizer::byzantine`); whether that
//! hurts depends on the algorithm's `aggregation` setting (`--set aggregation=...`).

use std::time::Duration;

use anyhow::{bail, Result};
use meridian_optimizer::byzantine::Attack;
use meridian_simulate::{Change, Dur, GilbertElliott, Rate, Topology, Window};

/// When the timed faults strike.
const START: Duration = Duration::from_secs(5);

/// A fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Chaos {
    /// Every scenario in turn, after a clean run, and a table comparing them.
    All,
    /// A 30 s partition between two continents that heals.
    Partition,
    /// A link whose bandwidth drops 10x mid-run.
    SlowLink,
    /// Sustained 5% bursty loss on one link.
    BurstyLoss,
    /// A worker killed twice and restarted (it rejoins and catches up).
    WorkerRestart,
    /// The coordinator killed and restarted from its persisted state.
    CoordinatorRestart,
    /// A new worker joining mid-run.
    LateJoin,
    /// A worker sending its updates scaled x100.
    ByzantineScaled,
    /// A worker sending its updates sign-flipped.
    ByzantineSignFlip,
    /// A worker sending noise of 2.5x its honest update's norm.
    ByzantineNoise,
}

impl Chaos {
    /// The scenarios `self` stands for.
    pub fn scenarios(self) -> Vec<Chaos> {
        match self {
            Chaos::All => vec![
                Chaos::WorkerRestart,
                Chaos::Partition,
                Chaos::BurstyLoss,
                Chaos::SlowLink,
                Chaos::CoordinatorRestart,
                Chaos::LateJoin,
                Chaos::ByzantineScaled,
                Chaos::ByzantineSignFlip,
                Chaos::ByzantineNoise,
            ],
            one => vec![one],
        }
    }

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Chaos::All => "all",
            Chaos::Partition => "partition",
            Chaos::SlowLink => "slow-link",
            Chaos::BurstyLoss => "bursty-loss",
            Chaos::WorkerRestart => "worker-restart",
            Chaos::CoordinatorRestart => "coordinator-restart",
            Chaos::LateJoin => "late-join",
            Chaos::ByzantineScaled => "byzantine-scaled",
            Chaos::ByzantineSignFlip => "byzantine-sign-flip",
            Chaos::ByzantineNoise => "byzantine-noise",
        }
    }
}

/// Process faults: who dies, when, and who comes late (offsets from the start).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// (worker index, killed at, restarted at).
    pub worker_outages: Vec<(usize, Duration, Duration)>,
    /// (killed at, restarted at) of the coordinator.
    pub coordinator_outage: Option<(Duration, Duration)>,
    /// A worker joins this long after the start.
    pub late_join: Option<Duration>,
    /// (worker index, what it does to every update it sends).
    pub byzantine: Option<(usize, Attack)>,
}

/// The process faults of `chaos` for a run with `workers` workers whose compute takes
/// `compute`; with a line that says what happens.
pub fn schedule(chaos: Chaos, workers: usize, compute: Duration) -> Result<(Schedule, String)> {
    let at = |fraction: f64| compute.mul_f64(fraction);
    let secs = |fraction: f64| at(fraction).as_secs_f64();
    let mut s = Schedule::default();
    let line = match chaos {
        Chaos::WorkerRestart => {
            // Worker 0 draws the curve; the last one dies.
            if workers < 2 {
                bail!("--chaos worker-restart needs at least 2 workers");
            }
            let victim = workers - 1;
            s.worker_outages = vec![(victim, at(0.2), at(0.35)), (victim, at(0.55), at(0.7))];
            format!(
                "worker {victim} is killed at t = {:.1} s and {:.1} s, each time restarted {:.1} s later",
                secs(0.2),
                secs(0.55),
                secs(0.15)
            )
        }
        Chaos::CoordinatorRestart => {
            s.coordinator_outage = Some((at(0.3), at(0.45)));
            format!(
                "the coordinator is killed at t = {:.1} s and restarted from its state folder at {:.1} s",
                secs(0.3),
                secs(0.45)
            )
        }
        Chaos::LateJoin => {
            s.late_join = Some(at(0.4));
            format!("worker {workers} joins at t = {:.1} s", secs(0.4))
        }
        Chaos::ByzantineScaled | Chaos::ByzantineSignFlip | Chaos::ByzantineNoise => {
            if workers < 2 {
                bail!("--chaos {} needs at least 2 workers", chaos.name());
            }
            let (attack, what) = match chaos {
                Chaos::ByzantineScaled => (Attack::Scaled, "scaled x100"),
                Chaos::ByzantineSignFlip => (Attack::SignFlipped, "sign-flipped"),
                _ => (Attack::Noise, "replaced by noise of 2.5x their norm"),
            };
            let attacker = workers - 1;
            s.byzantine = Some((attacker, attack));
            format!(
                "worker {attacker} sends every update {what} (defence: the algorithm's \
                 aggregation setting)"
            )
        }
        _ => bail!("{} is not a process fault", chaos.name()),
    };
    Ok((s, line))
}

/// Whether `chaos` rewrites the network (rather than killing or adding processes).
pub fn is_network_fault(chaos: Chaos) -> bool {
    matches!(chaos, Chaos::Partition | Chaos::SlowLink | Chaos::BurstyLoss)
}

/// The two regions a scenario strikes: the coordinator's, and worker 1's (or worker 0's
/// when that is elsewhere).
fn struck(topology: &Topology, placement: &[String]) -> Result<(String, String)> {
    let c = topology.coordinator_region().to_string();
    let Some(other) = placement.iter().skip(1).chain(placement.first()).find(|r| **r != c) else {
        bail!("--chaos needs a worker outside the coordinator's region ({c})");
    };
    Ok((c, other.clone()))
}

/// Applies `chaos` to `topology`; returns a line that says what it did.
pub fn apply(chaos: Chaos, topology: &mut Topology, placement: &[String]) -> Result<String> {
    let (a, b) = struck(topology, placement)?;
    match chaos {
        Chaos::Partition => {
            let window = Window { at: Dur(START), duration: Dur(Duration::from_secs(30)) };
            topology.add_partition(&a, &b, window)?;
            Ok(format!("{a} and {b} are cut off from each other for 30 s from t = 5 s"))
        }
        Chaos::SlowLink => {
            for (from, to) in [(&a, &b), (&b, &a)] {
                let mut spec = topology.link(from, to)?.clone();
                let Some(rate) = spec.rate else {
                    bail!("--chaos slow-link: the link {from} -> {to} has no rate to slow down");
                };
                let slower = Rate::new(rate.bits_per_sec() / 10.0).map_err(anyhow::Error::msg)?;
                spec.changes.push(Change {
                    at: Dur(START),
                    rate: Some(slower),
                    ..Change::default()
                });
                spec.changes.sort_by_key(|c| c.at);
                topology.set_link(from, to, spec);
            }
            Ok(format!("the link between {a} and {b} drops to a tenth of its rate at t = 5 s"))
        }
        Chaos::BurstyLoss => {
            let burst = GilbertElliott::with_mean(0.05, 4.0).map_err(anyhow::Error::msg)?;
            for (from, to) in [(&a, &b), (&b, &a)] {
                let mut spec = topology.link(from, to)?.clone();
                spec.burst = Some(burst);
                topology.set_link(from, to, spec);
            }
            Ok(format!("the link between {a} and {b} loses 5% of datagrams in bursts of ~4"))
        }
        other => bail!("{} is not a network fault", other.name()),
    }
}
