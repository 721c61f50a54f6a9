//! `meridian coordinator` and `meridian worker`: one run across processes and machines,
//! over authenticated QUIC.
//!
//! The coordinator admits workers that hold the run's join secret, closes rounds and
//! commits who delivered; it never sees a tensor. Each worker trains its own replica with
//! the same flags (model, data, algorithm, seed), exchanges payloads through the
//! coordinator, applies every committed round in member-id order, and so holds the same
//! parameters as every other worker after each round. A worker that joins late or
//! restarts takes a live worker's state and replays the rounds it missed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use meridian_comm::node::{
    CoordinatorNode, CoordinatorNodeConfig, CoordinatorNodeEvent, WorkerHandle, WorkerNodeConfig,
    WorkerNodeEvent,
};
use meridian_comm::protocol::{CoordinatorEvent, DeadlinePolicy, Dest, RoundStats, Topology};
use meridian_comm::quic::JoinString;
use meridian_optimizer::solo::SoloWorker;
use meridian_optimizer::train_step::TrainStep;
use meridian_optimizer::Algorithm;
use serde::Serialize;

use crate::data::Split;
use crate::net_worker::{drive, AppliedRound, NetEvent, RoundLink};
use crate::node_link::{net_event, published};
use crate::ring_reducer::RingCell;
use crate::run_config::RunSource;
use crate::train::build_model;
use crate::worker::LmWorker;

/// How payloads travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopologyArg {
    /// Each worker uploads once to the coordinator, which forwards to the others.
    Relay,
    /// Each worker sends directly to every other worker.
    AllGather,
    /// The workers sum their payloads around a ring (reduce-scatter, then all-gather):
    /// each sends 2(N−1)/N of its payload, to its ring successor. For the dense
    /// algorithms (ddp, diloco in f32, bf16 or int8); a round whose ring cannot finish
    /// falls back to relay.
    Ring,
}

/// Options of `meridian coordinator`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Prints a join string (meridian://HOST:PORT/?fp=..&run=..&secret=..) that workers pass to
`meridian worker --join`. Keep it secret: it admits its holder to the run. With --state-dir
(default out/coordinator) a restarted coordinator keeps its certificate, run and rounds,
so the same join string keeps working and the workers carry on.")]
pub struct CoordinatorArgs {
    /// UDP address to listen on.
    #[arg(long, default_value = "0.0.0.0:7070", env = "MERIDIAN_LISTEN")]
    pub listen: SocketAddr,
    /// Host name or address workers reach this machine at (put in the join string).
    #[arg(long, env = "MERIDIAN_ADVERTISE")]
    pub advertise: Option<String>,
    /// Folder for the coordinator's certificate, run credentials and round state.
    #[arg(long, default_value = "out/coordinator", env = "MERIDIAN_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Workers to wait for before round 0 opens.
    #[arg(long, default_value_t = 1, env = "MERIDIAN_MIN_WORKERS")]
    pub min_workers: u32,
    /// Live workers a round needs once the run has started. The default, 1, keeps the run
    /// going when workers die (they catch up when they return); set it to --min-workers to
    /// pause instead.
    #[arg(long, default_value_t = 1, env = "MERIDIAN_MIN_LIVE")]
    pub min_live: u32,
    /// How payloads travel.
    #[arg(long, value_enum, default_value = "relay", env = "MERIDIAN_TOPOLOGY")]
    pub topology: TopologyArg,
    /// A fixed round deadline in milliseconds; by default it adapts to observed rounds.
    #[arg(long, env = "MERIDIAN_DEADLINE_MS")]
    pub deadline_ms: Option<u64>,
    /// Also write the join string to this file (for scripts).
    #[arg(long)]
    pub join_file: Option<PathBuf>,
    /// Exit after this many rounds have committed (by default: run until interrupted).
    #[arg(long)]
    pub rounds: Option<u64>,
    /// The run's TOML file; the coordinator reads its `[transport]` table (QUIC tuning:
    /// bandwidth_bps, rtt_ms, congestion = "bbr" | "cubic" | "new_reno", ...).
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override a transport setting: `transport.KEY=VALUE`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the network runtime")
}

/// Runs `meridian coordinator`.
pub fn run_coordinator(args: &CoordinatorArgs) -> Result<()> {
    let tuning = crate::run_config::transport_only(args.config.as_deref(), &args.set)?;
    let rt = runtime()?;
    let topology = match args.topology {
        TopologyArg::Relay => Topology::Relay,
        TopologyArg::AllGather => Topology::AllGather,
        TopologyArg::Ring => Topology::Ring,
    };
    let mut cfg = CoordinatorNodeConfig::new(args.listen, topology);
    cfg.advertise_host = args.advertise.clone();
    cfg.state_dir = Some(args.state_dir.clone());
    cfg.tuning = tuning;
    cfg.protocol.min_members = args.min_workers.max(1) as usize;
    cfg.protocol.min_live = Some(args.min_live.max(1) as usize);
    if let Some(ms) = args.deadline_ms {
        cfg.protocol.deadline = DeadlinePolicy::Fixed(Duration::from_millis(ms.max(1)));
    }
    rt.block_on(async move {
        let mut node = CoordinatorNode::start(cfg).context("starting the coordinator")?;
        let join = node.join_string().to_string();
        println!("{join}");
        if let Some(path) = &args.join_file {
            write_atomically(path, &join)?;
        }
        tracing::info!(listen = %node.local_addr(), "coordinator ready; waiting for workers");
        let mut members = std::collections::BTreeSet::new();
        // After the last round, wait for the workers to take its commit and leave.
        let mut finishing: Option<tokio::time::Instant> = None;
        loop {
            let event = match finishing {
                None => node.next_event().await,
                Some(until) => match tokio::time::timeout_at(until, node.next_event()).await {
                    Ok(e) => e,
                    Err(_) => break,
                },
            };
            let Some(event) = event else { break };
            match event {
                // The comm crate logs each commit with its stats; here it only counts, from
                // the run's start (a restarted coordinator goes on where it stopped).
                CoordinatorNodeEvent::Protocol(CoordinatorEvent::RoundCommitted {
                    round, ..
                }) => {
                    let committed = round + 1;
                    if finishing.is_none() && args.rounds.is_some_and(|n| committed >= n) {
                        finishing = Some(tokio::time::Instant::now() + Duration::from_secs(30));
                    }
                }
                CoordinatorNodeEvent::Protocol(CoordinatorEvent::Joined { member, .. }) => {
                    members.insert(member);
                    tracing::info!(member, "worker joined");
                }
                CoordinatorNodeEvent::Protocol(CoordinatorEvent::Left { member, .. }) => {
                    members.remove(&member);
                    tracing::info!(member, "worker left");
                    if finishing.is_some() && members.is_empty() {
                        break;
                    }
                }
                CoordinatorNodeEvent::Protocol(other) => {
                    tracing::debug!(event = ?other, "protocol")
                }
                CoordinatorNodeEvent::PeerRefused { peer, code, detail } => {
                    tracing::warn!(%peer, %code, %detail, "connection refused")
                }
                CoordinatorNodeEvent::FrameRejected { peer, error, .. } => {
                    tracing::warn!(%peer, %error, "frame rejected")
                }
                CoordinatorNodeEvent::Failed { reason } => bail!("coordinator stopped: {reason}"),
                other => tracing::debug!(event = ?other, "node"),
            }
        }
        node.shutdown().await.context("shutting down")?;
        Ok(())
    })
}

/// Options of `meridian worker`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Every worker of a run must be started with the same model, data, algorithm, settings and
seed (their parameters are compared by hash at the first round). Writes OUT/worker.json:
member id, rounds applied, bytes sent and received, final validation loss and the hash
every worker should agree on.")]
pub struct WorkerArgs {
    /// The join string the coordinator printed.
    #[arg(long, env = "MERIDIAN_JOIN")]
    pub join: String,
    /// This worker's stable name: a restarted worker gives the same name to take its place.
    #[arg(long, env = "MERIDIAN_NAME")]
    pub name: String,
    /// The outer algorithm: ddp, diloco, demo or sparseloco.
    #[arg(long, default_value = "diloco", env = "MERIDIAN_ALGO")]
    pub algo: Algorithm,
    /// Data shards: this worker trains shard (member id mod shards).
    #[arg(long, default_value_t = 1, env = "MERIDIAN_SHARDS")]
    pub shards: u32,
    /// Inner steps to train (the learning-rate schedule spans them).
    #[arg(long, default_value_t = 300, env = "MERIDIAN_STEPS")]
    pub steps: u64,
    /// Inner steps per round (H).
    #[arg(long, env = "MERIDIAN_INNER_STEPS")]
    pub inner_steps: Option<u64>,
    /// The model, data and settings.
    #[command(flatten)]
    pub source: RunSource,
    /// Seed of the initial parameters and the shards (the same on every worker).
    #[arg(long, default_value_t = 0, env = "MERIDIAN_SEED")]
    pub seed: u64,
    /// Directory for worker.json.
    #[arg(long, default_value = "out/worker", env = "MERIDIAN_OUT")]
    pub out: PathBuf,
    /// LibTorch intra-op threads.
    #[arg(long, default_value_t = 1, env = "MERIDIAN_THREADS")]
    pub threads: usize,
}

/// The comm node seen as a [`RoundLink`], with the bytes it moved.
struct HandleLink {
    handle: WorkerHandle,
    sent: u64,
    received: u64,
    /// Time spent waiting for the network, shared with the per-round accounting.
    waiting: Rc<Cell<Duration>>,
    /// The run is a ring: bytes are counted from the protocol's per-link counters (a
    /// payload is never sent whole).
    ring: bool,
    /// Per applied round: bytes per peer, as the protocol counted them.
    links: Rc<RefCell<BTreeMap<u64, Vec<LinkRecord>>>>,
    /// The round-trip estimate to the coordinator at the last commit.
    rtt: Rc<Cell<Option<Duration>>>,
}

impl HandleLink {
    /// Records a round's per-link bytes (and, in a ring, counts them).
    fn count(&mut self, round: u64, stats: &RoundStats) {
        let links: Vec<LinkRecord> = stats
            .traffic
            .iter()
            .map(|t| LinkRecord {
                peer: match t.peer {
                    Dest::Coordinator => "coordinator".to_string(),
                    Dest::Member(m) => format!("member {m}"),
                },
                sent: t.sent,
                received: t.received,
            })
            .collect();
        if self.ring {
            self.sent += links.iter().map(|l| l.sent).sum::<u64>();
            self.received += links.iter().map(|l| l.received).sum::<u64>();
        }
        self.links.borrow_mut().insert(round, links);
    }

    fn map(&mut self, event: WorkerNodeEvent) -> Result<Option<NetEvent>> {
        if matches!(
            event,
            WorkerNodeEvent::RoundReady { .. } | WorkerNodeEvent::AggregateReady { .. }
        ) {
            self.rtt.set(self.handle.coordinator_rtt());
        }
        let Some(mapped) = net_event(event, self.handle.member())? else { return Ok(None) };
        if let Some((round, stats)) = &mapped.stats {
            self.count(*round, stats);
        }
        if !self.ring {
            self.received += mapped.received;
        }
        Ok(Some(mapped.event))
    }
}

impl RoundLink for HandleLink {
    fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()> {
        let len = payload.len() as u64;
        if published(round, self.handle.publish(round, payload))? && !self.ring {
            self.sent += len;
        }
        Ok(())
    }

    fn next_event(&mut self) -> Result<NetEvent> {
        let start = Instant::now();
        loop {
            let event = self.handle.next_event(None)?.context("the network closed")?;
            if let Some(e) = self.map(event)? {
                self.waiting.set(self.waiting.get() + start.elapsed());
                return Ok(e);
            }
        }
    }

    fn poll_event(&mut self) -> Result<Option<NetEvent>> {
        while let Some(event) = self.handle.next_event(Some(Duration::ZERO))? {
            if let Some(e) = self.map(event)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    fn provide_state(&mut self, round: u64, state: Vec<u8>) -> Result<()> {
        Ok(self.handle.provide_state(round, state)?)
    }
}

/// Bytes moved with one peer in one round, as the protocol counted them (payload and
/// segment bodies, before compression and framing).
#[derive(Debug, Clone, Serialize)]
struct LinkRecord {
    /// `coordinator` or `member N`.
    peer: String,
    sent: u64,
    received: u64,
}

/// One applied round in `OUT/worker.json`.
#[derive(Debug, Serialize)]
struct RoundRecord {
    round: u64,
    /// Taken from the commits while catching up, not trained through.
    replayed: bool,
    /// Payload bytes this worker sent (in a ring: everything it sent to its successor).
    sent: usize,
    /// Payload bytes it received from others (in a ring: everything from its predecessor).
    received: usize,
    /// Bytes per peer in this round, fetches included.
    links: Vec<LinkRecord>,
    /// Training since the previous round.
    compute_seconds: f64,
    /// Waiting for the network (publishing to commit) since the previous round.
    waiting_seconds: f64,
    /// QUIC's round-trip estimate to the coordinator when the round was applied.
    rtt_ms: Option<f64>,
}

/// `OUT/worker.json`.
#[derive(Debug, Serialize)]
struct WorkerSummary {
    name: String,
    member: u32,
    algorithm: String,
    model: String,
    /// Where it trained: `cpu` or `cuda:N`.
    device: String,
    steps: u64,
    rounds: u64,
    rounds_replayed: u64,
    bytes_sent: u64,
    bytes_received: u64,
    seconds: f64,
    waiting_seconds: f64,
    final_val_loss: f64,
    /// What every worker of the run must agree on after the last round (hex).
    consensus_hash: String,
    /// Per round: bytes, compute and waiting.
    per_round: Vec<RoundRecord>,
}

/// Runs `meridian worker`.
pub fn run_worker(args: &WorkerArgs) -> Result<()> {
    if args.algo == Algorithm::Streaming {
        bail!("--algo streaming is not yet supported across processes; use diloco, sparseloco, demo or ddp");
    }
    if args.shards == 0 || args.steps == 0 {
        bail!("--shards and --steps must be at least 1");
    }
    let join: JoinString = args.join.parse().context("--join")?;
    let config = args.source.config(&[args.algo], args.inner_steps, &[])?;
    let corpus = Arc::new(args.source.data.load()?);
    tch::set_num_threads(args.threads.max(1) as i32);
    let device = args.source.device.resolve()?;
    let model = build_model(&config.model, corpus.vocab(), args.seed, device)?;
    let split = Split::new(corpus.clone(), model.context() as usize)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    let rt = runtime()?;
    let mut node_cfg = WorkerNodeConfig::new(join, args.name.clone());
    node_cfg.tuning = config.transport;
    let reducer = Arc::new(RingCell::default());
    node_cfg.reducer = Some(reducer.clone());
    let handle = WorkerHandle::spawn(node_cfg, rt.handle()).context("joining the run")?;
    let waiting = Rc::new(Cell::new(Duration::ZERO));
    let rtt = Rc::new(Cell::new(None));
    let links = Rc::new(RefCell::new(BTreeMap::new()));
    let mut link = HandleLink {
        handle,
        sent: 0,
        received: 0,
        waiting: waiting.clone(),
        ring: false,
        links: links.clone(),
        rtt: rtt.clone(),
    };
    let member = link.handle.member();
    // The welcome says whether this worker must first take a peer's state, and how
    // payloads travel.
    let mut need_state = false;
    while let Some(event) = link.handle.next_event(Some(Duration::from_secs(30)))? {
        if let WorkerNodeEvent::Welcomed { need_state: n, topology, .. } = event {
            need_state = n;
            link.ring = topology == Topology::Ring;
            break;
        }
    }
    tracing::info!(member, need_state, "joined the run");
    let batch = config.data.batch as usize;
    let shard = split.shard(member % args.shards, args.shards, args.seed, batch)?;
    let validation = std::rc::Rc::new(split.validation(batch, config.data.eval_batches as usize));
    let model_name = model.describe();
    let lm = LmWorker::new(model, config.inner, shard, validation, args.steps)?;
    let algo = config.algos[0].clone();
    let mut w = SoloWorker::new(member, lm, |p| algo.build(p))?;
    if link.ring {
        let Some(ring) = w.outer.ring(&w.params) else {
            bail!(
                "--algo {} cannot run in a ring: sparse payloads (demo, sparseloco) do not add \
                 up in transit, and a robust aggregation mode needs every member's update; \
                 start the coordinator with --topology relay or all-gather",
                args.algo.name()
            );
        };
        reducer.set(ring);
    }
    let start = Instant::now();
    let (mut rounds, mut replayed) = (0u64, 0u64);
    let mut per_round = Vec::new();
    let (mut last, mut last_wait) = (Instant::now(), Duration::ZERO);
    let link_ring = link.ring;
    drive(&mut w, &mut link, args.steps, need_state, |r: &AppliedRound| {
        rounds += 1;
        replayed += u64::from(r.replayed);
        let (elapsed, waited) = (last.elapsed(), waiting.get() - last_wait);
        (last, last_wait) = (Instant::now(), waiting.get());
        let round_links = {
            let mut links = links.borrow_mut();
            let mine = links.remove(&r.exchange.round).unwrap_or_default();
            // Rounds a peer's state superseded are never applied here.
            links.retain(|&round, _| round > r.exchange.round);
            mine
        };
        let (sent, received) = if link_ring {
            let sum = |f: fn(&LinkRecord) -> u64| round_links.iter().map(f).sum::<u64>() as usize;
            (sum(|l| l.sent), sum(|l| l.received))
        } else {
            (r.exchange.sent, r.exchange.received)
        };
        let record = RoundRecord {
            round: r.exchange.round,
            replayed: r.replayed,
            sent,
            received,
            links: round_links,
            compute_seconds: elapsed.saturating_sub(waited).as_secs_f64(),
            waiting_seconds: waited.as_secs_f64(),
            rtt_ms: rtt.get().map(|d| d.as_secs_f64() * 1e3),
        };
        tracing::info!(
            round = record.round,
            replayed = record.replayed,
            sent = record.sent,
            received = record.received,
            compute_s = record.compute_seconds,
            waiting_s = record.waiting_seconds,
            rtt_ms = record.rtt_ms,
            hash = format!("{:016x}", r.exchange.hash),
            "round applied"
        );
        per_round.push(record);
    })?;
    let final_val_loss = w.train.eval_loss()?;
    let summary = WorkerSummary {
        name: args.name.clone(),
        member,
        algorithm: args.algo.name().to_string(),
        model: model_name,
        device: crate::device::name(device),
        steps: w.steps_done(),
        rounds,
        rounds_replayed: replayed,
        bytes_sent: link.sent,
        bytes_received: link.received,
        seconds: start.elapsed().as_secs_f64(),
        waiting_seconds: waiting.get().as_secs_f64(),
        final_val_loss,
        consensus_hash: format!("{:016x}", w.outer.consensus_hash(&w.params)?),
        per_round,
    };
    write_atomically(&args.out.join("worker.json"), &serde_json::to_string_pretty(&summary)?)?;
    println!(
        "worker {} (member {member}): {} rounds ({} replayed), val loss {:.4}, sent {} B, received {} B, hash {}",
        args.name, rounds, replayed, final_val_loss, summary.bytes_sent, summary.bytes_received, summary.consensus_hash
    );
    if let Err(e) = link.handle.leave() {
        tracing::debug!(error = %e, "leaving");
    }
    Ok(())
}
