//! A tiny in-memory network for the protocol tests: one coordinator, N workers, a manual
//! clock, and links that delay, drop, duplicate and reorder frames.
//!
//! Each worker has a toy application on top: it publishes a payload derived from its state
//! after every round, folds every RoundReady into a hash chain, answers snapshot requests
//! with that hash and loads received state. Replica consistency is then "same hash after
//! the same round", checked by [`Net::check_consistency`].

mod checks;
mod delivery;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::{MemberId, Round};
use crate::protocol::{
    ConnId, Coordinator, CoordinatorConfig, CoordinatorEvent, CoordinatorState, PeerInfo,
    RingReducer, ToCoordinator, WorkerConfig, WorkerEvent, WorkerProto,
};
/// splitmix64: small, seeded, good enough to schedule faults.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

/// One end of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Coordinator,
    Worker(usize),
}

/// What travels.
#[derive(Debug, Clone)]
pub enum Frame {
    Control(Vec<u8>),
    Payload { round: Round, sender: MemberId, bytes: Bytes },
    State { round: Round, bytes: Bytes },
    Segment { round: Round, slot: u32, bytes: Bytes },
    StateChunk { round: Round, index: u32, bytes: Bytes },
}

/// A frame in flight.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: End,
    pub to: End,
    /// The worker side's connection (coordinator links) at send time.
    pub conn: Option<ConnId>,
    /// The sending worker's member id (member links).
    pub from_member: Option<MemberId>,
    /// The coordinator incarnation at send time (frames of a dead one are lost).
    pub epoch: u64,
    pub frame: Frame,
}

impl Envelope {
    /// The decoded control message to the coordinator, if it is one.
    pub fn to_coordinator(&self) -> Option<ToCoordinator> {
        match (&self.frame, self.to) {
            (Frame::Control(b), End::Coordinator) => ToCoordinator::decode(b).ok(),
            _ => None,
        }
    }
}

/// What a link does with a frame.
pub enum Verdict {
    Pass,
    Drop,
    Delay(Duration),
    /// Flips a bit of a payload, state or chunk body (an authenticated peer that lies).
    Corrupt,
}

/// Random faults applied to every frame.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub latency: Duration,
    /// Extra random delay in `[0, jitter)`: reorders frames.
    pub jitter: Duration,
    pub drop: f64,
    pub dup: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { latency: Duration::from_millis(10), jitter: Duration::ZERO, drop: 0.0, dup: 0.0 }
    }
}

/// The toy application of one worker.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub applied: Option<Round>,
    /// Hash chain over every applied round.
    pub state: u64,
    /// State after each applied round (or received snapshot).
    pub states: BTreeMap<Round, u64>,
    /// Every RoundReady: round → payloads.
    pub ready: BTreeMap<Round, Vec<(MemberId, Bytes)>>,
    /// Every AggregateReady: round → (members, aggregate).
    pub aggregates: BTreeMap<Round, (Vec<MemberId>, Bytes)>,
    /// What this worker published, by round.
    pub published: BTreeMap<Round, Bytes>,
    /// Time from a round's readiness to the next publish.
    pub compute: Duration,
    /// A publish scheduled: (round, at).
    pub publish_at: Option<(Round, Instant)>,
    /// Restarts so far; part of the payload so a restarted worker publishes other bytes.
    pub incarnation: u64,
    pub snapshots_served: u32,
    pub states_received: u32,
    /// The worker whose per-member state part the last received state holds.
    pub state_donor: Option<usize>,
    pub events: Vec<WorkerEvent>,
}

pub struct Node {
    pub name: String,
    pub proto: Option<WorkerProto>,
    pub app: App,
    pub conn: ConnId,
    /// When false the app publishes nothing (a worker that computes forever).
    pub publishing: bool,
}

/// The payloads of one RoundReady, in order.
type Applied = Vec<(MemberId, Bytes)>;

type Rule = Box<dyn FnMut(&Envelope, Instant) -> Verdict>;

pub struct Net {
    pub now: Instant,
    pub coordinator: Option<Coordinator>,
    pub coordinator_config: CoordinatorConfig,
    pub worker_config: WorkerConfig,
    pub nodes: Vec<Node>,
    pub faults: Faults,
    pub rule: Option<Rule>,
    pub rng: Rng,
    /// Events of every coordinator incarnation.
    pub coordinator_events: Vec<CoordinatorEvent>,
    /// The last persisted coordinator state (saved on every RoundCommitted).
    pub persisted: Option<CoordinatorState>,
    /// Ring runs: the workers' reducer; their payloads are then little f32 vectors.
    pub reducer: Option<Arc<dyn RingReducer>>,
    /// Bytes a snapshot carries past its round and hash: (replicated, per-member). The
    /// replicated part follows from the hash; the per-member part from the worker's index,
    /// as inner optimizer moments differ between replicas.
    pub state_layout: (usize, usize),
    epoch: u64,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: BTreeMap<u64, Envelope>,
    seq: u64,
    next_conn: u64,
}

impl Net {
    /// A network with a coordinator and workers named w0, w1, … (not connected yet).
    pub fn new(
        coordinator: CoordinatorConfig,
        worker: WorkerConfig,
        workers: usize,
        seed: u64,
    ) -> Self {
        let start = Instant::now();
        let mut net = Net {
            now: start,
            coordinator: Some(Coordinator::new(coordinator.clone(), start).expect("config")),
            coordinator_config: coordinator,
            worker_config: worker,
            nodes: Vec::new(),
            faults: Faults::default(),
            rule: None,
            rng: Rng::new(seed),
            coordinator_events: Vec::new(),
            persisted: None,
            reducer: None,
            state_layout: (0, 0),
            epoch: 0,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            next_conn: 0,
        };
        for i in 0..workers {
            net.add_worker(&format!("w{i}"));
        }
        net
    }

    /// A ring network: workers sum f32 vectors with `reducer`.
    pub fn ring(
        coordinator: CoordinatorConfig,
        worker: WorkerConfig,
        workers: usize,
        reducer: Arc<dyn RingReducer>,
    ) -> Self {
        let mut net = Net::new(coordinator, worker, 0, 1);
        net.reducer = Some(reducer);
        for i in 0..workers {
            net.add_worker(&format!("w{i}"));
        }
        net
    }

    fn proto(&self, config: WorkerConfig, applied: Option<Round>) -> WorkerProto {
        let proto = WorkerProto::new(config, applied).expect("config");
        match &self.reducer {
            Some(r) => proto.with_reducer(r.clone()),
            None => proto,
        }
    }

    /// Adds a worker (not connected).
    pub fn add_worker(&mut self, name: &str) -> usize {
        let mut config = self.worker_config.clone();
        config.name = name.to_string();
        config.peer = PeerInfo(name.as_bytes().to_vec());
        let conn = self.fresh_conn();
        self.nodes.push(Node {
            name: name.to_string(),
            proto: Some(self.proto(config, None)),
            app: App::default(),
            conn,
            publishing: true,
        });
        self.nodes.len() - 1
    }

    fn fresh_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        ConnId(self.next_conn)
    }

    pub fn connect(&mut self, i: usize) {
        let now = self.now;
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.handle_connected(now);
        }
    }

    pub fn connect_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.connect(i);
        }
    }

    /// The worker process dies: its connection closes, its protocol state is gone.
    pub fn crash_worker(&mut self, i: usize) {
        self.nodes[i].proto = None;
        self.nodes[i].app.publish_at = None;
        let conn = self.nodes[i].conn;
        let now = self.now;
        if let Some(c) = self.coordinator.as_mut() {
            c.handle_disconnect(now, conn);
        }
    }

    /// The worker process dies silently (its host went dark): the coordinator is not told;
    /// it finds out when the worker's next process joins under the same name.
    pub fn vanish_worker(&mut self, i: usize) {
        self.nodes[i].proto = None;
        self.nodes[i].app.publish_at = None;
    }

    /// The worker restarts, keeping its application state (`keep_state`) or not.
    pub fn restart_worker(&mut self, i: usize, keep_state: bool) {
        let mut config = self.worker_config.clone();
        config.name = self.nodes[i].name.clone();
        config.peer = PeerInfo(config.name.as_bytes().to_vec());
        if !keep_state {
            let incarnation = self.nodes[i].app.incarnation;
            let ready = std::mem::take(&mut self.nodes[i].app.ready);
            let states = std::mem::take(&mut self.nodes[i].app.states);
            self.nodes[i].app = App { incarnation, ready, states, ..App::default() };
        }
        self.nodes[i].app.incarnation += 1;
        let applied = self.nodes[i].app.applied;
        self.nodes[i].conn = self.fresh_conn();
        self.nodes[i].proto = Some(self.proto(config, applied));
        self.connect(i);
        if keep_state || applied.is_none() {
            self.schedule_publish(i, crate::protocol::types::next_after(applied));
        }
    }

    /// The coordinator dies; every worker sees its connection close.
    pub fn crash_coordinator(&mut self) {
        self.coordinator = None;
        self.epoch += 1;
        let now = self.now;
        for node in &mut self.nodes {
            if let Some(p) = node.proto.as_mut() {
                p.handle_disconnected(now);
            }
        }
    }

    /// The coordinator restarts from its last persisted state; workers reconnect.
    pub fn restart_coordinator(&mut self) {
        let state = self.persisted.clone().expect("persisted state");
        let config = self.coordinator_config.clone();
        self.coordinator = Some(Coordinator::restore(config, state, self.now).expect("restore"));
        for i in 0..self.nodes.len() {
            if self.nodes[i].proto.is_some() {
                self.nodes[i].conn = self.fresh_conn();
                self.connect(i);
            }
        }
    }

    fn next_wakeup(&self) -> Option<Instant> {
        let frames = self.queue.peek().map(|Reverse((at, _))| *at);
        let coordinator = self.coordinator.as_ref().and_then(Coordinator::poll_timeout);
        let workers = self
            .nodes
            .iter()
            .flat_map(|n| {
                let proto = n.proto.as_ref().and_then(WorkerProto::poll_timeout);
                let publish = n.app.publish_at.filter(|_| n.publishing).map(|(_, at)| at);
                [proto, publish]
            })
            .flatten()
            .min();
        [frames, coordinator, workers].into_iter().flatten().min()
    }

    /// Runs one wake-up; false when nothing is left to do before `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.drain();
        let Some(at) = self.next_wakeup() else { return false };
        if at > limit {
            return false;
        }
        self.now = self.now.max(at);
        let now = self.now;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > now {
                break;
            }
            self.queue.pop();
            if let Some(env) = self.in_flight.remove(&seq) {
                self.deliver(env);
                self.drain();
            }
        }
        if let Some(c) = self.coordinator.as_mut() {
            if c.poll_timeout().is_some_and(|t| t <= now) {
                c.handle_timeout(now);
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(p) = self.nodes[i].proto.as_mut() {
                if p.poll_timeout().is_some_and(|t| t <= now) {
                    p.handle_timeout(now);
                }
            }
            let due = self.nodes[i].app.publish_at.filter(|&(_, at)| at <= now);
            if let (Some((round, _)), true) = (due, self.nodes[i].publishing) {
                self.nodes[i].app.publish_at = None;
                let bytes = self.payload_bytes(&self.nodes[i], round);
                self.nodes[i].app.published.entry(round).or_insert_with(|| bytes.clone());
                if let Some(p) = self.nodes[i].proto.as_mut() {
                    // Late publishes (round applied meanwhile, or waiting for state) are
                    // refused; the app simply moves on.
                    let _ = p.publish(now, round, bytes);
                }
            }
        }
        self.drain();
        true
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let limit = self.now + d;
        while self.step(limit) {}
        self.now = self.now.max(limit);
        self.drain();
    }

    /// Runs until `done` holds (checked after every step) or `d` passed; true if it held.
    pub fn run_until(&mut self, d: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let limit = self.now + d;
        loop {
            if done(self) {
                return true;
            }
            if !self.step(limit) {
                self.now = self.now.max(limit);
                return done(self);
            }
        }
    }
}

/// Worker `index`'s snapshot of `round` with hash `state` under `layout` (see
/// [`Net::state_layout`]).
pub fn snapshot_bytes(round: Round, state: u64, index: usize, layout: (usize, usize)) -> Bytes {
    let mut bytes = round.to_le_bytes().to_vec();
    bytes.extend_from_slice(&state.to_le_bytes());
    let mut rng = Rng::new(state);
    bytes.extend((0..layout.0).map(|_| rng.next_u64() as u8));
    bytes.extend((0..layout.1).map(|p| own_byte(index, p)));
    Bytes::from(bytes)
}

fn own_byte(index: usize, position: usize) -> u8 {
    ((position * 31 + index * 7 + 1) % 251) as u8
}

/// Reads a snapshot made by [`snapshot_bytes`]: its round, its hash, and the worker whose
/// per-member part it holds (the whole part from one worker, among `workers`). Panics on
/// anything else: a state assembled from mismatched chunks.
pub fn read_snapshot(
    bytes: &[u8],
    layout: (usize, usize),
    workers: usize,
) -> (Round, u64, Option<usize>) {
    assert_eq!(bytes.len(), 16 + layout.0 + layout.1, "state length");
    let round = Round::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let state = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let mut rng = Rng::new(state);
    let shared = &bytes[16..16 + layout.0];
    assert!(shared.iter().all(|&b| b == rng.next_u64() as u8), "replicated part of another state");
    let own = &bytes[16 + layout.0..];
    let donor = (0..workers).find(|&i| own.iter().enumerate().all(|(p, &b)| b == own_byte(i, p)));
    assert!(layout.1 == 0 || donor.is_some(), "per-member part mixed from several workers");
    (round, state, donor.filter(|_| layout.1 > 0))
}
