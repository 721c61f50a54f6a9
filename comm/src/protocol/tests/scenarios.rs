//! Whole-run scenarios: everyone delivers, stragglers, crashes, rejoins, restarts,
//! newcomers.

use std::time::Duration;

use super::net::{End, Envelope, Frame, Net, Verdict};
use super::{coordinator_config, worker_config, BOTH};
use crate::ids::{MemberId, Round};
use crate::protocol::{CoordinatorEvent, RejectReason, ToCoordinator, Topology, WorkerEvent};

fn net(topology: Topology, workers: usize, min_members: usize) -> Net {
    let mut net = Net::new(coordinator_config(topology, min_members), worker_config(), workers, 1);
    net.connect_all();
    net
}

/// True for the frames by which worker `i` publishes its payload of `round`.
fn publishes(env: &Envelope, i: usize, round: Round) -> bool {
    if env.from != End::Worker(i) {
        return false;
    }
    match &env.frame {
        Frame::Payload { round: r, .. } => *r == round,
        Frame::Control(_) => {
            matches!(env.to_coordinator(), Some(ToCoordinator::Delivered { round: r, .. }) if r == round)
        }
        Frame::State { .. } | Frame::Segment { .. } | Frame::StateChunk { .. } => false,
    }
}

fn committed_stats(net: &Net, round: Round) -> crate::protocol::RoundStats {
    net.coordinator_events
        .iter()
        .find_map(|e| match e {
            CoordinatorEvent::RoundCommitted { round: r, stats, .. } if *r == round => {
                Some(stats.clone())
            }
            _ => None,
        })
        .expect("round committed")
}

fn opened_at(net: &Net, round: Round) -> bool {
    net.coordinator_events
        .iter()
        .any(|e| matches!(e, CoordinatorEvent::RoundOpened { round: r, .. } if *r == round))
}

#[test]
fn all_deliver_and_apply_identical_commits_in_member_order() {
    for topology in BOTH {
        let mut net = net(topology, 4, 4);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(4)), "{topology:?}");
        net.check_consistency();
        let commits = net.commits();
        for round in 0..=4 {
            assert_eq!(commits[&round], vec![0, 1, 2, 3], "{topology:?} round {round}");
            let stats = committed_stats(&net, round);
            assert!(stats.stragglers.is_empty());
            // Everyone delivered: the round closed well before its 1 s deadline.
            assert!(stats.duration.expect("duration") < Duration::from_millis(500));
        }
        for node in &net.nodes {
            for round in 0..=4 {
                let payloads = &node.app.ready[&round];
                let authors: Vec<MemberId> = payloads.iter().map(|(m, _)| *m).collect();
                assert_eq!(authors, vec![0, 1, 2, 3]);
                for (m, bytes) in payloads {
                    let text = String::from_utf8(bytes.to_vec()).expect("utf8");
                    assert!(text.starts_with(&format!("w{m}|round {round}|")), "{text}");
                }
            }
        }
        // Relay: each worker uploads once and receives three; AllGather: sends three.
        let stats = committed_stats(&net, 2);
        let sent_by_coordinator: u64 = stats.traffic.iter().map(|t| t.sent).sum();
        let received_by_coordinator: u64 = stats.traffic.iter().map(|t| t.received).sum();
        match topology {
            Topology::Relay => assert_eq!(sent_by_coordinator, 3 * received_by_coordinator),
            Topology::AllGather => assert_eq!(sent_by_coordinator + received_by_coordinator, 0),
            Topology::Ring => unreachable!("ring rounds have their own tests"),
        }
        let ready = net.nodes[0].app.events.iter().find_map(|e| match e {
            WorkerEvent::RoundReady { round: 2, stats, .. } => Some(stats.clone()),
            _ => None,
        });
        let worker_stats = ready.expect("ready");
        let received: u64 = worker_stats.traffic.iter().map(|t| t.received).sum();
        let sent: u64 = worker_stats.traffic.iter().map(|t| t.sent).sum();
        assert!(received > 0 && sent > 0, "{topology:?}: {worker_stats:?}");
        assert_eq!(worker_stats.members, vec![0, 1, 2, 3]);
        // Each other member's payload was announced as it arrived, with its first bytes,
        // before the round's commit; the worker's own never.
        let events = &net.nodes[0].app.events;
        let ready_at = events
            .iter()
            .position(|e| matches!(e, WorkerEvent::RoundReady { round: 2, .. }))
            .expect("ready");
        let mut announced: Vec<MemberId> = events[..ready_at]
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::PayloadArrived { round: 2, member, head } => {
                    assert!(head.starts_with(format!("w{member}|round 2|").as_bytes()));
                    assert!(head.len() <= crate::protocol::PAYLOAD_HEAD_LEN);
                    Some(*member)
                }
                _ => None,
            })
            .collect();
        announced.sort_unstable();
        let me = net.nodes[0]
            .proto
            .as_ref()
            .and_then(crate::protocol::WorkerProto::member)
            .expect("joined");
        let others: Vec<MemberId> = (0..4).filter(|&m| m != me).collect();
        assert_eq!(announced, others, "{topology:?}");
    }
}

#[test]
fn straggler_is_left_out_of_one_round_but_stays_a_member() {
    for topology in BOTH {
        let mut net = net(topology, 4, 4);
        // Worker 3's round-1 publication arrives 2 s late: after the 1 s deadline.
        net.rule = Some(Box::new(|env, _| {
            if publishes(env, 3, 1) {
                Verdict::Delay(Duration::from_secs(2))
            } else {
                Verdict::Pass
            }
        }));
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)), "{topology:?}");
        // Until the late publication has arrived.
        net.run_for(Duration::from_secs(3));
        net.check_consistency();
        let commits = net.commits();
        assert_eq!(commits[&0], vec![0, 1, 2, 3]);
        assert_eq!(commits[&1], vec![0, 1, 2], "{topology:?}: the straggler is out of round 1");
        assert_eq!(commits[&2], vec![0, 1, 2, 3], "{topology:?}: and back in round 2");
        let stats = committed_stats(&net, 1);
        assert_eq!(stats.stragglers, vec![3]);
        assert!(stats.duration.expect("duration") >= Duration::from_secs(1));
        // The straggler applied round 1 with the others' payloads.
        let authors: Vec<MemberId> = net.nodes[3].app.ready[&1].iter().map(|(m, _)| *m).collect();
        assert_eq!(authors, vec![0, 1, 2]);
        // Its late publication was refused by whoever got it after the commit.
        let late_at_coordinator = net.coordinator_events.iter().any(|e| {
            matches!(
                e,
                CoordinatorEvent::Rejected { round: Some(1), reason: RejectReason::Late, .. }
            )
        });
        let late_at_workers =
            (0..3).any(|i| net.worker_rejections(i).contains(&RejectReason::Late));
        assert!(late_at_coordinator || late_at_workers, "{topology:?}");
    }
}

#[test]
fn crash_mid_round_closes_at_the_deadline_and_drops_the_member() {
    for topology in BOTH {
        let mut net = net(topology, 4, 3);
        for node in &mut net.nodes {
            node.app.compute = Duration::from_millis(100);
        }
        assert!(net.run_until(Duration::from_secs(30), |n| opened_at(n, 2)));
        let crashed = net.member(2);
        net.crash_worker(2);
        let crashed_at = net.now;
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(4)), "{topology:?}");
        net.check_consistency();
        let commits = net.commits();
        assert_eq!(commits[&2], vec![0, 1, 3], "{topology:?}");
        let stats = committed_stats(&net, 2);
        assert_eq!(stats.stragglers, vec![crashed]);
        assert!(stats.duration.expect("duration") >= Duration::from_secs(1));
        assert!(net.now - crashed_at >= Duration::from_millis(900));
        for round in 3..=4 {
            assert_eq!(commits[&round], vec![0, 1, 3]);
            assert!(!committed_stats(&net, round).members.contains(&crashed));
        }
    }
}

#[test]
fn rejoin_after_crash_keeps_the_id_and_catches_up_by_snapshot() {
    for topology in BOTH {
        let mut net = net(topology, 4, 3);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(1)));
        let id = net.member(3);
        net.crash_worker(3);
        // The others go on for more rounds than the coordinator remembers (keep_rounds 4).
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(8)));
        net.restart_worker(3, false);
        assert!(net.run_until(Duration::from_secs(60), |n| {
            n.all_applied(14) && n.commits().get(&14).is_some_and(|c| c.len() == 4)
        }));
        net.check_consistency();
        assert_eq!(net.member(3), id, "{topology:?}: same name, same id");
        assert_eq!(net.nodes[3].app.states_received, 1);
        assert_eq!(net.nodes[0].app.snapshots_served, 1, "the lowest live member serves");
        let first_state = *net.nodes[3].app.states.keys().nth(2).expect("state");
        // It applied every round after its snapshot, like everyone.
        for round in first_state..=14 {
            assert_eq!(net.nodes[3].app.states[&round], net.nodes[0].app.states[&round]);
        }
    }
}

#[test]
fn rejoin_shortly_after_crash_replays_missed_commits() {
    for topology in BOTH {
        let mut net = net(topology, 4, 3);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(2)));
        let applied = net.nodes[3].app.applied;
        net.crash_worker(3);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(4)));
        net.restart_worker(3, true);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(8)));
        net.check_consistency();
        assert_eq!(net.nodes[3].app.states_received, 0, "{topology:?}: no snapshot needed");
        assert_eq!(applied, Some(2));
        for round in 3..=8 {
            assert!(net.nodes[3].app.ready.contains_key(&round), "{topology:?} round {round}");
        }
        assert_eq!(net.commits()[&8].len(), 4);
    }
}

#[test]
fn coordinator_restart_continues_the_run_with_the_same_ids() {
    for topology in BOTH {
        let mut net = net(topology, 4, 4);
        for node in &mut net.nodes {
            node.app.compute = Duration::from_millis(100);
        }
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)));
        // Let some of round 4's publications reach it, then kill it.
        net.run_for(Duration::from_millis(105));
        let ids: Vec<MemberId> = (0..4).map(|i| net.member(i)).collect();
        net.crash_coordinator();
        net.run_for(Duration::from_millis(500));
        net.restart_coordinator();
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(8)), "{topology:?}");
        net.check_consistency();
        let commits = net.commits();
        for round in 0..=8 {
            assert_eq!(commits[&round], vec![0, 1, 2, 3], "{topology:?} round {round}");
        }
        let after: Vec<MemberId> = (0..4).map(|i| net.member(i)).collect();
        assert_eq!(ids, after);
    }
}

#[test]
fn restarted_member_applies_the_payload_that_was_committed() {
    for topology in BOTH {
        let mut net = net(topology, 3, 3);
        // Worker 2 is slow, so each round stays open a while after workers 0 and 1
        // delivered. Worker 1 publishes round 2, crashes, restarts with its state and
        // publishes other bytes for the same round before it closes.
        net.nodes[0].app.compute = Duration::from_millis(100);
        net.nodes[1].app.compute = Duration::from_millis(100);
        net.nodes[2].app.compute = Duration::from_millis(400);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(1)));
        net.run_for(Duration::from_millis(150));
        assert_eq!(net.coordinator.as_ref().and_then(|c| c.open_round()), Some(2));
        let first = net.nodes[1].app.incarnation;
        net.crash_worker(1);
        net.restart_worker(1, true);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(4)), "{topology:?}");
        assert_ne!(net.nodes[1].app.incarnation, first);
        net.check_consistency();
        let republished = net.nodes[1].app.events.iter().any(|e| {
            matches!(
                e,
                WorkerEvent::Rejected { round: Some(2), reason: RejectReason::Duplicate, .. }
            )
        }) || net.coordinator_events.iter().any(|e| {
            matches!(
                e,
                CoordinatorEvent::Rejected { round: Some(2), reason: RejectReason::Duplicate, .. }
            )
        }) || (0..3)
            .any(|i| net.worker_rejections(i).contains(&RejectReason::Duplicate));
        assert!(republished, "{topology:?}: the second copy was refused somewhere");
        for node in &net.nodes {
            let text = String::from_utf8(node.app.ready[&2][1].1.to_vec()).expect("utf8");
            assert!(text.ends_with("incarnation 0"), "{topology:?}: first copy wins: {text}");
        }
    }
}

#[test]
fn newcomer_is_admitted_at_a_boundary_without_stalling_the_run() {
    for topology in BOTH {
        let mut net = net(topology, 3, 3);
        for node in &mut net.nodes {
            node.app.compute = Duration::from_millis(50);
        }
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)));
        let joiner = net.add_worker("late");
        net.nodes[joiner].app.compute = Duration::from_millis(50);
        net.connect(joiner);
        let joined_at = net.now;
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(8)), "{topology:?}");
        net.check_consistency();
        assert_eq!(net.member(joiner), 3);
        assert_eq!(net.nodes[joiner].app.states_received, 1, "a fresh worker gets state");
        let commits = net.commits();
        // It takes part from a later round on; the others never waited for it.
        let first = (4..=8).find(|r| commits[r].contains(&3)).expect("joined rounds");
        for round in 4..first {
            assert_eq!(commits[&round], vec![0, 1, 2]);
            assert!(committed_stats(&net, round).stragglers.is_empty());
        }
        assert!(net.now - joined_at < Duration::from_secs(5));
        for round in first..=8 {
            assert_eq!(commits[&round], vec![0, 1, 2, 3], "{topology:?}");
        }
    }
}

#[test]
fn a_round_nobody_delivers_to_commits_empty_and_everyone_proceeds() {
    for topology in BOTH {
        let mut net = net(topology, 3, 3);
        net.rule = Some(Box::new(|env, _| {
            if (0..3).any(|i| publishes(env, i, 1)) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }));
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)));
        net.check_consistency();
        let commits = net.commits();
        assert!(commits[&1].is_empty());
        assert_eq!(committed_stats(&net, 1).stragglers, vec![0, 1, 2]);
        assert_eq!(commits[&2], vec![0, 1, 2]);
        for node in &net.nodes {
            assert!(node.app.ready[&1].is_empty());
        }
    }
}

#[test]
fn duplicated_frames_change_nothing() {
    for topology in BOTH {
        let mut net = net(topology, 4, 4);
        net.faults.dup = 1.0;
        net.faults.jitter = Duration::from_millis(30);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(5)), "{topology:?}");
        net.check_consistency();
        for (round, members) in net.commits() {
            assert_eq!(members, vec![0, 1, 2, 3], "{topology:?} round {round}");
        }
        let duplicates = (0..4)
            .flat_map(|i| net.worker_rejections(i))
            .filter(|r| *r == RejectReason::Duplicate)
            .count();
        assert!(duplicates > 0);
    }
}

#[test]
fn with_min_live_a_run_that_loses_a_member_goes_on_and_takes_it_back() {
    // Without min_live, three members needed at the start are needed all along: a crash
    // pauses the run. With min_live = 1 the others go on, and the returning member catches
    // up and is in the rounds again.
    for min_live in [None, Some(1)] {
        let mut config = coordinator_config(Topology::Relay, 3);
        config.min_live = min_live;
        let mut net = Net::new(config, worker_config(), 3, 1);
        net.connect_all();
        assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(1)));
        net.crash_worker(2);
        let before = net.commits().len();
        net.run_for(Duration::from_secs(20));
        let during = net.commits().len() - before;
        match min_live {
            None => assert!(during <= 1, "paused while one of three is gone: {during} commits"),
            Some(_) => assert!(during >= 5, "went on with two: {during} commits"),
        }
        net.restart_worker(2, false);
        let last = *net.commits().keys().last().unwrap();
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(last + 3)));
        let commits = net.commits();
        assert_eq!(commits[&(last + 3)], vec![0, 1, 2], "the returning member is in again");
        net.check_consistency();
    }
}

#[test]
fn a_member_that_restarts_within_its_round_catches_up_and_delivers_to_it() {
    // A member of the open round dies before delivering and is back at once with nothing:
    // once it has a peer's state it is told the round is open, so the round closes with
    // it, not at its (long) deadline.
    // The coordinator may have seen the connection close, or not (a host gone dark: the new
    // process's join supersedes the dead connection).
    for (topology, silent) in BOTH.iter().flat_map(|&t| [(t, false), (t, true)]) {
        let mut config = coordinator_config(topology, 3);
        config.deadline = crate::protocol::DeadlinePolicy::Fixed(Duration::from_secs(600));
        let mut net = Net::new(config, worker_config(), 3, 1);
        net.connect_all();
        assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(0)));
        let open = next_after_applied(&net);
        if silent {
            net.vanish_worker(2);
        } else {
            net.crash_worker(2);
        }
        net.restart_worker(2, false);
        assert!(
            net.run_until(Duration::from_secs(30), |n| n.all_applied(open + 1)),
            "{topology:?}: round {open} waited for its deadline"
        );
        assert_eq!(net.commits()[&open], vec![0, 1, 2], "{topology:?}");
        assert_eq!(net.nodes[2].app.states_received, 1, "{topology:?}");
        net.check_consistency();
    }
}

/// The round after the last one every live worker applied.
fn next_after_applied(net: &Net) -> Round {
    net.commits().keys().last().map_or(0, |r| r + 1)
}

#[test]
fn round_zero_waits_for_min_members() {
    let mut net = net(Topology::Relay, 2, 3);
    net.run_for(Duration::from_secs(5));
    assert!(!opened_at(&net, 0));
    let third = net.add_worker("third");
    net.connect(third);
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(1)));
    assert_eq!(net.commits()[&0], vec![0, 1, 2]);
}

#[test]
fn coordinator_dying_before_its_commit_goes_out_replays_it_after_restart() {
    for topology in BOTH {
        let mut net = net(topology, 3, 3);
        let committed = |n: &Net| {
            n.coordinator_events
                .iter()
                .any(|e| matches!(e, CoordinatorEvent::RoundCommitted { round: 3, .. }))
        };
        assert!(net.run_until(Duration::from_secs(30), committed));
        // Round 3 is saved, but its Commit frames are still in flight: they die with it.
        assert_eq!(net.persisted.as_ref().and_then(|s| s.committed), Some(3));
        net.crash_coordinator();
        assert!((0..3).all(|i| net.nodes[i].app.applied == Some(2)));
        net.run_for(Duration::from_millis(200));
        net.restart_coordinator();
        let ok = net.run_until(Duration::from_secs(30), |n| n.all_applied(6));
        assert!(ok, "{topology:?}");
        net.check_consistency();
        for node in &net.nodes {
            assert_eq!(node.app.states_received, 0, "{topology:?}: replay, no snapshot");
        }
        for round in 0..=6 {
            assert_eq!(net.commits()[&round], vec![0, 1, 2], "{topology:?} round {round}");
        }
    }
}

/// The deadline of every round opening among `events`.
fn deadlines(events: &[CoordinatorEvent]) -> Vec<(Round, Duration)> {
    events
        .iter()
        .filter_map(|e| match e {
            CoordinatorEvent::RoundOpened { round, deadline, .. } => Some((*round, *deadline)),
            _ => None,
        })
        .collect()
}

#[test]
fn adaptive_deadline_learns_round_durations_and_survives_a_restart() {
    let mut config = super::coordinator_config(Topology::Relay, 3);
    config.deadline =
        crate::protocol::DeadlinePolicy::Adaptive(crate::protocol::AdaptiveDeadline {
            initial: Duration::from_secs(10),
            min: Duration::from_millis(50),
            max: Duration::from_secs(60),
            factor: 2.0,
            window: 8,
            min_samples: 3,
        });
    let mut net = Net::new(config, worker_config(), 3, 9);
    for node in &mut net.nodes {
        node.app.compute = Duration::from_millis(100);
    }
    net.connect_all();
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(5)));
    // Rounds take ~110 ms from opening to last delivery (100 ms compute, 10 ms latency).
    for (round, deadline) in deadlines(&net.coordinator_events) {
        if round < 3 {
            assert_eq!(deadline, Duration::from_secs(10), "round {round}: initial");
        } else {
            let ms = deadline.as_millis();
            assert!((200..=260).contains(&ms), "round {round}: 2 × median, got {ms} ms");
        }
    }
    net.crash_coordinator();
    net.restart_coordinator();
    let before = net.coordinator_events.len();
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(7)));
    let (round, deadline) = deadlines(&net.coordinator_events[before..])[0];
    assert!(deadline < Duration::from_secs(1), "round {round} kept the learned deadline");
}

#[test]
fn a_member_back_during_an_open_round_is_sent_the_payloads_delivered_meanwhile() {
    // Relay: worker 0 delivers round 2 while worker 1, slower, is away. Back before the
    // round closes, worker 1 must get worker 0's payload with the round, not only by
    // fetching it once the round has committed (late, after a grace, and maybe too late
    // for the next round's deadline).
    let mut net = net(Topology::Relay, 2, 2);
    net.nodes[1].app.compute = Duration::from_millis(400);
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(1)));
    assert!(net.run_until(Duration::from_secs(30), |n| {
        n.coordinator_events
            .iter()
            .any(|e| matches!(e, CoordinatorEvent::RoundOpened { round: 2, .. }))
    }));
    net.run_for(Duration::from_millis(100));
    assert!(net.nodes[0].app.published.contains_key(&2), "worker 0 delivered round 2");
    net.crash_worker(1);
    net.restart_worker(1, true);
    let fetches = std::rc::Rc::new(std::cell::Cell::new(0u32));
    let seen = fetches.clone();
    net.rule = Some(Box::new(move |env, _| {
        if env.from == End::Worker(1)
            && matches!(env.to_coordinator(), Some(ToCoordinator::Fetch { round: 2, .. }))
        {
            seen.set(seen.get() + 1);
        }
        Verdict::Pass
    }));
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(3)));
    net.check_consistency();
    assert_eq!(net.commits()[&2], vec![0, 1], "both delivered round 2");
    assert_eq!(fetches.get(), 0, "worker 1 had to fetch worker 0's payload of round 2");
}
