//! The coordinator node: a QUIC server driving a [`Coordinator`].
//!
//! Tasks:
//! - the acceptor takes incoming connections, refuses those over the caps on unverified
//!   connections (see [`PreAuthLimits`]) and spawns a connection task for each other one;
//! - a connection task completes the handshake, reads frames one at a time, decides
//!   admission on the first one (see the [module docs](super)), decodes the rest and sends
//!   them to the actor; it spawns the connection's writer task on admission;
//! - the actor owns the [`Coordinator`]: it feeds it inputs and timeouts, saves its state on
//!   every commit *before* queueing that round's frames (and when it adopted the run's
//!   signature), and queues frames on the writers.
//!
//! With [`CoordinatorNodeConfig::metrics_listen`] every event the node reports also feeds
//! its [`CoordinatorMetrics`], served over HTTP (see [`crate::metrics`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::guard::{PreAuthLimits, RefusalLog, Slot, Unverified};
use super::link::{self, Out, Read};
use super::metrics::CoordinatorMetrics;
use super::state::StateDir;
use super::{NodeError, COORDINATOR_SENDER, FRAME_OVERHEAD, MAX_JOIN_FRAME};
use crate::error::Result;
use crate::ids::{JoinSecret, MemberId, Round, RunId};
use crate::metrics::MetricsServer;
use crate::protocol::{
    ConnId, Coordinator, CoordinatorConfig, CoordinatorEvent, CoordinatorTransmit, ToCoordinator,
    Topology,
};
use crate::quic::{
    self, close_done, close_refused, ClientAuth, JoinString, NodeIdentity, QuicEndpoint,
    RefusalCode, TransportTuning, CLOSE_DONE,
};
use crate::wire::{
    Carried, Frame, FrameCodec, FrameKind, WireError, DEFAULT_MAX_FRAME, PREFIX_LEN,
};

/// Events queued for [`CoordinatorNode::next_event`] before new ones are dropped (and
/// logged): a node nobody reads events from must not grow without bound.
const EVENT_QUEUE: usize = 4096;

/// How to run a coordinator node.
#[derive(Debug, Clone)]
pub struct CoordinatorNodeConfig {
    /// The UDP address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The host put in the join string. By default the listen address, or `127.0.0.1`
    /// (`::1`) when that is unspecified: set this to the public name or address.
    pub advertise_host: Option<String>,
    /// Where the identity, run credentials and protocol state live. `None`: a fresh
    /// identity and run on every start, nothing saved.
    pub state_dir: Option<PathBuf>,
    /// The identity to use when there is no `state_dir` (generated when `None`).
    pub identity: Option<NodeIdentity>,
    /// The round protocol's settings. Its `run` is replaced by the node's run id (from the
    /// state folder, or fresh); `max_payload` is capped to fit `max_frame` (a state larger
    /// than a frame can only travel directly between members, in chunks).
    pub protocol: CoordinatorConfig,
    /// QUIC tuning.
    pub tuning: TransportTuning,
    /// The largest frame accepted or sent, in bytes, once a connection has joined. Before
    /// that its one frame, the join, may take at most [`MAX_JOIN_FRAME`] bytes.
    pub max_frame: usize,
    /// What a connection gets before its join proved the secret: how long it has from its
    /// first packet to its whole `Join` frame (10 s by default), and how many such
    /// connections may wait at once (64, and 8 from one source, by default).
    pub pre_auth: PreAuthLimits,
    /// Bad frames an admitted connection may send before it is closed. By default 16.
    pub max_bad_frames: u32,
    /// A UDP socket to run over instead of binding `listen` (a simulated network, a
    /// proxy). `None`: a real socket bound to `listen`.
    pub socket: Option<Arc<dyn quinn::AsyncUdpSocket>>,
    /// A TCP address to serve live metrics on, in the Prometheus text format at
    /// `/metrics` (port 0 picks a free port, see [`CoordinatorNode::metrics_addr`]).
    /// `None` (the default): no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
}

impl CoordinatorNodeConfig {
    /// Defaults for a coordinator listening on `listen` with `topology`.
    pub fn new(listen: SocketAddr, topology: Topology) -> Self {
        CoordinatorNodeConfig {
            listen,
            advertise_host: None,
            state_dir: None,
            identity: None,
            protocol: CoordinatorConfig::new(RunId([0; 16]), topology),
            tuning: TransportTuning::default(),
            max_frame: DEFAULT_MAX_FRAME,
            pre_auth: PreAuthLimits::default(),
            max_bad_frames: 16,
            socket: None,
            metrics_listen: None,
        }
    }
}

/// What a coordinator node reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoordinatorNodeEvent {
    /// The round protocol's event (joins, rounds opened and committed with their stats...).
    Protocol(CoordinatorEvent),
    /// A connection hit a limit of [`PreAuthLimits`]: refused before its handshake because
    /// too many connections are waiting to prove they belong to the run (in total or from
    /// its source), or closed for not having joined in time. Neither is a refusal a worker
    /// stops at: it tries again.
    PreAuthLimit {
        /// Its address.
        peer: SocketAddr,
        /// Which limit it hit.
        detail: String,
    },
    /// A connection was turned away on its first frame.
    PeerRefused {
        /// Its address.
        peer: SocketAddr,
        /// The refusal sent.
        code: RefusalCode,
        /// Why, as sent to the peer.
        detail: String,
    },
    /// A frame from an admitted connection was rejected and dropped.
    FrameRejected {
        /// The connection.
        conn: ConnId,
        /// Its address.
        peer: SocketAddr,
        /// Why.
        error: String,
    },
    /// The node stopped serving (its state could not be saved).
    Failed {
        /// Why.
        reason: String,
    },
}

/// An input for the actor.
enum Input {
    Open {
        conn: ConnId,
        writer: mpsc::UnboundedSender<Out>,
        connection: Connection,
    },
    Message {
        conn: ConnId,
        msg: ToCoordinator,
    },
    Payload {
        conn: ConnId,
        round: Round,
        sender: MemberId,
        bytes: Bytes,
    },
    State {
        conn: ConnId,
        round: Round,
        bytes: Bytes,
    },
    Forward {
        conn: ConnId,
        to: MemberId,
        carried: Carried,
        round: Round,
        sender: MemberId,
        bytes: Bytes,
    },
    Closed {
        conn: ConnId,
    },
}

/// What the connection tasks share.
#[derive(Clone)]
struct Shared {
    endpoint: Arc<QuicEndpoint>,
    codec: FrameCodec,
    /// The codec for a connection's first frame: limited to the largest valid join.
    join_codec: FrameCodec,
    inbox: mpsc::UnboundedSender<Input>,
    events: EventSink,
    unverified: Unverified,
    max_bad_frames: u32,
}

/// A running coordinator. Dropping it stops its tasks; [`CoordinatorNode::shutdown`]
/// closes connections cleanly first.
#[derive(Debug)]
pub struct CoordinatorNode {
    endpoint: Arc<QuicEndpoint>,
    join: JoinString,
    local_addr: SocketAddr,
    events: mpsc::Receiver<CoordinatorNodeEvent>,
    stop: Option<oneshot::Sender<()>>,
    actor: Option<JoinHandle<Result<()>>>,
    acceptor: JoinHandle<()>,
    /// The metrics endpoint, stopped with the node.
    metrics: Option<MetricsServer>,
}

/// Where the node's tasks report events: the queue [`CoordinatorNode::next_event`] reads,
/// and the metrics when they are served.
#[derive(Clone)]
struct EventSink {
    queue: mpsc::Sender<CoordinatorNodeEvent>,
    metrics: Option<Arc<CoordinatorMetrics>>,
}

impl EventSink {
    /// Records `event` in the metrics (always: a full queue must not make them lie) and
    /// queues it; returns it when the queue was full and it was dropped.
    fn send(&self, event: CoordinatorNodeEvent) -> Option<CoordinatorNodeEvent> {
        if let Some(metrics) = &self.metrics {
            metrics.observe(&event);
        }
        match self.queue.try_send(event) {
            Err(mpsc::error::TrySendError::Full(event)) => Some(event),
            // Closed: nobody reads events any more, which is no reason to keep one.
            Err(mpsc::error::TrySendError::Closed(_)) | Ok(()) => None,
        }
    }
}

impl CoordinatorNode {
    /// Binds the endpoint, restores the protocol state from `state_dir` if one was saved
    /// there, and starts serving. Must be called inside a tokio runtime.
    pub fn start(cfg: CoordinatorNodeConfig) -> Result<Self> {
        cfg.pre_auth.check("coordinator")?;
        let dir = cfg.state_dir.as_deref().map(StateDir::open).transpose()?;
        // Bound first, so an address in use fails the start before anything else runs.
        let (metrics, metrics_server) = match cfg.metrics_listen {
            Some(addr) => {
                let (metrics, registry) = CoordinatorMetrics::new();
                let server = MetricsServer::start(addr, registry).map_err(NodeError::Metrics)?;
                (Some(Arc::new(metrics)), Some(server))
            }
            None => (None, None),
        };
        let (identity, (run, secret), saved) = match &dir {
            Some(dir) => (dir.identity()?, dir.run()?, dir.load_state()?),
            None => {
                let identity = match cfg.identity.clone() {
                    Some(identity) => identity,
                    None => NodeIdentity::generate("meridian-coordinator")?,
                };
                (identity, JoinString::new_run()?, None)
            }
        };
        let mut protocol = cfg.protocol.clone();
        protocol.run = run;
        let room = cfg.max_frame.saturating_sub(FRAME_OVERHEAD);
        protocol.max_payload = protocol.max_payload.min(room);
        let now = link::now();
        let coordinator = match saved {
            Some(state) => {
                info!(committed = ?state.committed, "restoring the coordinator from its state folder");
                Coordinator::restore(protocol, state, now)?
            }
            None => Coordinator::new(protocol, now)?,
        };

        let endpoint = Arc::new(match &cfg.socket {
            Some(socket) => quic::server_endpoint(
                &identity,
                ClientAuth::AcceptAny,
                &cfg.tuning,
                socket.clone(),
            )?,
            None => quic::bind_server(&identity, ClientAuth::AcceptAny, &cfg.tuning, cfg.listen)?,
        });
        let local_addr = endpoint.local_addr()?;
        let host =
            cfg.advertise_host.clone().unwrap_or_else(|| advertised_ip(local_addr).to_string());
        let join = JoinString {
            host,
            port: local_addr.port(),
            fingerprint: identity.fingerprint(),
            run,
            secret: secret.clone(),
        };
        info!(addr = %local_addr, run = %run, fingerprint = %identity.fingerprint(), "coordinator listening");

        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let events_tx = EventSink { queue: events_tx, metrics: metrics.clone() };
        let (stop_tx, stop_rx) = oneshot::channel();
        let codec = FrameCodec::new(&secret, run, cfg.max_frame);
        let shared = Shared {
            endpoint: endpoint.clone(),
            join_codec: codec.with_max_frame(cfg.max_frame.min(MAX_JOIN_FRAME)),
            codec,
            inbox: inbox_tx,
            events: events_tx.clone(),
            unverified: Unverified::new(cfg.pre_auth.clone()),
            max_bad_frames: cfg.max_bad_frames,
        };
        let actor = Actor {
            proto: coordinator,
            writers: HashMap::new(),
            connections: HashMap::new(),
            members: HashMap::new(),
            events: events_tx,
            metrics,
            dir,
        };
        let actor = tokio::spawn(
            actor.run(inbox_rx, stop_rx).instrument(tracing::info_span!("coordinator")),
        );
        let acceptor = tokio::spawn(accept_loop(shared));
        Ok(CoordinatorNode {
            endpoint,
            join,
            local_addr,
            events: events_rx,
            stop: Some(stop_tx),
            actor: Some(actor),
            acceptor,
            metrics: metrics_server,
        })
    }

    /// Where the metrics are served (`http://ADDR/metrics`), when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// The join string workers need: the advertised host, the bound port, the identity's
    /// fingerprint, the run id and secret.
    pub fn join_string(&self) -> JoinString {
        self.join.clone()
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The run id.
    pub fn run(&self) -> RunId {
        self.join.run
    }

    /// The run's join secret.
    pub fn secret(&self) -> &JoinSecret {
        &self.join.secret
    }

    /// The next event; `None` once the node stopped and every event was read. Events are
    /// queued up to a bound (4096) and dropped beyond it, so a node nobody reads from
    /// still runs.
    pub async fn next_event(&mut self) -> Option<CoordinatorNodeEvent> {
        self.events.recv().await
    }

    /// The next event if one is queued.
    pub fn try_next_event(&mut self) -> Option<CoordinatorNodeEvent> {
        self.events.try_recv().ok()
    }

    /// Stops serving: the actor stops, every connection is closed with an orderly close,
    /// and the endpoint is released (so a restarted node can bind the same port). Returns
    /// the actor's error if it had failed.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match self.actor.take() {
            Some(actor) => actor.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        self.endpoint.close(CLOSE_DONE, "coordinator shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.acceptor.abort();
        let _ = (&mut self.acceptor).await;
        result
    }
}

impl Drop for CoordinatorNode {
    fn drop(&mut self) {
        self.acceptor.abort();
        if let Some(actor) = &self.actor {
            actor.abort();
        }
        self.endpoint.close(CLOSE_DONE, "coordinator stopped");
    }
}

/// The IP a join string names for a node bound to `addr`.
fn advertised_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

async fn accept_loop(shared: Shared) {
    let mut next_conn = 1;
    let mut refusals = RefusalLog::default();
    while let Some(incoming) = shared.endpoint.incoming().await {
        let peer = incoming.remote_address();
        // Claimed before the handshake, which is work and memory a stranger can cause.
        let slot = match shared.unverified.claim(peer.ip()) {
            Ok(slot) => slot,
            Err(detail) => {
                // Refused statelessly: holding even a refusal's connection would be work
                // the flood causes. The peer sees QUIC's CONNECTION_REFUSED.
                incoming.refuse();
                refusals.refused("coordinator", peer, &detail);
                let _ = shared.events.send(CoordinatorNodeEvent::PreAuthLimit { peer, detail });
                continue;
            }
        };
        // One deadline from the first packet to the whole join: not restarted by the
        // handshake's end nor by any byte the peer sends.
        let deadline = tokio::time::Instant::now() + shared.unverified.limits().timeout;
        let conn = ConnId(next_conn);
        next_conn += 1;
        let shared = shared.clone();
        let span = tracing::info_span!("conn", id = conn.0, %peer);
        tokio::spawn(
            async move {
                // At most one frame of the largest join's size may be in flight.
                let allowance = shared.join_codec.max_frame().saturating_add(PREFIX_LEN);
                let allowance = u32::try_from(allowance).unwrap_or(u32::MAX);
                let handshake = shared.endpoint.handshake_unverified(incoming, allowance);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(connection)) => serve(connection, conn, shared, slot, deadline).await,
                    Ok(Err(_)) => {} // logged by the handshake
                    // Dropping the handshake abandons the connection.
                    Err(_) => info!("no handshake before the deadline; connection dropped"),
                }
            }
            .instrument(span),
        );
    }
}

/// The refusal for a connection whose first frame failed to decode.
fn refusal(error: &WireError) -> (RefusalCode, String) {
    match error {
        WireError::BadTag => (
            RefusalCode::WrongSecret,
            "frame authentication failed: the join string's secret is not this run's".into(),
        ),
        WireError::WrongRun { .. } => (RefusalCode::RunMismatch, error.to_string()),
        WireError::UnsupportedVersion { .. } | WireError::BadMagic { .. } => {
            (RefusalCode::VersionMismatch, error.to_string())
        }
        other => (RefusalCode::ProtocolViolation, other.to_string()),
    }
}

/// One connection: admission on the first frame, then frames to the actor until it closes.
/// `slot` is its place among the unverified connections, held until it joined; `deadline`
/// is when it must have.
async fn serve(
    connection: Connection,
    conn: ConnId,
    shared: Shared,
    slot: Slot,
    deadline: tokio::time::Instant,
) {
    let peer = connection.remote_address();
    let refuse = |code: RefusalCode, detail: String| {
        close_refused(&connection, code, &detail);
        let _ = shared.events.send(CoordinatorNodeEvent::PeerRefused { peer, code, detail });
    };
    let first = match tokio::time::timeout_at(
        deadline,
        link::read_first_frame(&connection, &shared.join_codec),
    )
    .await
    {
        Err(_) => {
            let timeout = shared.unverified.limits().timeout;
            let detail = format!(
                "no join within {timeout:?} of connecting (the limit for a connection that has \
                 not joined, pre_auth.timeout)"
            );
            info!(detail, "closing a connection");
            // Closed, not refused: a worker whose join crawls over a bad link reconnects and
            // tries again, where a refusal would end it. (At most `max_connections` of these
            // per timeout, so no flood of log lines.)
            close_done(&connection, &detail);
            let _ = shared.events.send(CoordinatorNodeEvent::PreAuthLimit { peer, detail });
            return;
        }
        Ok(Read::Lost(e)) => return debug!(error = %e, "connection lost before its first frame"),
        Ok(Read::Bad(detail, wire)) => {
            let (code, detail) = match wire {
                Some(WireError::TooLarge { len, max }) => (
                    RefusalCode::ProtocolViolation,
                    format!(
                        "a first frame of {len} bytes exceeds the {max}-byte limit of a \
                         connection that has not joined (the largest valid join)"
                    ),
                ),
                Some(e) => refusal(&e),
                None => (RefusalCode::ProtocolViolation, detail),
            };
            warn!(%code, detail, "refusing a connection on its first frame");
            return refuse(code, detail);
        }
        Ok(Read::Frame(frame)) => frame,
    };
    // An authentic frame proves the secret was known once, not that this is a worker: a
    // frame captured from a run and replayed on a new connection must not keep it open.
    if !is_join(&first) {
        warn!("refusing a connection whose first frame is not a join");
        return refuse(RefusalCode::ProtocolViolation, "the first frame must be a join".into());
    }
    // Joined: the connection gets a member's limits and leaves the unverified count.
    shared.endpoint.admit(&connection);
    drop(slot);

    let (writer_tx, writer_rx) = mpsc::unbounded_channel();
    let writer = link::spawn_writer(connection.clone(), shared.codec.clone(), writer_rx);
    let open = Input::Open { conn, writer: writer_tx, connection: connection.clone() };
    if shared.inbox.send(open).is_err() {
        return;
    }
    let mut bad = 0u32;
    let mut reject = |error: String| {
        bad += 1;
        warn!(error, bad, "rejected a frame");
        let _ = shared.events.send(CoordinatorNodeEvent::FrameRejected { conn, peer, error });
        bad
    };
    let mut next = Some(first);
    loop {
        // A frame that fails to read or to decode counts the same against the connection.
        let read = match next.take() {
            Some(frame) => Ok(frame),
            None => match link::read_frame(&connection, &shared.codec).await {
                Read::Frame(frame) => Ok(frame),
                Read::Bad(error, _) => Err(error),
                Read::Lost(e) => {
                    debug!(error = %e, "connection closed");
                    break;
                }
            },
        };
        let input = match read.and_then(|frame| to_input(conn, frame)) {
            Ok(input) => input,
            Err(error) => {
                if reject(error) > shared.max_bad_frames {
                    close_refused(
                        &connection,
                        RefusalCode::ProtocolViolation,
                        "too many bad frames",
                    );
                    break;
                }
                continue;
            }
        };
        if shared.inbox.send(input).is_err() {
            break;
        }
    }
    let _ = shared.inbox.send(Input::Closed { conn });
    writer.abort();
}

/// Whether `frame` is a worker's `Join`.
fn is_join(frame: &Frame) -> bool {
    frame.header.kind == FrameKind::Control
        && matches!(ToCoordinator::decode(&frame.body), Ok(ToCoordinator::Join { .. }))
}

fn to_input(conn: ConnId, frame: Frame) -> Result<Input, String> {
    let Frame { header, body } = frame;
    Ok(match header.kind {
        FrameKind::Control => {
            Input::Message { conn, msg: ToCoordinator::decode(&body).map_err(|e| e.to_string())? }
        }
        FrameKind::Payload => {
            Input::Payload { conn, round: header.round, sender: header.sender, bytes: body.into() }
        }
        FrameKind::State => Input::State { conn, round: header.round, bytes: body.into() },
        FrameKind::Segment { .. } => return Err("a ring segment sent to the coordinator".into()),
        FrameKind::StateChunk { .. } => {
            return Err("a state chunk sent to the coordinator (chunks go to members)".into())
        }
        FrameKind::Forward { to, carried } => Input::Forward {
            conn,
            to,
            carried,
            round: header.round,
            sender: header.sender,
            bytes: body.into(),
        },
        FrameKind::Forwarded { .. } => {
            return Err("a forwarded frame sent to the coordinator".into())
        }
    })
}

struct Actor {
    proto: Coordinator,
    writers: HashMap<ConnId, mpsc::UnboundedSender<Out>>,
    /// The admitted connections (their round-trip estimates feed the metrics).
    connections: HashMap<ConnId, Connection>,
    /// Each connected member's connection.
    members: HashMap<MemberId, ConnId>,
    events: EventSink,
    metrics: Option<Arc<CoordinatorMetrics>>,
    dir: Option<StateDir>,
}

impl Actor {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Input>,
        mut stop: oneshot::Receiver<()>,
    ) -> Result<()> {
        loop {
            let timeout = self.proto.poll_timeout();
            tokio::select! {
                _ = &mut stop => break,
                input = inbox.recv() => {
                    let Some(input) = input else { break };
                    self.input(input);
                }
                _ = link::sleep_until(timeout) => self.proto.handle_timeout(link::now()),
            }
            if let Err(e) = self.flush() {
                warn!(error = %e, "cannot save the coordinator state; stopping");
                self.emit(CoordinatorNodeEvent::Failed { reason: e.to_string() });
                return Err(e);
            }
        }
        Ok(())
    }

    fn input(&mut self, input: Input) {
        let now = link::now();
        match input {
            Input::Open { conn, writer, connection } => {
                self.writers.insert(conn, writer);
                self.connections.insert(conn, connection);
            }
            Input::Message { conn, msg } => self.proto.handle_message(now, conn, msg),
            Input::Payload { conn, round, sender, bytes } => {
                self.proto.handle_payload(now, conn, round, sender, bytes)
            }
            Input::State { conn, round, bytes } => self.proto.handle_state(now, conn, round, bytes),
            Input::Forward { conn, to, carried, round, sender, bytes } => {
                self.proto.handle_forward(now, conn, to, carried, round, sender, bytes)
            }
            Input::Closed { conn } => {
                self.writers.remove(&conn);
                self.connections.remove(&conn);
                self.proto.handle_disconnect(now, conn);
            }
        }
    }

    /// Events first (saving the state on a commit or an adopted signature), then frames.
    fn flush(&mut self) -> Result<()> {
        let mut save = false;
        while let Some(event) = self.proto.poll_event() {
            match &event {
                CoordinatorEvent::RoundCommitted { round, stats, .. } => {
                    save = true;
                    link::log_round(*round, stats, "round committed");
                    self.record_rtts();
                }
                CoordinatorEvent::SignatureAdopted { .. } => save = true,
                CoordinatorEvent::Joined { member, conn, .. } => {
                    self.members.insert(*member, *conn);
                }
                CoordinatorEvent::Left { member, .. } => {
                    self.members.remove(member);
                }
                _ => {}
            }
            self.emit(CoordinatorNodeEvent::Protocol(event));
        }
        if save {
            if let Some(dir) = &self.dir {
                dir.save_state(&self.proto.persisted())?;
            }
        }
        while let Some(transmit) = self.proto.poll_transmit() {
            let (to, out) = match transmit {
                CoordinatorTransmit::Control { to, msg } => match msg.encode() {
                    Ok(body) => {
                        (to, Out::new(FrameKind::Control, 0, COORDINATOR_SENDER, body.into()))
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot encode a control message");
                        continue;
                    }
                },
                CoordinatorTransmit::Payload { to, round, from_member, bytes } => {
                    (to, Out::new(FrameKind::Payload, round, from_member, bytes))
                }
                CoordinatorTransmit::State { to, round, bytes } => {
                    (to, Out::new(FrameKind::State, round, COORDINATOR_SENDER, bytes))
                }
                CoordinatorTransmit::Forwarded { to, from, carried, round, sender, bytes } => {
                    (to, Out::new(FrameKind::Forwarded { from, carried }, round, sender, bytes))
                }
            };
            match self.writers.get(&to) {
                Some(writer) => {
                    let _ = writer.send(out);
                }
                None => debug!(conn = to.0, "frame for a closed connection dropped"),
            }
        }
        Ok(())
    }

    /// Each connected member's round trip, into the metrics.
    fn record_rtts(&self) {
        let Some(metrics) = &self.metrics else { return };
        for (member, conn) in &self.members {
            if let Some(connection) = self.connections.get(conn) {
                metrics.rtt(*member, connection.rtt());
            }
        }
    }

    fn emit(&self, event: CoordinatorNodeEvent) {
        if let Some(event) = self.events.send(event) {
            debug!(?event, "event queue full, event dropped");
        }
    }
}
