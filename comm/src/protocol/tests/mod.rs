//! Scripted tests of the round protocol over an in-memory network with a manual clock.

mod catchup;
mod chunked;
mod forward;
mod net;
mod prop;
mod ring;
mod scenarios;
mod signature;
mod validation;

use std::time::Duration;

use crate::ids::RunId;
use crate::protocol::{CoordinatorConfig, DeadlinePolicy, Topology, WorkerConfig};

/// Test configs: a fixed 1 s deadline and short timers, so runs take little virtual time.
fn coordinator_config(topology: Topology, min_members: usize) -> CoordinatorConfig {
    CoordinatorConfig {
        min_members,
        deadline: DeadlinePolicy::Fixed(Duration::from_secs(1)),
        keep_rounds: 4,
        max_payload: 1 << 16,
        max_state: 1 << 16,
        snapshot_timeout: Duration::from_secs(3),
        rejoin_grace: Duration::from_secs(2),
        ..CoordinatorConfig::new(RunId([7; 16]), topology)
    }
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        max_payload: 1 << 16,
        max_state: 1 << 16,
        keep_rounds: 4,
        fetch_grace: Duration::from_millis(50),
        fetch_timeout: Duration::from_millis(500),
        join_timeout: Duration::from_secs(1),
        state_timeout: Duration::from_secs(5),
        ..WorkerConfig::new("unnamed")
    }
}

const BOTH: [Topology; 2] = [Topology::Relay, Topology::AllGather];
