//! End-to-end tests of the QUIC drivers on 127.0.0.1: a coordinator node and worker handles
//! on their own threads, each with a toy application that folds every RoundReady into a hash
//! chain (so replica consistency is "same hash after the same round").

mod adversary;
mod churn;
mod flood;
mod hostile;
mod preauth;
mod rounds;
mod signature;
mod socket;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::error::CommError;
use crate::ids::{MemberId, Round};
use crate::protocol::{DeadlinePolicy, Dest, ProtocolError, Topology, WorkerEvent};
use crate::quic::{JoinString, TransportTuning};

/// Longest a test waits for any one event.
const EVENT_WAIT: Duration = Duration::from_secs(10);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn tuning() -> TransportTuning {
    TransportTuning {
        rtt_ms: 10.0,
        idle_timeout_ms: 5_000,
        keep_alive_ms: 1_000,
        ..Default::default()
    }
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A Relay coordinator config for tests: fixed deadline, `min_members`.
fn coordinator_config(min_members: usize, deadline: Duration) -> CoordinatorNodeConfig {
    topology_config(Topology::Relay, min_members, deadline)
}

fn topology_config(
    topology: Topology,
    min_members: usize,
    deadline: Duration,
) -> CoordinatorNodeConfig {
    let mut cfg = CoordinatorNodeConfig::new(localhost(), topology);
    cfg.tuning = tuning();
    cfg.protocol.min_members = min_members;
    cfg.protocol.deadline = DeadlinePolicy::Fixed(deadline);
    cfg.protocol.rejoin_grace = Duration::from_secs(3);
    cfg.protocol.snapshot_timeout = Duration::from_secs(2);
    cfg
}

fn worker_config(join: &JoinString, name: &str) -> WorkerNodeConfig {
    let mut cfg = WorkerNodeConfig::new(join.clone(), name);
    cfg.tuning = tuning();
    cfg.protocol.fetch_grace = Duration::from_millis(50);
    cfg.protocol.fetch_timeout = Duration::from_secs(1);
    cfg.protocol.join_timeout = Duration::from_secs(2);
    cfg.protocol.state_timeout = Duration::from_secs(3);
    cfg.reconnect = ReconnectPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(300),
        connect_timeout: Duration::from_secs(1),
        give_up_after: Duration::from_secs(15),
    };
    cfg
}

/// The toy application: a hash chain over every applied round.
#[derive(Debug, Clone, Default)]
struct App {
    member: MemberId,
    applied: Option<Round>,
    state: u64,
    /// The state after each applied round.
    history: BTreeMap<Round, u64>,
    /// Rounds whose RoundReady had fewer payloads than members at the start.
    payload_counts: BTreeMap<Round, usize>,
    /// Rounds a snapshot was received for.
    states_received: Vec<Round>,
    snapshots_given: Vec<Round>,
    /// Peers payload bytes came from, over all rounds (from the round stats).
    payload_sources: BTreeSet<Dest>,
}

impl App {
    /// This worker's payload for `round`: derived from its id, the round and its state.
    fn payload(&self, round: Round) -> Bytes {
        let seed = format!("{}/{round}/{:016x}", self.member, self.state);
        let mut bytes = seed.into_bytes();
        // Some bulk, so payloads span several packets.
        let fill = xxhash_rust::xxh3::xxh3_64(&bytes);
        bytes.extend((0..3000u32).map(|i| (fill >> (i % 8 * 8)) as u8 ^ i as u8));
        Bytes::from(bytes)
    }

    fn apply(&mut self, round: Round, payloads: &[(MemberId, Bytes)]) {
        assert!(
            payloads.windows(2).all(|w| w[0].0 < w[1].0),
            "round {round}: payloads not in ascending member order"
        );
        assert_eq!(self.applied.map_or(0, |a| a + 1), round, "rounds applied out of order");
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.state.to_le_bytes());
        h.update(&round.to_le_bytes());
        for (member, bytes) in payloads {
            h.update(&member.to_le_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        self.state = h.digest();
        self.applied = Some(round);
        self.history.insert(round, self.state);
        self.payload_counts.insert(round, payloads.len());
    }

    fn snapshot(&self) -> Bytes {
        let mut bytes = self.applied.unwrap_or(u64::MAX).to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.state.to_le_bytes());
        Bytes::from(bytes)
    }

    fn load(&mut self, round: Round, bytes: &[u8]) {
        assert_eq!(bytes.len(), 16, "snapshot size");
        let applied = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(applied, round, "snapshot names another round");
        self.state = u64::from_le_bytes(bytes[8..].try_into().unwrap());
        self.applied = Some(round);
        self.history.insert(round, self.state);
        self.states_received.push(round);
    }
}

/// Publishes, tolerating the races a real application meets too: the round committed
/// without this worker meanwhile, a snapshot is awaited, a payload already went out.
fn publish(handle: &WorkerHandle, app: &App, round: Round) {
    match handle.publish(round, app.payload(round)) {
        Ok(())
        | Err(CommError::Protocol(
            ProtocolError::RoundApplied { .. }
            | ProtocolError::AwaitingState
            | ProtocolError::AlreadyPublished(_),
        )) => {}
        Err(e) => panic!("publish({round}) failed: {e}"),
    }
}

/// Runs the application until it applied `until`; `progress` gets the last applied round
/// (+1, 0 meaning none). Returns the app with the handle (still connected).
fn drive(
    mut handle: WorkerHandle,
    mut app: App,
    until: Round,
    compute: Duration,
    progress: &AtomicU64,
) -> (WorkerHandle, App) {
    app.member = handle.member();
    while app.applied.is_none_or(|a| a < until) {
        let event = match handle.next_event(Some(EVENT_WAIT)) {
            Ok(Some(event)) => event,
            Ok(None) => panic!("worker {}: no event for {EVENT_WAIT:?}", app.member),
            Err(e) => panic!("worker {}: {e}", app.member),
        };
        match event {
            WorkerNodeEvent::Welcomed { member, next_round, need_state, .. } => {
                app.member = member;
                if !need_state {
                    let next = app.applied.map_or(0, |a| a + 1).max(next_round);
                    publish(&handle, &app, next);
                }
            }
            WorkerNodeEvent::Protocol(WorkerEvent::RoundReady { round, payloads, stats }) => {
                assert_eq!(stats.round, round);
                app.payload_sources
                    .extend(stats.traffic.iter().filter(|t| t.received > 0).map(|t| t.peer));
                app.apply(round, &payloads);
                progress.store(round + 1, Ordering::SeqCst);
                std::thread::sleep(compute);
                if round < until {
                    publish(&handle, &app, round + 1);
                }
            }
            WorkerNodeEvent::Protocol(WorkerEvent::SnapshotRequested { round }) => {
                assert_eq!(app.applied, Some(round));
                handle.provide_state(round, app.snapshot()).unwrap();
                app.snapshots_given.push(round);
            }
            WorkerNodeEvent::Protocol(WorkerEvent::StateReceived { round, bytes }) => {
                app.load(round, &bytes);
                progress.store(round + 1, Ordering::SeqCst);
                publish(&handle, &app, round + 1);
            }
            WorkerNodeEvent::Refused(r) => panic!("worker {}: {r}", app.member),
            WorkerNodeEvent::Failed { reason } => panic!("worker {}: {reason}", app.member),
            _ => {}
        }
    }
    (handle, app)
}

/// A worker on its own thread: connects, runs to `until`, leaves. Returns its app.
/// The largest frame of the hostile-peer tests: small, so oversized frames are cheap.
const SMALL_FRAME: usize = 64 * 1024;

/// A relay coordinator for `members` members (fixed `deadline`) and two honest workers,
/// `w0` and `w1`, that train until round `until` with 20 ms steps; frames are capped at
/// [`SMALL_FRAME`]. Returns the node, its join string, the workers' progress counters and
/// their threads.
fn two_honest_workers(
    rt: &tokio::runtime::Runtime,
    members: usize,
    deadline: Duration,
    until: Round,
) -> (CoordinatorNode, JoinString, Vec<Arc<AtomicU64>>, Vec<JoinHandle<App>>) {
    let mut cfg = coordinator_config(members, deadline);
    cfg.max_frame = SMALL_FRAME;
    let node = {
        let _guard = rt.enter();
        CoordinatorNode::start(cfg).unwrap()
    };
    let join = node.join_string();
    let progress: Vec<_> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let workers = progress
        .iter()
        .enumerate()
        .map(|(i, progress)| {
            let mut cfg = worker_config(&join, &format!("w{i}"));
            cfg.max_frame = SMALL_FRAME;
            let compute = Duration::from_millis(20);
            spawn_worker(rt.handle(), cfg, App::default(), until, compute, progress.clone())
        })
        .collect();
    (node, join, progress, workers)
}

fn spawn_worker(
    rt: &tokio::runtime::Handle,
    cfg: WorkerNodeConfig,
    app: App,
    until: Round,
    compute: Duration,
    progress: Arc<AtomicU64>,
) -> JoinHandle<App> {
    let rt = rt.clone();
    std::thread::spawn(move || {
        let handle = WorkerHandle::spawn(cfg, &rt).unwrap();
        let (handle, app) = drive(handle, app, until, compute, &progress);
        handle.leave().unwrap();
        app
    })
}

/// Like [`spawn_worker`] for a worker that is already connected.
fn spawn_driver(
    handle: WorkerHandle,
    app: App,
    until: Round,
    compute: Duration,
    progress: Arc<AtomicU64>,
) -> JoinHandle<App> {
    std::thread::spawn(move || {
        let (handle, app) = drive(handle, app, until, compute, &progress);
        handle.leave().unwrap();
        app
    })
}

/// Waits (polling) until `cond` holds, for at most `limit`.
fn wait_until(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Every pair of apps agrees on every round both applied; returns how many rounds were
/// compared in total.
fn assert_agree(apps: &[App]) -> usize {
    let mut compared = 0;
    for (i, a) in apps.iter().enumerate() {
        for b in &apps[i + 1..] {
            for (round, hash) in &a.history {
                if let Some(other) = b.history.get(round) {
                    assert_eq!(
                        hash, other,
                        "members {} and {} disagree after round {round}",
                        a.member, b.member
                    );
                    compared += 1;
                }
            }
        }
    }
    compared
}

/// The coordinator's queued events.
fn drain(node: &mut CoordinatorNode) -> Vec<CoordinatorNodeEvent> {
    std::iter::from_fn(|| node.try_next_event()).collect()
}
