//! The QUIC transport: authenticated, encrypted links that move frames between peers.
//!
//! Built on quinn 0.11 and rustls 0.23 with the ring crypto provider, passed explicitly (no
//! process-wide default is needed or installed).
//!
//! - [`NodeIdentity`] (certs): this node's self-signed certificate and key; its
//!   [`CertFingerprint`](crate::ids::CertFingerprint) is what peers pin.
//! - [`ClientAuth`], [`PinSet`] (verify): certificate pinning on both sides of a link.
//! - [`JoinString`] (join): `meridian://HOST:PORT/?fp=..&run=..&secret=..`, passed out of band.
//! - [`TransportTuning`] (config): flow-control windows sized to bandwidth × RTT, congestion
//!   controller, timeouts.
//! - [`Resilient`] (resilient): a CUBIC congestion controller that ignores isolated random
//!   loss on long fat links.
//! - [`QuicEndpoint`] (endpoint): [`bind_server`] / [`bind_client`] on real UDP, or
//!   [`server_endpoint`] / [`client_endpoint`] on any `quinn::AsyncUdpSocket`.
//! - [`send_frame`], [`recv_frame`], [`close_refused`], [`peer_fingerprint`] (conn): one
//!   frame per unidirectional stream; refusals carry a [`RefusalCode`].
//!
//! A coordinator binds a server endpoint with [`ClientAuth::AcceptAny`], prints its
//! [`JoinString`], reads each newcomer's fingerprint with [`peer_fingerprint`], and turns
//! away bad ones with [`close_refused`]. A worker dials with the fingerprint from the join
//! string; in all-gather runs it also listens with [`ClientAuth::Pinned`] on the members'
//! fingerprints and dials peers pinning theirs.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::path::Path;
//!
//! use meridian_comm::quic::{self, ClientAuth, JoinString, NodeIdentity, TransportTuning};
//!
//! async fn coordinator(public: SocketAddr) -> meridian_comm::Result<()> {
//!     let identity = NodeIdentity::load_or_generate(Path::new("identity"), "coordinator")?;
//!     let tuning = TransportTuning::default();
//!     let bind = SocketAddr::from(([0, 0, 0, 0], public.port()));
//!     let endpoint = quic::bind_server(&identity, ClientAuth::AcceptAny, &tuning, bind)?;
//!     let (run, secret) = JoinString::new_run()?;
//!     // Handed to the workers' operators out of band.
//!     let _join = JoinString::new(public, identity.fingerprint(), run, secret);
//!     while let Some(conn) = endpoint.accept().await {
//!         let Ok(conn) = conn else { continue }; // failed handshakes are logged
//!         let Ok(frame) = quic::recv_frame(&conn, 1 << 30).await else { continue };
//!         // ... if the frame's tag does not check out with the join secret:
//!         drop(frame);
//!         quic::close_refused(&conn, quic::RefusalCode::WrongSecret, "bad frame tag");
//!     }
//!     Ok(())
//! }
//!
//! async fn worker(join: &str) -> meridian_comm::Result<()> {
//!     let join: JoinString = join.parse()?;
//!     let identity = NodeIdentity::generate("worker")?;
//!     let tuning = TransportTuning::default();
//!     let endpoint = quic::bind_client(&identity, &tuning, SocketAddr::from(([0, 0, 0, 0], 0)))?;
//!     let conn = endpoint.connect(join.resolve().await?, join.fingerprint).await?;
//!     quic::send_frame(&conn, b"hello").await?;
//!     Ok(())
//! }
//! ```

mod certs;
mod config;
mod conn;
mod endpoint;
mod error;
mod join;
mod resilient;
mod tls;
mod verify;

#[cfg(test)]
mod tests;

pub use certs::{fingerprint_of, NodeIdentity, CERT_FILE, KEY_FILE};
pub use config::{Congestion, TransportPlan, TransportTuning, WINDOW_BDPS};
pub use conn::{
    close_done, close_refused, peer_fingerprint, recv_frame, send_frame, send_frame_delivered,
    send_frame_pending, wait_closed, RefusalCode, CLOSE_DONE, STOP_FRAME_TOO_LARGE,
};
pub use endpoint::{
    bind_client, bind_server, client_endpoint, handshake, server_endpoint, QuicEndpoint,
};
pub use error::{QuicError, TlsError};
pub use join::{JoinError, JoinString};
pub use resilient::{
    Resilient, ResilientConfig, LOSS_THRESHOLD, MIN_LOST_PACKETS, MIN_QUEUE_DELAY,
    QUEUE_DELAY_FRACTION,
};
pub use verify::{ClientAuth, PinSet};
