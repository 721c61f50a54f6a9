//! Drivers that run the sans-IO [`protocol`](crate::protocol) machines over QUIC on tokio.
//!
//! - [`CoordinatorNode`] (coordinator): a QUIC server whose one actor task owns the
//!   [`Coordinator`](crate::protocol::Coordinator). One task per connection reads frames,
//!   checks them with the run's [`FrameCodec`](crate::wire::FrameCodec) and hands decoded
//!   inputs to the actor; one writer task per connection sends what the actor emits. With a
//!   `state_dir` it keeps its identity, run id, join secret and protocol state on disk, so a
//!   restarted coordinator has the same join string and continues the run.
//! - [`WorkerNode`] (worker): dials the coordinator pinning its fingerprint, runs a
//!   [`WorkerProto`](crate::protocol::WorkerProto) in a driver task, reconnects with
//!   backoff, and offers an async API; [`WorkerHandle`] is the blocking facade for a
//!   training loop on its own OS thread.
//!
//! # Layout
//! - `coordinator`: the coordinator node; `state`: its state folder;
//! - `worker`: the worker node's API, config and events; beside them, one job a file:
//!   `worker/dial` (dialing and redialing the coordinator), `worker/peers` (the all-gather
//!   and ring links to other members), `worker/driver` (the task that owns the protocol);
//! - `handle`: the worker's blocking facade;
//! - `link`: what both nodes share (frame writer and reader tasks, clocks, round logging);
//! - `metrics`: the coordinator's live metrics, and the labels a worker's share.
//!
//! # Frames
//! Every frame travels on its own QUIC unidirectional stream
//! ([`send_frame`](crate::quic::send_frame)); each connection has one writer, so frames are
//! opened (and read back by the single reader on the other side) in the order they were
//! sent. Header fields:
//! - `Control`: round 0, the body is a postcard [`ToCoordinator`](crate::protocol::ToCoordinator)
//!   or [`ToWorker`](crate::protocol::ToWorker);
//! - `Payload`: the round and the payload's author (also when the coordinator relays it);
//! - `State`: the round the state reflects;
//! - `Segment { slot }` (ring): the round and the sending member, between ring neighbours;
//! - `StateChunk { index }`: the round of the donor's state, from a donor to a member that
//!   catches up (every worker's peer listener takes these, in every topology).
//!
//! The `sender` of frames the coordinator originates (control and state) is
//! [`COORDINATOR_SENDER`]; a worker that has no member id yet (before its first welcome)
//! sends with [`UNASSIGNED_SENDER`]. Both are `u32::MAX`, an id the coordinator never
//! assigns to a member; receivers identify a control frame's sender by its connection, not
//! by this field.
//!
//! # Authentication and bad input
//! The first frame on a coordinator connection decides admission: a frame whose tag fails
//! (the sender lacks the join secret) closes the connection with
//! [`RefusalCode::WrongSecret`], one of another run
//! with `RunMismatch`, one of another format version with `VersionMismatch`, anything else
//! that does not decode, is not a join or is larger than [`MAX_JOIN_FRAME`] with
//! `ProtocolViolation`. A connection whose join is not complete within
//! [`PreAuthLimits::timeout`] of its first packet is closed without a refusal code (and
//! reported as [`CoordinatorNodeEvent::PreAuthLimit`]), so that a worker on a link slow
//! enough for that reconnects instead of stopping.
//! On an admitted connection a bad frame (tampered, malformed, oversized, an undecodable
//! message) is logged, reported as [`CoordinatorNodeEvent::FrameRejected`] and dropped; after
//! `max_bad_frames` of them the connection is closed with `ProtocolViolation`. Other
//! connections are never affected.
//!
//! # Before authentication
//! A connection that has not proven it belongs to the run gets little (see
//! [`PreAuthLimits`]): on the coordinator, one frame of at most [`MAX_JOIN_FRAME`] bytes,
//! one stream at a time and that much QUIC credit, and one deadline from its first packet
//! to its whole join; on a worker's peer listener, one deadline for its handshake (which
//! checks its certificate against the members' pinned fingerprints). On both, such
//! connections are capped in total and per source address, and attempts over a cap are
//! refused before their handshake. So a stranger holding any certificate can make a node
//! hold at most `max_connections` connections of about `2 × MAX_JOIN_FRAME` bytes each
//! (what QUIC buffers plus the frame being read), each for at most `timeout`. Once a
//! connection joined, its frames get the full limits (`max_frame`, the tuned windows).
//!
//! # Topologies
//! All three. In [`Topology::Relay`](crate::protocol::Topology::Relay) a worker talks to the
//! coordinator only. In [`Topology::AllGather`](crate::protocol::Topology::AllGather) each
//! worker also listens for the other members (accepting exactly the fingerprints the
//! coordinator announced) and dials them to send its payload and to fetch; see
//! [`WorkerNode`]. [`Topology::Ring`](crate::protocol::Topology::Ring) uses the same
//! member links: segments go to the ring successor and aggregates are fetched from peers;
//! the application gives the worker its [`RingReducer`](crate::protocol::RingReducer) in
//! [`WorkerNodeConfig::reducer`] and applies the aggregate of
//! [`WorkerEvent::AggregateReady`](crate::protocol::WorkerEvent::AggregateReady) (wrapped in
//! [`WorkerNodeEvent::Protocol`]). A round
//! that falls back uploads through the coordinator as in Relay.
//!
//! # Bytes per link
//! Every round's [`RoundStats::traffic`](crate::protocol::RoundStats::traffic) lists payload
//! (and segment, state) bytes per peer, sent and received, as the protocol counted them
//! (frame bodies, before compression and without frame overhead): the worker's in its
//! `RoundReady`/`AggregateReady`, the coordinator's in `RoundCommitted`. With `n` members a
//! Relay worker sends its payload once (the coordinator sends `n − 1` copies of each),
//! an AllGather worker sends `n − 1` copies, a Ring worker `2(n − 1)/n` of it, all to its
//! successor.

mod coordinator;
mod guard;
mod handle;
mod link;
mod metrics;
mod state;
mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use coordinator::{CoordinatorNode, CoordinatorNodeConfig, CoordinatorNodeEvent};
pub use guard::PreAuthLimits;
pub use handle::WorkerHandle;
pub use metrics::{peer_label, round_buckets, snake_case, PeerDirection, PeerLabel, ReasonLabel};
pub use state::{RUN_FILE, STATE_FILE};
pub use worker::{ReconnectPolicy, WorkerNode, WorkerNodeConfig, WorkerNodeEvent};

use crate::ids::MemberId;
use crate::protocol::{RefuseReason, MAX_JOIN_LEN};
use crate::quic::RefusalCode;

/// The header `sender` of control and state frames the coordinator originates.
pub const COORDINATOR_SENDER: MemberId = MemberId::MAX;

/// The header `sender` of a worker's frames before its first welcome.
pub const UNASSIGNED_SENDER: MemberId = MemberId::MAX;

/// Header and tag bytes a frame adds to its body, at most (postcard header of at most 51
/// bytes, 4-byte prefix, 16-byte tag, rounded up). Payload and state limits are kept this far
/// below `max_frame` so anything the protocol accepts also fits a frame.
pub const FRAME_OVERHEAD: usize = 128;

/// The largest frame a coordinator reads from a connection that has not joined yet: the
/// largest valid join ([`MAX_JOIN_LEN`], about 1.2 MiB, most of it the run signature's
/// limit) with its frame overhead. A larger length prefix is refused as soon as it arrives.
pub const MAX_JOIN_FRAME: usize = MAX_JOIN_LEN + FRAME_OVERHEAD;

/// Why the coordinator turned a worker away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The coordinator closed the connection with a refusal code (a frame without the run's
    /// join secret, a frame of another run, ...).
    Transport {
        /// The code.
        code: RefusalCode,
        /// The coordinator's explanation.
        detail: String,
    },
    /// The round protocol refused the join.
    Protocol(RefuseReason),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Transport { code, detail } if detail.is_empty() => {
                write!(f, "refused by coordinator: {code}")
            }
            Refusal::Transport { code, detail } => {
                write!(f, "refused by coordinator: {code} ({detail})")
            }
            Refusal::Protocol(RefuseReason::SignatureMismatch { differences }) => {
                write!(
                    f,
                    "refused by coordinator: this worker's model or settings differ from the \
                     run's (start it with the run's model, algorithm and settings)"
                )?;
                for line in differences {
                    write!(f, "\n  {line}")?;
                }
                Ok(())
            }
            Refusal::Protocol(reason) => {
                let text = match reason {
                    RefuseReason::InvalidJoin => "invalid name, peer info or signature",
                    RefuseReason::Full => "the run is full",
                    RefuseReason::AheadOfCoordinator => {
                        "this worker applied rounds the coordinator never committed"
                    }
                    RefuseReason::Superseded => "a newer connection joined under the same name",
                    RefuseReason::SignatureMismatch { .. } => {
                        "this worker's model or settings differ from the run's"
                    }
                    RefuseReason::NoSettings => {
                        "this worker takes the run's settings from the coordinator, which has                          none: start the coordinator with --config RUN.toml holding a [run]                          table, or give the worker the run's flags (--algo, --steps, --seed, ...)"
                    }
                };
                write!(f, "refused by coordinator: {text}")
            }
        }
    }
}

/// What can go wrong in a node driver.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Reading or writing a file of the coordinator's state folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file of the coordinator's state folder holds something unusable.
    #[error("{}: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The coordinator refused this worker.
    #[error("{0}")]
    Refused(Refusal),
    /// The worker could not reach the coordinator for longer than its reconnect policy
    /// allows (or cannot reach it at all: a pinned fingerprint that does not match).
    #[error("cannot reach the coordinator: {0}")]
    Unreachable(String),
    /// The node's driver task has stopped (after a leave, a refusal or a failure).
    #[error("the node has stopped: {0}")]
    Stopped(String),
    /// The metrics endpoint could not start (its address names the culprit).
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}
