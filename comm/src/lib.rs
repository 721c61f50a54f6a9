//! Rounds, membership, wire format and transport for Meridian.
//!
//! `meridian-comm` moves opaque payload bytes between workers in numbered rounds and tells
//! its caller who delivered. Its protocol core is sans-IO: a state machine fed with received
//! messages and timer events that emits sends and round results; QUIC (quinn + rustls) is
//! one driver of that core, tests and the WAN simulator are others.
//!
//! It must not know about tensors or training algorithms: a payload is bytes with a length.
//!
//! - [`ids`]: identifiers shared by every layer (member, round, run, secret, fingerprint).
//! - [`wire`]: the authenticated, length-prefixed frame every transport carries.
//! - [`protocol`]: the sans-IO round protocol: [`protocol::Coordinator`] and
//!   [`protocol::WorkerProto`] state machines and the control messages they exchange.
//! - [`quic`]: the QUIC transport: pinned identities, the join string, tuning for long fat
//!   links, frames over streams.
//! - [`node`]: drivers that run the protocol over QUIC on tokio: [`node::CoordinatorNode`],
//!   [`node::WorkerNode`] and its blocking facade [`node::WorkerHandle`].
//! - [`metrics`]: live metrics in the Prometheus text format over HTTP (`--metrics-listen`).
//! - [`error`]: [`CommError`], the crate's error type.

pub mod error;
mod fsutil;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod quic;
pub mod wire;

pub use error::{CommError, Result};
