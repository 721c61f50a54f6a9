//! Adversaries over real QUIC: a client without the join secret, and replays of an authentic
//! payload frame captured from an earlier round.

use super::*;
use crate::protocol::{
    ConnId, CoordinatorEvent, Delivery, Digest, RejectReason, ToCoordinator, ToWorker,
};
use crate::quic::{self, NodeIdentity, QuicError, RefusalCode};
use crate::wire::{FrameCodec, FrameKind};

const MAX_FRAME: usize = SMALL_FRAME;

/// Reads every frame the coordinator sends on `conn` until the connection ends; returns the
/// bytes received and why it ended.
async fn read_until_closed(conn: quinn::Connection) -> (usize, QuicError) {
    let mut received = 0;
    while let Ok(frame) = quic::recv_frame(&conn, MAX_FRAME + 4).await {
        received += frame.len();
    }
    (received, quic::wait_closed(&conn).await)
}

/// The coordinator's protocol events, sorted by kind.
#[derive(Default)]
struct Seen {
    /// (name, member, connection) of every admission.
    joined: Vec<(String, MemberId, ConnId)>,
    /// Every commit, in order.
    commits: Vec<(Round, Vec<Delivery>)>,
    rejected: Vec<(ConnId, Option<Round>, RejectReason)>,
    refused: Vec<RefusalCode>,
}

fn sort(events: Vec<CoordinatorNodeEvent>) -> Seen {
    let mut seen = Seen::default();
    for event in events {
        match event {
            CoordinatorNodeEvent::PeerRefused { code, .. } => seen.refused.push(code),
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::Joined {
                name, member, conn, ..
            }) => seen.joined.push((name, member, conn)),
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::RoundCommitted {
                round,
                delivered,
                ..
            }) => seen.commits.push((round, delivered)),
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::Rejected { conn, round, reason }) => {
                seen.rejected.push((conn, round, reason))
            }
            _ => {}
        }
    }
    seen
}

#[test]
fn without_the_secret_a_connection_can_neither_join_nor_publish_nor_read_payloads() {
    let rt = runtime();
    let (mut node, join, progress, workers) =
        two_honest_workers(&rt, 2, Duration::from_millis(500), 6);
    // Strike while the run is under way: rounds keep opening after round 0.
    wait_until(EVENT_WAIT, "round 0 applied", || progress[0].load(Ordering::SeqCst) >= 1);
    let next = progress[0].load(Ordering::SeqCst);

    // Everything right but the secret: this run, the round being collected, a member's id.
    let mut wrong = join.secret.clone();
    wrong.0[0] ^= 1;
    let forger = FrameCodec::new(&wrong, join.run, MAX_FRAME);
    let payload = forger.encode(FrameKind::Payload, next, 0, &[0x5a; 3000], false).unwrap();
    let msg = ToCoordinator::bare_join("intruder", None);
    let join_frame =
        forger.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap();

    rt.block_on(async {
        let identity = NodeIdentity::generate("intruder").unwrap();
        let endpoint = quic::bind_client(&identity, &tuning(), localhost()).unwrap();
        let addr = join.socket_addr().unwrap();
        for (what, frame) in [("payload", &payload), ("join", &join_frame)] {
            let conn = endpoint.connect(addr, join.fingerprint).await.unwrap();
            quic::send_frame(&conn, frame).await.unwrap();
            let (received, closed) = tokio::time::timeout(EVENT_WAIT, read_until_closed(conn))
                .await
                .unwrap_or_else(|_| panic!("{what}: the connection was not refused"));
            assert_eq!(received, 0, "{what}: the coordinator sent frames to a stranger");
            match closed {
                QuicError::Refused { code, .. } => {
                    assert_eq!(code, RefusalCode::WrongSecret, "{what}")
                }
                other => panic!("{what}: unexpected close: {other}"),
            }
        }
    });

    let apps: Vec<App> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(assert_agree(&apps), 7);
    for app in &apps {
        assert!(app.payload_counts.values().all(|&n| n == 2), "{:?}", app.payload_counts);
    }
    let seen = sort(drain(&mut node));
    assert_eq!(seen.refused, [RefusalCode::WrongSecret; 2]);
    let mut names: Vec<&str> = seen.joined.iter().map(|(name, ..)| name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names, ["w0", "w1"]);
    // Nothing of the intruder's reached the round protocol, not even as a rejected input.
    let honest: Vec<ConnId> = seen.joined.iter().map(|&(_, _, conn)| conn).collect();
    assert!(seen.rejected.iter().all(|(conn, ..)| honest.contains(conn)), "{:?}", seen.rejected);
    let mut members: Vec<MemberId> = seen.joined.iter().map(|&(_, m, _)| m).collect();
    members.sort_unstable();
    members.dedup();
    let commits: Vec<_> = seen.commits.iter().filter(|(round, _)| *round <= 6).collect();
    assert_eq!(commits.len(), 7);
    for (round, delivered) in commits {
        let from: Vec<MemberId> = delivered.iter().map(|d| d.member).collect();
        assert_eq!(from, members, "round {round}");
    }
    rt.block_on(node.shutdown()).unwrap();
}

/// The raw member's payload for `round`.
fn raw_payload(member: MemberId, round: Round) -> Vec<u8> {
    let mut bytes = format!("raw {member} {round} ").into_bytes();
    bytes.extend((0..2000u32).map(|i| (i * 7 + round as u32) as u8));
    bytes
}

#[test]
fn a_payload_frame_replayed_after_its_round_committed_is_rejected() {
    const UNTIL: Round = 3;
    let rt = runtime();
    // Three members: two honest workers and a raw client that publishes by hand, so that the
    // test holds the exact bytes of a frame it sent.
    let (mut node, join, _, workers) = two_honest_workers(&rt, 3, Duration::from_secs(5), UNTIL);

    let codec = FrameCodec::new(&join.secret, join.run, MAX_FRAME);
    let msg = ToCoordinator::bare_join("raw", None);
    let join_frame =
        codec.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap();
    let (member, relayed, fresh) = rt.block_on(async {
        let identity = NodeIdentity::generate("raw").unwrap();
        let endpoint = quic::bind_client(&identity, &tuning(), localhost()).unwrap();
        let addr = join.socket_addr().unwrap();
        let conn = endpoint.connect(addr, join.fingerprint).await.unwrap();
        quic::send_frame(&conn, &join_frame).await.unwrap();
        let mut member = None;
        let mut captured = None;
        let mut fresh = None;
        // Payload frames the coordinator relayed to this member, by round and author.
        let mut relayed: BTreeMap<Round, Vec<MemberId>> = BTreeMap::new();
        loop {
            let read = tokio::time::timeout(EVENT_WAIT, quic::recv_frame(&conn, MAX_FRAME + 4));
            let frame = codec.decode(&read.await.unwrap().unwrap()).unwrap();
            if frame.header.kind == FrameKind::Payload {
                relayed.entry(frame.header.round).or_default().push(frame.header.sender);
                continue;
            }
            assert_eq!(frame.header.kind, FrameKind::Control);
            match ToWorker::decode(&frame.body).unwrap() {
                ToWorker::Welcome { member: id, .. } => member = Some(id),
                ToWorker::RoundOpen { round, members, .. } => {
                    let me = member.unwrap();
                    if members.contains(&me) {
                        // Sealed exactly as a worker's writer seals its payload.
                        let body = raw_payload(me, round);
                        let frame =
                            codec.encode(FrameKind::Payload, round, me, &body, false).unwrap();
                        quic::send_frame(&conn, &frame).await.unwrap();
                        if round == 0 {
                            captured = Some(frame);
                        }
                    }
                }
                ToWorker::Commit { round, delivered, .. } => {
                    let me = member.unwrap();
                    let mine = Delivery { member: me, digest: Digest::of(&raw_payload(me, round)) };
                    assert!(delivered.contains(&mine), "round {round}: {delivered:?}");
                    if round == 0 {
                        let captured = captured.clone().unwrap();
                        // (a) Again on the connection it came on, once its round committed.
                        quic::send_frame_delivered(&conn, &captured).await.unwrap();
                        // (b) As the first frame of a new connection, from another identity.
                        let other = NodeIdentity::generate("replayer").unwrap();
                        let endpoint = quic::bind_client(&other, &tuning(), localhost()).unwrap();
                        let replayer = endpoint.connect(addr, join.fingerprint).await.unwrap();
                        quic::send_frame_delivered(&replayer, &captured).await.unwrap();
                        fresh = Some((endpoint, tokio::spawn(read_until_closed(replayer))));
                    }
                    if round == UNTIL {
                        break;
                    }
                }
                _ => {}
            }
        }
        let me = member.unwrap();
        let leave = codec
            .encode(FrameKind::Control, 0, me, &ToCoordinator::Leave.encode().unwrap(), false)
            .unwrap();
        quic::send_frame_delivered(&conn, &leave).await.unwrap();
        quic::close_done(&conn, "done");
        (me, relayed, fresh.unwrap())
    });

    let apps: Vec<App> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(assert_agree(&apps), UNTIL as usize + 1);
    for app in &apps {
        // Each round applied once, with each member's payload once (`App::apply` also
        // checks that members are strictly ascending, so a duplicate would fail there).
        assert_eq!(app.payload_counts.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert!(app.payload_counts.values().all(|&n| n == 3), "{:?}", app.payload_counts);
    }
    // The raw member got each honest payload once and its own never back.
    for round in 0..=UNTIL {
        let mut authors = relayed.get(&round).cloned().unwrap_or_default();
        authors.sort_unstable();
        assert_eq!(authors.len(), 2, "round {round}: {authors:?}");
        assert!(!authors.contains(&member) && authors[0] != authors[1], "round {round}");
    }

    let seen = sort(drain(&mut node));
    let raw_conn = seen.joined.iter().find(|(name, ..)| name == "raw").unwrap().2;
    let joined: Vec<ConnId> = seen.joined.iter().map(|&(_, _, conn)| conn).collect();
    // (a) Named as late for round 0, on the raw member's connection.
    let on_raw: Vec<_> = seen.rejected.iter().filter(|(conn, ..)| *conn == raw_conn).collect();
    assert_eq!(on_raw, [&(raw_conn, Some(0), RejectReason::Late)]);
    // (b) The new connection was refused on its first frame, authentic as it was: not a
    // join. Its payload never reached the protocol.
    let strangers: Vec<_> =
        seen.rejected.iter().filter(|(conn, ..)| !joined.contains(conn)).collect();
    assert!(strangers.is_empty(), "{:?}", seen.rejected);
    assert_eq!(seen.refused, [RefusalCode::ProtocolViolation]);
    // Round 0 committed once, with the raw member's payload once.
    let zero: Vec<_> = seen.commits.iter().filter(|(round, _)| *round == 0).collect();
    assert_eq!(zero.len(), 1);
    assert_eq!(zero[0].1.len(), 3);
    assert_eq!(zero[0].1.iter().filter(|d| d.member == member).count(), 1);

    rt.block_on(node.shutdown()).unwrap();
    let (_endpoint, reader) = fresh;
    let (received, closed) =
        rt.block_on(async { tokio::time::timeout(EVENT_WAIT, reader).await.unwrap().unwrap() });
    assert_eq!(received, 0, "a connection that never joined was sent frames");
    assert!(closed.to_string().contains("join"), "closed with: {closed}");
}

/// The next control message on `conn`, skipping relayed payloads.
async fn next_control(conn: &quinn::Connection, codec: &FrameCodec) -> ToWorker {
    loop {
        let read = tokio::time::timeout(EVENT_WAIT, quic::recv_frame(conn, MAX_FRAME + 4));
        let frame = codec.decode(&read.await.expect("no frame in time").unwrap()).unwrap();
        if frame.header.kind == FrameKind::Control {
            return ToWorker::decode(&frame.body).unwrap();
        }
    }
}

#[test]
fn a_committed_payload_replayed_after_a_coordinator_restart_is_rejected() {
    let dir = std::env::temp_dir().join(format!("meridian-node-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = runtime();
    // The test holds the coordinator's UDP socket across the restart, so no other test can
    // take its port in between.
    let udp = std::net::UdpSocket::bind(localhost()).unwrap();
    let mut cfg = coordinator_config(1, Duration::from_secs(5));
    cfg.state_dir = Some(dir.clone());
    cfg.max_frame = MAX_FRAME;
    let start = || {
        let _guard = rt.enter();
        let mut cfg = cfg.clone();
        let socket =
            quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, udp.try_clone().unwrap());
        let socket = socket.unwrap();
        cfg.socket = Some(socket);
        CoordinatorNode::start(cfg).unwrap()
    };
    let node = start();
    let join = node.join_string();
    let addr = join.socket_addr().unwrap();
    let codec = FrameCodec::new(&join.secret, join.run, MAX_FRAME);
    let join_frame = |last_applied: Option<Round>| {
        let msg = ToCoordinator::bare_join("raw", last_applied);
        codec.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap()
    };
    let identity = NodeIdentity::generate("raw").unwrap();

    // Before the restart: the raw member delivers round 0, which commits; its frame is kept.
    let (member, captured) = rt.block_on(async {
        let endpoint = quic::bind_client(&identity, &tuning(), localhost()).unwrap();
        let conn = endpoint.connect(addr, join.fingerprint).await.unwrap();
        quic::send_frame(&conn, &join_frame(None)).await.unwrap();
        let mut member = None;
        let mut captured = None;
        loop {
            match next_control(&conn, &codec).await {
                ToWorker::Welcome { member: id, .. } => member = Some(id),
                ToWorker::RoundOpen { round: 0, .. } => {
                    let me = member.unwrap();
                    let body = raw_payload(me, 0);
                    let frame = codec.encode(FrameKind::Payload, 0, me, &body, false).unwrap();
                    quic::send_frame(&conn, &frame).await.unwrap();
                    captured = Some(frame);
                }
                ToWorker::Commit { round: 0, delivered, .. } => {
                    let me = member.unwrap();
                    let mine = Delivery { member: me, digest: Digest::of(&raw_payload(me, 0)) };
                    assert_eq!(delivered, [mine]);
                    break;
                }
                _ => {}
            }
        }
        quic::close_done(&conn, "done");
        (member.unwrap(), captured.unwrap())
    });
    rt.block_on(node.shutdown()).unwrap();

    // After the restart: the same member joins again on a fresh connection and replays the
    // captured frame, then delivers round 1 as it should.
    let mut node = start();
    assert_eq!(node.join_string().to_string(), join.to_string());
    rt.block_on(async {
        let endpoint = quic::bind_client(&identity, &tuning(), localhost()).unwrap();
        let conn = endpoint.connect(addr, join.fingerprint).await.unwrap();
        quic::send_frame(&conn, &join_frame(Some(0))).await.unwrap();
        loop {
            match next_control(&conn, &codec).await {
                ToWorker::Welcome { member: id, .. } => {
                    assert_eq!(id, member);
                    quic::send_frame_delivered(&conn, &captured).await.unwrap();
                }
                ToWorker::RoundOpen { round: 1, .. } => {
                    let body = raw_payload(member, 1);
                    let frame = codec.encode(FrameKind::Payload, 1, member, &body, false).unwrap();
                    quic::send_frame(&conn, &frame).await.unwrap();
                }
                ToWorker::Commit { round: 1, .. } => break,
                _ => {}
            }
        }
        let leave = codec
            .encode(FrameKind::Control, 0, member, &ToCoordinator::Leave.encode().unwrap(), false)
            .unwrap();
        quic::send_frame_delivered(&conn, &leave).await.unwrap();
        quic::close_done(&conn, "done");
    });

    let seen = sort(drain(&mut node));
    assert_eq!(seen.joined.len(), 1);
    let conn = seen.joined[0].2;
    // The replay was turned away as a payload of a committed round, not taken as an upload
    // of the committed payload (the restarted coordinator holds none and asked for none).
    assert_eq!(seen.rejected, [(conn, Some(0), RejectReason::Late)]);
    let mine = Delivery { member, digest: Digest::of(&raw_payload(member, 1)) };
    assert_eq!(seen.commits, [(1, vec![mine])]);
    rt.block_on(node.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
