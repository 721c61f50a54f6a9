//! The blocking facade of a worker node, for a training loop on its own OS thread.

use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;

use super::worker::{WorkerNode, WorkerNodeConfig, WorkerNodeEvent};
use crate::error::Result;
use crate::ids::{MemberId, Round};

/// A [`WorkerNode`] driven from blocking code.
///
/// The node's tasks run on the tokio runtime given to [`WorkerHandle::spawn`], which must
/// be multi-threaded (its tasks have to run while the calling thread blocks). Every method
/// blocks the calling thread, so none may be called from inside an async context of that
/// runtime (tokio panics there).
///
/// ```no_run
/// use meridian_comm::node::{WorkerHandle, WorkerNodeConfig, WorkerNodeEvent};
/// use meridian_comm::protocol::WorkerEvent;
///
/// fn train(join: &str, runtime: &tokio::runtime::Handle) -> meridian_comm::Result<()> {
///     let cfg = WorkerNodeConfig::new(join.parse()?, "worker-eu-1");
///     let mut worker = WorkerHandle::spawn(cfg, runtime)?;
///     while let Some(event) = worker.next_event(None)? {
///         match event {
///             WorkerNodeEvent::Welcomed { next_round, .. } => {
///                 worker.publish(next_round, b"my payload".to_vec())?;
///             }
///             WorkerNodeEvent::Protocol(WorkerEvent::RoundReady { round, payloads, .. }) => {
///                 // apply `payloads` in order, train, then:
///                 let _ = payloads;
///                 worker.publish(round + 1, b"next payload".to_vec())?;
///             }
///             _ => {}
///         }
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug)]
pub struct WorkerHandle {
    node: WorkerNode,
    runtime: Handle,
}

impl WorkerHandle {
    /// Connects (see [`WorkerNode::connect`]) on `runtime` and blocks until welcomed.
    pub fn spawn(cfg: WorkerNodeConfig, runtime: &Handle) -> Result<Self> {
        let node = runtime.block_on(WorkerNode::connect(cfg))?;
        Ok(WorkerHandle { node, runtime: runtime.clone() })
    }

    /// Wraps a node connected on `runtime` (for a caller that connects in the background,
    /// to stay responsive while it waits).
    pub fn from_node(node: WorkerNode, runtime: &Handle) -> Self {
        WorkerHandle { node, runtime: runtime.clone() }
    }

    /// This worker's member id.
    pub fn member(&self) -> MemberId {
        self.node.member()
    }

    /// QUIC's current round-trip estimate to the coordinator (see
    /// [`WorkerNode::coordinator_rtt`]).
    pub fn coordinator_rtt(&self) -> Option<Duration> {
        self.node.coordinator_rtt()
    }

    /// Publishes this worker's payload for `round` (see [`WorkerNode::publish`]).
    pub fn publish(&self, round: Round, bytes: impl Into<Bytes>) -> Result<()> {
        self.runtime.block_on(self.node.publish(round, bytes.into()))
    }

    /// Uploads the state a [`WorkerEvent::SnapshotRequested`](crate::protocol::WorkerEvent::SnapshotRequested)
    /// asked for.
    pub fn provide_state(&self, round: Round, bytes: impl Into<Bytes>) -> Result<()> {
        self.runtime.block_on(self.node.provide_state(round, bytes.into()))
    }

    /// The next event, waiting at most `timeout` (`None`: as long as it takes);
    /// `Ok(None)` when the time ran out. Fails once the worker stopped and every event
    /// was read (with the reason it stopped, e.g. a refusal).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<WorkerNodeEvent>> {
        let node = &mut self.node;
        match timeout {
            None => self.runtime.block_on(node.next_event()).map(Some),
            // A poll: no timer (the runtime's timers tick by the millisecond, so a zero
            // timeout would cost up to a millisecond on every call of a training loop).
            Some(timeout) if timeout.is_zero() => node.try_next_event(),
            Some(timeout) => {
                // The timer is built inside the runtime (it needs its time driver).
                let next = async { tokio::time::timeout(timeout, node.next_event()).await };
                match self.runtime.block_on(next) {
                    Ok(result) => result.map(Some),
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// Leaves the run (see [`WorkerNode::leave`]).
    pub fn leave(self) -> Result<()> {
        let WorkerHandle { node, runtime } = self;
        runtime.block_on(node.leave())
    }

    /// The async node underneath.
    pub fn node(&mut self) -> &mut WorkerNode {
        &mut self.node
    }
}
