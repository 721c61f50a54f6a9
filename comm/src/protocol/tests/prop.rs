//! Random fault schedules: whatever the network does, no two workers apply different
//! payloads for the same round, nothing panics, and decoding arbitrary bytes is safe.

use std::time::Duration;

use proptest::prelude::*;

use std::sync::Arc;

use super::net::{Net, Rng};
use super::{coordinator_config, worker_config};
use crate::protocol::ring::testing::F32Sum;
use crate::protocol::{CoordinatorState, PeerMessage, ToCoordinator, ToWorker, Topology};

/// The schedule the fault tests share: `drop` and `dup` rates, up to `jitter_ms` of jitter
/// and `compute_ms` per step; 6 s of running, then (with `crash` = (worker, keeps its state))
/// a crash and a restart 2 s later; 10 s more; then every replica is checked.
fn shake(
    net: &mut Net,
    drop: f64,
    dup: f64,
    jitter_ms: u64,
    compute_ms: u64,
    crash: Option<(usize, bool)>,
) {
    net.faults.drop = drop;
    net.faults.dup = dup;
    net.faults.jitter = Duration::from_millis(jitter_ms);
    for node in &mut net.nodes {
        node.app.compute = Duration::from_millis(compute_ms);
    }
    net.connect_all();
    net.run_for(Duration::from_secs(6));
    if let Some((i, keep_state)) = crash {
        net.crash_worker(i);
        net.run_for(Duration::from_secs(2));
        net.restart_worker(i, keep_state);
    }
    net.run_for(Duration::from_secs(10));
    net.check_consistency();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_drop_dup_reorder_never_splits_replicas(
        seed in any::<u64>(),
        allgather in any::<bool>(),
        workers in 3usize..=4,
        drop in 0.0f64..0.15,
        dup in 0.0f64..0.3,
        jitter_ms in 0u64..400,
        compute_ms in 0u64..300,
        crash in proptest::option::of(0usize..3),
    ) {
        let topology = if allgather { Topology::AllGather } else { Topology::Relay };
        let mut net = Net::new(coordinator_config(topology, 2), worker_config(), workers, seed);
        shake(&mut net, drop, dup, jitter_ms, compute_ms, crash.map(|i| (i, seed % 2 == 0)));
    }

    #[test]
    fn without_loss_every_worker_keeps_up(
        seed in any::<u64>(),
        allgather in any::<bool>(),
        workers in 3usize..=4,
        dup in 0.0f64..0.3,
        jitter_ms in 0u64..400,
        compute_ms in 0u64..300,
        crash in 0usize..3,
        keep_state in any::<bool>(),
    ) {
        let topology = if allgather { Topology::AllGather } else { Topology::Relay };
        let mut net = Net::new(coordinator_config(topology, 2), worker_config(), workers, seed);
        shake(&mut net, 0.0, dup, jitter_ms, compute_ms, Some((crash, keep_state)));
        let applied: Vec<u64> = net.nodes.iter().map(|n| n.app.applied.unwrap_or(0)).collect();
        let newest = applied.iter().copied().max().unwrap_or(0);
        prop_assert!(newest >= 8, "the run progressed: {:?}", applied);
        // Everyone, the restarted worker included, is within a round or two of the newest.
        prop_assert!(applied.iter().all(|&a| a + 2 >= newest), "{:?}", applied);
    }

    #[test]
    fn ring_rounds_under_faults_never_split_replicas_and_keep_going(
        seed in any::<u64>(),
        workers in 3usize..=4,
        drop in 0.0f64..0.1,
        dup in 0.0f64..0.3,
        jitter_ms in 0u64..300,
        compute_ms in 0u64..300,
        crash in proptest::option::of(0usize..3),
    ) {
        let mut net = Net::ring(
            coordinator_config(Topology::Ring, 2),
            worker_config(),
            workers,
            Arc::new(F32Sum),
        );
        net.rng = Rng::new(seed);
        shake(&mut net, drop, dup, jitter_ms, compute_ms, crash.map(|i| (i, seed % 2 == 0)));
        if drop == 0.0 {
            let newest = net.nodes.iter().filter_map(|n| n.app.applied).max().unwrap_or(0);
            prop_assert!(newest >= 6, "the run progressed to {newest}");
        }
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = ToCoordinator::decode(&body);
        let _ = ToWorker::decode(&body);
        let _ = PeerMessage::decode(&body);
        let _ = CoordinatorState::decode(&body);
    }
}
