//! End-to-end tests over real UDP on 127.0.0.1: handshakes, pinning, refusals, frames.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::ConnectionError;

use super::tls::{client_crypto, crypto_provider, SERVER_NAME};
use super::verify::ServerPin;
use super::*;
use crate::error::CommError;
use crate::ids::CertFingerprint;

const LIMIT: Duration = Duration::from_secs(10);

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("test step timed out")
}

fn tuning() -> TransportTuning {
    TransportTuning { rtt_ms: 10.0, ..Default::default() }
}

struct Node {
    identity: NodeIdentity,
    endpoint: QuicEndpoint,
}

fn server(name: &str, auth: ClientAuth, tuning: &TransportTuning) -> Node {
    let identity = NodeIdentity::generate(name).unwrap();
    let endpoint = bind_server(&identity, auth, tuning, any_port()).unwrap();
    Node { identity, endpoint }
}

fn client(name: &str, tuning: &TransportTuning) -> Node {
    let identity = NodeIdentity::generate(name).unwrap();
    let endpoint = bind_client(&identity, tuning, any_port()).unwrap();
    Node { identity, endpoint }
}

impl Node {
    fn addr(&self) -> SocketAddr {
        self.endpoint.local_addr().unwrap()
    }
}

/// Connects `from` to `to` (pinning `pin`) while `to` accepts; returns both results.
async fn dial(
    from: &Node,
    to: &Node,
    pin: CertFingerprint,
) -> (crate::Result<quinn::Connection>, crate::Result<quinn::Connection>) {
    within(async {
        tokio::join!(from.endpoint.connect(to.addr(), pin), async {
            to.endpoint.accept().await.expect("endpoint closed")
        })
    })
    .await
}

/// The client side of a handshake the server rejected: either `connect` failed, or it
/// succeeded and the connection then died with a TLS alert.
async fn assert_rejected_by_server(result: crate::Result<quinn::Connection>) {
    let cause = match result {
        Err(CommError::Quic(QuicError::Handshake { source, .. })) => source,
        Err(other) => panic!("unexpected error: {other}"),
        Ok(conn) => match within(wait_closed(&conn)).await {
            QuicError::Connection(source) => source,
            other => panic!("unexpected close: {other}"),
        },
    };
    match cause {
        ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            assert_eq!(code & !0xff, 0x100, "expected a TLS alert, got code {code:#x}");
        }
        other => panic!("expected the server to abort the handshake, got {other}"),
    }
}

#[tokio::test]
async fn frames_flow_both_ways_with_the_right_pin() {
    // Each direction runs a different congestion controller (it acts on the sender).
    let coordinator = server("coordinator", ClientAuth::AcceptAny, &tuning());
    let worker = client("worker", &TransportTuning { congestion: Congestion::Bbr, ..tuning() });
    let (to_coord, at_coord) =
        dial(&worker, &coordinator, coordinator.identity.fingerprint()).await;
    let (to_coord, at_coord) = (to_coord.unwrap(), at_coord.unwrap());

    // Each side knows who is at the other end by certificate.
    assert_eq!(peer_fingerprint(&at_coord), Some(worker.identity.fingerprint()));
    assert_eq!(peer_fingerprint(&to_coord), Some(coordinator.identity.fingerprint()));

    let small = b"hello coordinator".to_vec();
    let big: Vec<u8> =
        (0..20_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    for frame in [&small, &big] {
        let (sent, got) = within(async {
            tokio::join!(send_frame(&to_coord, frame), recv_frame(&at_coord, 32 << 20))
        })
        .await;
        sent.unwrap();
        assert!(got.unwrap() == *frame, "worker → coordinator frame corrupted");
        let (sent, got) = within(async {
            tokio::join!(send_frame_delivered(&at_coord, frame), recv_frame(&to_coord, 32 << 20))
        })
        .await;
        sent.unwrap();
        assert!(got.unwrap() == *frame, "coordinator → worker frame corrupted");
    }
    close_done(&to_coord, "bye");
    match within(wait_closed(&at_coord)).await {
        QuicError::Closed { code, reason } => assert_eq!((code, reason.as_str()), (0, "bye")),
        other => panic!("expected an orderly close, got {other}"),
    }
}

#[tokio::test]
async fn wrong_pin_fails_the_handshake_on_both_sides() {
    let coordinator = server("coordinator", ClientAuth::AcceptAny, &tuning());
    let worker = client("worker", &tuning());
    let pinned = CertFingerprint([7; 32]);
    let (client_side, server_side) = dial(&worker, &coordinator, pinned).await;

    let err = client_side.unwrap_err();
    let message = err.to_string();
    match err {
        CommError::Quic(QuicError::PinMismatch { presented, pinned: p, addr }) => {
            assert_eq!(presented, coordinator.identity.fingerprint());
            assert_eq!(p, pinned);
            assert_eq!(addr, coordinator.addr());
        }
        other => panic!("expected a pin mismatch, got {other}"),
    }
    assert!(message.contains(&coordinator.identity.fingerprint().to_string()), "{message}");
    assert!(message.contains(&pinned.to_string()), "{message}");

    let err = server_side.unwrap_err();
    assert!(matches!(err, CommError::Quic(QuicError::Handshake { .. })), "{err}");
}

#[tokio::test]
async fn pinned_server_refuses_an_unpinned_client_and_admits_a_pinned_one() {
    let member_id = NodeIdentity::generate("member").unwrap();
    let pins: PinSet = [member_id.fingerprint()].into_iter().collect();
    let peer = server("peer", ClientAuth::Pinned(pins.clone()), &tuning());
    let stranger = client("stranger", &tuning());
    let member = Node {
        endpoint: bind_client(&member_id, &tuning(), any_port()).unwrap(),
        identity: member_id,
    };

    let (client_side, server_side) = dial(&stranger, &peer, peer.identity.fingerprint()).await;
    let err = server_side.unwrap_err();
    assert!(matches!(err, CommError::Quic(QuicError::Handshake { .. })), "{err}");
    assert_rejected_by_server(client_side).await;

    let (client_side, server_side) = dial(&member, &peer, peer.identity.fingerprint()).await;
    let (to_peer, at_peer) = (client_side.unwrap(), server_side.unwrap());
    assert_eq!(peer_fingerprint(&at_peer), Some(member.identity.fingerprint()));
    let (sent, got) = within(async {
        tokio::join!(send_frame(&to_peer, b"payload"), recv_frame(&at_peer, 1024))
    })
    .await;
    sent.unwrap();
    assert_eq!(got.unwrap(), b"payload");

    // Admitting the stranger later lets its next handshake through.
    pins.insert(stranger.identity.fingerprint());
    let (client_side, server_side) = dial(&stranger, &peer, peer.identity.fingerprint()).await;
    client_side.unwrap();
    server_side.unwrap();
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let coordinator = server("coordinator", ClientAuth::AcceptAny, &tuning());
    let anonymous = client("anonymous", &tuning());
    let provider = crypto_provider();
    let pin = Arc::new(ServerPin::new(coordinator.identity.fingerprint(), provider.clone()));
    let crypto = client_crypto(None, pin, provider).unwrap();
    let connecting = anonymous
        .endpoint
        .quinn()
        .connect_with(quinn::ClientConfig::new(Arc::new(crypto)), coordinator.addr(), SERVER_NAME)
        .unwrap();
    let (client_side, server_side) = within(async {
        tokio::join!(connecting, async { coordinator.endpoint.accept().await.unwrap() })
    })
    .await;
    let err = server_side.unwrap_err();
    assert!(matches!(err, CommError::Quic(QuicError::Handshake { .. })), "{err}");
    let client_side = client_side.map_err(|source| {
        CommError::from(QuicError::Handshake { addr: coordinator.addr(), source })
    });
    assert_rejected_by_server(client_side).await;
}

#[tokio::test]
async fn oversized_frame_is_refused_and_the_connection_survives() {
    let coordinator = server("coordinator", ClientAuth::AcceptAny, &tuning());
    let worker = client("worker", &tuning());
    let (to_coord, at_coord) =
        dial(&worker, &coordinator, coordinator.identity.fingerprint()).await;
    let (to_coord, at_coord) = (to_coord.unwrap(), at_coord.unwrap());

    let limit = 64 * 1024;
    // Larger than the stream receive window: the sender cannot get every byte acknowledged
    // before the receiver reads past its limit and stops the stream. A frame within the
    // window may be delivered whole first, and then counts as delivered (the stop arrives
    // for a stream already done); how fast that happens depends on the congestion window.
    let window = tuning().plan().unwrap().stream_receive_window();
    let oversized = vec![0xee; 2 * usize::try_from(window).unwrap()];
    let (sent, got) = within(async {
        tokio::join!(send_frame_delivered(&to_coord, &oversized), recv_frame(&at_coord, limit))
    })
    .await;
    match got {
        Err(QuicError::FrameTooLarge { max_len }) => assert_eq!(max_len, limit),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    match sent {
        Err(QuicError::FrameRejected { code }) => assert_eq!(code, u64::from(STOP_FRAME_TOO_LARGE)),
        other => panic!("expected the sender to see the stop, got {other:?}"),
    }

    let (sent, got) = within(async {
        tokio::join!(send_frame(&to_coord, b"next"), recv_frame(&at_coord, limit))
    })
    .await;
    sent.unwrap();
    assert_eq!(got.unwrap(), b"next");
}

#[tokio::test]
async fn refusal_reason_reaches_the_client() {
    let coordinator = server("coordinator", ClientAuth::AcceptAny, &tuning());
    let worker = client("worker", &tuning());
    let (to_coord, at_coord) =
        dial(&worker, &coordinator, coordinator.identity.fingerprint()).await;
    let (to_coord, at_coord) = (to_coord.unwrap(), at_coord.unwrap());

    close_refused(&at_coord, RefusalCode::WrongSecret, "the secret does not match this run");
    let err = within(recv_frame(&to_coord, 1024)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "refused by peer: wrong join secret: the secret does not match this run"
    );
    assert!(matches!(&err, QuicError::Refused { code: RefusalCode::WrongSecret, .. }), "{err:?}");
    // Later operations report the same refusal.
    let err = within(send_frame(&to_coord, b"x")).await.unwrap_err();
    assert!(matches!(err, QuicError::Refused { code: RefusalCode::WrongSecret, .. }), "{err:?}");
}

#[test]
fn endpoints_outside_a_runtime_are_an_error_not_a_panic() {
    let identity = NodeIdentity::generate("w").unwrap();
    let err = bind_client(&identity, &tuning(), any_port()).unwrap_err();
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[tokio::test]
async fn bad_tuning_is_refused_before_binding() {
    let identity = NodeIdentity::generate("w").unwrap();
    let bad = TransportTuning { keep_alive_ms: 90_000, ..tuning() };
    let err = bind_server(&identity, ClientAuth::AcceptAny, &bad, any_port()).unwrap_err();
    assert!(
        matches!(err, CommError::Quic(QuicError::Tuning { field: "keep_alive_ms", .. })),
        "{err}"
    );
}

#[tokio::test]
async fn deterministic_ed25519_identities_handshake_and_pin() {
    let identity = NodeIdentity::deterministic("coordinator", [1; 32]).unwrap();
    let endpoint = bind_server(&identity, ClientAuth::AcceptAny, &tuning(), any_port()).unwrap();
    let coordinator = Node { identity, endpoint };
    let identity = NodeIdentity::deterministic("worker", [2; 32]).unwrap();
    let endpoint = bind_client(&identity, &tuning(), any_port()).unwrap();
    let worker = Node { identity, endpoint };
    let (to_coord, at_coord) =
        dial(&worker, &coordinator, coordinator.identity.fingerprint()).await;
    let (to_coord, at_coord) = (to_coord.unwrap(), at_coord.unwrap());
    assert_eq!(peer_fingerprint(&at_coord), Some(worker.identity.fingerprint()));
    let (sent, got) = within(async {
        tokio::join!(send_frame(&to_coord, b"ed25519"), recv_frame(&at_coord, 64))
    })
    .await;
    sent.unwrap();
    assert_eq!(got.unwrap(), b"ed25519".to_vec());
}
