//! The worker node: a [`WorkerProto`] driven over a QUIC connection to the coordinator.
//!
//! Tasks:
//! - the link task dials the coordinator (pinning the join string's fingerprint), reads its
//!   frames, and when the connection is lost dials again with exponential backoff until
//!   [`ReconnectPolicy::give_up_after`] has passed without a connection;
//! - the driver task owns the [`WorkerProto`]: it feeds it the link's frames, the
//!   application's commands and timeouts, queues its frames on the connection's writer and
//!   hands its events to the application;
//! - all-gather links: the worker's endpoint also accepts connections from the members the
//!   coordinator announced (their fingerprints pinned in a [`PinSet`]), one reader task per
//!   accepted connection; to send to a member the driver dials it (pinning its
//!   fingerprint) and keeps that connection, with its writer task, for later frames. Each
//!   direction of a pair of members thus has its own connection: frames are read on
//!   accepted connections and written on dialed ones.
//!
//! How a member is reached travels as its [`PeerInfo`]: the postcard encoding of an
//! address and a certificate fingerprint. The address is
//! [`WorkerNodeConfig::advertise`], or else the local IP the OS routes to the coordinator
//! with the bound port.
//!
//! A refusal ends the worker: a transport refusal (wrong join secret, other run) or a
//! protocol one (the name was superseded, the worker is ahead of the coordinator).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn, Instrument};

use super::link::{self, Out, Read};
use super::{NodeError, Refusal, FRAME_OVERHEAD, UNASSIGNED_SENDER};
use crate::error::{CommError, Result};
use crate::ids::{CertFingerprint, MemberId, Round};
use crate::protocol::{
    Dest, MemberInfo, PeerInfo, PeerMessage, RejectReason, RingReducer, RoundStats, ToCoordinator,
    ToWorker, Topology, WorkerConfig, WorkerEvent, WorkerProto, WorkerTransmit,
};
use crate::quic::{
    self, close_done, close_refused, peer_fingerprint, ClientAuth, JoinString, NodeIdentity,
    PinSet, QuicEndpoint, QuicError, RefusalCode, TransportTuning,
};
use crate::wire::{Frame, FrameCodec, FrameKind, DEFAULT_MAX_FRAME};

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
    /// the driver; `max_payload` and `max_state` are capped to fit `max_frame`.
    pub protocol: WorkerConfig,
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
}

impl WorkerNodeConfig {
    /// Defaults for a worker named `name` joining `join`.
    pub fn new(join: JoinString, name: impl Into<String>) -> Self {
        WorkerNodeConfig {
            join,
            protocol: WorkerConfig::new(name),
            last_applied: None,
            identity: None,
            tuning: TransportTuning::default(),
            max_frame: DEFAULT_MAX_FRAME,
            bind: None,
            advertise: None,
            reconnect: ReconnectPolicy::default(),
            socket: None,
            reducer: None,
        }
    }
}

/// What a worker node reports to its application, in order.
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
    },
    /// The connected members changed.
    Members {
        /// All of them, ascending by id.
        members: Vec<MemberInfo>,
    },
    /// A round with this worker in it opened; publish for it if not done yet.
    RoundOpened {
        /// The round.
        round: Round,
        /// Its members, ascending.
        members: Vec<MemberId>,
        /// When the coordinator closes it at the latest, from now.
        deadline: Duration,
    },
    /// A round committed: apply these payloads, in this (ascending member) order.
    RoundReady {
        /// The round.
        round: Round,
        /// The committed payloads, this worker's own included.
        payloads: Vec<(MemberId, Bytes)>,
        /// Duration, stragglers, bytes per peer.
        stats: RoundStats,
    },
    /// A ring round committed: apply the aggregate, the sum over `members`' payloads (the
    /// same bytes on every member).
    AggregateReady {
        /// The round.
        round: Round,
        /// The members it sums, ascending.
        members: Vec<MemberId>,
        /// The aggregate.
        aggregate: Bytes,
        /// Duration, bytes per peer.
        stats: RoundStats,
    },
    /// Upload the state as it is right after the RoundReady of `round` with `provide_state`.
    SnapshotRequested {
        /// The round.
        round: Round,
    },
    /// Replace the application's state with this one (as of right after `round`).
    StateReceived {
        /// The round it reflects.
        round: Round,
        /// The state.
        bytes: Bytes,
    },
    /// A committed payload could not be obtained; the worker asked for a snapshot.
    FellBehind {
        /// The round it could not apply.
        round: Round,
    },
    /// Input from the coordinator was rejected by the protocol; nothing changed.
    Rejected {
        /// The link it came on.
        from: Dest,
        /// The round it named, if any.
        round: Option<Round>,
        /// Why.
        reason: RejectReason,
    },
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
}

/// What a worker's [`PeerInfo`] holds: how other members reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct PeerAddr {
    addr: SocketAddr,
    fingerprint: CertFingerprint,
}

/// The local IP the OS would use to reach `remote` (no packet is sent).
fn route_ip(remote: SocketAddr) -> Option<IpAddr> {
    let any = match remote {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = std::net::UdpSocket::bind(any).ok()?;
    socket.connect(remote).ok()?;
    Some(socket.local_addr().ok()?.ip())
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
        protocol.max_state = protocol.max_state.min(room);
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
        tasks.spawn(accept_peers(endpoint.clone(), link_tx.clone()).instrument(span.clone()));
        let driver = Driver {
            proto,
            events: event_tx,
            status: status_tx,
            conn: None,
            leave_ack: None,
            peers: Peers {
                endpoint: endpoint.clone(),
                codec,
                pins,
                link_tx,
                connect_timeout: cfg.reconnect.connect_timeout,
                known: BTreeMap::new(),
                out: HashMap::new(),
            },
            tasks,
        };
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

    /// Uploads the state asked for by [`WorkerNodeEvent::SnapshotRequested`]`{ round }`.
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

/// Dials the coordinator, reads its frames, and redials when the connection is lost.
async fn link_task(
    endpoint: Arc<QuicEndpoint>,
    addr: SocketAddr,
    pin: crate::ids::CertFingerprint,
    codec: FrameCodec,
    policy: ReconnectPolicy,
    tx: mpsc::UnboundedSender<LinkMsg>,
) {
    let mut since = tokio::time::Instant::now();
    let mut backoff = policy.initial_backoff;
    loop {
        let last = match tokio::time::timeout(policy.connect_timeout, endpoint.connect(addr, pin))
            .await
        {
            Ok(Ok(conn)) => {
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
            Err(_) => format!("no handshake within {:?}", policy.connect_timeout),
        };
        if since.elapsed() >= policy.give_up_after {
            let _ = tx.send(LinkMsg::GaveUp(format!(
                "no connection for {:?}; last error: {last}",
                policy.give_up_after
            )));
            return;
        }
        debug!(error = %last, ?backoff, "connecting again after a pause");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// The driver task's state.
struct Driver {
    proto: WorkerProto,
    events: mpsc::UnboundedSender<WorkerNodeEvent>,
    status: watch::Sender<Status>,
    conn: Option<(Connection, mpsc::UnboundedSender<Out>)>,
    /// Told when the Leave frame was acknowledged.
    leave_ack: Option<oneshot::Sender<Result<(), QuicError>>>,
    /// Links to other members (all-gather).
    peers: Peers,
    /// The link, accept, peer reader and peer dialer tasks.
    tasks: JoinSet<()>,
}

/// The links to other members (all-gather).
struct Peers {
    endpoint: Arc<QuicEndpoint>,
    codec: FrameCodec,
    /// The members' fingerprints: whom this worker's endpoint accepts.
    pins: PinSet,
    link_tx: mpsc::UnboundedSender<LinkMsg>,
    connect_timeout: Duration,
    /// How to reach each other member, as last announced.
    known: BTreeMap<MemberId, PeerAddr>,
    /// Dialed links, by member: frames queue here until the dial completes.
    out: HashMap<MemberId, mpsc::UnboundedSender<Out>>,
}

impl Peers {
    /// The members changed: pin the new ones, forget the departed and the changed ones.
    fn update(&mut self, me: Option<MemberId>, members: &[MemberInfo]) {
        let mut known = BTreeMap::new();
        for member in members.iter().filter(|m| Some(m.id) != me) {
            match postcard::from_bytes::<PeerAddr>(&member.peer.0) {
                Ok(addr) => {
                    known.insert(member.id, addr);
                }
                Err(e) => {
                    warn!(member = member.id, error = %e, "unusable peer info; member unreachable")
                }
            }
        }
        for (id, old) in &self.known {
            if known.get(id) != Some(old) {
                self.pins.remove(&old.fingerprint);
                self.out.remove(id);
            }
        }
        for addr in known.values() {
            self.pins.insert(addr.fingerprint);
        }
        self.known = known;
    }

    /// Queues `out` for member `to`, dialing it first if there is no link.
    fn send(&mut self, tasks: &mut JoinSet<()>, to: MemberId, out: Out) {
        let out = match self.out.get(&to) {
            Some(queue) => match queue.send(out) {
                Ok(()) => return,
                // The link failed; dial again.
                Err(mpsc::error::SendError(out)) => out,
            },
            None => out,
        };
        let Some(&peer) = self.known.get(&to) else {
            return debug!(to, kind = ?out.kind, "no address for the member; frame dropped");
        };
        let (queue, frames) = mpsc::unbounded_channel();
        let _ = queue.send(out);
        self.out.insert(to, queue);
        let (endpoint, codec, timeout) =
            (self.endpoint.clone(), self.codec.clone(), self.connect_timeout);
        tasks.spawn(async move {
            match tokio::time::timeout(timeout, endpoint.connect(peer.addr, peer.fingerprint)).await
            {
                Ok(Ok(conn)) => {
                    debug!(to, peer = %peer.addr, "connected to a member");
                    let _ = link::spawn_writer(conn, codec, frames).await;
                }
                Ok(Err(e)) => warn!(to, error = %e, "cannot reach a member"),
                Err(_) => warn!(to, "cannot reach a member: no handshake in time"),
            }
        });
    }
}

/// Hands every connection from a member (its handshake passed the pins) to the driver.
async fn accept_peers(endpoint: Arc<QuicEndpoint>, tx: mpsc::UnboundedSender<LinkMsg>) {
    while let Some(incoming) = endpoint.incoming().await {
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Ok(conn) = quic::handshake(incoming).await {
                let _ = tx.send(LinkMsg::PeerIn(conn));
            }
        });
    }
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut link_rx: mpsc::UnboundedReceiver<LinkMsg>,
    ) {
        let ended = loop {
            // Reap finished peer tasks (their results are nothing).
            while self.tasks.try_join_next().is_some() {}
            let timeout = self.proto.poll_timeout();
            let step = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => Err(Ended::Other("the worker was dropped".into())),
                },
                msg = link_rx.recv() => match msg {
                    Some(msg) => self.link(msg),
                    None => Err(Ended::Other("the link task ended".into())),
                },
                _ = link::sleep_until(timeout) => {
                    self.proto.handle_timeout(link::now());
                    Ok(())
                }
            };
            if let Err(ended) = step.and_then(|()| self.flush()) {
                break ended;
            }
        };
        self.tasks.abort_all();
        self.peers.out.clear();
        if let Some((conn, _)) = self.conn.take() {
            close_done(&conn, "worker stopped");
        }
        match &ended {
            Ended::Refused(r) => {
                warn!(refusal = %r, "refused");
                let _ = self.events.send(WorkerNodeEvent::Refused(r.clone()));
            }
            Ended::Other(reason) => debug!(reason, "worker driver stops"),
            other => {
                let reason = CommError::from(other.clone()).to_string();
                warn!(reason, "worker stops");
                let _ = self.events.send(WorkerNodeEvent::Failed { reason });
            }
        }
        self.status.send_modify(|s| s.ended = Some(ended));
    }

    async fn command(&mut self, command: Command) -> Result<(), Ended> {
        let now = link::now();
        match command {
            Command::Publish { round, bytes, reply } => {
                let _ = reply.send(self.proto.publish(now, round, bytes).map_err(Into::into));
            }
            Command::ProvideState { round, bytes, reply } => {
                let _ = reply.send(self.proto.provide_state(now, round, bytes).map_err(Into::into));
            }
            Command::Leave { reply } => {
                self.proto.leave(now);
                let (ack, acked) = oneshot::channel();
                self.leave_ack = Some(ack);
                self.flush()?;
                let result = match self.conn.take() {
                    Some((conn, _writer)) => {
                        // The Leave frame is queued after every frame sent so far; wait
                        // until the coordinator acknowledged it, then close.
                        let result = tokio::time::timeout(Duration::from_secs(2), acked).await;
                        close_done(&conn, "worker left");
                        match result {
                            Ok(Ok(Ok(()))) => Ok(()),
                            Ok(Ok(Err(e))) => Err(e.into()),
                            _ => {
                                Err(NodeError::Stopped("leave was not acknowledged".into()).into())
                            }
                        }
                    }
                    None => Ok(()),
                };
                let _ = reply.send(result);
                return Err(Ended::Other("the worker left".into()));
            }
        }
        Ok(())
    }

    fn link(&mut self, msg: LinkMsg) -> Result<(), Ended> {
        let now = link::now();
        match msg {
            LinkMsg::Up { conn, writer } => {
                info!(coordinator = %conn.remote_address(), "connected");
                let shared = conn.clone();
                self.status.send_modify(|s| s.coordinator = Some(shared));
                self.conn = Some((conn, writer));
                self.proto.handle_connected(now);
            }
            LinkMsg::Frame(frame) => self.frame(frame),
            LinkMsg::Down(reason) => {
                self.conn = None;
                self.status.send_modify(|s| s.coordinator = None);
                self.proto.handle_disconnected(now);
                let _ = self.events.send(WorkerNodeEvent::Disconnected { reason });
            }
            LinkMsg::Refused(refusal) => return Err(Ended::Refused(refusal)),
            LinkMsg::GaveUp(reason) => return Err(Ended::Unreachable(reason)),
            LinkMsg::PeerIn(conn) => self.peer_in(conn),
            LinkMsg::PeerFrame { from, frame } => self.peer_frame(from, frame),
        }
        Ok(())
    }

    /// A member connected: read its frames, if it is one.
    fn peer_in(&mut self, conn: Connection) {
        let fingerprint = peer_fingerprint(&conn);
        let from = self
            .peers
            .known
            .iter()
            .find(|(_, p)| Some(p.fingerprint) == fingerprint)
            .map(|(&member, _)| member);
        let Some(from) = from else {
            // Pinned when the handshake began, gone from the members since.
            return close_refused(&conn, RefusalCode::UnknownPeer, "not a member of the run");
        };
        debug!(from, peer = %conn.remote_address(), "member connected");
        let (codec, tx) = (self.peers.codec.clone(), self.peers.link_tx.clone());
        self.tasks.spawn(async move {
            loop {
                match link::read_frame(&conn, &codec).await {
                    Read::Frame(frame) => {
                        if tx.send(LinkMsg::PeerFrame { from, frame }).is_err() {
                            return;
                        }
                    }
                    Read::Bad(error, _) => warn!(from, error, "rejected a frame from a member"),
                    Read::Lost(e) => return debug!(from, error = %e, "member link closed"),
                }
            }
        });
    }

    fn peer_frame(&mut self, from: MemberId, frame: Frame) {
        let now = link::now();
        let Frame { header, body } = frame;
        match header.kind {
            FrameKind::Control => match PeerMessage::decode(&body) {
                Ok(msg) => self.proto.handle_peer(now, from, msg),
                Err(e) => warn!(from, error = %e, "undecodable control message from a member"),
            },
            FrameKind::Payload => self.proto.handle_payload(
                now,
                Dest::Member(from),
                header.round,
                header.sender,
                body.into(),
            ),
            FrameKind::State => warn!(from, "a member sent a state frame; dropped"),
            FrameKind::Segment { slot } => {
                self.proto.handle_segment(from, header.round, slot, body.into())
            }
        }
    }

    fn frame(&mut self, frame: Frame) {
        let now = link::now();
        let Frame { header, body } = frame;
        match header.kind {
            FrameKind::Control => match ToWorker::decode(&body) {
                Ok(msg) => self.proto.handle_coordinator(now, msg),
                Err(e) => warn!(error = %e, "undecodable control message from the coordinator"),
            },
            FrameKind::Payload => self.proto.handle_payload(
                now,
                Dest::Coordinator,
                header.round,
                header.sender,
                body.into(),
            ),
            FrameKind::State => self.proto.handle_state(now, header.round, body.into()),
            FrameKind::Segment { .. } => warn!("the coordinator sent a ring segment; dropped"),
        }
    }

    fn sender(&self) -> MemberId {
        self.proto.member().unwrap_or(UNASSIGNED_SENDER)
    }

    /// Events to the application, then frames to the coordinator.
    fn flush(&mut self) -> Result<(), Ended> {
        while let Some(event) = self.proto.poll_event() {
            let event = match event {
                WorkerEvent::Welcomed { member, next_round, need_state } => {
                    self.status.send_modify(|s| s.member = Some(member));
                    let topology = self.proto.topology().unwrap_or(Topology::Relay);
                    WorkerNodeEvent::Welcomed { member, next_round, need_state, topology }
                }
                WorkerEvent::Refused { reason } => {
                    return Err(Ended::Refused(Refusal::Protocol(reason)))
                }
                WorkerEvent::Members { members } => {
                    if matches!(self.proto.topology(), Some(Topology::AllGather | Topology::Ring)) {
                        self.peers.update(self.proto.member(), &members);
                    }
                    WorkerNodeEvent::Members { members }
                }
                WorkerEvent::RoundOpened { round, members, deadline } => {
                    WorkerNodeEvent::RoundOpened { round, members, deadline }
                }
                WorkerEvent::RoundReady { round, payloads, stats } => {
                    let traffic: Vec<_> =
                        stats.traffic.iter().map(|t| (t.peer, t.received, t.sent)).collect();
                    debug!(
                        round,
                        delivered = ?stats.delivered,
                        stragglers = ?stats.stragglers,
                        duration_ms = stats.duration.map(|d| d.as_millis() as u64),
                        ?traffic,
                        "round ready"
                    );
                    WorkerNodeEvent::RoundReady { round, payloads, stats }
                }
                WorkerEvent::AggregateReady { round, members, aggregate, stats } => {
                    let traffic: Vec<_> =
                        stats.traffic.iter().map(|t| (t.peer, t.received, t.sent)).collect();
                    debug!(
                        round,
                        members = ?members,
                        duration_ms = stats.duration.map(|d| d.as_millis() as u64),
                        ?traffic,
                        "ring aggregate ready"
                    );
                    WorkerNodeEvent::AggregateReady { round, members, aggregate, stats }
                }
                WorkerEvent::SnapshotRequested { round } => {
                    WorkerNodeEvent::SnapshotRequested { round }
                }
                WorkerEvent::StateReceived { round, bytes } => {
                    WorkerNodeEvent::StateReceived { round, bytes }
                }
                WorkerEvent::FellBehind { round } => WorkerNodeEvent::FellBehind { round },
                WorkerEvent::Rejected { from, round, reason } => {
                    WorkerNodeEvent::Rejected { from, round, reason }
                }
            };
            if self.events.send(event).is_err() {
                return Err(Ended::Other("the worker was dropped".into()));
            }
        }
        let sender = self.sender();
        while let Some(transmit) = self.proto.poll_transmit() {
            let out = match transmit {
                WorkerTransmit::Control { msg } => match msg.encode() {
                    Ok(body) => {
                        let mut out = Out::new(FrameKind::Control, 0, sender, body.into());
                        if msg == ToCoordinator::Leave {
                            out.delivered = self.leave_ack.take();
                        }
                        out
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot encode a control message");
                        continue;
                    }
                },
                WorkerTransmit::Payload { to: Dest::Coordinator, round, from_member, bytes } => {
                    Out::new(FrameKind::Payload, round, from_member, bytes)
                }
                WorkerTransmit::State { round, bytes } => {
                    Out::new(FrameKind::State, round, sender, bytes)
                }
                WorkerTransmit::Payload { to: Dest::Member(to), round, from_member, bytes } => {
                    let out = Out::new(FrameKind::Payload, round, from_member, bytes);
                    self.peers.send(&mut self.tasks, to, out);
                    continue;
                }
                WorkerTransmit::Segment { to, round, slot, bytes } => {
                    let out = Out::new(FrameKind::Segment { slot }, round, sender, bytes);
                    self.peers.send(&mut self.tasks, to, out);
                    continue;
                }
                WorkerTransmit::Peer { to, msg } => {
                    match msg.encode() {
                        Ok(body) => {
                            let out = Out::new(FrameKind::Control, 0, sender, body.into());
                            self.peers.send(&mut self.tasks, to, out);
                        }
                        Err(e) => warn!(error = %e, "cannot encode a peer message"),
                    }
                    continue;
                }
            };
            match &self.conn {
                Some((_, writer)) => {
                    let _ = writer.send(out);
                }
                None => debug!(kind = ?out.kind, "not connected; frame dropped"),
            }
        }
        Ok(())
    }
}
