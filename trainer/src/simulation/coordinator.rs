//! The simulated run's coordinator: started on the fabric, its events tallied (what the
//! run committed, who left and came back, what was rejected), and under
//! `--chaos coordinator-restart` killed and restarted from its state folder.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use meridian_comm::node::{CoordinatorNode, CoordinatorNodeConfig, CoordinatorNodeEvent};
use meridian_comm::protocol::{CoordinatorEvent, RefuseReason};
use meridian_comm::quic::{JoinString, NodeIdentity};
use meridian_simulate::{Fabric, SimSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the coordinator saw over the whole run (every incarnation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoordinatorTally {
    /// Every committed round: the members whose payloads it committed, ascending.
    pub committed: BTreeMap<u64, Vec<u32>>,
    /// Rounds committed twice with different member sets (must stay empty).
    pub conflicting: Vec<u64>,
    /// Member connections that closed, timed out or were superseded by a restarted
    /// process under the same name (goodbyes not counted).
    pub lost: u64,
    /// Admissions of a name admitted before (a restarted worker, or every worker
    /// reconnecting to a restarted coordinator).
    pub rejoined: u64,
    /// Input refused or rejected: bad frames, refused connections, payloads for the wrong
    /// round, duplicates.
    pub rejected: u64,
    /// Times the coordinator was killed and restarted.
    pub restarts: u64,
    /// Names admitted so far.
    names: BTreeSet<String>,
}

impl CoordinatorTally {
    fn take(&mut self, event: CoordinatorNodeEvent) {
        match event {
            CoordinatorNodeEvent::Protocol(event) => match event {
                CoordinatorEvent::RoundCommitted { round, delivered, .. } => {
                    let members: Vec<u32> = delivered.iter().map(|d| d.member).collect();
                    if let Some(before) = self.committed.insert(round, members.clone()) {
                        if before != members {
                            self.conflicting.push(round);
                        }
                    }
                }
                CoordinatorEvent::Joined { name, .. } => {
                    self.rejoined += u64::from(!self.names.insert(name))
                }
                CoordinatorEvent::Left { graceful: false, .. } => self.lost += 1,
                // A connection superseded by its member's new one is not input refused.
                CoordinatorEvent::Refused { reason: RefuseReason::Superseded, .. } => {}
                CoordinatorEvent::Rejected { .. } | CoordinatorEvent::Refused { .. } => {
                    self.rejected += 1
                }
                _ => {}
            },
            CoordinatorNodeEvent::PeerRefused { .. }
            | CoordinatorNodeEvent::FrameRejected { .. } => self.rejected += 1,
            CoordinatorNodeEvent::Failed { reason } => {
                tracing::error!(%reason, "coordinator stopped")
            }
            _ => {}
        }
    }
}

/// A coordinator serving a simulated run.
pub struct SimCoordinator {
    join: JoinString,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<CoordinatorTally>>,
}

/// How to (re)start the coordinator: everything but the socket.
pub struct Launch {
    /// The node's settings; `socket` is filled in per start.
    pub config: CoordinatorNodeConfig,
    /// Its identity.
    pub identity: NodeIdentity,
    /// Where it keeps its state when it is to be restarted (`None`: nothing saved).
    pub state_dir: Option<PathBuf>,
}

impl Launch {
    fn start(&self, socket: Arc<SimSocket>) -> Result<CoordinatorNode> {
        let mut cfg = self.config.clone();
        cfg.socket = Some(socket);
        match &self.state_dir {
            Some(dir) => {
                // The same identity every run (and across the restart), so the same seed
                // replays the same handshakes.
                if !dir.join("node-cert.pem").exists() {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    self.identity.save(dir)?;
                }
                cfg.state_dir = Some(dir.clone());
            }
            None => cfg.identity = Some(self.identity.clone()),
        }
        CoordinatorNode::start(cfg).context("starting the coordinator")
    }
}

impl SimCoordinator {
    /// Starts the coordinator in `region`; with `outage` = (down, back) it is killed at
    /// `down` (its host goes silent, its process state is gone) and restarted at `back`
    /// from its state folder, at the same address.
    pub fn start(
        fabric: &Fabric,
        region: &str,
        launch: Launch,
        outage: Option<(Instant, Instant)>,
    ) -> Result<Self> {
        let socket = fabric.bind(region)?;
        let addr = socket.addr();
        let node = launch.start(socket)?;
        let join = node.join_string();
        let (stop, stopped) = oneshot::channel();
        let task =
            tokio::task::spawn_local(serve(node, launch, fabric.clone(), addr, outage, stopped));
        Ok(SimCoordinator { join, stop, task })
    }

    /// The join string workers use (the same after a restart).
    pub fn join_string(&self) -> JoinString {
        self.join.clone()
    }

    /// Stops the coordinator once every worker is done; returns what it saw.
    pub async fn finish(self) -> Result<CoordinatorTally> {
        let _ = self.stop.send(());
        self.task.await.context("the coordinator's task")?
    }
}

enum Next {
    Stop,
    Kill,
    Event(Option<Box<CoordinatorNodeEvent>>),
}

async fn serve(
    mut node: CoordinatorNode,
    launch: Launch,
    fabric: Fabric,
    addr: SocketAddr,
    mut outage: Option<(Instant, Instant)>,
    mut stopped: oneshot::Receiver<()>,
) -> Result<CoordinatorTally> {
    let mut tally = CoordinatorTally::default();
    loop {
        let kill = outage.map(|(down, _)| down);
        let next = tokio::select! {
            biased;
            _ = &mut stopped => Next::Stop,
            _ = sleep_until(kill) => Next::Kill,
            event = node.next_event() => Next::Event(event.map(Box::new)),
        };
        match next {
            Next::Stop | Next::Event(None) => break,
            Next::Event(Some(event)) => tally.take(*event),
            Next::Kill => {
                let Some((_, back)) = outage.take() else { continue };
                tracing::info!("coordinator killed (simulated fault)");
                fabric.set_host_down(addr, true);
                // Whatever it had not persisted is gone with it.
                while let Some(event) = node.try_next_event() {
                    tally.take(event);
                }
                drop(node);
                tokio::time::sleep_until(back).await;
                node = launch.start(fabric.rebind(addr)?)?;
                tally.restarts += 1;
                tracing::info!("coordinator restarted from its state folder");
            }
        }
    }
    while let Some(event) = node.try_next_event() {
        tally.take(event);
    }
    if let Err(e) = node.shutdown().await {
        tracing::debug!(error = %e, "coordinator shutdown");
    }
    Ok(tally)
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
