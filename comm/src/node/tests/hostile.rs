//! Bad frames from a client that holds the run's secret: tampered, malformed, oversized.

use super::*;
use crate::protocol::{ToCoordinator, ToWorker};
use crate::quic::{self, NodeIdentity};
use crate::wire::{FrameCodec, FrameKind};

const MAX_FRAME: usize = SMALL_FRAME;

/// Reads frames until a Welcome arrives; returns the member id in it.
async fn welcome(conn: &quinn::Connection, codec: &FrameCodec) -> MemberId {
    tokio::time::timeout(EVENT_WAIT, async {
        loop {
            let bytes = quic::recv_frame(conn, MAX_FRAME + 4).await.unwrap();
            let frame = codec.decode(&bytes).unwrap();
            if frame.header.kind == FrameKind::Control {
                assert_eq!(frame.header.sender, COORDINATOR_SENDER);
                if let ToWorker::Welcome { member, .. } = ToWorker::decode(&frame.body).unwrap() {
                    return member;
                }
            }
        }
    })
    .await
    .expect("no welcome")
}

#[test]
fn tampered_malformed_and_oversized_frames_are_rejected_and_the_connection_serves_on() {
    let rt = runtime();
    let (mut node, join, _, workers) = two_honest_workers(&rt, 2, Duration::from_millis(500), 7);

    let codec = FrameCodec::new(&join.secret, join.run, MAX_FRAME);
    let join_msg = ToCoordinator::bare_join("raw", None);
    let join_frame =
        codec.encode(FrameKind::Control, 0, u32::MAX, &join_msg.encode().unwrap(), false).unwrap();
    let mut tampered = join_frame.clone();
    let at = tampered.len() - 20; // in the body, before the tag
    tampered[at] ^= 0x40;
    let undecodable = codec.encode(FrameKind::Control, 0, u32::MAX, &[0xff; 12], false).unwrap();
    let mut huge =
        codec.encode(FrameKind::Payload, 0, 0, &vec![7u8; MAX_FRAME - 200], false).unwrap();
    huge.extend_from_slice(&[0u8; 1024]); // longer than the limit on the stream

    rt.block_on(async {
        let identity = NodeIdentity::generate("raw").unwrap();
        let endpoint = quic::bind_client(&identity, &tuning(), localhost()).unwrap();
        let conn = endpoint.connect(join.socket_addr().unwrap(), join.fingerprint).await.unwrap();
        quic::send_frame(&conn, &join_frame).await.unwrap();
        let member = welcome(&conn, &codec).await;

        quic::send_frame_delivered(&conn, &tampered).await.unwrap();
        let mut junk = 14u32.to_le_bytes().to_vec();
        junk.extend_from_slice(b"garbage frame!");
        quic::send_frame_delivered(&conn, &junk).await.unwrap();
        quic::send_frame_delivered(&conn, &undecodable).await.unwrap();
        // Refused by the reader (its stream is stopped), though QUIC may already have
        // acknowledged every byte by then, so the sender cannot always tell.
        let _ = quic::send_frame_delivered(&conn, &huge).await;

        // The connection still serves: a join again is answered, with the same id.
        quic::send_frame(&conn, &join_frame).await.unwrap();
        assert_eq!(welcome(&conn, &codec).await, member);
        let leave = codec
            .encode(FrameKind::Control, 0, member, &ToCoordinator::Leave.encode().unwrap(), false)
            .unwrap();
        quic::send_frame_delivered(&conn, &leave).await.unwrap();
        quic::close_done(&conn, "done");
    });

    let apps: Vec<App> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(assert_agree(&apps), 8);

    let rejected: Vec<String> = drain(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::FrameRejected { error, .. } => Some(error),
            CoordinatorNodeEvent::PeerRefused { .. } => panic!("no connection was refused"),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 4, "{rejected:?}");
    assert!(rejected[0].contains("authentication failed"), "{}", rejected[0]);
    assert!(rejected[1].contains("not a Meridian frame"), "{}", rejected[1]);
    assert!(rejected[2].contains("malformed protocol message"), "{}", rejected[2]);
    assert!(rejected[3].contains("exceeds"), "{}", rejected[3]);
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn a_first_frame_without_the_secret_closes_only_that_connection() {
    let rt = runtime();
    let mut node = {
        let _guard = rt.enter();
        CoordinatorNode::start(coordinator_config(1, Duration::from_millis(500))).unwrap()
    };
    let join = node.join_string();
    let good = FrameCodec::new(&join.secret, join.run, MAX_FRAME);
    let msg = ToCoordinator::bare_join("raw", None);
    let mut tampered =
        good.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap();
    let at = tampered.len() - 20;
    tampered[at] ^= 1;

    rt.block_on(async {
        let identity = NodeIdentity::generate("raw").unwrap();
        let endpoint = quic::bind_client(&identity, &tuning(), localhost()).unwrap();
        let addr = join.socket_addr().unwrap();
        let bad = endpoint.connect(addr, join.fingerprint).await.unwrap();
        let good_conn = endpoint.connect(addr, join.fingerprint).await.unwrap();
        quic::send_frame(&bad, &tampered).await.unwrap();
        match tokio::time::timeout(EVENT_WAIT, quic::wait_closed(&bad)).await.unwrap() {
            quic::QuicError::Refused { code, .. } => {
                assert_eq!(code, quic::RefusalCode::WrongSecret)
            }
            other => panic!("unexpected close: {other}"),
        }
        let frame =
            good.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap();
        quic::send_frame(&good_conn, &frame).await.unwrap();
        welcome(&good_conn, &good).await;
    });
    let events = drain(&mut node);
    assert!(events.iter().any(|e| matches!(
        e,
        CoordinatorNodeEvent::PeerRefused { code: crate::quic::RefusalCode::WrongSecret, .. }
    )));
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn a_connection_that_keeps_sending_bad_frames_is_closed_as_a_protocol_violation() {
    let rt = runtime();
    let mut cfg = coordinator_config(1, Duration::from_millis(500));
    cfg.max_bad_frames = 2;
    let mut node = {
        let _guard = rt.enter();
        CoordinatorNode::start(cfg).unwrap()
    };
    let join = node.join_string();
    let codec = FrameCodec::new(&join.secret, join.run, MAX_FRAME);
    let msg = ToCoordinator::bare_join("raw", None);
    let frame =
        codec.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap();
    let garbage = codec.encode(FrameKind::Control, 0, u32::MAX, b"\xff\xff\xff", false).unwrap();
    rt.block_on(async {
        let identity = NodeIdentity::generate("raw").unwrap();
        let endpoint = quic::bind_client(&identity, &tuning(), localhost()).unwrap();
        let conn = endpoint.connect(join.socket_addr().unwrap(), join.fingerprint).await.unwrap();
        quic::send_frame(&conn, &frame).await.unwrap();
        welcome(&conn, &codec).await;
        for _ in 0..3 {
            // The third one may find the connection already closing.
            let _ = quic::send_frame(&conn, &garbage).await;
        }
        match tokio::time::timeout(EVENT_WAIT, quic::wait_closed(&conn)).await.unwrap() {
            quic::QuicError::Refused { code, .. } => {
                assert_eq!(code, quic::RefusalCode::ProtocolViolation)
            }
            other => panic!("unexpected close: {other}"),
        }
    });
    let rejected = drain(&mut node)
        .into_iter()
        .filter(|e| matches!(e, CoordinatorNodeEvent::FrameRejected { .. }))
        .count();
    assert_eq!(rejected, 3);
    rt.block_on(node.shutdown()).unwrap();
}
