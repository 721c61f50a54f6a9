//! What a connection gets before it proves it belongs to the run: one join-sized first
//! frame, one deadline from its first packet, a place among a capped number of such
//! connections; on the coordinator and on a worker's peer listener.

use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

use super::*;
use crate::protocol::{ToCoordinator, ToWorker};
use crate::quic::{self, NodeIdentity, QuicEndpoint, QuicError, RefusalCode};
use crate::wire::{FrameCodec, FrameKind};

/// A loopback address other than 127.0.0.1, so that tests can connect from several sources
/// (Linux routes all of 127/8 to the loopback interface).
pub(super) fn source(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A stranger's real socket: it reads one datagram at a time (quinn sizes an endpoint's
/// receive buffer by the socket's segments per read, up to megabytes with GRO, and the
/// flood test runs dozens of these endpoints in the process whose memory it measures), and
/// it may be mute.
///
/// A mute socket goes quiet once the other side has answered: it sends the client's first
/// flight (its ClientHello), then drops everything it is asked to send. The server holds a
/// handshake that never completes; the client still completes its side (it has the
/// server's Finished), so `connect` returns.
#[derive(Debug)]
pub(super) struct Stranger {
    inner: Arc<dyn AsyncUdpSocket>,
    mute: bool,
    answered: AtomicBool,
}

impl Stranger {
    pub(super) fn bind(ip: IpAddr, mute: bool) -> Arc<Self> {
        let std = std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(std).unwrap();
        Arc::new(Stranger { inner, mute, answered: AtomicBool::new(false) })
    }
}

impl AsyncUdpSocket for Stranger {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        if self.mute && self.answered.load(Ordering::Relaxed) {
            return Ok(()); // "sent", and lost
        }
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            if *n > 0 {
                self.answered.store(true, Ordering::Relaxed);
            }
        }
        polled
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A client endpoint on `ip` (any port) with a fresh identity.
pub(super) fn client_on(ip: IpAddr) -> QuicEndpoint {
    let identity = NodeIdentity::generate("stranger").unwrap();
    quic::client_endpoint(&identity, &tuning(), Stranger::bind(ip, false)).unwrap()
}

/// A client endpoint on `ip` whose handshakes never complete at the server (see
/// [`Stranger`]).
/// Its idle timeout is a minute, so what ends such a handshake within a test is the server.
pub(super) fn mute_client_on(ip: IpAddr) -> QuicEndpoint {
    let identity = NodeIdentity::generate("mute").unwrap();
    let tuning = TransportTuning { idle_timeout_ms: 60_000, ..tuning() };
    quic::client_endpoint(&identity, &tuning, Stranger::bind(ip, true)).unwrap()
}

/// Whether a failed connect was the server refusing the attempt outright (QUIC's
/// CONNECTION_REFUSED, what a listener over its caps answers).
pub(super) fn refused_outright(err: &CommError) -> bool {
    let CommError::Quic(QuicError::Handshake { source, .. }) = err else { return false };
    matches!(
        source,
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    )
}

/// The refusal a connection ended with, waiting at most [`EVENT_WAIT`].
pub(super) async fn refusal_of(conn: &quinn::Connection) -> (RefusalCode, String) {
    match tokio::time::timeout(EVENT_WAIT, quic::wait_closed(conn)).await {
        Ok(QuicError::Refused { code, reason }) => (code, reason),
        Ok(other) => panic!("closed without a refusal: {other}"),
        Err(_) => panic!("still open after {EVENT_WAIT:?}"),
    }
}

fn join_frame(codec: &FrameCodec, msg: &ToCoordinator) -> Vec<u8> {
    codec.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap()
}

fn small_join(name: &str) -> ToCoordinator {
    ToCoordinator::bare_join(name, None)
}

/// Reads frames until a Welcome arrives.
async fn welcomed(conn: &quinn::Connection, codec: &FrameCodec) -> MemberId {
    loop {
        let read = tokio::time::timeout(EVENT_WAIT, quic::recv_frame(conn, 1 << 20));
        let frame = codec.decode(&read.await.expect("no welcome in time").unwrap()).unwrap();
        if let ToWorker::Welcome { member, .. } = ToWorker::decode(&frame.body).unwrap() {
            return member;
        }
    }
}

fn start(rt: &tokio::runtime::Runtime, cfg: CoordinatorNodeConfig) -> CoordinatorNode {
    let _guard = rt.enter();
    CoordinatorNode::start(cfg).unwrap()
}

#[test]
fn the_largest_valid_join_is_admitted() {
    let rt = runtime();
    let node = start(&rt, coordinator_config(1, Duration::from_secs(5)));
    let join = node.join_string();
    let codec = FrameCodec::new(&join.secret, join.run, crate::wire::DEFAULT_MAX_FRAME);
    let frame = join_frame(&codec, &crate::protocol::messages::largest_join(None));
    assert!(frame.len() > 1 << 20, "a join with a full signature: {} bytes", frame.len());
    assert!(frame.len() <= MAX_JOIN_FRAME + crate::wire::PREFIX_LEN);
    rt.block_on(async {
        let endpoint = client_on(source(1));
        let conn = endpoint.connect(join.socket_addr().unwrap(), join.fingerprint).await.unwrap();
        quic::send_frame(&conn, &frame).await.unwrap();
        welcomed(&conn, &codec).await;
    });
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn a_joined_connection_gets_a_members_limits_back() {
    let rt = runtime();
    let node = start(&rt, coordinator_config(1, Duration::from_secs(5)));
    let join = node.join_string();
    let codec = FrameCodec::new(&join.secret, join.run, 1 << 20);
    rt.block_on(async {
        let endpoint = client_on(source(1));
        let conn = endpoint.connect(join.socket_addr().unwrap(), join.fingerprint).await.unwrap();
        quic::send_frame(&conn, &join_frame(&codec, &small_join("member"))).await.unwrap();
        welcomed(&conn, &codec).await;
        // Before the join one stream at a time was allowed; now a member's many are. Each
        // stays open (unfinished), so a second one could not open under the old limit.
        let open = async {
            let mut streams = Vec::new();
            for _ in 0..4 {
                let mut stream = conn.open_uni().await.unwrap();
                stream.write_all(&[0]).await.unwrap();
                streams.push(stream);
            }
            streams
        };
        let streams = tokio::time::timeout(EVENT_WAIT, open).await;
        assert!(streams.is_ok(), "a joined connection is still held to one stream at a time");
    });
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn an_oversized_first_frame_is_refused_when_its_prefix_arrives() {
    let rt = runtime();
    let mut cfg = coordinator_config(1, Duration::from_secs(5));
    // Far beyond the test's patience: a refusal must not wait for the deadline.
    cfg.pre_auth.timeout = Duration::from_secs(600);
    let node = start(&rt, cfg);
    let join = node.join_string();
    rt.block_on(async {
        let endpoint = client_on(source(1));
        let conn = endpoint.connect(join.socket_addr().unwrap(), join.fingerprint).await.unwrap();
        let claimed = MAX_JOIN_FRAME + 1;
        // Only the prefix; the stream stays open, as if the rest were on its way.
        let mut stream = conn.open_uni().await.unwrap();
        stream.write_all(&(claimed as u32).to_le_bytes()).await.unwrap();
        let (code, reason) = refusal_of(&conn).await;
        assert_eq!(code, RefusalCode::ProtocolViolation);
        assert!(reason.contains(&format!("{claimed} bytes")), "{reason}");
        assert!(reason.contains(&format!("{MAX_JOIN_FRAME}-byte limit")), "{reason}");
        drop(stream);
    });
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn a_first_frame_trickled_a_byte_a_second_is_cut_at_the_deadline() {
    let rt = runtime();
    let mut cfg = coordinator_config(1, Duration::from_secs(5));
    cfg.pre_auth.timeout = Duration::from_secs(2);
    let mut node = start(&rt, cfg);
    let join = node.join_string();
    let frame = {
        let codec = FrameCodec::new(&join.secret, join.run, 1 << 20);
        join_frame(&codec, &small_join("slow"))
    };
    let sent = rt.block_on(async {
        let endpoint = client_on(source(1));
        let conn = endpoint.connect(join.socket_addr().unwrap(), join.fingerprint).await.unwrap();
        let mut stream = conn.open_uni().await.unwrap();
        let trickle = async {
            // A byte a second: each one is progress, none may extend the deadline.
            for (i, byte) in frame.iter().enumerate() {
                if stream.write_all(&[*byte]).await.is_err() {
                    return i;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            frame.len()
        };
        let closed = async {
            tokio::time::timeout(EVENT_WAIT, quic::wait_closed(&conn)).await.expect("still open")
        };
        let (sent, closed) = tokio::join!(trickle, closed);
        // Closed without a refusal (a worker would try again), naming the limit.
        match closed {
            QuicError::Closed { code, reason } => {
                assert_eq!(code, u64::from(quic::CLOSE_DONE));
                assert!(reason.contains("no join within 2s"), "{reason}");
                assert!(reason.contains("pre_auth.timeout"), "{reason}");
            }
            other => panic!("closed otherwise: {other}"),
        }
        sent
    });
    assert!(sent < frame.len(), "the whole join went out ({sent} bytes) before the cut");
    let limits: Vec<String> = drain(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::PreAuthLimit { detail, .. } => Some(detail),
            _ => None,
        })
        .collect();
    assert_eq!(limits.len(), 1, "{limits:?}");
    assert!(limits[0].contains("no join within"));
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn unverified_connections_to_the_coordinator_are_capped_in_total_and_per_source() {
    let rt = runtime();
    let mut cfg = coordinator_config(1, Duration::from_secs(5));
    cfg.pre_auth = PreAuthLimits {
        timeout: Duration::from_secs(600),
        max_connections: 3,
        max_connections_per_source: 2,
    };
    let mut node = start(&rt, cfg);
    let join = node.join_string();
    let addr = join.socket_addr().unwrap();
    let codec = FrameCodec::new(&join.secret, join.run, 1 << 20);
    rt.block_on(async {
        // Two idle connections (handshake done, no frame) from one source fill its share.
        let a = client_on(source(2));
        let idle = [a.connect(addr, join.fingerprint).await.unwrap()];
        let a2 = client_on(source(2));
        let idle2 = a2.connect(addr, join.fingerprint).await.unwrap();
        let err = client_on(source(2)).connect(addr, join.fingerprint).await.unwrap_err();
        assert!(refused_outright(&err), "{err}");
        // A handshake that never completes holds a place too: the total is reached.
        let mute = mute_client_on(source(3));
        let stalled = mute.connect(addr, join.fingerprint).await.unwrap();
        let err = client_on(source(4)).connect(addr, join.fingerprint).await.unwrap_err();
        assert!(refused_outright(&err), "{err}");

        // A place frees when its connection goes, and joining frees it as well.
        quic::close_done(&idle2, "leaving");
        let honest = client_on(source(4));
        let conn = loop {
            // The coordinator may not have seen the close yet.
            match honest.connect(addr, join.fingerprint).await {
                Ok(conn) => break conn,
                Err(e) if refused_outright(&e) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{e}"),
            }
        };
        quic::send_frame(&conn, &join_frame(&codec, &small_join("honest"))).await.unwrap();
        welcomed(&conn, &codec).await;
        let next = client_on(source(5)).connect(addr, join.fingerprint).await;
        assert!(next.is_ok(), "a joined connection still counted as unverified");
        drop((idle, stalled));
    });
    let throttled: Vec<String> = drain(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::PreAuthLimit { detail, .. } => Some(detail),
            _ => None,
        })
        .collect();
    assert!(throttled.len() >= 2, "{throttled:?}");
    assert!(throttled[0].contains("from 127.0.0.2") && throttled[0].contains("per_source"));
    assert!(throttled[1].contains("3 connections") && throttled[1].contains("max_connections)"));
    rt.block_on(node.shutdown()).unwrap();
}

/// Connects from `ip` with a mute client until the server lets it in (each attempt
/// refused outright), for at most [`EVENT_WAIT`].
async fn mute_connect_when_let_in(addr: SocketAddr, pin: crate::ids::CertFingerprint, ip: IpAddr) {
    let start = Instant::now();
    loop {
        match mute_client_on(ip).connect(addr, pin).await {
            Ok(_) => return,
            Err(e) if refused_outright(&e) && start.elapsed() < EVENT_WAIT => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("not let in again: {e}"),
        }
    }
}

#[test]
fn a_handshake_that_never_completes_is_dropped_at_the_coordinators_deadline() {
    let rt = runtime();
    let mut cfg = coordinator_config(1, Duration::from_secs(5));
    cfg.pre_auth.timeout = Duration::from_secs(3);
    cfg.pre_auth.max_connections_per_source = 1;
    // Longer than the test waits: what ends the handshake must be the deadline. (The
    // stalled client is not told: QUIC's anti-amplification limit leaves the server no
    // bytes to send to an address that never proved it receives them.)
    cfg.tuning.idle_timeout_ms = 60_000;
    let node = start(&rt, cfg);
    let join = node.join_string();
    let addr = join.socket_addr().unwrap();
    rt.block_on(async {
        let _stalled = mute_client_on(source(6)).connect(addr, join.fingerprint).await.unwrap();
        let err = mute_client_on(source(6)).connect(addr, join.fingerprint).await.unwrap_err();
        assert!(refused_outright(&err), "{err}");
        // Let in again once the deadline dropped the stalled handshake and freed its place.
        mute_connect_when_let_in(addr, join.fingerprint, source(6)).await;
    });
    rt.block_on(node.shutdown()).unwrap();
}

#[test]
fn unverified_connections_to_a_workers_peer_listener_are_capped_and_timed() {
    let rt = runtime();
    let node = start(&rt, coordinator_config(1, Duration::from_secs(5)));
    let identity = NodeIdentity::generate("listener").unwrap();
    let mut cfg = worker_config(&node.join_string(), "w0");
    cfg.identity = Some(identity.clone());
    cfg.pre_auth = PreAuthLimits {
        timeout: Duration::from_secs(4),
        max_connections: 3,
        max_connections_per_source: 2,
    };
    cfg.tuning.idle_timeout_ms = 60_000;
    rt.block_on(async {
        let worker = WorkerNode::connect(cfg).await.unwrap();
        let listener = SocketAddr::new(source(1), worker.local_addr().unwrap().port());
        let pin = identity.fingerprint();
        // Handshakes that never complete, each holding a place until the deadline.
        let mutes: Vec<QuicEndpoint> =
            [7, 7, 8].into_iter().map(|n| mute_client_on(source(n))).collect();
        let mut stalled = Vec::new();
        for mute in &mutes {
            stalled.push(mute.connect(listener, pin).await.unwrap());
        }
        let err = mute_client_on(source(7)).connect(listener, pin).await.unwrap_err();
        assert!(refused_outright(&err), "per source: {err}");
        let err = mute_client_on(source(9)).connect(listener, pin).await.unwrap_err();
        assert!(refused_outright(&err), "in total: {err}");
        // The deadline drops them (their idle timeout is a minute away), freeing the places.
        mute_connect_when_let_in(listener, pin, source(9)).await;
        drop(stalled);
        worker.leave().await.unwrap();
    });
    rt.block_on(node.shutdown()).unwrap();
}
