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

mod certs;
mod config;
mod conn;
mod error;
mod join;
mod tls;
mod verify;

pub use certs::{fingerprint_of, NodeIdentity, CERT_FILE, KEY_FILE};
pub use config::{Congestion, TransportPlan, TransportTuning};
pub use conn::{
    close_done, close_refused, peer_fingerprint, recv_frame, send_frame, send_frame_delivered,
    wait_closed, RefusalCode, CLOSE_DONE, STOP_FRAME_TOO_LARGE,
};
pub use error::{QuicError, TlsError};
pub use join::{JoinError, JoinString};
pub use verify::{ClientAuth, PinSet};
