//! Rounds over real QUIC, and joins with the wrong credentials.

use super::*;
use crate::protocol::CoordinatorEvent;
use crate::quic::RefusalCode;

#[test]
fn four_workers_agree_on_twenty_rounds_relay() {
    four_workers_agree_on_twenty_rounds(Topology::Relay);
}

#[test]
fn four_workers_agree_on_twenty_rounds_all_gather() {
    four_workers_agree_on_twenty_rounds(Topology::AllGather);
}

fn four_workers_agree_on_twenty_rounds(topology: Topology) {
    let rt = runtime();
    let mut node = {
        let _guard = rt.enter();
        CoordinatorNode::start(topology_config(topology, 4, Duration::from_secs(5))).unwrap()
    };
    let join = node.join_string();
    assert_eq!(join.host, "127.0.0.1");
    assert_eq!(join.port, node.local_addr().port());

    let workers: Vec<_> = (0..4)
        .map(|i| {
            let cfg = worker_config(&join, &format!("w{i}"));
            let progress = Arc::new(AtomicU64::new(0));
            spawn_worker(rt.handle(), cfg, App::default(), 19, Duration::ZERO, progress)
        })
        .collect();
    let apps: Vec<App> = workers.into_iter().map(|w| w.join().unwrap()).collect();

    let mut members: Vec<_> = apps.iter().map(|a| a.member).collect();
    members.sort_unstable();
    members.dedup();
    assert_eq!(members.len(), 4, "distinct member ids");
    for app in &apps {
        assert_eq!(app.history.len(), 20);
        // Every round committed every member's payload (the deadline is never reached).
        assert!(app.payload_counts.values().all(|&n| n == 4), "{:?}", app.payload_counts);
    }
    assert_eq!(assert_agree(&apps), 6 * 20);
    for app in &apps {
        let expected: BTreeSet<Dest> = match topology {
            Topology::Relay => [Dest::Coordinator].into(),
            Topology::AllGather => {
                members.iter().filter(|&&m| m != app.member).map(|&m| Dest::Member(m)).collect()
            }
            Topology::Ring => unreachable!("ring rounds have their own test"),
        };
        assert_eq!(app.payload_sources, expected);
    }

    // The coordinator reported each commit with its stats.
    let commits: Vec<_> = drain(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::RoundCommitted {
                round,
                stats,
                ..
            }) => Some((round, stats)),
            _ => None,
        })
        .collect();
    assert_eq!(commits.iter().map(|(r, _)| *r).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
    for (_, stats) in &commits {
        assert_eq!(stats.delivered.len(), 4);
        assert!(stats.stragglers.is_empty());
        let received: u64 = stats.traffic.iter().map(|t| t.received).sum();
        let sent: u64 = stats.traffic.iter().map(|t| t.sent).sum();
        match topology {
            // Each payload went in once and out to the three others.
            Topology::Relay => {
                assert_eq!(sent, 3 * received);
                assert!(received > 4 * 3000);
            }
            // The coordinator never holds a payload.
            Topology::AllGather => assert_eq!((received, sent), (0, 0)),
            Topology::Ring => unreachable!("ring rounds have their own test"),
        }
    }
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn wrong_secret_and_wrong_run_are_refused_and_the_run_goes_on() {
    let rt = runtime();
    let mut node = {
        let _guard = rt.enter();
        CoordinatorNode::start(coordinator_config(2, Duration::from_secs(5))).unwrap()
    };
    let join = node.join_string();
    let honest: Vec<_> = (0..2)
        .map(|i| {
            let cfg = worker_config(&join, &format!("w{i}"));
            let progress = Arc::new(AtomicU64::new(0));
            spawn_worker(rt.handle(), cfg, App::default(), 9, Duration::from_millis(20), progress)
        })
        .collect();

    let mut bad = join.clone();
    bad.secret.0[0] ^= 1;
    let err = WorkerHandle::spawn(worker_config(&bad, "intruder"), rt.handle()).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("refused by coordinator: wrong join secret"), "{text}");
    assert!(matches!(
        err,
        CommError::Node(NodeError::Refused(Refusal::Transport {
            code: RefusalCode::WrongSecret,
            ..
        }))
    ));

    let mut other_run = join.clone();
    other_run.run.0[0] ^= 1;
    let err = WorkerHandle::spawn(worker_config(&other_run, "lost"), rt.handle()).unwrap_err();
    assert!(err.to_string().contains("refused by coordinator: different run"), "{err}");

    let apps: Vec<App> = honest.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(assert_agree(&apps), 10);
    let refused: Vec<_> = drain(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::PeerRefused { code, .. } => Some(code),
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::Joined { name, .. }) => {
                assert!(name.starts_with('w'), "{name} was admitted");
                None
            }
            _ => None,
        })
        .collect();
    assert_eq!(refused, [RefusalCode::WrongSecret, RefusalCode::RunMismatch]);
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn a_worker_reports_a_wrong_fingerprint_and_an_absent_coordinator() {
    let rt = runtime();
    let node = {
        let _guard = rt.enter();
        CoordinatorNode::start(coordinator_config(1, Duration::from_secs(5))).unwrap()
    };
    let mut join = node.join_string();
    join.fingerprint.0[0] ^= 1;
    let err = WorkerHandle::spawn(worker_config(&join, "w0"), rt.handle()).unwrap_err();
    assert!(matches!(err, CommError::Node(NodeError::Unreachable(_))), "{err}");
    assert!(err.to_string().contains("does not match the pinned"), "{err}");
    rt.block_on(node.shutdown()).unwrap();

    // Nobody answers there: a UDP socket this test holds and never reads. Not the stopped
    // coordinator's port: once freed, a node of a test running in parallel may bind it, and
    // its certificate then fails the pin at once, which ends the worker before its policy's
    // 500 ms.
    let silent = std::net::UdpSocket::bind(localhost()).unwrap();
    join.port = silent.local_addr().unwrap().port();
    // Attempts time out until the policy gives up.
    let mut cfg = worker_config(&join, "w0");
    cfg.reconnect.connect_timeout = Duration::from_millis(200);
    cfg.reconnect.give_up_after = Duration::from_millis(500);
    let start = Instant::now();
    let err = WorkerHandle::spawn(cfg, rt.handle()).unwrap_err();
    assert!(matches!(err, CommError::Node(NodeError::Unreachable(_))), "{err}");
    assert!(err.to_string().contains("no answer to the handshake"), "{err}");
    assert!(start.elapsed() >= Duration::from_millis(500));
    drop(silent);
}

/// A 3 MiB payload for `member` in `round` (large enough for the blocking-pool path).
fn big(member: MemberId, round: Round) -> Bytes {
    let seed = u64::from(member) << 32 | round;
    (0..3u64 << 20)
        .map(|i| (xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), seed) >> 7) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[test]
fn large_payloads_cross_intact_through_the_async_api() {
    let rt = runtime();
    rt.block_on(async {
        let node = CoordinatorNode::start(coordinator_config(2, Duration::from_secs(10))).unwrap();
        let join = node.join_string();
        let (a, b) = tokio::join!(
            WorkerNode::connect(worker_config(&join, "a")),
            WorkerNode::connect(worker_config(&join, "b"))
        );
        let mut nodes = [a.unwrap(), b.unwrap()];
        let mut ids: Vec<_> = nodes.iter().map(WorkerNode::member).collect();
        ids.sort_unstable();
        for round in 0..3 {
            for n in &nodes {
                n.publish(round, big(n.member(), round)).await.unwrap();
            }
            for n in &mut nodes {
                let (ready, payloads) = loop {
                    let event = tokio::time::timeout(EVENT_WAIT, n.next_event()).await;
                    if let WorkerNodeEvent::Protocol(WorkerEvent::RoundReady {
                        round,
                        payloads,
                        ..
                    }) = event.unwrap().unwrap()
                    {
                        break (round, payloads);
                    }
                };
                assert_eq!(ready, round);
                let expected: Vec<_> = ids.iter().map(|&m| (m, big(m, round))).collect();
                assert!(payloads == expected, "round {round}: payloads differ");
            }
        }
        for n in nodes {
            n.leave().await.unwrap();
        }
        node.shutdown().await.unwrap();
    });
}

/// 4096 f32 (16 KiB) for `member` in `round`, with fractions.
fn vector(member: MemberId, round: Round) -> Bytes {
    let seed = u64::from(member) << 32 | round;
    let values: Vec<f32> = (0..4096u64)
        .map(|i| {
            let h = xxhash_rust::xxh3::xxh3_64_with_seed(&i.to_le_bytes(), seed);
            ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 5.0
        })
        .collect();
    crate::protocol::ring::testing::to_bytes(&values)
}

#[test]
fn four_workers_ring_reduce_and_each_sends_one_and_a_half_payloads() {
    use crate::protocol::ring::testing::{floats, F32Sum};
    const ROUNDS: Round = 4;
    let rt = runtime();
    rt.block_on(async {
        let cfg = topology_config(Topology::Ring, 4, Duration::from_secs(10));
        let coordinator = CoordinatorNode::start(cfg).unwrap();
        let join = coordinator.join_string();
        let reducer: Arc<dyn crate::protocol::RingReducer> = Arc::new(F32Sum);
        let connect = |name: &str| {
            let mut cfg = worker_config(&join, name);
            cfg.reducer = Some(reducer.clone());
            WorkerNode::connect(cfg)
        };
        let (a, b, c, d) = tokio::join!(connect("a"), connect("b"), connect("c"), connect("d"));
        let mut nodes = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()];
        let payload_len = vector(0, 0).len() as u64;
        for round in 0..ROUNDS {
            for n in &nodes {
                n.publish(round, vector(n.member(), round)).await.unwrap();
            }
            let mut aggregates = Vec::new();
            for n in &mut nodes {
                let (members, aggregate, stats) = loop {
                    let event = tokio::time::timeout(EVENT_WAIT, n.next_event()).await;
                    match event.unwrap().unwrap() {
                        WorkerNodeEvent::Protocol(WorkerEvent::AggregateReady {
                            round: r,
                            members,
                            aggregate,
                            stats,
                        }) => {
                            assert_eq!(r, round);
                            break (members, aggregate, stats);
                        }
                        WorkerNodeEvent::Protocol(WorkerEvent::RoundReady { round, .. }) => {
                            panic!("round {round} fell back to relay")
                        }
                        _ => {}
                    }
                };
                assert_eq!(members, vec![0, 1, 2, 3]);
                // The counted bytes: 2(N−1) segments of a quarter payload, all to the
                // successor and all from the predecessor, none through the coordinator.
                let me = n.member();
                let sent: Vec<_> =
                    stats.traffic.iter().filter(|t| t.sent > 0).map(|t| (t.peer, t.sent)).collect();
                let received: Vec<_> = stats
                    .traffic
                    .iter()
                    .filter(|t| t.received > 0)
                    .map(|t| (t.peer, t.received))
                    .collect();
                assert_eq!(sent, vec![(Dest::Member((me + 1) % 4), payload_len * 6 / 4)]);
                assert_eq!(received, vec![(Dest::Member((me + 3) % 4), payload_len * 6 / 4)]);
                aggregates.push(aggregate);
            }
            assert!(aggregates.windows(2).all(|w| w[0] == w[1]), "round {round}: same bytes");
            let sum = floats(&aggregates[0]).unwrap();
            let inputs: Vec<Vec<f32>> =
                (0..4).map(|m| floats(&vector(m, round)).unwrap()).collect();
            for (j, got) in sum.iter().enumerate() {
                let expected: f32 = inputs.iter().map(|v| v[j]).sum();
                assert!((got - expected).abs() <= 1e-5 * (1.0 + expected.abs()), "value {j}");
            }
        }
        for n in nodes {
            n.leave().await.unwrap();
        }
        coordinator.shutdown().await.unwrap();
    });
}
