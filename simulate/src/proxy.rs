//! A userspace WAN impairment proxy: real UDP sockets in front of a real server, each
//! direction through a [`LinkModel`], so processes on one machine see WAN conditions
//! without kernel `netem`.
//!
//! The proxy listens on one address and forwards to one upstream address. Like a NAT, it
//! gives every client address it hears from its own upstream socket, so the server's
//! replies come back on that socket and go to the right client; a mapping that carries no
//! traffic for [`ProxyConfig::idle_timeout`] is forgotten. Every datagram is offered to
//! its direction's model (one for client → server, "up", one for server → client,
//! "down"; all clients share them, as they share the server's access link) and sent on at
//! the model's arrival time. Each direction keeps one timer queue (a heap ordered by
//! arrival time, then by order of offer), served by one task: a datagram costs a heap
//! entry, not a task or a timer.
//!
//! Counters say what the proxy knows: a datagram handed to the network is *forwarded*
//! (UDP never confirms it arrived). Sends the socket refuses (no route, a broadcast
//! address) count as failed, not forwarded; refusals the receiver reports back (ICMP port
//! or host unreachable, which the OS surfaces on the upstream socket's next send or
//! receive) count as refused. A proxy that would forward to its own listen address is
//! refused at start: it would send every datagram back to itself, each time through a new
//! client mapping, without end.
//!
//! Time is real (tokio's clock, 1 ms timer resolution): a datagram leaves the proxy at the
//! first timer tick at or after its modeled arrival, so measured delays are at least the
//! modeled ones, plus scheduling noise. The model itself stays sans-IO; this module is
//! only its socket driver.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

use crate::error::{Result, SimError};
use crate::fabric::{Counter, LinkStats};
use crate::link::{DropReason, Fate, LinkModel, LinkSpec};
use crate::topology::Topology;

/// Largest datagram the proxy reads (the UDP maximum); the link's `max_datagram` decides
/// what passes.
const RECV_BUFFER: usize = 65_535;

/// What a proxy does: where it listens, where it forwards, and the two links.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address clients send to.
    pub listen: SocketAddr,
    /// The server datagrams are forwarded to.
    pub to: SocketAddr,
    /// Client → server link.
    pub up: LinkSpec,
    /// Server → client link.
    pub down: LinkSpec,
    /// Seed of the up link's random stream; the down link uses the next value.
    pub seed: u64,
    /// A client mapping with no traffic either way for this long is dropped (with its
    /// upstream socket).
    pub idle_timeout: Duration,
    /// Most client mappings at once (each holds a socket); datagrams from further new
    /// clients are refused until some expire.
    pub max_clients: usize,
    /// How often the counters are logged (`tracing` at info); `None` for never.
    pub report_every: Option<Duration>,
}

impl ProxyConfig {
    /// A proxy from `listen` to `to` with these links, seed 0, a 60 s idle timeout, at
    /// most 1024 clients and a report every 10 s.
    pub fn new(listen: SocketAddr, to: SocketAddr, up: LinkSpec, down: LinkSpec) -> ProxyConfig {
        ProxyConfig {
            listen,
            to,
            up,
            down,
            seed: 0,
            idle_timeout: Duration::from_secs(60),
            max_clients: 1024,
            report_every: Some(Duration::from_secs(10)),
        }
    }
}

/// Parses one link direction written as TOML: an inline table
/// (`{ delay = "20ms", rate = "100Mbps" }`) or its body (`delay = "20ms", rate = ...`
/// also works, as do newline-separated `key = value` lines), with the fields and units of
/// [`LinkSpec`]. The result is validated.
pub fn parse_link_spec(text: &str) -> Result<LinkSpec> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        link: LinkSpec,
    }
    let trimmed = text.trim();
    let table =
        if trimmed.starts_with('{') { trimmed.to_string() } else { format!("{{ {trimmed} }}") };
    let spec = match toml::from_str::<Wrapper>(&format!("link = {table}")) {
        Ok(w) => w.link,
        // Multi-line bodies are not inline tables; read them as a document.
        Err(inline) => toml::from_str::<LinkSpec>(trimmed)
            .map_err(|_| SimError::LinkSpec(format!("{trimmed:?}: {}", inline.message().trim())))?,
    };
    spec.validate().map_err(|(field, reason)| SimError::InvalidValue {
        field: format!("link spec {field}"),
        reason,
    })?;
    Ok(spec)
}

/// The up and down links for a proxy whose clients sit in region `from` and whose server
/// sits in region `to`, written `"from -> to"` (spaces optional): up is the topology's
/// `from → to` link, down its `to → from` link.
pub fn links_from_topology(topology: &Topology, link: &str) -> Result<(LinkSpec, LinkSpec)> {
    let (from, to) = link.split_once("->").ok_or_else(|| SimError::InvalidValue {
        field: "link".into(),
        reason: format!("{link:?} is not of the form \"CLIENT_REGION -> SERVER_REGION\""),
    })?;
    let (from, to) = (from.trim(), to.trim());
    Ok((topology.link(from, to)?.clone(), topology.link(to, from)?.clone()))
}

/// Whether a proxy listening on `listen` and forwarding to `to` would forward to itself:
/// the same address, or a wildcard listen address (`0.0.0.0`, `::`) and a `to` on the same
/// port that is an address of this host (loopback, a wildcard, or any address a socket
/// can bind here).
pub fn forwards_to_itself(listen: SocketAddr, to: SocketAddr) -> bool {
    if listen.port() != to.port() {
        return false;
    }
    let (l, t) = (listen.ip().to_canonical(), to.ip().to_canonical());
    if l == t {
        return true;
    }
    // Sending to a wildcard address reaches this host.
    if t.is_unspecified() {
        return true;
    }
    // A wildcard listen socket hears every local address of its family (an IPv6 one, by
    // default, IPv4 too).
    let hears = match l {
        IpAddr::V4(v4) => v4.is_unspecified() && t.is_ipv4(),
        IpAddr::V6(v6) => v6.is_unspecified(),
    };
    hears && is_local(t)
}

/// Whether `ip` is an address of this host: binding a socket to it succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// What one direction's sockets reported, beside the link model's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendErrors {
    /// Datagrams that never left the proxy: the socket would not send them (no route, a
    /// broadcast address, no upstream socket could be opened).
    pub failed: Counter,
    /// Refusals the receiver sent back (ICMP port or host unreachable): each says a
    /// datagram forwarded earlier was not taken.
    pub refused: u64,
}

/// The counters of both directions and the live client mappings.
///
/// In the link counters, `delivered` counts datagrams *forwarded*: handed to the network
/// at their modelled arrival time. UDP does not say whether they arrived; `up_errors` and
/// `down_errors` hold what the sockets did say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client → server.
    pub up: LinkStats,
    /// Server → client.
    pub down: LinkStats,
    /// Client → server: failed sends and the server's refusals.
    pub up_errors: SendErrors,
    /// Server → client: failed sends (clients' refusals are not reported on the shared
    /// listen socket).
    pub down_errors: SendErrors,
    /// Client addresses with an upstream socket now.
    pub mappings: usize,
    /// Mappings dropped for being idle.
    pub expired: u64,
    /// Datagrams from new clients refused because `max_clients` were mapped.
    pub refused: u64,
}

impl fmt::Display for ProxyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, s, e) in
            [("up  ", &self.up, &self.up_errors), ("down", &self.down, &self.down_errors)]
        {
            writeln!(
                f,
                "{name}: {} datagrams ({} B) offered, {} ({} B) forwarded, dropped: {} random, \
                 {} burst, {} queue, {} outage, {} other; {} duplicated; {} failed to send; {} \
                 refused by the receiver",
                s.offered.datagrams,
                s.offered.bytes,
                s.delivered.datagrams,
                s.delivered.bytes,
                s.lost_random.datagrams,
                s.lost_burst.datagrams,
                s.dropped_queue.datagrams,
                s.dropped_outage.datagrams,
                s.dropped_other.datagrams,
                s.duplicated.datagrams,
                e.failed.datagrams,
                e.refused,
            )?;
        }
        write!(
            f,
            "clients: {} mapped, {} expired; {} datagrams from new clients refused (too many)",
            self.mappings, self.expired, self.refused
        )
    }
}

/// One line for a periodic log: datagrams offered, forwarded, dropped by the link, failed
/// to send and refused by the receiver.
fn brief(s: &LinkStats, e: &SendErrors) -> String {
    let dropped = s.lost_random.datagrams
        + s.lost_burst.datagrams
        + s.dropped_queue.datagrams
        + s.dropped_outage.datagrams
        + s.dropped_other.datagrams;
    format!(
        "{} offered, {} forwarded, {} dropped, {} failed to send, {} refused",
        s.offered.datagrams, s.delivered.datagrams, dropped, e.failed.datagrams, e.refused
    )
}

/// Whether a socket error is the receiver's refusal, reported back by ICMP.
fn is_refusal(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
    )
}

/// A datagram waiting for its arrival time.
struct Pending {
    at: Instant,
    seq: u64,
    /// Socket it leaves on.
    socket: Arc<UdpSocket>,
    /// `None` on a connected (upstream) socket.
    dest: Option<SocketAddr>,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// One direction: its model, its timer queue, its counters.
struct DirState {
    model: LinkModel,
    queue: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    stats: LinkStats,
    errors: SendErrors,
    /// A failed send and a refusal were logged at warn already: later ones go to debug
    /// (the counters and the periodic report keep the count).
    warned_failed: bool,
    warned_refused: bool,
}

impl DirState {
    /// Counts a datagram of `len` bytes that never left; whether this is the first.
    fn failed(&mut self, len: usize) -> bool {
        self.errors.failed.add(len);
        !std::mem::replace(&mut self.warned_failed, true)
    }

    /// Counts a refusal; whether this is the first.
    fn refused(&mut self) -> bool {
        self.errors.refused += 1;
        !std::mem::replace(&mut self.warned_refused, true)
    }
}

struct Direction {
    state: Mutex<DirState>,
    /// Wakes the delivery task when a datagram is queued ahead of what it waits for.
    wake: Notify,
}

impl Direction {
    fn new(spec: LinkSpec, seed: u64) -> Direction {
        Direction {
            state: Mutex::new(DirState {
                model: LinkModel::new(spec, seed),
                queue: BinaryHeap::new(),
                seq: 0,
                stats: LinkStats::default(),
                errors: SendErrors::default(),
                warned_failed: false,
                warned_refused: false,
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DirState> {
        // A poisoned lock only means another task panicked mid-update; counters and the
        // queue stay usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the datagram through the model and queues what arrives.
    fn offer(
        &self,
        start: Instant,
        socket: &Arc<UdpSocket>,
        dest: Option<SocketAddr>,
        data: &[u8],
    ) {
        let now = Instant::now();
        let mut s = self.lock();
        s.stats.offered.add(data.len());
        match s.model.offer(now - start, data.len()) {
            Fate::Arrives { at, duplicated } => {
                let copies = if duplicated { 2 } else { 1 };
                if duplicated {
                    s.stats.duplicated.add(data.len());
                }
                let earliest = s.queue.peek().map(|Reverse(p)| p.at);
                for _ in 0..copies {
                    let seq = s.seq;
                    s.seq += 1;
                    s.queue.push(Reverse(Pending {
                        at: start + at,
                        seq,
                        socket: socket.clone(),
                        dest,
                        data: data.to_vec(),
                    }));
                }
                if earliest.is_none_or(|e| start + at < e) {
                    self.wake.notify_one();
                }
            }
            Fate::Dropped(reason) => {
                let counter = match reason {
                    DropReason::Random => &mut s.stats.lost_random,
                    DropReason::Burst => &mut s.stats.lost_burst,
                    DropReason::Queue => &mut s.stats.dropped_queue,
                    DropReason::Outage => &mut s.stats.dropped_outage,
                    DropReason::TooLarge => &mut s.stats.dropped_other,
                };
                counter.add(data.len());
            }
        }
    }

    /// Sends every queued datagram at its time; runs until aborted.
    async fn deliver(self: Arc<Self>, name: &'static str) {
        loop {
            // The guard lives in its own block: it must not be held across an await.
            let (due, next) = {
                let mut s = self.lock();
                let now = Instant::now();
                let mut due = Vec::new();
                while s.queue.peek().is_some_and(|Reverse(p)| p.at <= now) {
                    if let Some(Reverse(p)) = s.queue.pop() {
                        due.push(p);
                    }
                }
                (due, s.queue.peek().map(|Reverse(p)| p.at))
            };
            for p in due {
                let mut sent = send(&p).await;
                let mut refused = false;
                if let Err(e) = &sent {
                    if is_refusal(e) {
                        // The error is an earlier datagram's refusal, reported (and
                        // cleared) on this send, which did not go out: send it again.
                        refused = true;
                        sent = send(&p).await;
                    }
                }
                let mut s = self.lock();
                if refused && s.refused() {
                    tracing::warn!(
                        direction = name,
                        "the receiver refuses datagrams (nothing listening there?); counting \
                         them as refused"
                    );
                }
                match &sent {
                    Ok(_) => s.stats.delivered.add(p.data.len()),
                    Err(e) => {
                        let dest = p.dest.or_else(|| p.socket.peer_addr().ok());
                        if s.failed(p.data.len()) {
                            tracing::warn!(direction = name, ?dest, %e, "cannot send; counting \
                                           the datagrams that fail as failed to send");
                        } else {
                            tracing::debug!(direction = name, ?dest, %e, "send failed");
                        }
                    }
                }
                drop(s);
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

/// Sends `p` where it goes. UDP sends do not wait for the peer; this awaits only the
/// socket's readiness, which a fresh socket learns from the reactor.
async fn send(p: &Pending) -> std::io::Result<usize> {
    match p.dest {
        Some(dest) => p.socket.send_to(&p.data, dest).await,
        None => p.socket.send(&p.data).await,
    }
}

/// A client address's upstream socket.
struct Mapping {
    socket: Arc<UdpSocket>,
    last_seen: Instant,
    reader: AbortHandle,
}

struct Shared {
    start: Instant,
    to: SocketAddr,
    listen: Arc<UdpSocket>,
    up: Arc<Direction>,
    down: Arc<Direction>,
    mappings: Mutex<HashMap<SocketAddr, Mapping>>,
    max_clients: usize,
    expired: Mutex<u64>,
    refused: Mutex<u64>,
}

impl Shared {
    fn mappings(&self) -> MutexGuard<'_, HashMap<SocketAddr, Mapping>> {
        self.mappings.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stats(&self) -> ProxyStats {
        let (up, down) = (self.up.lock(), self.down.lock());
        ProxyStats {
            up: up.stats,
            down: down.stats,
            up_errors: up.errors,
            down_errors: down.errors,
            mappings: self.mappings().len(),
            expired: *self.expired.lock().unwrap_or_else(|e| e.into_inner()),
            refused: *self.refused.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// The upstream socket of `client`, made on first sight; `None` when `max_clients`
    /// are mapped already.
    async fn upstream(
        self: &Arc<Self>,
        client: SocketAddr,
    ) -> std::io::Result<Option<Arc<UdpSocket>>> {
        {
            let mut mappings = self.mappings();
            if let Some(m) = mappings.get_mut(&client) {
                m.last_seen = Instant::now();
                return Ok(Some(m.socket.clone()));
            }
            if mappings.len() >= self.max_clients {
                return Ok(None);
            }
        }
        let any = match self.to.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let socket = Arc::new(UdpSocket::bind(SocketAddr::new(any, 0)).await?);
        // Connected: only the server's datagrams come back on it.
        socket.connect(self.to).await?;
        let reader = tokio::spawn(self.clone().read_upstream(client, socket.clone()));
        tracing::debug!(%client, upstream = ?socket.local_addr().ok(), "new client mapping");
        self.mappings().insert(
            client,
            Mapping {
                socket: socket.clone(),
                last_seen: Instant::now(),
                reader: reader.abort_handle(),
            },
        );
        Ok(Some(socket))
    }

    /// Client → proxy: map, then offer to the up link.
    async fn read_listen(self: Arc<Self>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let (len, client) = match self.listen.recv_from(&mut buf).await {
                Ok(r) => r,
                Err(e) => {
                    // On some systems an ICMP error from an earlier send surfaces here;
                    // it concerns one client, not the socket.
                    tracing::debug!(%e, "receive on the listen socket failed");
                    continue;
                }
            };
            match self.upstream(client).await {
                Ok(Some(socket)) => self.up.offer(self.start, &socket, None, &buf[..len]),
                Ok(None) => {
                    tracing::debug!(%client, "too many clients; datagram refused");
                    *self.refused.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                }
                Err(e) => {
                    // The datagram never leaves: it failed, whatever the link would have done.
                    if self.up.lock().failed(len) {
                        tracing::warn!(%client, to = %self.to, %e, "cannot open an upstream socket");
                    } else {
                        tracing::debug!(%client, to = %self.to, %e, "cannot open an upstream socket");
                    }
                }
            }
        }
    }

    /// Server → proxy on one client's socket: offer to the down link.
    async fn read_upstream(self: Arc<Self>, client: SocketAddr, socket: Arc<UdpSocket>) {
        let mut buf = vec![0u8; RECV_BUFFER];
        loop {
            let len = match socket.recv(&mut buf).await {
                Ok(len) => len,
                Err(e) if is_refusal(&e) => {
                    // The server (not yet, or no longer) listening: a datagram forwarded
                    // earlier was refused.
                    if self.up.lock().refused() {
                        tracing::warn!(
                            %client, to = %self.to, %e,
                            "the server refuses datagrams (nothing listening there?); counting \
                             them as refused"
                        );
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(%client, %e, "receive from the server failed");
                    continue;
                }
            };
            if let Some(m) = self.mappings().get_mut(&client) {
                m.last_seen = Instant::now();
            }
            self.down.offer(self.start, &self.listen, Some(client), &buf[..len]);
        }
    }

    /// Forgets mappings idle for longer than `timeout`.
    fn expire(&self, timeout: Duration) {
        let now = Instant::now();
        let mut gone = 0;
        self.mappings().retain(|client, m| {
            let keep = now.duration_since(m.last_seen) < timeout;
            if !keep {
                tracing::debug!(%client, "client mapping expired");
                m.reader.abort();
                gone += 1;
            }
            keep
        });
        *self.expired.lock().unwrap_or_else(|e| e.into_inner()) += gone;
    }
}

/// A running proxy. Dropping it (or [`shutdown`](Self::shutdown)) stops it.
pub struct Proxy {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Validates both links, binds the listen socket and starts forwarding. Must be called
    /// inside a tokio runtime with time and I/O enabled.
    pub async fn start(cfg: ProxyConfig) -> Result<Proxy> {
        for (name, spec) in [("up", &cfg.up), ("down", &cfg.down)] {
            spec.validate().map_err(|(field, reason)| SimError::InvalidValue {
                field: format!("{name} link: {field}"),
                reason,
            })?;
        }
        let listen = UdpSocket::bind(cfg.listen)
            .await
            .map_err(|e| SimError::Io { what: format!("binding {}", cfg.listen), source: e })?;
        let local_addr = listen
            .local_addr()
            .map_err(|e| SimError::Io { what: "reading the listen address".into(), source: e })?;
        if cfg.to.port() == 0 {
            return Err(SimError::InvalidValue {
                field: "to".into(),
                reason: format!(
                    "{}: port 0 is no server's address; give the port it listens on",
                    cfg.to
                ),
            });
        }
        if forwards_to_itself(local_addr, cfg.to) {
            return Err(SimError::InvalidValue {
                field: "to".into(),
                reason: format!(
                    "{} is the proxy's own listen address ({local_addr}): it would forward every \
                     datagram back to itself, without end; give the server's address",
                    cfg.to
                ),
            });
        }
        let shared = Arc::new(Shared {
            start: Instant::now(),
            to: cfg.to,
            listen: Arc::new(listen),
            up: Arc::new(Direction::new(cfg.up, cfg.seed)),
            down: Arc::new(Direction::new(cfg.down, cfg.seed.wrapping_add(1))),
            mappings: Mutex::new(HashMap::new()),
            max_clients: cfg.max_clients,
            expired: Mutex::new(0),
            refused: Mutex::new(0),
        });
        let mut tasks = vec![
            tokio::spawn(shared.clone().read_listen()),
            tokio::spawn(shared.up.clone().deliver("up")),
            tokio::spawn(shared.down.clone().deliver("down")),
        ];
        let housekeeping = shared.clone();
        let (idle, report) = (cfg.idle_timeout, cfg.report_every);
        tasks.push(tokio::spawn(async move {
            // Check for idle mappings a few times per timeout, report at its own pace.
            let tick = report.map_or(idle / 4, |r| r.min(idle / 4)).max(Duration::from_millis(1));
            let mut ticks = tokio::time::interval(tick);
            let mut last_report = Instant::now();
            loop {
                ticks.tick().await;
                housekeeping.expire(idle);
                if report.is_some_and(|r| last_report.elapsed() >= r) {
                    last_report = Instant::now();
                    let s = housekeeping.stats();
                    tracing::info!(
                        up = %brief(&s.up, &s.up_errors),
                        down = %brief(&s.down, &s.down_errors),
                        clients = s.mappings,
                        "proxy counters"
                    );
                }
            }
        }));
        tracing::info!(listen = %local_addr, to = %cfg.to, "proxy forwarding");
        Ok(Proxy { shared, local_addr, tasks })
    }

    /// The address clients send to (with the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// Stops forwarding; returns the final counters. Datagrams still in flight are lost.
    pub fn shutdown(self) -> ProxyStats {
        self.shared.stats()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for m in self.shared.mappings().values() {
            m.reader.abort();
        }
    }
}

#[cfg(test)]
mod tests;
