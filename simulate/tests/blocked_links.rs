//! Members that cannot reach each other (a firewall between two sites, NAT): on
//! `cross-continent` with the links between `ap-southeast` and the other workers' regions
//! down, all-gather payloads and ring segments for and from `ap-southeast` go through the
//! coordinator, per pair, and every round still commits with every member.

// Helpers outside #[test] functions unwrap too: a failure here is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meridian_comm::node::{
    CoordinatorNode, CoordinatorNodeConfig, WorkerNode, WorkerNodeConfig, WorkerNodeEvent,
};
use meridian_comm::protocol::{
    DeadlinePolicy, ReduceError, RingReducer, Topology as Shape, WorkerEvent,
};
use meridian_comm::quic::{JoinString, TransportTuning};
use meridian_simulate::{Fabric, Topology};

const ROUNDS: u64 = 4;
const WORKER_REGIONS: [&str; 3] = ["us-west", "eu-west", "ap-southeast"];
const PAYLOAD: usize = 100_000;

/// Sums payloads byte by byte (wrapping): the same aggregate in any order.
#[derive(Debug)]
struct ByteSum;

impl RingReducer for ByteSum {
    fn split(&self, payload: &[u8], parts: usize) -> Result<Vec<Bytes>, ReduceError> {
        let size = payload.len().div_ceil(parts.max(1));
        let mut out: Vec<Bytes> = payload.chunks(size.max(1)).map(Bytes::copy_from_slice).collect();
        out.resize(parts, Bytes::new());
        Ok(out)
    }

    fn combine(&self, received: &[u8], own: &[u8]) -> Result<Bytes, ReduceError> {
        if received.len() != own.len() {
            return Err(ReduceError("segment lengths differ".into()));
        }
        Ok(received.iter().zip(own).map(|(a, b)| a.wrapping_add(*b)).collect())
    }

    fn check(&self, received: &[u8], own: &[u8]) -> Result<(), ReduceError> {
        if received.len() == own.len() {
            Ok(())
        } else {
            Err(ReduceError("segment lengths differ".into()))
        }
    }

    fn join(&self, segments: &[Bytes]) -> Result<Bytes, ReduceError> {
        Ok(segments.concat().into())
    }
}

fn tuning() -> TransportTuning {
    TransportTuning { rtt_ms: 250.0, rng_seed: Some(3), ..TransportTuning::default() }
}

/// A worker's digest of each round it applied: the payloads or the aggregate.
async fn worker(join: JoinString, fabric: Fabric, region: &'static str, ring: bool) -> Vec<u64> {
    let mut cfg = WorkerNodeConfig::new(join, region);
    cfg.tuning = tuning();
    cfg.socket = Some(fabric.bind(region).unwrap());
    cfg.reconnect.connect_timeout = Duration::from_secs(3);
    if ring {
        cfg.reducer = Some(Arc::new(ByteSum));
    }
    let mut node = WorkerNode::connect(cfg).await.unwrap();
    let payload = |round: u64| Bytes::from(vec![round as u8 ^ region.len() as u8; PAYLOAD]);
    let mut applied = Vec::new();
    loop {
        let (round, digest) = match node.next_event().await.unwrap() {
            WorkerNodeEvent::Welcomed { next_round, .. } => {
                node.publish(next_round, payload(next_round)).await.unwrap();
                continue;
            }
            WorkerNodeEvent::Protocol(WorkerEvent::RoundReady { round, payloads, .. }) => {
                assert!(!ring, "{region}: round {round} fell back from the ring");
                assert_eq!(payloads.len(), WORKER_REGIONS.len(), "{region}: round {round}");
                let bytes: Vec<u8> = payloads.iter().flat_map(|(_, p)| p.iter().copied()).collect();
                (round, xxhash_rust::xxh3::xxh3_64(&bytes))
            }
            WorkerNodeEvent::Protocol(WorkerEvent::AggregateReady {
                round,
                members,
                aggregate,
                ..
            }) => {
                assert_eq!(members.len(), WORKER_REGIONS.len(), "{region}: round {round}");
                (round, xxhash_rust::xxh3::xxh3_64(&aggregate))
            }
            _ => continue,
        };
        assert_eq!(round, applied.len() as u64, "{region}: rounds in order");
        applied.push(digest);
        if round + 1 == ROUNDS {
            break;
        }
        node.publish(round + 1, payload(round + 1)).await.unwrap();
    }
    node.leave().await.unwrap();
    applied
}

/// Runs three workers with `ap-southeast` cut off from the other two; returns each
/// worker's round digests and the bytes the coordinator sent `ap-southeast`.
fn run(shape: Shape) -> (Vec<Vec<u64>>, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let topology = Topology::preset("cross-continent").unwrap();
        let fabric = Fabric::new(topology.clone(), 5);
        for other in ["us-west", "eu-west"] {
            fabric.set_link_down("ap-southeast", other, true).unwrap();
            fabric.set_link_down(other, "ap-southeast", true).unwrap();
        }
        let socket = fabric.bind(topology.coordinator_region()).unwrap();
        let mut cfg = CoordinatorNodeConfig::new(socket.addr(), shape);
        cfg.tuning = tuning();
        cfg.protocol.min_members = WORKER_REGIONS.len();
        cfg.protocol.deadline = DeadlinePolicy::Fixed(Duration::from_secs(60));
        cfg.socket = Some(socket);
        let node = CoordinatorNode::start(cfg).unwrap();
        let ring = shape == Shape::Ring;
        let workers: Vec<_> = WORKER_REGIONS
            .iter()
            .map(|&region| tokio::spawn(worker(node.join_string(), fabric.clone(), region, ring)))
            .collect();
        let mut digests = Vec::new();
        for w in workers {
            digests.push(tokio::time::timeout(Duration::from_secs(600), w).await.unwrap().unwrap());
        }
        let stats = fabric.stats();
        for other in ["us-west", "eu-west"] {
            for (from, to) in [(other, "ap-southeast"), ("ap-southeast", other)] {
                let cut = stats.links.get(&(from.to_string(), to.to_string()));
                assert!(cut.is_none_or(|c| c.delivered.datagrams == 0), "{from} -> {to} is cut");
            }
        }
        let via = stats.links[&("us-east".to_string(), "ap-southeast".to_string())].delivered.bytes;
        node.shutdown().await.unwrap();
        (digests, via)
    })
}

#[test]
fn all_gather_payloads_go_through_the_coordinator_between_members_that_cannot_meet() {
    let (digests, via) = run(Shape::AllGather);
    assert!(digests.iter().all(|d| d.len() == ROUNDS as usize && *d == digests[0]), "{digests:?}");
    // The other two's payloads reached ap-southeast through the coordinator every round.
    assert!(via > 2 * ROUNDS * PAYLOAD as u64, "{via} bytes via the coordinator");
}

#[test]
fn ring_segments_go_through_the_coordinator_between_members_that_cannot_meet() {
    let (digests, via) = run(Shape::Ring);
    assert!(digests.iter().all(|d| d.len() == ROUNDS as usize && *d == digests[0]), "{digests:?}");
    // Its predecessor's segments reached ap-southeast through the coordinator.
    assert!(via > ROUNDS * PAYLOAD as u64 / 3, "{via} bytes via the coordinator");
}
