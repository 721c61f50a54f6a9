//! The virtual UDP fabric: hosts in regions, datagrams carried by [`LinkModel`]s, delivered
//! on tokio's clock.
//!
//! One driver task per fabric holds a heap of pending deliveries ordered by (arrival time,
//! sequence number) and sleeps until the earliest; sends decide a datagram's fate at once
//! (under one lock) and push it on the heap, waking the driver only when it must wake
//! sooner. With a paused clock, tokio jumps straight to the next timer when every task is
//! idle, so simulated time runs as fast as the work allows. Tokio's timers tick in whole
//! milliseconds, so a datagram is delivered on the first tick at or after its arrival time
//! (up to 1 ms late, never early); the link models themselves keep nanoseconds.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::{Result, SimError};
use crate::link::{DropReason, Fate, LinkModel};
use crate::rng::derive_seed;
use crate::topology::Topology;

/// UDP port every virtual host listens on (hosts differ by address).
pub const SIM_PORT: u16 = 4433;

/// Bytes a host's receive buffer holds before arriving datagrams are dropped (like a real
/// socket's `SO_RCVBUF`).
pub const INBOX_BYTES: usize = 16 << 20;

/// Datagrams and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counter {
    /// Datagrams.
    pub datagrams: u64,
    /// Payload bytes (UDP payload, no headers).
    pub bytes: u64,
}

impl Counter {
    pub(crate) fn add(&mut self, len: usize) {
        self.datagrams += 1;
        self.bytes += len as u64;
    }
}

/// What happened to the datagrams sent over one directed region pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Sent into the link.
    pub offered: Counter,
    /// Put into the receiver's buffer (a duplicate counts again).
    pub delivered: Counter,
    /// Lost at random.
    pub lost_random: Counter,
    /// Lost in a Gilbert–Elliott burst.
    pub lost_burst: Counter,
    /// Dropped at the tail of a full queue.
    pub dropped_queue: Counter,
    /// Dropped by an outage, a partition, or a link set down.
    pub dropped_outage: Counter,
    /// Dropped because the sending or receiving host was down (or gone).
    pub dropped_host: Counter,
    /// Dropped for being larger than the link's `max_datagram`, or at a full receive buffer.
    pub dropped_other: Counter,
    /// Delivered twice.
    pub duplicated: Counter,
}

impl LinkStats {
    /// Fraction of offered datagrams that were lost or dropped (0 when nothing was sent).
    pub fn loss_fraction(&self) -> f64 {
        if self.offered.datagrams == 0 {
            return 0.0;
        }
        let gone = self.lost_random.datagrams
            + self.lost_burst.datagrams
            + self.dropped_queue.datagrams
            + self.dropped_outage.datagrams
            + self.dropped_host.datagrams
            + self.dropped_other.datagrams;
        gone as f64 / self.offered.datagrams as f64
    }
}

/// Per directed region pair `(from, to)` (equal for traffic inside a region).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FabricStats {
    /// Counters per `(from region, to region)`.
    pub links: BTreeMap<(String, String), LinkStats>,
    /// Datagrams sent to an address no host has.
    pub unroutable: Counter,
}

impl fmt::Display for FabricStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ((from, to), s) in &self.links {
            writeln!(
                f,
                "{from} -> {to}: {} datagrams ({} B) offered, {} delivered, {} lost, \
                 {} queue drops, {} outage drops, {} host drops, {} duplicated",
                s.offered.datagrams,
                s.offered.bytes,
                s.delivered.datagrams,
                s.lost_random.datagrams + s.lost_burst.datagrams,
                s.dropped_queue.datagrams,
                s.dropped_outage.datagrams,
                s.dropped_host.datagrams,
                s.duplicated.datagrams,
            )?;
        }
        Ok(())
    }
}

/// A simulated network of hosts in the regions of a [`Topology`].
///
/// Cheap to clone (an `Arc` inside). See the [module docs](self) for how time works.
#[derive(Clone)]
pub struct Fabric {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    wake: Arc<Notify>,
    start: Instant,
}

struct State {
    topology: Topology,
    seed: u64,
    driver_running: bool,
    hosts: Vec<Host>,
    by_addr: HashMap<SocketAddr, usize>,
    per_region: Vec<u32>,
    /// One model per directed host pair, created at the pair's first datagram.
    links: HashMap<(usize, usize), LinkModel>,
    /// Counters per directed region pair (region indices).
    stats: BTreeMap<(usize, usize), LinkStats>,
    unroutable: Counter,
    links_down: HashSet<(usize, usize)>,
    events: BinaryHeap<Reverse<Event>>,
    seq: u64,
    /// When the driver wakes next on its own (None: it waits for a send).
    armed: Option<Duration>,
}

struct Host {
    addr: SocketAddr,
    region: usize,
    down: bool,
    closed: bool,
    inbox: VecDeque<(SocketAddr, Bytes)>,
    inbox_bytes: usize,
    waker: Option<Waker>,
}

impl Host {
    fn new(addr: SocketAddr, region: usize) -> Self {
        Host {
            addr,
            region,
            down: false,
            closed: false,
            inbox: VecDeque::new(),
            inbox_bytes: 0,
            waker: None,
        }
    }
}

struct Event {
    at: Duration,
    seq: u64,
    from: SocketAddr,
    to: usize,
    regions: (usize, usize),
    data: Bytes,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl fmt::Debug for Fabric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fabric").field("start", &self.inner.start).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Let the driver see the fabric is gone and end.
        self.wake.notify_one();
    }
}

impl Fabric {
    /// A fabric carrying datagrams between hosts of `topology`; `seed` fixes every link's
    /// random stream. Call it inside a tokio runtime (normally current-thread with a paused
    /// clock): schedule times (outages, changes) count from this moment on tokio's clock.
    /// Outside a runtime the driver starts at the first [`bind`](Self::bind) inside one.
    pub fn new(topology: Topology, seed: u64) -> Fabric {
        let regions = topology.regions().len();
        let fabric = Fabric {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    topology,
                    seed,
                    driver_running: false,
                    hosts: Vec::new(),
                    by_addr: HashMap::new(),
                    per_region: vec![0; regions],
                    links: HashMap::new(),
                    stats: BTreeMap::new(),
                    unroutable: Counter::default(),
                    links_down: HashSet::new(),
                    events: BinaryHeap::new(),
                    seq: 0,
                    armed: None,
                }),
                wake: Arc::new(Notify::new()),
                start: Instant::now(),
            }),
        };
        let _ = fabric.ensure_driver();
        fabric
    }

    fn ensure_driver(&self) -> Result<()> {
        let mut state = self.inner.lock();
        if state.driver_running {
            return Ok(());
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| SimError::NoRuntime)?;
        state.driver_running = true;
        handle.spawn(drive(Arc::downgrade(&self.inner), self.inner.wake.clone()));
        Ok(())
    }

    /// A new host in `region` with a fresh virtual address (`10.<region>.x.y:4433`,
    /// assigned in bind order, so the same program gets the same addresses). The socket
    /// implements [`quinn::AsyncUdpSocket`]: one datagram per transmit and per receive, no
    /// fragmentation.
    pub fn bind(&self, region: &str) -> Result<Arc<SimSocket>> {
        self.ensure_driver()?;
        let mut state = self.inner.lock();
        let topology = &state.topology;
        let Some(r) = topology.regions().iter().position(|x| x == region) else {
            return Err(SimError::UnknownRegion {
                region: region.to_string(),
                context: "Fabric::bind".into(),
                known: topology.regions().join(", "),
            });
        };
        let k = state.per_region[r];
        if k >= 250 * 256 || r >= 250 {
            return Err(SimError::AddressesExhausted { region: region.to_string() });
        }
        state.per_region[r] += 1;
        let ip = Ipv4Addr::new(10, r as u8 + 1, (k / 250) as u8, (k % 250) as u8 + 1);
        let addr = SocketAddr::new(IpAddr::V4(ip), SIM_PORT);
        let id = state.hosts.len();
        state.hosts.push(Host::new(addr, r));
        state.by_addr.insert(addr, id);
        tracing::debug!(%addr, region, "bound a simulated host");
        Ok(Arc::new(SimSocket { inner: self.inner.clone(), host: id, addr }))
    }

    /// A fresh socket at `addr`, an address this fabric gave out before: a restarted
    /// process binding its old port again (a coordinator keeps the address its join string
    /// names). The old socket, if still open, goes deaf and mute, as its process is gone;
    /// datagrams in flight to it are lost.
    pub fn rebind(&self, addr: SocketAddr) -> Result<Arc<SimSocket>> {
        self.ensure_driver()?;
        let mut state = self.inner.lock();
        let Some(&old) = state.by_addr.get(&addr) else {
            return Err(SimError::UnknownHost { addr });
        };
        let region = state.hosts[old].region;
        let host = &mut state.hosts[old];
        host.closed = true;
        host.inbox.clear();
        host.inbox_bytes = 0;
        host.waker = None;
        let id = state.hosts.len();
        state.hosts.push(Host::new(addr, region));
        state.by_addr.insert(addr, id);
        tracing::debug!(%addr, "rebound a simulated host");
        Ok(Arc::new(SimSocket { inner: self.inner.clone(), host: id, addr }))
    }

    /// Counters per directed region pair since the fabric started.
    pub fn stats(&self) -> FabricStats {
        let state = self.inner.lock();
        let names = state.topology.regions();
        let links = state
            .stats
            .iter()
            .map(|(&(a, b), s)| ((names[a].clone(), names[b].clone()), *s))
            .collect();
        FabricStats { links, unroutable: state.unroutable }
    }

    /// Takes a host down (`true`) or brings it back: while down, datagrams from it and to it
    /// are dropped, and going down empties its receive buffer (a killed process loses it).
    /// Unknown addresses are ignored.
    pub fn set_host_down(&self, addr: SocketAddr, down: bool) {
        let mut state = self.inner.lock();
        let Some(&id) = state.by_addr.get(&addr) else {
            tracing::warn!(%addr, "set_host_down: no such host");
            return;
        };
        let host = &mut state.hosts[id];
        host.down = down;
        if down {
            host.inbox.clear();
            host.inbox_bytes = 0;
        }
        tracing::info!(%addr, down, "simulated host state changed");
    }

    /// Cuts (`true`) or restores the link from region `from` to region `to`, in addition to
    /// the topology's scheduled outages: for partitions decided while the run goes.
    pub fn set_link_down(&self, from: &str, to: &str, down: bool) -> Result<()> {
        let mut state = self.inner.lock();
        let regions = state.topology.regions();
        let index = |name: &str| {
            regions.iter().position(|x| x == name).ok_or_else(|| SimError::UnknownRegion {
                region: name.to_string(),
                context: "Fabric::set_link_down".into(),
                known: regions.join(", "),
            })
        };
        let pair = (index(from)?, index(to)?);
        if down {
            state.links_down.insert(pair);
        } else {
            state.links_down.remove(&pair);
        }
        Ok(())
    }

    /// The region of the host at `addr`.
    pub fn region_of(&self, addr: SocketAddr) -> Option<String> {
        let state = self.inner.lock();
        let id = *state.by_addr.get(&addr)?;
        Some(state.topology.regions()[state.hosts[id].region].clone())
    }

    /// The topology the fabric runs.
    pub fn topology(&self) -> Topology {
        self.inner.lock().topology.clone()
    }

    /// Time since the fabric started, on tokio's clock (virtual when paused).
    pub fn elapsed(&self) -> Duration {
        self.inner.start.elapsed()
    }
}

impl Inner {
    /// The state, even if a panicking thread poisoned the lock (the state stays consistent
    /// between statements, and a simulator that stops carrying datagrams helps nobody).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, from: usize, to: SocketAddr, data: &[u8]) {
        let now = self.start.elapsed();
        let mut state = self.lock();
        let state = &mut *state;
        let Some(&dst) = state.by_addr.get(&to) else {
            state.unroutable.add(data.len());
            return;
        };
        let pair = (state.hosts[from].region, state.hosts[dst].region);
        let stats = state.stats.entry(pair).or_default();
        stats.offered.add(data.len());
        if state.hosts[from].down || state.hosts[from].closed {
            stats.dropped_host.add(data.len());
            return;
        }
        if state.links_down.contains(&pair) {
            stats.dropped_outage.add(data.len());
            return;
        }
        let link = match state.links.entry((from, dst)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let regions = state.topology.regions();
                match state.topology.link(&regions[pair.0], &regions[pair.1]) {
                    Ok(spec) => e.insert(LinkModel::new(
                        spec.clone(),
                        derive_seed(&[state.seed, from as u64, dst as u64]),
                    )),
                    Err(err) => {
                        tracing::warn!(%err, "no link between the hosts' regions");
                        stats.dropped_other.add(data.len());
                        return;
                    }
                }
            }
        };
        match link.offer(now, data.len()) {
            Fate::Arrives { at, duplicated } => {
                let bytes = Bytes::copy_from_slice(data);
                let copies = if duplicated { 2 } else { 1 };
                if duplicated {
                    stats.duplicated.add(data.len());
                }
                let from_addr = state.hosts[from].addr;
                for _ in 0..copies {
                    state.seq += 1;
                    state.events.push(Reverse(Event {
                        at,
                        seq: state.seq,
                        from: from_addr,
                        to: dst,
                        regions: pair,
                        data: bytes.clone(),
                    }));
                }
                if state.armed.is_none_or(|armed| at < armed) {
                    state.armed = Some(at);
                    self.wake.notify_one();
                }
            }
            Fate::Dropped(reason) => {
                let counter = match reason {
                    DropReason::Random => &mut stats.lost_random,
                    DropReason::Burst => &mut stats.lost_burst,
                    DropReason::Queue => &mut stats.dropped_queue,
                    DropReason::Outage => &mut stats.dropped_outage,
                    DropReason::TooLarge => &mut stats.dropped_other,
                };
                counter.add(data.len());
            }
        }
    }

    /// Delivers every datagram due by now; returns when the next one is due.
    fn deliver_due(&self, wakers: &mut Vec<Waker>) -> Option<Duration> {
        let now = self.start.elapsed();
        let mut state = self.lock();
        let state = &mut *state;
        while state.events.peek().is_some_and(|e| e.0.at <= now) {
            let Some(Reverse(event)) = state.events.pop() else { break };
            let stats = state.stats.entry(event.regions).or_default();
            let host = &mut state.hosts[event.to];
            let len = event.data.len();
            if host.down || host.closed {
                stats.dropped_host.add(len);
            } else if host.inbox_bytes + len > INBOX_BYTES {
                stats.dropped_other.add(len);
            } else {
                stats.delivered.add(len);
                host.inbox_bytes += len;
                host.inbox.push_back((event.from, event.data));
                if let Some(w) = host.waker.take() {
                    wakers.push(w);
                }
            }
        }
        state.armed = state.events.peek().map(|e| e.0.at);
        state.armed
    }
}

/// The driver: delivers due datagrams, then sleeps until the next is due or a send needs
/// it sooner. Ends when the fabric is dropped.
async fn drive(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut wakers = Vec::new();
    loop {
        let (next, start) = {
            let Some(inner) = inner.upgrade() else { return };
            (inner.deliver_due(&mut wakers), inner.start)
        };
        for w in wakers.drain(..) {
            w.wake();
        }
        match next {
            Some(at) => {
                let _ = tokio::time::timeout_at(start + at, wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
}

/// A host's UDP socket on the [`Fabric`]. Implements [`quinn::AsyncUdpSocket`]; sends never
/// block (a full link queue drops, as a router would).
pub struct SimSocket {
    inner: Arc<Inner>,
    host: usize,
    addr: SocketAddr,
}

impl fmt::Debug for SimSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimSocket").field("addr", &self.addr).finish()
    }
}

impl SimSocket {
    /// The host's virtual address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one datagram (what quinn's `try_send` does, for tests and tools).
    pub fn send_to(&self, to: SocketAddr, data: &[u8]) {
        self.inner.send(self.host, to, data);
    }

    /// The next received datagram and its sender, if one is waiting.
    pub fn try_recv(&self) -> Option<(SocketAddr, Bytes)> {
        let mut state = self.inner.lock();
        let host = &mut state.hosts[self.host];
        let (from, data) = host.inbox.pop_front()?;
        host.inbox_bytes -= data.len();
        Some((from, data))
    }
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        let mut state = self.inner.lock();
        let host = &mut state.hosts[self.host];
        host.closed = true;
        host.inbox.clear();
        host.inbox_bytes = 0;
        host.waker = None;
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match transmit.segment_size {
            Some(size) if size > 0 && size < transmit.contents.len() => {
                for segment in transmit.contents.chunks(size) {
                    self.inner.send(self.host, transmit.destination, segment);
                }
            }
            _ => self.inner.send(self.host, transmit.destination, transmit.contents),
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.inner.lock();
        let host = &mut state.hosts[self.host];
        let mut n = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((from, data)) = host.inbox.pop_front() else { break };
            host.inbox_bytes -= data.len();
            // A datagram longer than the buffer is truncated, as recvmsg does.
            let len = data.len().min(buf.len());
            buf[..len].copy_from_slice(&data[..len]);
            *meta =
                RecvMeta { addr: from, len, stride: len, ecn: None, dst_ip: Some(self.addr.ip()) };
            n += 1;
        }
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        host.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        1
    }

    fn may_fragment(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests;
