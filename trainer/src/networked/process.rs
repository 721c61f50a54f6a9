//! One worker process of a run across processes (`meridian worker`): it joins through the
//! comm crate's worker node, trains its replica through [`drive`] (the loop the simulation
//! runs too), and writes `OUT/worker.json`. With `--metrics-listen` it also serves what it
//! records per round as live metrics (`metrics`).

mod join;
mod metrics;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use meridian_comm::protocol::Topology;
use meridian_comm::quic::JoinString;
use meridian_optimizer::solo::SoloWorker;
use serde::Serialize;

use super::drive::{drive, AppliedRound};
use super::quic_link::{HandleLink, LinkRecord};
use super::ring_reducer::RingCell;
use crate::cli::worker::WorkerArgs;
use crate::data::Split;
use crate::networked::settings::corpus_fingerprint;
use crate::step::lm_step::LmStep;
use join::{JoinContext, Joined, Plan};
use metrics::{RoundSample, WorkerMetrics};

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

/// Runs one worker process: joins, trains through [`drive`], writes `OUT/worker.json`.
pub fn run(args: &WorkerArgs) -> Result<()> {
    if args.shards == 0 || args.steps() == 0 {
        bail!("--shards and --steps must be at least 1");
    }
    let from = if args.join.is_some() { "--join" } else { "--join-file" };
    let join: JoinString = args.join_string()?.parse().context(from)?;
    let corpus = Arc::new(args.source.data.load()?);
    tracing::info!(
        data = %args.source.data.data.display(),
        fingerprint = corpus_fingerprint(corpus.fingerprint()),
        "data loaded ([run] corpus = \"FINGERPRINT\" makes a run require it)"
    );
    tch::set_num_threads(args.threads() as i32);
    let device = args.source.device.resolve()?;
    std::fs::create_dir_all(&args.run.out)
        .with_context(|| format!("creating {}", args.run.out.display()))?;

    let rt = super::runtime()?;
    // Served before joining, so an address that cannot be bound fails the start at once.
    let mut live = match args.metrics_listen {
        Some(addr) => {
            let _rt = rt.enter();
            Some(WorkerMetrics::serve(addr)?)
        }
        None => None,
    };
    let reducer = Arc::new(RingCell::default());
    let joined =
        JoinContext { args, join, corpus: &corpus, device, runtime: &rt, reducer: reducer.clone() }
            .join()?;
    let Joined { plan, handle, need_state, topology } = joined;
    let Plan { config, model, steps, seed, shards, followed } = plan;
    let split = Split::new(corpus.clone(), model.context() as usize)?;
    let waiting = Rc::new(Cell::new(Duration::ZERO));
    let rtt = Rc::new(Cell::new(None));
    let links = Rc::new(RefCell::new(BTreeMap::new()));
    let mut link = HandleLink {
        handle,
        sent: 0,
        received: 0,
        waiting: waiting.clone(),
        ring: topology == Topology::Ring,
        links: links.clone(),
        rtt: rtt.clone(),
        interrupt: None,
        counters: live.as_ref().map(WorkerMetrics::net_counters),
    };
    let member = link.handle.member();
    tracing::info!(member, need_state, followed, "joined the run");
    let batch = config.data.batch as usize;
    let shard = split.shard(member % shards, shards, seed, batch)?;
    let validation = std::rc::Rc::new(split.validation(batch, config.data.eval_batches as usize));
    let model_name = model.describe();
    let algo = config.algos[0].clone();
    let lm = LmStep::new(model, config.inner, shard, validation, steps)?
        .with_round_steps(algo.round_steps());
    let mut w = SoloWorker::new(member, lm, |p| algo.build(p))?;
    if link.ring {
        let Some(ring) = w.outer.ring(&w.params) else {
            bail!(
                "--algo {} cannot run in a ring: sparse payloads (demo, sparseloco) do not add \
                 up in transit, a robust aggregation mode needs every member's update, and \
                 balance = true needs each member's weight; start the coordinator with \
                 --topology relay or all-gather",
                algo.algorithm().name()
            );
        };
        reducer.set(ring);
    }
    let start = Instant::now();
    if let Some(live) = &mut live {
        live.training_started(start);
    }
    let (mut rounds, mut replayed) = (0u64, 0u64);
    let mut per_round = Vec::new();
    let (mut last, mut last_wait) = (Instant::now(), Duration::ZERO);
    let link_ring = link.ring;
    drive(&mut w, &mut link, steps, need_state, |r: &AppliedRound| {
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
        if let Some(live) = &mut live {
            live.round(&RoundSample {
                round: r.exchange.round,
                replayed: r.replayed,
                links: &round_links,
                compute: elapsed.saturating_sub(waited),
                waited,
                rtt: rtt.get(),
            });
        }
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
    // The synchronized model's loss (Streaming DiLoCo: its global copy): what every replica
    // agrees on after the run's last round, which is its last step when the steps are a
    // whole number of rounds.
    let final_val_loss =
        crate::report::sync_eval::eval_synchronized(&mut w.train, &w.params, w.outer.as_ref())?;
    let summary = WorkerSummary {
        name: args.name.clone(),
        member,
        algorithm: algo.algorithm().name().to_string(),
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
    crate::atomic_write::write(
        &args.run.out.join("worker.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    println!(
        "worker {} (member {member}): {} rounds ({} replayed), val loss {:.4}, sent {} B, received {} B, hash {}",
        args.name, rounds, replayed, final_val_loss, summary.bytes_sent, summary.bytes_received, summary.consensus_hash
    );
    if let Err(e) = link.handle.leave() {
        tracing::debug!(error = %e, "leaving");
    }
    Ok(())
}
