//! Dialing the coordinator: the link task that connects (pinning the join string's
//! fingerprint), reads the coordinator's frames for the driver, and after a lost connection
//! dials again with exponential backoff until [`ReconnectPolicy::give_up_after`] has passed
//! without one. Also the address other members are told to dial when none is configured.
//!
//! Every attempt is logged where a person sees it: its start at info (where, which
//! attempt, when the worker gives up), and its failure with the reason and the next try.
//! A worker that never reached the coordinator logs failures at warn (a wrong address or
//! a coordinator not started is what someone must fix); one that lost a connection logs
//! them at info (reconnecting is routine, and the loss itself was reported).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::{LinkMsg, ReconnectPolicy};
use crate::error::CommError;
use crate::ids::CertFingerprint;
use crate::node::link::{self, Read};
use crate::node::Refusal;
use crate::quic::{QuicEndpoint, QuicError};
use crate::wire::FrameCodec;

/// The local IP the OS would use to reach `remote` (no packet is sent).
pub(super) fn route_ip(remote: SocketAddr) -> Option<IpAddr> {
    let any = match remote {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// `d` for a log line: whole seconds (rounded), or milliseconds below one.
fn secs(d: std::time::Duration) -> String {
    if d.as_secs() >= 1 {
        format!("{:.0} s", d.as_secs_f64())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Dials the coordinator, reads its frames, and redials when the connection is lost.
pub(super) async fn link_task(
    endpoint: Arc<QuicEndpoint>,
    addr: SocketAddr,
    pin: CertFingerprint,
    codec: FrameCodec,
    policy: ReconnectPolicy,
    tx: mpsc::UnboundedSender<LinkMsg>,
) {
    let mut since = tokio::time::Instant::now();
    let mut backoff = policy.initial_backoff;
    let mut attempt = 0u64;
    let mut ever_connected = false;
    loop {
        attempt += 1;
        let left = policy.give_up_after.saturating_sub(since.elapsed());
        info!(
            coordinator = %addr,
            attempt,
            "connecting to the coordinator (handshake timeout {}; giving up after {} without a \
             connection, in {})",
            secs(policy.connect_timeout),
            secs(policy.give_up_after),
            secs(left)
        );
        let last = match tokio::time::timeout(policy.connect_timeout, endpoint.connect(addr, pin))
            .await
        {
            Ok(Ok(conn)) => {
                info!(coordinator = %addr, attempt, "connected to the coordinator");
                ever_connected = true;
                attempt = 0;
                let (writer_tx, writer_rx) = mpsc::unbounded_channel();
                let writer = link::spawn_writer(conn.clone(), codec.clone(), writer_rx);
                if tx.send(LinkMsg::Up { conn: conn.clone(), writer: writer_tx }).is_err() {
                    return;
                }
                let lost = loop {
                    match link::read_frame(&conn, &codec).await {
                        Read::Frame(frame) => {
                            if tx.send(LinkMsg::Frame(frame)).is_err() {
                                return;
                            }
                        }
                        Read::Bad(error, _) => {
                            warn!(error, "rejected a frame from the coordinator")
                        }
                        Read::Lost(e) => break e,
                    }
                };
                writer.abort();
                if let QuicError::Connection(quinn::ConnectionError::LocallyClosed) = lost {
                    return; // the driver closed it: the worker stops
                }
                if let QuicError::Refused { code, reason } = lost {
                    let _ = tx.send(LinkMsg::Refused(Refusal::Transport { code, detail: reason }));
                    return;
                }
                let lost = lost.to_string();
                info!(error = %lost, "connection to the coordinator lost");
                if tx.send(LinkMsg::Down(lost)).is_err() {
                    return;
                }
                since = tokio::time::Instant::now();
                backoff = policy.initial_backoff;
                continue;
            }
            Ok(Err(CommError::Quic(QuicError::Refused { code, reason }))) => {
                let _ = tx.send(LinkMsg::Refused(Refusal::Transport { code, detail: reason }));
                return;
            }
            Ok(Err(e @ CommError::Quic(QuicError::PinMismatch { .. }))) => {
                let _ = tx.send(LinkMsg::GaveUp(e.to_string()));
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "no answer to the handshake within {} (is a coordinator running at {addr}? is \
                 UDP to that port blocked?)",
                secs(policy.connect_timeout)
            ),
        };
        if since.elapsed() >= policy.give_up_after {
            let _ = tx.send(LinkMsg::GaveUp(format!(
                "no connection for {:?}; last error: {last}",
                policy.give_up_after
            )));
            return;
        }
        let left = policy.give_up_after.saturating_sub(since.elapsed());
        let (retry, gives_up) = (secs(backoff), secs(left));
        if ever_connected {
            info!(coordinator = %addr, attempt, error = %last, retry_in = %retry,
                gives_up_in = %gives_up, "reconnecting to the coordinator failed");
        } else {
            warn!(coordinator = %addr, attempt, error = %last, retry_in = %retry,
                gives_up_in = %gives_up, "cannot reach the coordinator yet");
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}
