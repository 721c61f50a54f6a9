//! The worker node: a [`WorkerProto`] driven over a QUIC connection to the coordinator.
//!
//! This module holds the node's API ([`WorkerNode`]), its configuration and the events it
//! reports; the tasks behind it live in submodules, one job each:
//! - `dial`: the link task dials the coordinator (pinning the join string's fingerprint),
//!   reads its frames, and when the connection is lost dials again with exponential backoff
//!   until [`ReconnectPolicy::give_up_after`] has passed without a connection;
//! - `driver`: the driver task owns the [`WorkerProto`]: it feeds it the link's frames, the
//!   application's commands and timeouts, queues its frames on the connection's writer and
//!   hands its events to the application;
//! - `peers`: all-gather links: the worker's endpoint also accepts connections from the
//!   members the coordinator announced (their fingerprints pinned in a [`PinSet`]), one
//!   reader task per accepted connection; to send to a member the driver dials it (pinning
//!   its fingerprint) and keeps that connection, with its writer task, for later frames.
//!   Each direction of a pair of members thus has its own connection: frames are read on
//!   accepted connections and written on dialed ones.
//!
//! How a member is reached travels as its [`PeerInfo`]: the postcard encoding of an
//! address and a certificate fingerprint. The address is
//! [`WorkerNodeConfig::advertise`], or else the local IP the OS routes to the coordinator
//! with the bound port.
//!
//! A refusal ends the worker: a transport refusal (wrong join secret, other run) or a
//! protocol one (the name was superseded, the worker is ahead of the coordinator, its
//! [`WorkerNodeConfig::signature`] differs from the run's: the error lists every difference).

mod dial;
mod driver;
mod peers;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use self::dial::{link_task, route_ip};
use self::driver::Driver;
use self::peers::{accept_peers, PeerAddr, Peers};
use super::guard::{PreAuthLimits, Unverified};
use super::link::Out;
use super::{NodeError, Refusal, FRAME_OVERHEAD, UNASSIGNED_SENDER};
use crate::error::{CommError, Result};
use crate::ids::{MemberId, Round};
use crate::protocol::{
    PeerInfo, ProtocolError, RingReducer, RunSignature, Topology, WorkerConfig, WorkerEvent,
    WorkerProto, MAX_NAME_LEN, MAX_PEER_INFO_LEN,
};
use crate::quic::{
    self, ClientAuth, JoinString, NodeIdentity, PinSet, QuicEndpoint, TransportTuning,
};
use crate::wire::{Frame, FrameCodec, DEFAULT_MAX_FRAME};

/// How a worker retries a lost connection to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// The first wait after a failed attempt. By default 200 ms.
    pub initial_backoff: Duration,
    /// The longest wait between attempts (the wait doubles up to it). By default 5 s.
    pub max_backoff: Duration,
    /// How long one attempt (handshake) may take. By default 10 s.
    pub connect_timeout: Duration,
    /// Without a connection for this long, the worker gives up and reports
    /// [`WorkerNodeEvent::Failed`]. By default 10 minutes.
    pub give_up_after: Duration,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            give_up_after: Duration::from_secs(600),
        }
    }
}

/// How to run a worker node.
#[derive(Debug, Clone)]
pub struct WorkerNodeConfig {
    /// The run to join.
    pub join: JoinString,
    /// The protocol settings, among them the worker's stable `name`. `peer` is filled in by
    /// the driver and `signature` from [`WorkerNodeConfig::signature`]; `max_payload` and
    /// `max_whole_state` are capped to fit `max_frame` (a larger state travels in chunks).
    pub protocol: WorkerConfig,
    /// What this worker trains (model, algorithm, settings), sent in every join: the
    /// coordinator refuses a worker whose signature differs from the run's, and
    /// [`WorkerNode::connect`] then fails with an error naming every difference. Empty (the
    /// default): not checked.
    pub signature: RunSignature,
    /// The last round the application applied (`None`: a fresh worker).
    pub last_applied: Option<Round>,
    /// This node's TLS identity (generated when `None`).
    pub identity: Option<NodeIdentity>,
    /// QUIC tuning.
    pub tuning: TransportTuning,
    /// The largest frame accepted or sent, in bytes.
    pub max_frame: usize,
    /// The local UDP address (by default any address of the coordinator's family, port 0).
    /// Other members connect to it in all-gather runs.
    pub bind: Option<SocketAddr>,
    /// The address other members dial in all-gather runs (behind NAT: the forwarded public
    /// address). By default the local IP the OS routes to the coordinator, with the bound
    /// port.
    pub advertise: Option<SocketAddr>,
    /// Reconnecting.
    pub reconnect: ReconnectPolicy,
    /// A UDP socket to run over instead of binding `bind` (a simulated network, a proxy).
    /// `None`: a real socket.
    pub socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    /// How payloads add up in ring runs (see [`RingReducer`]). Without one this worker
    /// fails every ring it is in, and those rounds fall back to relay.
    pub reducer: Option<Arc<dyn RingReducer>>,
    /// What a connection to this worker's peer listener gets before its handshake proved
    /// it comes from a member (all-gather, ring): how long the handshake may take, and how
    /// many may be under way at once. Defaults as on the coordinator.
    pub pre_auth: PreAuthLimits,
}

impl WorkerNodeConfig {
    /// Defaults for a worker named `name` joining `join`.
    pub fn new(join: JoinString, name: impl Into<String>) -> Self {
        WorkerNodeConfig {
            join,
            protocol: WorkerConfig::new(name),
            signature: RunSignature::default(),
            last_applied: None,
            identity: None,
            tuning: TransportTuning::default(),
            max_frame: DEFAULT_MAX_FRAME,
            bind: None,
            advertise: None,
            reconnect: ReconnectPolicy::default(),
            socket: None,
            reducer: None,
            pre_auth: PreAuthLimits::default(),
        }
    }
}

/// What a worker node reports to its application, in order.
///
/// What the round protocol reports passes through as [`WorkerNodeEvent::Protocol`]; the
/// other variants are the node's own: the welcome (which adds the run's topology), the
/// connection's ups and downs, and the end of the worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerNodeEvent {
    /// Admitted (again, after a reconnect) by the coordinator.
    Welcomed {
        /// This worker's member id.
        member: MemberId,
        /// The round open now, or the next to open.
        next_round: Round,
        /// A snapshot comes before anything is applied.
        need_state: bool,
        /// How the run's payloads travel.
        topology: Topology,
        /// The members the run was started for (the coordinator's `min_members`).
        expected: u32,
        /// The run's settings, where the coordinator holds them (see
        /// [`WorkerConfig::follows`](crate::protocol::WorkerConfig::follows)).
        settings: Option<String>,
    },
    /// An event of the round protocol, as [`WorkerProto`] reported it: the members changed,
    /// a round opened, a round committed (`RoundReady`, or `AggregateReady` in a ring: apply
    /// it), a snapshot was asked for or a state arrived, the worker fell behind, input was
    /// rejected. Never [`WorkerEvent::Welcomed`] (reported as [`WorkerNodeEvent::Welcomed`],
    /// with the topology) nor [`WorkerEvent::Refused`] (it ends the worker:
    /// [`WorkerNodeEvent::Refused`]).
    Protocol(WorkerEvent),
    /// The connection to the coordinator was lost; the worker reconnects.
    Disconnected {
        /// Why it was lost.
        reason: String,
    },
    /// The coordinator refused this worker. Nothing follows.
    Refused(Refusal),
    /// The worker stopped: it gave up reconnecting, or the coordinator presented another
    /// certificate than the pinned one. Nothing follows.
    Failed {
        /// Why.
        reason: String,
    },
}

/// An application command for the driver.
enum Command {
    Publish { round: Round, bytes: Bytes, reply: oneshot::Sender<Result<()>> },
    ProvideState { round: Round, bytes: Bytes, reply: oneshot::Sender<Result<()>> },
    Leave { reply: oneshot::Sender<Result<()>> },
}

/// What the link tasks tell the driver.
enum LinkMsg {
    Up {
        conn: Connection,
        writer: mpsc::UnboundedSender<Out>,
    },
    Frame(Frame),
    Down(String),
    Refused(Refusal),
    GaveUp(String),
    /// A member connected to this worker (all-gather).
    PeerIn(Connection),
    /// A frame from a member.
    PeerFrame {
        from: MemberId,
        frame: Frame,
    },
    /// Member `member` could not be dialed; `frames` were queued for it.
    Unreachable {
        member: MemberId,
        frames: Vec<Out>,
    },
}

/// Shared between the driver and the node handle.
#[derive(Debug, Clone, Default)]
struct Status {
    member: Option<MemberId>,
    /// Why the driver stopped, once it did.
    ended: Option<Ended>,
    /// The live connection to the coordinator, for its path statistics.
    coordinator: Option<Connection>,
}

#[derive(Debug, Clone)]
enum Ended {
    Refused(Refusal),
    Unreachable(String),
    Other(String),
}

impl From<Ended> for CommError {
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::Refused(r) => NodeError::Refused(r).into(),
            Ended::Unreachable(r) => NodeError::Unreachable(r).into(),
            Ended::Other(r) => NodeError::Stopped(r).into(),
        }
    }
}

/// A connected worker (async API). Dropping it closes the connection without a `Leave`
/// (the coordinator treats that as a lost worker, which may rejoin under its name).
///
/// Events queue without bound until read: the application must keep calling
/// [`WorkerNode::next_event`] (round results are never dropped).
#[derive(Debug)]
pub struct WorkerNode {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<WorkerNodeEvent>,
    status: watch::Receiver<Status>,
    driver: JoinHandle<()>,
    endpoint: Arc<QuicEndpoint>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Publish { round, bytes, .. } => {
                write!(f, "Publish({round}, {} B)", bytes.len())
            }
            Command::ProvideState { round, bytes, .. } => {
                write!(f, "ProvideState({round}, {} B)", bytes.len())
            }
            Command::Leave { .. } => f.write_str("Leave"),
        }
    }
}

impl WorkerNode {
    /// Connects to the coordinator and waits until it welcomed this worker (retrying a
    /// lost or failed connection by the reconnect policy). Fails with
    /// [`NodeError::Refused`] when the coordinator refuses it (a wrong join secret, say).
    /// The [`WorkerNodeEvent::Welcomed`] event is still delivered by `next_event`.
    pub async fn connect(cfg: WorkerNodeConfig) -> Result<Self> {
        cfg.pre_auth.check("worker")?;
        let addr = cfg.join.resolve().await?;
        let identity = match cfg.identity.clone() {
            Some(identity) => identity,
            None => NodeIdentity::generate("meridian-worker")?,
        };
        let bind = cfg.bind.unwrap_or(match addr.ip() {
            IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        });
        let pins = PinSet::new();
        let auth = ClientAuth::Pinned(pins.clone());
        let endpoint = Arc::new(match &cfg.socket {
            Some(socket) => quic::server_endpoint(&identity, auth, &cfg.tuning, socket.clone())?,
            None => quic::bind_server(&identity, auth, &cfg.tuning, bind)?,
        });
        let local = endpoint.local_addr()?;
        let advertise = cfg.advertise.unwrap_or_else(|| {
            let ip = Some(local.ip())
                .filter(|ip| !ip.is_unspecified())
                .or_else(|| route_ip(addr))
                .unwrap_or(local.ip());
            SocketAddr::new(ip, local.port())
        });
        let codec = FrameCodec::new(&cfg.join.secret, cfg.join.run, cfg.max_frame);
        let mut protocol = cfg.protocol.clone();
        let me = PeerAddr { addr: advertise, fingerprint: identity.fingerprint() };
        protocol.peer =
            PeerInfo(postcard::to_allocvec(&me).map_err(crate::protocol::ProtocolError::Encode)?);
        let room = cfg.max_frame.saturating_sub(FRAME_OVERHEAD);
        protocol.max_payload = protocol.max_payload.min(room);
        protocol.max_whole_state = protocol.max_whole_state.min(room);
        protocol.signature = cfg.signature.clone();
        // The join must fit a frame: the signature's encoding, with room for the name, the
        // peer info and their length prefixes.
        let signature_len =
            postcard::to_allocvec(&protocol.signature).map_err(ProtocolError::Encode)?.len();
        if signature_len + MAX_NAME_LEN + MAX_PEER_INFO_LEN + 64 > room {
            return Err(ProtocolError::Config(format!(
                "worker: a join with this {signature_len}-byte run signature does not fit \
                 max_frame ({} bytes)",
                cfg.max_frame
            ))
            .into());
        }
        let mut proto = WorkerProto::new(protocol, cfg.last_applied)?;
        if let Some(reducer) = cfg.reducer.clone() {
            proto = proto.with_reducer(reducer);
        }

        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Status::default());
        let span = tracing::info_span!("worker", name = %cfg.protocol.name);
        let mut tasks = JoinSet::new();
        tasks.spawn(
            link_task(
                endpoint.clone(),
                addr,
                cfg.join.fingerprint,
                codec.clone(),
                cfg.reconnect.clone(),
                link_tx.clone(),
            )
            .instrument(span.clone()),
        );
        let unverified = Unverified::new(cfg.pre_auth.clone());
        tasks.spawn(
            accept_peers(endpoint.clone(), unverified, link_tx.clone()).instrument(span.clone()),
        );
        let peers =
            Peers::new(endpoint.clone(), codec, pins, link_tx, cfg.reconnect.connect_timeout);
        let driver = Driver::new(proto, event_tx, status_tx, peers, tasks);
        let driver = tokio::spawn(driver.run(command_rx, link_rx).instrument(span));
        let mut node = WorkerNode {
            commands: command_tx,
            events: event_rx,
            status: status_rx,
            driver,
            endpoint,
        };
        let status = node
            .status
            .wait_for(|s| s.member.is_some() || s.ended.is_some())
            .await
            .map(|s| s.clone())
            .map_err(|_| NodeError::Stopped("the driver ended".into()))?;
        if let Some(ended) = status.ended {
            node.driver.abort();
            return Err(ended.into());
        }
        Ok(node)
    }

    /// This worker's member id (the latest the coordinator gave it).
    pub fn member(&self) -> MemberId {
        self.status.borrow().member.unwrap_or(UNASSIGNED_SENDER)
    }

    /// QUIC's current round-trip estimate to the coordinator (`None` while disconnected).
    pub fn coordinator_rtt(&self) -> Option<Duration> {
        self.status.borrow().coordinator.as_ref().map(Connection::rtt)
    }

    /// The local address of this worker's UDP socket.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.endpoint.local_addr()?)
    }

    /// Publishes this worker's payload for `round` (see [`WorkerProto::publish`]): it goes
    /// out when the round opens with this worker in it. Fails with the protocol's error
    /// (`RoundApplied` when the round committed without this worker meanwhile,
    /// `AwaitingState` while a snapshot is awaited, `PayloadTooLarge`...).
    pub async fn publish(&self, round: Round, bytes: Bytes) -> Result<()> {
        self.call(|reply| Command::Publish { round, bytes, reply }).await
    }

    /// Uploads the state asked for by [`WorkerEvent::SnapshotRequested`]`{ round }`.
    pub async fn provide_state(&self, round: Round, bytes: Bytes) -> Result<()> {
        self.call(|reply| Command::ProvideState { round, bytes, reply }).await
    }

    /// Tells the coordinator this worker leaves, waits (up to 2 s) until it got the
    /// message, and closes the connection.
    pub async fn leave(self) -> Result<()> {
        let result = self.call(|reply| Command::Leave { reply }).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        result
    }

    /// The next event; fails with [`NodeError::Stopped`] (or the reason it stopped) once
    /// the worker stopped and every event was read.
    pub async fn next_event(&mut self) -> Result<WorkerNodeEvent> {
        match self.events.recv().await {
            Some(event) => Ok(event),
            None => Err(self.stopped()),
        }
    }

    /// The next event if one is queued; `Ok(None)` if none is.
    pub fn try_next_event(&mut self) -> Result<Option<WorkerNodeEvent>> {
        match self.events.try_recv() {
            Ok(event) => Ok(Some(event)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(self.stopped()),
        }
    }

    fn stopped(&self) -> CommError {
        match self.status.borrow().ended.clone() {
            Some(ended) => ended.into(),
            None => NodeError::Stopped("the driver ended".into()).into(),
        }
    }

    async fn call(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<()>>) -> Command,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(command(reply)).is_err() {
            return Err(self.stopped());
        }
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(self.stopped()),
        }
    }
}
