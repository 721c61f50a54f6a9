//! Ring rounds: the aggregate, its agreement across members, per-link bytes, fallback to
//! Relay when the ring cannot finish, bad segments, catch-up of ring commits.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::net::{End, Frame, Net, Verdict};
use super::{coordinator_config, worker_config};
use crate::ids::{MemberId, Round};
use crate::protocol::ring::testing::{floats, to_bytes, F32Sum};
use crate::protocol::{
    CoordinatorEvent, Delivery, Dest, Digest, RejectReason, ToCoordinator, ToWorker, Topology,
    WorkerEvent,
};

const PAYLOAD: usize = 64; // 16 f32, see Net::payload_bytes

fn ring_net(workers: usize, min_members: usize) -> Net {
    let mut net = Net::ring(
        coordinator_config(Topology::Ring, min_members),
        worker_config(),
        workers,
        Arc::new(F32Sum),
    );
    net.connect_all();
    net
}

fn commit(net: &Net, round: Round) -> (Vec<Delivery>, Option<Digest>) {
    let found = net.coordinator_events.iter().find_map(|e| match e {
        CoordinatorEvent::RoundCommitted { round: r, delivered, aggregate, .. } if *r == round => {
            Some((delivered.clone(), *aggregate))
        }
        _ => None,
    });
    found.expect("committed")
}

fn fell_back(net: &Net, round: Round) -> bool {
    net.coordinator_events
        .iter()
        .any(|e| matches!(e, CoordinatorEvent::RingFellBack { round: r, .. } if *r == round))
}

fn opened_at(net: &Net, round: Round) -> bool {
    net.coordinator_events
        .iter()
        .any(|e| matches!(e, CoordinatorEvent::RoundOpened { round: r, .. } if *r == round))
}

/// Every live worker that applied `round` by aggregate holds the same bytes, with the
/// committed digest.
fn same_aggregate_everywhere(net: &Net, round: Round) -> Bytes {
    let (_, digest) = commit(net, round);
    let mut seen: Option<Bytes> = None;
    for node in net.nodes.iter().filter(|n| n.proto.is_some()) {
        let (_, bytes) = &node.app.aggregates[&round];
        assert_eq!(Some(Digest::of(bytes)), digest, "{} round {round}", node.name);
        if let Some(first) = &seen {
            assert_eq!(first, bytes, "{} round {round}", node.name);
        }
        seen = Some(bytes.clone());
    }
    seen.expect("a live worker")
}

fn values(bytes: &[u8]) -> Vec<f32> {
    floats(bytes).expect("f32")
}

#[test]
fn four_member_ring_gives_every_worker_the_same_aggregate_the_ring_order_sum() {
    let mut net = ring_net(4, 4);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)));
    net.check_consistency();
    for round in 0..=3 {
        let (delivered, digest) = commit(&net, round);
        assert!(digest.is_some(), "round {round} committed by ring");
        assert_eq!(delivered.iter().map(|d| d.member).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        let aggregate = values(&same_aggregate_everywhere(&net, round));
        let own: Vec<Vec<f32>> =
            net.nodes.iter().map(|n| values(&n.app.published[&round])).collect();
        // Exactly: segment k (4 values here) is summed from member k on, in ring order.
        for (j, got) in aggregate.iter().enumerate() {
            let k = j / 4;
            let mut sum = own[k][j];
            for step in 1..4 {
                sum += own[(k + step) % 4][j];
            }
            assert_eq!(got.to_bits(), sum.to_bits(), "round {round} value {j}");
            // And the relay mean (ascending member order) to float tolerance.
            let relay_mean = own.iter().map(|v| v[j]).sum::<f32>() / 4.0;
            assert!((got / 4.0 - relay_mean).abs() <= 1e-6 * (1.0 + relay_mean.abs()));
        }
        assert!(!fell_back(&net, round));
    }
    // Per-link bytes: each worker sent 2(N−1) segments of PAYLOAD/N to its successor only,
    // 2(N−1)/N × PAYLOAD, and received as much from its predecessor; the coordinator
    // moved no payload bytes.
    for (i, node) in net.nodes.iter().enumerate() {
        let stats = node.app.events.iter().find_map(|e| match e {
            WorkerEvent::AggregateReady { round: 2, stats, .. } => Some(stats.clone()),
            _ => None,
        });
        let traffic = stats.expect("ready").traffic;
        let me = net.member(i);
        let next = Dest::Member((me + 1) % 4);
        let prev = Dest::Member((me + 3) % 4);
        let sent: Vec<_> =
            traffic.iter().filter(|t| t.sent > 0).map(|t| (t.peer, t.sent)).collect();
        assert_eq!(sent, vec![(next, (2 * 3 * PAYLOAD / 4) as u64)], "{}", node.name);
        let got: Vec<_> =
            traffic.iter().filter(|t| t.received > 0).map(|t| (t.peer, t.received)).collect();
        assert_eq!(got, vec![(prev, (2 * 3 * PAYLOAD / 4) as u64)], "{}", node.name);
    }
    for e in &net.coordinator_events {
        if let CoordinatorEvent::RoundCommitted { stats, .. } = e {
            assert!(stats.traffic.iter().all(|t| t.sent == 0 && t.received == 0));
        }
    }
}

#[test]
fn a_member_vanishing_mid_ring_makes_the_round_fall_back_and_commit_without_it() {
    let mut net = ring_net(4, 3);
    // Worker 2's round-1 segments never leave it; it dies while the ring waits for them.
    net.rule = Some(Box::new(|env, _| match (&env.frame, env.from) {
        (Frame::Segment { round: 1, .. }, End::Worker(2)) => Verdict::Drop,
        _ => Verdict::Pass,
    }));
    assert!(net.run_until(Duration::from_secs(5), |n| opened_at(n, 1)));
    net.run_for(Duration::from_millis(50));
    let crashed = net.member(2);
    let crashed_at = net.now;
    net.crash_worker(2);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)));
    net.check_consistency();
    assert!(fell_back(&net, 1));
    let (delivered, aggregate) = commit(&net, 1);
    assert_eq!(aggregate, None, "a fallback commits per member");
    assert_eq!(delivered.iter().map(|d| d.member).collect::<Vec<_>>(), vec![0, 1, 3]);
    // The others' uploads closed it, long before the 1 s deadline.
    let committed_at = net.nodes[0].app.events.iter().find_map(|e| match e {
        WorkerEvent::RoundReady { round: 1, stats, .. } => stats.duration,
        _ => None,
    });
    assert!(committed_at.expect("ready") < Duration::from_millis(500));
    assert!(net.now > crashed_at);
    for i in [0, 1, 3] {
        let authors: Vec<MemberId> = net.nodes[i].app.ready[&1].iter().map(|(m, _)| *m).collect();
        assert_eq!(authors, vec![0, 1, 3]);
    }
    // The next rounds ring again, with the three left.
    for round in 2..=3 {
        let (delivered, aggregate) = commit(&net, round);
        assert!(aggregate.is_some(), "round {round}");
        assert!(delivered.iter().all(|d| d.member != crashed));
        same_aggregate_everywhere(&net, round);
    }
}

/// Runs round 0, then holds back worker 0's round-1 segments to worker 1 and hands worker
/// 1 `bad` as if worker 0 sent it at slot 0 instead.
fn inject_at_worker_1(bad: Bytes) -> Net {
    let mut net = ring_net(4, 4);
    net.rule = Some(Box::new(|env, _| match (&env.frame, env.from, env.to) {
        (Frame::Segment { round: 1, .. }, End::Worker(0), End::Worker(1)) => Verdict::Drop,
        _ => Verdict::Pass,
    }));
    assert!(net.run_until(Duration::from_secs(5), |n| opened_at(n, 1)));
    // Until worker 1 started its ring (the opening takes 10 ms to arrive).
    net.run_for(Duration::from_millis(20));
    let from = net.member(0);
    net.nodes[1].proto.as_mut().expect("alive").handle_segment(from, 1, 0, bad);
    net
}

#[test]
fn a_corrupt_or_oversized_segment_is_rejected_naming_its_sender_and_the_round_goes_on() {
    let oversized = Bytes::from(vec![0u8; (1 << 16) + 4]);
    let nan = to_bytes(&[f32::NAN, 0.0, 0.0, 0.0]);
    let short = to_bytes(&[1.0, 2.0]);
    for (bad, reason) in [
        (short, RejectReason::BadSegment),
        (nan, RejectReason::BadSegment),
        (oversized, RejectReason::Oversized),
    ] {
        let mut net = inject_at_worker_1(bad);
        let start = net.now;
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)), "{reason:?}");
        net.check_consistency();
        let named = net.nodes[1].app.events.iter().any(|e| {
            matches!(e, WorkerEvent::Rejected { from: Dest::Member(0), round: Some(1), reason: r } if *r == reason)
        });
        assert!(named, "{reason:?}: rejected naming member 0");
        assert!(fell_back(&net, 1), "{reason:?}");
        let (delivered, aggregate) = commit(&net, 1);
        assert_eq!((delivered.len(), aggregate), (4, None), "{reason:?}: everyone, per member");
        // Reported at once: the round did not wait for its deadline.
        let ready = net.nodes[1].app.events.iter().find_map(|e| match e {
            WorkerEvent::RoundReady { round: 1, stats, .. } => stats.duration,
            _ => None,
        });
        assert!(ready.expect("round 1 ready") < Duration::from_millis(500), "{reason:?}");
        assert!(net.now > start);
        assert!(commit(&net, 2).1.is_some(), "{reason:?}: the next round rings again");
    }
}

#[test]
fn duplicate_foreign_and_out_of_round_segments_are_rejected() {
    let good = to_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let mut net = inject_at_worker_1(good.clone());
    let (m0, m2) = (net.member(0), net.member(2));
    net.run_for(Duration::ZERO);
    let before = net.worker_rejections(1).len();
    let p = net.nodes[1].proto.as_mut().expect("alive");
    p.handle_segment(m0, 1, 0, good.clone()); // slot 0 again
    p.handle_segment(m2, 1, 1, good.clone()); // not the predecessor
    p.handle_segment(m0, 0, 1, good.clone()); // an applied round
    p.handle_segment(m0, 40, 1, good.clone()); // far ahead
    p.handle_segment(m0, 1, 6, good.clone()); // past the last slot of a 4-ring
    p.handle_segment(9, 1, 1, good); // a stranger
    net.run_for(Duration::ZERO);
    use RejectReason::*;
    assert_eq!(
        net.worker_rejections(1)[before..],
        [Duplicate, SenderMismatch, Late, WrongRound, Malformed, NotMember]
    );
    // The forged slot 0 left worker 1 waiting for slot 1, which never comes: the deadline
    // makes the round fall back, and it commits per member.
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(2)));
    net.check_consistency();
    assert!(fell_back(&net, 1));
    assert_eq!(commit(&net, 1).1, None);
}

#[test]
fn a_restarted_member_fetches_missed_ring_aggregates_from_its_peers() {
    let mut net = ring_net(4, 3);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(2)));
    net.crash_worker(3);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(5)));
    let fetches = Rc::new(Cell::new(0));
    let count = fetches.clone();
    net.rule = Some(Box::new(move |env, _| {
        if let (Frame::Payload { .. }, End::Worker(_), End::Worker(3)) =
            (&env.frame, env.from, env.to)
        {
            count.set(count.get() + 1);
        }
        Verdict::Pass
    }));
    net.restart_worker(3, true);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(8)));
    net.check_consistency();
    assert_eq!(net.nodes[3].app.states_received, 0, "replayed, no snapshot");
    assert!(fetches.get() >= 2, "rounds 4 and 5 fetched from peers");
    // Round 3 may have fallen back (worker 3 died in its ring); 4 and 5 rang without it.
    for round in 4..=5 {
        assert!(commit(&net, round).1.is_some());
        let (members, bytes) = &net.nodes[3].app.aggregates[&round];
        assert_eq!(members, &vec![0, 1, 2]);
        assert_eq!(bytes, &net.nodes[0].app.aggregates[&round].1);
    }
    assert_eq!(commit(&net, 8).0.len(), 4, "and it is back in the ring");
}

#[test]
fn a_member_that_dies_silently_and_returns_within_its_ring_round_makes_it_fall_back() {
    // Its ring state died with it: once its new process joins, the ring cannot finish, so
    // the round falls back to relay at once; the member, current again after a peer's
    // state, uploads its payload and the round commits with everyone, long before its
    // deadline.
    let mut config = coordinator_config(Topology::Ring, 3);
    config.deadline = crate::protocol::DeadlinePolicy::Fixed(Duration::from_secs(600));
    let mut net = Net::ring(config, worker_config(), 3, Arc::new(F32Sum));
    net.connect_all();
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(0)));
    net.vanish_worker(2);
    net.restart_worker(2, false);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(2)), "waited");
    assert!(fell_back(&net, 1));
    let members: Vec<MemberId> = commit(&net, 1).0.iter().map(|d| d.member).collect();
    assert_eq!(members, vec![0, 1, 2]);
    net.check_consistency();
}

#[test]
fn a_ring_commit_must_name_its_aggregate_for_every_member() {
    let mut net = ring_net(2, 2);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(0)));
    let now = net.now;
    net.run_for(Duration::ZERO);
    let before = net.worker_rejections(0).len();
    let p = net.nodes[0].proto.as_mut().expect("alive");
    p.handle_coordinator(
        now,
        ToWorker::Commit {
            round: 7,
            delivered: vec![
                Delivery { member: 0, digest: Digest(1) },
                Delivery { member: 1, digest: Digest(2) },
            ],
            stragglers: vec![],
            aggregate: Some(Digest(1)),
        },
    );
    net.run_for(Duration::ZERO);
    assert_eq!(net.worker_rejections(0)[before..], [RejectReason::Malformed]);
}

#[test]
fn a_coordinator_restarted_after_the_ring_finished_still_commits_its_aggregate() {
    let mut net = ring_net(4, 4);
    for node in &mut net.nodes {
        node.app.compute = Duration::from_millis(100);
    }
    let done = Rc::new(Cell::new(0));
    let count = done.clone();
    net.rule = Some(Box::new(move |env, _| {
        if let Some(ToCoordinator::Delivered { round: 4, .. }) = env.to_coordinator() {
            count.set(count.get() + 1);
        }
        Verdict::Pass
    }));
    // Every member finished round 4's ring and reported it; the reports die with it.
    assert!(net.run_until(Duration::from_secs(30), |_| done.get() == 4));
    net.crash_coordinator();
    net.run_for(Duration::from_millis(500));
    net.restart_coordinator();
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(6)));
    net.check_consistency();
    assert!(!fell_back(&net, 4), "the members reported their ring again");
    let (delivered, aggregate) = commit(&net, 4);
    assert!(aggregate.is_some());
    assert_eq!(delivered.len(), 4);
    same_aggregate_everywhere(&net, 4);
}
