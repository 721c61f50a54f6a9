//! Bad input, one case at a time: each is rejected (or refused) and changes no outcome.

use std::time::Duration;

use bytes::Bytes;

use super::net::Net;
use super::{coordinator_config, worker_config, BOTH};
use crate::ids::RunId;
use crate::protocol::{
    ConnId, Coordinator, CoordinatorEvent, CoordinatorState, Delivery, Dest, Digest, PeerInfo,
    PeerMessage, ProtocolError, RefuseReason, RejectReason, ToCoordinator, ToWorker, Topology,
    WorkerEvent, WorkerProto,
};

fn coordinator_rejections(net: &Net) -> Vec<RejectReason> {
    net.coordinator_events
        .iter()
        .filter_map(|e| match e {
            CoordinatorEvent::Rejected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn last_worker_rejection(net: &mut Net, i: usize) -> Option<RejectReason> {
    let proto = net.nodes[i].proto.as_mut().expect("alive");
    let mut last = None;
    while let Some(e) = proto.poll_event() {
        if let WorkerEvent::Rejected { reason, .. } = e {
            last = Some(reason);
        }
    }
    last
}

#[test]
fn bad_payloads_at_the_coordinator_are_rejected_without_changing_commits() {
    let mut net = Net::new(coordinator_config(Topology::Relay, 3), worker_config(), 3, 2);
    net.connect_all();
    net.nodes[0].app.compute = Duration::from_millis(200);
    net.nodes[1].app.compute = Duration::from_millis(500);
    net.nodes[2].app.compute = Duration::from_millis(500);
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(1)));
    // Round 2 is open; worker 0 delivered, the others not yet.
    net.run_for(Duration::from_millis(215));
    let now = net.now;
    let conn0 = net.nodes[0].conn;
    let conn1 = net.nodes[1].conn;
    let c = net.coordinator.as_mut().expect("coordinator");
    assert_eq!(c.open_round(), Some(2));
    let junk = Bytes::from_static(b"not the first copy");
    c.handle_payload(now, conn0, 2, 0, junk.clone()); // duplicate, other bytes
    c.handle_payload(now, conn1, 7, 1, junk.clone()); // a future round
    c.handle_payload(now, conn1, 1, 1, junk.clone()); // a committed round
    c.handle_payload(now, conn1, 2, 2, junk.clone()); // someone else's payload
    c.handle_payload(now, ConnId(999), 2, 1, junk.clone()); // a stranger
    c.handle_payload(now, conn1, 2, 1, Bytes::from(vec![0; (1 << 16) + 1])); // oversized
    c.handle_message(
        now,
        ConnId(999),
        ToCoordinator::StateWanted { last_applied: None, direct: true },
    );
    c.handle_message(now, conn1, ToCoordinator::Delivered { round: 2, digest: Digest(1) });
    c.handle_state(now, conn1, 1, junk.clone()); // nobody asked
    c.handle_message(now, conn1, ToCoordinator::Fetch { round: 2, member: 0, digest: Digest(5) });
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(3)));
    net.check_consistency();
    use RejectReason::*;
    let expected = [
        Duplicate,
        WrongRound,
        Late,
        SenderMismatch,
        NotJoined,
        Oversized,
        NotJoined,
        WrongTopology,
        Unsolicited,
    ];
    assert_eq!(coordinator_rejections(&net), expected);
    assert_eq!(net.commits()[&2], vec![0, 1, 2]);
    let first = net.nodes[0].app.ready[&2][0].1.clone();
    assert_ne!(first, junk, "the first copy won");
    // The fetch of an uncommitted payload with a wrong digest got Unavailable, harmlessly.
    assert!(net.nodes[1].app.events.iter().all(|e| !matches!(e, WorkerEvent::FellBehind { .. })));
}

#[test]
fn bad_frames_at_a_worker_are_rejected_without_changing_its_rounds() {
    for topology in BOTH {
        let mut net = Net::new(coordinator_config(topology, 3), worker_config(), 3, 3);
        net.connect_all();
        for node in &mut net.nodes {
            node.app.compute = Duration::from_millis(200);
        }
        assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(1)));
        let now = net.now;
        let p = net.nodes[0].proto.as_mut().expect("alive");
        while p.poll_event().is_some() {}
        let push_from = match topology {
            Topology::Relay | Topology::Ring => Dest::Coordinator,
            Topology::AllGather => Dest::Member(1),
        };
        let wrong_link = match topology {
            Topology::Relay | Topology::Ring => Dest::Member(1),
            Topology::AllGather => Dest::Member(2),
        };
        let stranger = match topology {
            Topology::Relay | Topology::Ring => Dest::Coordinator,
            Topology::AllGather => Dest::Member(9),
        };
        use RejectReason::*;
        let cases: Vec<(Case, RejectReason)> = vec![
            (Box::new(move |p| p.handle_payload(now, push_from, 1, 1, junk_of())), Late),
            (Box::new(move |p| p.handle_payload(now, push_from, 40, 1, junk_of())), WrongRound),
            (Box::new(move |p| p.handle_payload(now, wrong_link, 2, 1, junk_of())), SenderMismatch),
            (Box::new(move |p| p.handle_payload(now, push_from, 2, 0, junk_of())), SenderMismatch),
            (Box::new(move |p| p.handle_payload(now, stranger, 2, 9, junk_of())), NotMember),
            (
                Box::new(move |p| {
                    p.handle_payload(now, push_from, 2, 1, Bytes::from(vec![1; (1 << 16) + 1]))
                }),
                Oversized,
            ),
            (Box::new(move |p| p.handle_state(now, 5, junk_of())), Unsolicited),
            (
                Box::new(move |p| {
                    p.handle_coordinator(
                        now,
                        ToWorker::Commit {
                            round: 2,
                            delivered: vec![
                                Delivery { member: 2, digest: Digest(0) },
                                Delivery { member: 1, digest: Digest(0) },
                            ],
                            stragglers: vec![],
                            aggregate: None,
                        },
                    )
                }),
                Malformed,
            ),
            (
                Box::new(move |p| {
                    p.handle_coordinator(
                        now,
                        ToWorker::RoundOpen { round: 2, members: vec![1, 2], deadline_ms: 5 },
                    )
                }),
                NotMember,
            ),
            (
                Box::new(move |p| {
                    p.handle_coordinator(
                        now,
                        ToWorker::Commit {
                            round: 0,
                            delivered: vec![],
                            stragglers: vec![],
                            aggregate: None,
                        },
                    )
                }),
                Late,
            ),
            (
                Box::new(move |p| {
                    p.handle_peer(now, 2, PeerMessage::Unavailable { round: 2, member: 1 })
                }),
                Unsolicited,
            ),
        ];
        for (n, (case, expected)) in cases.into_iter().enumerate() {
            case(net.nodes[0].proto.as_mut().expect("alive"));
            assert_eq!(last_worker_rejection(&mut net, 0), Some(expected), "{topology:?} case {n}");
        }
        // A fetch for something not held is answered Unavailable, not with bytes.
        let p = net.nodes[0].proto.as_mut().expect("alive");
        p.handle_peer(now, 2, PeerMessage::Fetch { round: 1, member: 1, digest: Digest(3) });
        let answer = std::iter::from_fn(|| p.poll_transmit()).last();
        assert!(matches!(
            answer,
            Some(crate::protocol::WorkerTransmit::Peer {
                to: 2,
                msg: PeerMessage::Unavailable { round: 1, member: 1 }
            })
        ));
        assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(4)));
        net.check_consistency();
        for round in 2..=4 {
            assert_eq!(net.commits()[&round], vec![0, 1, 2], "{topology:?}");
        }
    }
}

/// One bad input fed to a worker.
type Case = Box<dyn Fn(&mut WorkerProto)>;

fn junk_of() -> Bytes {
    Bytes::from_static(b"junk")
}

#[test]
fn joins_are_validated() {
    let mut net = Net::new(coordinator_config(Topology::Relay, 1), worker_config(), 1, 4);
    net.connect_all();
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(1)));
    let now = net.now;
    let c = net.coordinator.as_mut().expect("coordinator");
    let join = |name: &str, last_applied| ToCoordinator::bare_join(name, last_applied);
    c.handle_message(now, ConnId(100), join("", None));
    c.handle_message(now, ConnId(101), join(&"x".repeat(65), None));
    c.handle_message(now, ConnId(102), join("bell\u{7}", None));
    c.handle_message(now, ConnId(103), join("future", Some(1000)));
    c.handle_message(
        now,
        ConnId(104),
        ToCoordinator::Join {
            name: "big".into(),
            last_applied: None,
            peer: PeerInfo(vec![0; 5000]),
            signature: Default::default(),
            follows: false,
        },
    );
    // The same name from a new connection takes over; the old one is refused.
    let old = net.nodes[0].conn;
    c.handle_message(now, ConnId(105), join("w0", None));
    let refused: Vec<(ConnId, RefuseReason)> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            CoordinatorEvent::Refused { conn, reason } => Some((conn, reason)),
            _ => None,
        })
        .collect();
    use RefuseReason::*;
    assert_eq!(
        refused,
        vec![
            (ConnId(100), InvalidJoin),
            (ConnId(101), InvalidJoin),
            (ConnId(102), InvalidJoin),
            (ConnId(103), AheadOfCoordinator),
            (ConnId(104), InvalidJoin),
            (old, Superseded),
        ]
    );
    assert_eq!(c.member_id("w0"), Some(0));
    assert_eq!(c.member_id("future"), None, "a refused name gets no id");
}

#[test]
fn ids_are_never_reused_and_the_run_fills_up() {
    let mut config = coordinator_config(Topology::Relay, 1);
    config.max_members = 2;
    let now = std::time::Instant::now();
    let mut c = Coordinator::new(config, now).expect("config");
    let join = |name: &str| ToCoordinator::bare_join(name, None);
    c.handle_message(now, ConnId(1), join("a"));
    c.handle_message(now, ConnId(2), join("b"));
    c.handle_disconnect(now, ConnId(1));
    c.handle_message(now, ConnId(3), join("c"));
    c.handle_message(now, ConnId(4), join("a"));
    let events: Vec<CoordinatorEvent> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        events.contains(&CoordinatorEvent::Refused { conn: ConnId(3), reason: RefuseReason::Full })
    );
    assert_eq!(c.member_id("a"), Some(0));
    assert_eq!(c.member_id("b"), Some(1));
    assert_eq!(c.connected(), vec![0, 1]);
}

#[test]
fn a_restored_coordinator_nobody_rejoins_does_not_ask_for_a_past_timeout() {
    // After the rejoin grace runs out with nobody back, the next timeout must not be a
    // moment already past: a driver sleeping until it would spin.
    let mut net = Net::new(coordinator_config(Topology::Relay, 3), worker_config(), 3, 5);
    net.connect_all();
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(2)));
    let state = net.coordinator.as_ref().expect("coordinator").persisted();
    let config = coordinator_config(Topology::Relay, 3);
    let grace = config.rejoin_grace;
    let start = net.now;
    let mut c = Coordinator::restore(config, state, start).expect("restore");
    assert_eq!(c.poll_timeout(), Some(start + grace), "the gate is the next timeout");
    let later = start + grace + Duration::from_secs(1);
    c.handle_timeout(later);
    assert!(
        c.poll_timeout().is_none_or(|t| t > later),
        "{:?} is not after {later:?}",
        c.poll_timeout()
    );
}

#[test]
fn persisted_state_round_trips_and_inconsistent_state_is_refused() {
    let mut net = Net::new(coordinator_config(Topology::AllGather, 3), worker_config(), 3, 5);
    net.connect_all();
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(5)));
    let state = net.coordinator.as_ref().expect("coordinator").persisted();
    assert_eq!(state.committed, net.coordinator.as_ref().and_then(Coordinator::committed));
    assert_eq!(state.commits.len(), 4, "keep_rounds");
    assert_eq!(state.last_round_members, vec![0, 1, 2]);
    let bytes = state.encode().expect("encode");
    assert_eq!(CoordinatorState::decode(&bytes).expect("decode"), state);
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(CoordinatorState::decode(&trailing), Err(ProtocolError::TrailingBytes(1))));
    assert!(CoordinatorState::decode(&bytes[..bytes.len() / 2]).is_err());

    let config = coordinator_config(Topology::AllGather, 3);
    let now = net.now;
    let restore = |s: CoordinatorState| Coordinator::restore(config.clone(), s, now);
    assert!(restore(state.clone()).is_ok());
    let mut other_run = state.clone();
    other_run.run = RunId([1; 16]);
    assert!(matches!(restore(other_run), Err(ProtocolError::RunMismatch { .. })));
    let mut broken = Vec::new();
    let mut s = state.clone();
    s.next_id = 1;
    broken.push(s);
    let mut s = state.clone();
    s.members[1].1 = "w0".into();
    broken.push(s);
    let mut s = state.clone();
    s.commits.remove(1);
    broken.push(s);
    let mut s = state.clone();
    s.committed = Some(99);
    broken.push(s);
    let mut s = state.clone();
    s.last_round_members = vec![2, 1];
    broken.push(s);
    let mut s = state.clone();
    s.commits[0].delivered.reverse();
    broken.push(s);
    for (n, s) in broken.into_iter().enumerate() {
        assert!(matches!(restore(s), Err(ProtocolError::BadState(_))), "case {n}");
    }
}

#[test]
fn control_bodies_that_are_not_messages_are_errors() {
    let msg = ToWorker::RoundOpen { round: 3, members: vec![0, 1], deadline_ms: 1000 };
    let body = msg.encode().expect("encode");
    assert_eq!(ToWorker::decode(&body).expect("decode"), msg);
    let mut trailing = body.clone();
    trailing.push(1);
    assert!(matches!(ToWorker::decode(&trailing), Err(ProtocolError::TrailingBytes(1))));
    assert!(matches!(ToWorker::decode(&[200]), Err(ProtocolError::Decode(_))));
    assert!(ToCoordinator::decode(&[]).is_err());
    assert!(PeerMessage::decode(&[9, 9, 9]).is_err());
}

#[test]
fn worker_commands_refuse_misuse() {
    let now = std::time::Instant::now();
    let mut w = WorkerProto::new(worker_config(), Some(4)).expect("config");
    assert!(matches!(
        w.publish(now, 4, Bytes::from_static(b"x")),
        Err(ProtocolError::RoundApplied { round: 4, applied: 4 })
    ));
    assert!(matches!(
        w.publish(now, 5, Bytes::from(vec![0; (1 << 16) + 1])),
        Err(ProtocolError::PayloadTooLarge { .. })
    ));
    w.publish(now, 5, Bytes::from_static(b"x")).expect("publish");
    w.publish(now, 5, Bytes::from_static(b"x")).expect("the same bytes again are fine");
    assert!(matches!(
        w.publish(now, 5, Bytes::from_static(b"y")),
        Err(ProtocolError::AlreadyPublished(5))
    ));
    assert!(matches!(
        w.provide_state(now, 4, Bytes::from_static(b"s")),
        Err(ProtocolError::SnapshotNotRequested(4))
    ));
    let mut bad = worker_config();
    bad.name = String::new();
    assert!(matches!(WorkerProto::new(bad, None), Err(ProtocolError::Config(_))));
    let mut bad = coordinator_config(Topology::Relay, 0);
    assert!(Coordinator::new(bad.clone(), now).is_err());
    bad.min_members = 1;
    bad.deadline = crate::protocol::DeadlinePolicy::Fixed(Duration::MAX);
    assert!(Coordinator::new(bad, now).is_err());
}

#[test]
fn a_restored_coordinator_takes_a_committed_payload_only_as_the_upload_it_asked_for() {
    let mut net = Net::new(coordinator_config(Topology::Relay, 2), worker_config(), 2, 5);
    net.connect_all();
    assert!(net.run_until(Duration::from_secs(10), |n| n.all_applied(2)));
    let state = net.coordinator.as_ref().expect("coordinator").persisted();
    assert_eq!(state.committed, Some(2));
    let (author, bytes) = net.nodes[1].app.ready[&2][0].clone();
    let digest = Digest::of(&bytes);
    let mut now = net.now;
    let mut c = Coordinator::restore(coordinator_config(Topology::Relay, 2), state.clone(), now)
        .expect("restore");
    let conn = |member: u32| ConnId(100 + u64::from(member));
    for (member, name) in &state.members {
        let join = ToCoordinator::bare_join(name, Some(2));
        c.handle_message(now, conn(*member), join);
    }
    let fetcher = state.members.iter().map(|(m, _)| *m).find(|&m| m != author).expect("two");
    let drain = |c: &mut Coordinator| {
        let transmits: Vec<_> = std::iter::from_fn(|| c.poll_transmit()).collect();
        let rejected: Vec<_> = std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                CoordinatorEvent::Rejected { conn, round, reason } => Some((conn, round, reason)),
                _ => None,
            })
            .collect();
        (transmits, rejected)
    };
    drain(&mut c);

    // Unasked: a replay of the author's committed frame, on its new connection.
    now += Duration::from_millis(1);
    c.handle_payload(now, conn(author), 2, author, bytes.clone());
    let (transmits, rejected) = drain(&mut c);
    assert_eq!(rejected, [(conn(author), Some(2), RejectReason::Late)]);
    assert!(transmits.is_empty(), "{transmits:?}");

    // Asked: another member fetches it, the coordinator asks its author, the author uploads.
    let fetch = ToCoordinator::Fetch { round: 2, member: author, digest };
    c.handle_message(now, conn(fetcher), fetch);
    let (transmits, _) = drain(&mut c);
    assert!(
        transmits.iter().any(|t| matches!(
            t,
            crate::protocol::CoordinatorTransmit::Control {
                to,
                msg: ToWorker::Reupload { round: 2 }
            } if *to == conn(author)
        )),
        "{transmits:?}"
    );
    c.handle_payload(now, conn(author), 2, author, bytes.clone());
    let (transmits, rejected) = drain(&mut c);
    assert!(rejected.is_empty(), "{rejected:?}");
    let served: Vec<_> = transmits
        .iter()
        .filter_map(|t| match t {
            crate::protocol::CoordinatorTransmit::Payload { to, round, from_member, bytes } => {
                Some((*to, *round, *from_member, bytes.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(served, [(conn(fetcher), 2, author, bytes.clone())]);

    // Answered once: the same upload again is a replay.
    c.handle_payload(now, conn(author), 2, author, bytes);
    let (_, rejected) = drain(&mut c);
    assert_eq!(rejected, [(conn(author), Some(2), RejectReason::Late)]);
}

#[test]
fn the_largest_valid_join_is_within_max_join_len_and_close_to_it() {
    let join = crate::protocol::messages::largest_join(Some(u64::MAX));
    let ToCoordinator::Join { signature, .. } = &join else { unreachable!("a join") };
    assert!(signature.within_limits());
    assert_eq!(signature.len(), crate::protocol::MAX_SIGNATURE_ENTRIES, "not folded");
    assert_eq!(signature.byte_len(), crate::protocol::MAX_SIGNATURE_BYTES);
    let len = join.encode().expect("encode").len();
    let max = crate::protocol::MAX_JOIN_LEN;
    assert!(len <= max, "{len} > {max}");
    assert!(len * 1000 >= max * 995, "{len} is far below the bound {max}: the bound is loose");

    // And it is valid: a coordinator admits it (as a fresh worker's).
    let now = std::time::Instant::now();
    let mut c = Coordinator::new(coordinator_config(Topology::Relay, 1), now).expect("new");
    c.handle_message(now, ConnId(1), crate::protocol::messages::largest_join(None));
    let joined = std::iter::from_fn(|| c.poll_event())
        .any(|e| matches!(e, CoordinatorEvent::Joined { conn: ConnId(1), .. }));
    assert!(joined, "the largest join was refused");
}
