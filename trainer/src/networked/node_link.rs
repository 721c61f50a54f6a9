//! What a worker node's events and errors mean to a training loop: shared by the real
//! worker process (`meridian worker`) and the simulated one (`meridian simulate`), so both
//! react to the network the same way.

use anyhow::{bail, Result};
use meridian_comm::ids::MemberId;
use meridian_comm::node::WorkerNodeEvent;
use meridian_comm::protocol::{ProtocolError, RoundStats, WorkerEvent};
use meridian_comm::CommError;
use meridian_optimizer::payload::Payload;

use super::drive::NetEvent;

/// A node event as the training loop needs it.
#[derive(Debug)]
pub struct Mapped {
    /// The event.
    pub event: NetEvent,
    /// Bytes of other members' payloads it delivered (relay and all-gather rounds).
    pub received: u64,
    /// A committed round's statistics (per-link bytes among them).
    pub stats: Option<(u64, RoundStats)>,
}

impl Mapped {
    fn plain(event: NetEvent) -> Self {
        Mapped { event, received: 0, stats: None }
    }
}

/// The training loop's view of a node event; `None` for events that are only logged.
/// Refusals and failures end the run.
pub fn net_event(event: WorkerNodeEvent, me: MemberId) -> Result<Option<Mapped>> {
    Ok(match event {
        // The comm crate logs the round's stats at debug.
        WorkerNodeEvent::Protocol(WorkerEvent::RoundReady { round, payloads, stats }) => {
            let received =
                payloads.iter().filter(|(m, _)| *m != me).map(|(_, b)| b.len() as u64).sum();
            let payloads = payloads.into_iter().map(|(_, b)| b.to_vec()).collect();
            Some(Mapped {
                event: NetEvent::RoundReady { round, payloads },
                received,
                stats: Some((round, stats)),
            })
        }
        WorkerNodeEvent::Protocol(WorkerEvent::AggregateReady {
            round,
            members,
            aggregate,
            stats,
        }) => Some(Mapped {
            event: NetEvent::AggregateReady { round, members, bytes: aggregate.to_vec() },
            received: 0,
            stats: Some((round, stats)),
        }),
        WorkerNodeEvent::Protocol(WorkerEvent::PayloadArrived { round, member, head }) => {
            // A header this build cannot read is the commit's to reject, not this event's.
            Payload::peek_effort(&head, round, member)
                .map(|effort| Mapped::plain(NetEvent::PeerLaunched { round, effort }))
        }
        WorkerNodeEvent::Protocol(WorkerEvent::SnapshotRequested { round }) => {
            Some(Mapped::plain(NetEvent::SnapshotRequested { round }))
        }
        WorkerNodeEvent::Protocol(WorkerEvent::StateReceived { round, bytes }) => {
            Some(Mapped::plain(NetEvent::StateReceived { round, bytes: bytes.to_vec() }))
        }
        WorkerNodeEvent::Refused(r) => bail!("{r}"),
        WorkerNodeEvent::Failed { reason } => bail!("worker stopped: {reason}"),
        WorkerNodeEvent::Disconnected { reason } => {
            tracing::warn!(%reason, "lost the coordinator; reconnecting");
            None
        }
        WorkerNodeEvent::Protocol(WorkerEvent::FellBehind { round }) => {
            tracing::warn!(round, "fell behind; asking for a peer's state");
            None
        }
        WorkerNodeEvent::Protocol(WorkerEvent::Rejected { reason, round, .. }) => {
            tracing::warn!(?round, ?reason, "input rejected");
            None
        }
        other => {
            tracing::debug!(event = ?other, "network");
            None
        }
    })
}

/// Whether a publish went out (`Ok(true)`), was overtaken by a race the protocol resolves
/// itself (`Ok(false)`: the round committed without this worker and its commit is on the
/// way, a peer's state comes first, or a round this worker, just caught up, is not a
/// member of), or failed for good.
pub fn published(round: u64, result: Result<(), CommError>) -> Result<bool> {
    match result {
        Ok(()) => Ok(true),
        Err(CommError::Protocol(e)) => {
            if !matches!(
                e,
                ProtocolError::RoundApplied { .. }
                    | ProtocolError::AwaitingState
                    | ProtocolError::AlreadyPublished(_)
            ) {
                tracing::warn!(round, error = %e, "payload not published");
            }
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
