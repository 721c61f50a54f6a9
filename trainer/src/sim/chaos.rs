//! Network faults a simulated run can be put through (`meridian simulate --chaos`): each
//! rewrites the topology's schedules before the run starts, so the faults happen at the same
//! virtual moments on every run with the same seed.
//!
//! The scenario strikes the link between the coordinator's region and the region of
//! worker 1 (the first worker outside the coordinator's region on the presets), both ways:
//! - `partition`: no datagram crosses for 30 s from t = 5 s, then the link heals (QUIC's 60 s
//!   idle timeout outlasts it);
//! - `slow-link`: from t = 5 s on the link runs at a tenth of its rate;
//! - `bursty-loss`: 5% Gilbert–Elliott loss in bursts of 4 datagrams on average, all run.

use std::time::Duration;

use anyhow::{bail, Result};
use meridian_simulate::{Change, Dur, GilbertElliott, Rate, Topology, Window};

/// When the timed faults strike.
const START: Duration = Duration::from_secs(5);

/// A network fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Chaos {
    /// A 30 s partition between two continents that heals.
    Partition,
    /// A link whose bandwidth drops 10x mid-run.
    SlowLink,
    /// Sustained 5% bursty loss on one link.
    BurstyLoss,
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
    }
}
