//! The comm stack unchanged over the simulated WAN: a coordinator node in `us-east` and
//! workers on three other continents of the `cross-continent` preset run rounds over QUIC
//! on the virtual fabric, in virtual time.

// Helpers outside #[test] functions unwrap too: a failure here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use meridian_comm::node::{
    CoordinatorNode, CoordinatorNodeConfig, WorkerNode, WorkerNodeConfig, WorkerNodeEvent,
};
use meridian_comm::protocol::{DeadlinePolicy, Topology as Shape, WorkerEvent};
use meridian_comm::quic::{JoinString, TransportTuning};
use meridian_simulate::{Dur, Fabric, Topology, Window};
use tokio::time::Instant;

const ROUNDS: u64 = 5;
const WORKER_REGIONS: [&str; 3] = ["us-west", "eu-west", "ap-southeast"];
/// Each payload: ~70 full-size datagrams.
const PAYLOAD: usize = 100_000;

fn tuning() -> TransportTuning {
    // A fixed seed for QUIC's own random choices, so a run replays exactly.
    TransportTuning { rtt_ms: 250.0, rng_seed: Some(1), ..TransportTuning::default() }
}

/// When a worker was welcomed and when it applied each round, since the fabric started.
#[derive(Debug, Clone, PartialEq, Eq)]
struct WorkerTrace {
    region: &'static str,
    welcomed: Duration,
    rounds: Vec<Duration>,
}

async fn worker(join: JoinString, fabric: Fabric, region: &'static str) -> WorkerTrace {
    let socket = fabric.bind(region).unwrap();
    let mut cfg = WorkerNodeConfig::new(join, region);
    cfg.tuning = tuning();
    cfg.socket = Some(socket);
    let mut node = WorkerNode::connect(cfg).await.unwrap();
    let start = Instant::now() - fabric.elapsed();
    let mut trace = WorkerTrace { region, welcomed: Duration::ZERO, rounds: Vec::new() };
    let payload = |round: u64| Bytes::from(vec![round as u8 ^ region.len() as u8; PAYLOAD]);
    loop {
        match node.next_event().await.unwrap() {
            WorkerNodeEvent::Welcomed { next_round, need_state, .. } => {
                assert!(!need_state);
                trace.welcomed = start.elapsed();
                node.publish(next_round, payload(next_round)).await.unwrap();
            }
            WorkerNodeEvent::Protocol(WorkerEvent::RoundReady { round, payloads, .. }) => {
                assert_eq!(payloads.len(), WORKER_REGIONS.len(), "round {round}");
                assert!(payloads.iter().all(|(_, p)| p.len() == PAYLOAD));
                trace.rounds.push(start.elapsed());
                if round + 1 == ROUNDS {
                    break;
                }
                node.publish(round + 1, payload(round + 1)).await.unwrap();
            }
            _ => {}
        }
    }
    node.leave().await.unwrap();
    trace
}

/// Runs the coordinator and the workers to `ROUNDS` rounds over cross-continent; returns
/// the traces and the topology.
fn run(seed: u64) -> (Vec<WorkerTrace>, Topology) {
    let topology = Topology::preset("cross-continent").unwrap();
    (run_on(topology.clone(), seed, Duration::from_secs(30)), topology)
}

/// Runs the coordinator and the workers to `ROUNDS` rounds over `topology` with a fixed
/// round deadline; returns the traces.
fn run_on(topology: Topology, seed: u64, deadline: Duration) -> Vec<WorkerTrace> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let fabric = Fabric::new(topology.clone(), seed);
        let socket = fabric.bind(topology.coordinator_region()).unwrap();
        let mut cfg = CoordinatorNodeConfig::new(socket.addr(), Shape::Relay);
        cfg.tuning = tuning();
        cfg.protocol.min_members = WORKER_REGIONS.len();
        cfg.protocol.deadline = DeadlinePolicy::Fixed(deadline);
        cfg.socket = Some(socket);
        let node = CoordinatorNode::start(cfg).unwrap();
        let workers: Vec<_> = WORKER_REGIONS
            .iter()
            .map(|&region| tokio::spawn(worker(node.join_string(), fabric.clone(), region)))
            .collect();
        let mut traces = Vec::new();
        for w in workers {
            // Virtual time: a hang shows up as this timeout, instantly.
            traces.push(tokio::time::timeout(Duration::from_secs(300), w).await.unwrap().unwrap());
        }
        let stats = fabric.stats();
        let to_coordinator = &stats.links[&("ap-southeast".to_string(), "us-east".to_string())];
        assert!(to_coordinator.delivered.bytes > ROUNDS * PAYLOAD as u64);
        node.shutdown().await.unwrap();
        traces
    })
}

#[test]
fn rounds_over_the_simulated_wan_take_the_time_its_rtts_imply_and_replay_exactly() {
    let (traces, topology) = run(7);
    let coordinator = topology.coordinator_region();
    let farthest =
        WORKER_REGIONS.iter().map(|r| topology.base_rtt(r, coordinator).unwrap()).max().unwrap();
    for t in &traces {
        let rtt = topology.base_rtt(t.region, coordinator).unwrap();
        // The QUIC handshake alone takes a round trip; the join message another.
        assert!(t.welcomed >= 2 * rtt, "{}: welcomed at {:?}, RTT {rtt:?}", t.region, t.welcomed);
        assert_eq!(t.rounds.len() as u64, ROUNDS);
        // Round r + 1 needs the farthest worker's payload, sent after it got round r:
        // at least the farthest RTT between rounds (less 1 ms of jitter either way).
        for pair in t.rounds.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap + Duration::from_millis(2) >= farthest, "{}: {gap:?}", t.region);
        }
    }
    // Loss recovery at a 250 ms RTT costs seconds, but a stalled link would cost the
    // 30 s round deadline.
    let last = traces.iter().map(|t| t.rounds[ROUNDS as usize - 1]).max().unwrap();
    assert!(last < Duration::from_secs(25), "{last:?}");
    // Same seed, same program: the same virtual timings, to the nanosecond.
    assert_eq!(run(7).0, traces);
    assert_ne!(run(8).0, traces, "another seed, other losses, other timings");
}

#[test]
fn a_partition_between_continents_stalls_rounds_until_it_heals() {
    // eu-west loses the coordinator for 30 s, from halfway between the first two rounds
    // it applies in a clean run with the same seed (runs replay exactly up to the cut, and
    // how fast rounds go depends on the congestion controller); QUIC's 60 s idle timeout
    // outlasts it, and the round deadline is long enough to wait for eu-west's payload.
    let clean = run_on(Topology::preset("cross-continent").unwrap(), 7, Duration::from_secs(120));
    let eu_clean = &clean.iter().find(|t| t.region == "eu-west").unwrap().rounds;
    let at = (eu_clean[0] + eu_clean[1]) / 2;
    let mut topology = Topology::preset("cross-continent").unwrap();
    let cut = Window { at: Dur(at), duration: Dur(Duration::from_secs(30)) };
    topology.add_partition("us-east", "eu-west", cut).unwrap();
    let traces = run_on(topology, 7, Duration::from_secs(120));
    let heals = cut.at.0 + cut.duration.0;
    // eu-west hears nothing during the cut (datagrams already on the wire land within
    // 0.1 s): it applies round k, the first it had not applied by then, only after the
    // heal. Round k may close for the others (eu-west's payload for it may have got in
    // before the cut), but round k + 1 needs a payload eu-west sends only after it applied
    // round k: nobody applies it before the heal.
    let eu = traces.iter().find(|t| t.region == "eu-west").unwrap();
    let k = eu.rounds.iter().filter(|&&r| r < cut.at.0 + Duration::from_millis(100)).count();
    assert!(k >= 1 && k + 1 < ROUNDS as usize, "the cut falls mid-run: {:?}", eu.rounds);
    assert!(eu.rounds[k] > heals, "eu-west applied a round during the cut: {:?}", eu.rounds);
    for t in &traces {
        assert_eq!(t.rounds.len() as u64, ROUNDS, "{}", t.region);
        assert!(
            t.rounds[k + 1] > heals,
            "{}: round {} during the cut: {:?}",
            t.region,
            k + 1,
            t.rounds
        );
    }
}
