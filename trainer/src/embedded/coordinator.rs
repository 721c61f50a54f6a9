//! A coordinator on a background thread of the calling program, as `meridian coordinator`
//! runs one (for tests and notebooks; a real trial runs the binary on a reachable host).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use meridian_comm::node::{CoordinatorNode, CoordinatorNodeConfig, CoordinatorNodeEvent};
use meridian_comm::protocol::{CoordinatorEvent, DeadlinePolicy, Topology};

/// How to start an [`EmbeddedCoordinator`].
#[derive(Debug, Clone)]
pub struct CoordinatorSpec {
    /// The UDP address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// How payloads travel: `relay`, `all-gather` or `ring`.
    pub topology: String,
    /// Workers to wait for before the first round.
    pub min_workers: u32,
    /// A fixed round deadline; adaptive when `None`.
    pub deadline: Option<Duration>,
    /// Where the identity and protocol state persist (a restart resumes the run).
    pub state_dir: Option<PathBuf>,
}

/// A running coordinator; stopped by [`EmbeddedCoordinator::close`] or when dropped.
pub struct EmbeddedCoordinator {
    join: String,
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// `relay`, `all-gather` or `ring`.
pub fn parse_topology(name: &str) -> Result<Topology> {
    match name {
        "relay" => Ok(Topology::Relay),
        "all-gather" | "allgather" | "all_gather" => Ok(Topology::AllGather),
        "ring" => Ok(Topology::Ring),
        other => bail!("topology {other:?}: use relay, all-gather or ring"),
    }
}

impl EmbeddedCoordinator {
    /// Starts a coordinator and waits until it listens.
    pub fn start(spec: &CoordinatorSpec) -> Result<Self> {
        let mut cfg = CoordinatorNodeConfig::new(spec.listen, parse_topology(&spec.topology)?);
        cfg.state_dir = spec.state_dir.clone();
        cfg.protocol.min_members = spec.min_workers.max(1) as usize;
        if let Some(deadline) = spec.deadline {
            cfg.protocol.deadline = DeadlinePolicy::Fixed(deadline.max(Duration::from_millis(1)));
        }
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("meridian-coordinator".into())
            .spawn(move || -> Result<()> {
                let rt = crate::networked::runtime()?;
                rt.block_on(async move {
                    let mut node = match CoordinatorNode::start(cfg) {
                        Ok(node) => node,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!(e).context("starting the coordinator")));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok((node.join_string().to_string(), node.local_addr())));
                    loop {
                        tokio::select! {
                            _ = &mut stop_rx => break,
                            event = node.next_event() => match event {
                                None => break,
                                Some(CoordinatorNodeEvent::Protocol(CoordinatorEvent::Joined { member, .. })) => {
                                    tracing::info!(member, "worker joined")
                                }
                                Some(CoordinatorNodeEvent::Failed { reason }) => {
                                    bail!("coordinator stopped: {reason}")
                                }
                                Some(other) => tracing::debug!(event = ?other, "coordinator"),
                            },
                        }
                    }
                    node.shutdown().await.context("shutting down")?;
                    Ok(())
                })
            })
            .context("starting the coordinator's thread")?;
        let (join, addr) = ready_rx
            .recv()
            .map_err(|_| anyhow!("the coordinator's thread ended before it listened"))??;
        Ok(Self { join, addr, stop: Some(stop_tx), thread: Some(thread) })
    }

    /// The join string workers need (it holds the run's secret).
    pub fn join_string(&self) -> &str {
        &self.join
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the coordinator and waits for it; the error it stopped with, if any.
    pub fn close(&mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => {
                thread.join().map_err(|_| anyhow!("the coordinator's thread panicked"))?
            }
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedCoordinator {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::warn!(error = %format!("{e:#}"), "coordinator");
        }
    }
}
