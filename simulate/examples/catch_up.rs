//! How long a newcomer takes to catch up on `cross-continent`: it joins a live run and takes
//! the state of a model with `--params` parameters (parameters and two AdamW moments,
//! 12 bytes a parameter), against the time those bytes need on its downlink (the 1 Gb/s
//! path from the coordinator's region).
//!
//! ```text
//! cargo run --release -p meridian-simulate --example catch_up -- [--params 1e8]
//!     [--donors 0,1,3] [--newcomer ap-southeast] [--chunk-mb 8] [--seed 7] [--kill w1@3]
//! ```
//!
//! Three live members, one in each region but the newcomer's (so that every byte crosses a
//! 1 Gb/s WAN path; the coordinator is in `us-east`), run rounds of a small payload every
//! 5 s of virtual time. Their states agree in the parameters (a third of the bytes) and
//! differ in the moments, as replicas' inner optimizers do. The newcomer joins after round
//! 1 committed; the time runs from its dial to the whole state in hand, against the state
//! at 1 Gb/s ("ideal").
//! `--donors` is how many members the coordinator takes the state from at once.

use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use meridian_comm::node::{
    CoordinatorNode, CoordinatorNodeConfig, CoordinatorNodeEvent, WorkerNode, WorkerNodeConfig,
    WorkerNodeEvent,
};
use meridian_comm::protocol::{CoordinatorEvent, Topology as Route, WorkerEvent};
use meridian_comm::wire::DEFAULT_MAX_FRAME;
use meridian_simulate::{Fabric, Topology};
use tokio::time::Instant;

const REGIONS: [&str; 4] = ["us-east", "us-west", "eu-west", "ap-southeast"];
/// The rate of every path between regions on `cross-continent`.
const PATH_RATE: f64 = 1e9;
/// Virtual time between a live member's payloads.
const ROUND_EVERY: Duration = Duration::from_secs(5);

struct Options {
    params: f64,
    donors: Vec<usize>,
    newcomer: String,
    chunk: u32,
    seed: u64,
    /// A member to kill, and when (seconds after the newcomer dials).
    kill: Option<(String, f64)>,
}

fn parse() -> Result<Options, Box<dyn Error>> {
    let mut o = Options {
        params: 1e8,
        donors: vec![0, 1, 3],
        newcomer: "ap-southeast".into(),
        chunk: 8 << 20,
        seed: 7,
        kill: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.chunks(2);
    for pair in &mut it {
        let [flag, value] = pair else { return Err(format!("{} needs a value", pair[0]).into()) };
        match flag.as_str() {
            "--params" => o.params = value.parse()?,
            "--donors" => {
                o.donors = value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--newcomer" => o.newcomer = value.clone(),
            "--seed" => o.seed = value.parse()?,
            "--kill" => {
                let (name, at) = value.split_once('@').ok_or("--kill NAME@SECONDS")?;
                o.kill = Some((name.to_string(), at.parse()?));
            }
            "--chunk-mb" => o.chunk = (value.parse::<f64>()? * (1 << 20) as f64) as u32,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if !REGIONS.contains(&o.newcomer.as_str()) {
        return Err(format!("--newcomer: one of {REGIONS:?}").into());
    }
    if o.donors.iter().any(|&d| d >= REGIONS.len()) {
        return Err(format!("--donors: from 0 to {}", REGIONS.len() - 1).into());
    }
    Ok(o)
}

/// `len` bytes from a xorshift stream seeded with `seed`: cheap, and different per seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Member `index`'s state: the shared parameters, then moments of its own.
fn state(params: usize, index: u64) -> Bytes {
    let mut s = noise(4 * params, 1);
    s.extend_from_slice(&noise(8 * params, 100 + index));
    Bytes::from(s)
}

/// A live member: a small payload [`ROUND_EVERY`] after each round opens, its state at
/// once when asked.
async fn member(mut node: WorkerNode, state: Bytes) -> Result<(), Box<dyn Error>> {
    let mut due: Option<(u64, Instant)> = None;
    loop {
        let event = tokio::select! {
            event = node.next_event() => event?,
            _ = tokio::time::sleep_until(due.map_or(Instant::now(), |d| d.1)), if due.is_some() => {
                if let Some((round, _)) = due.take() {
                    node.publish(round, Bytes::from(vec![round as u8; 1024])).await?;
                }
                continue;
            }
        };
        match event {
            WorkerNodeEvent::Protocol(WorkerEvent::RoundOpened { round, .. }) => {
                due = Some((round, Instant::now() + ROUND_EVERY));
            }
            WorkerNodeEvent::Protocol(WorkerEvent::SnapshotRequested { round }) => {
                node.provide_state(round, state.clone()).await?;
            }
            _ => {}
        }
    }
}

fn worker_config(
    fabric: &Fabric,
    join: meridian_comm::quic::JoinString,
    name: &str,
    region: &str,
) -> Result<WorkerNodeConfig, Box<dyn Error>> {
    let mut cfg = WorkerNodeConfig::new(join, name);
    cfg.socket = Some(fabric.bind(region)?);
    Ok(cfg)
}

/// One run: returns (seconds to catch up, state bytes).
async fn run(o: &Options, donors: usize) -> Result<(f64, usize), Box<dyn Error>> {
    let fabric = Fabric::new(Topology::preset("cross-continent")?, o.seed);
    let mut ccfg = CoordinatorNodeConfig::new("0.0.0.0:0".parse()?, Route::Relay);
    ccfg.socket = Some(fabric.bind("us-east")?);
    let regions: Vec<&str> = REGIONS.into_iter().filter(|r| *r != o.newcomer).collect();
    ccfg.protocol.min_members = regions.len();
    // Relayed, the state travels in one frame: allow one that large (1 GiB by default).
    // Directly, chunks need no such thing.
    let max_frame = if donors == 0 { usize::MAX >> 1 } else { DEFAULT_MAX_FRAME };
    ccfg.max_frame = max_frame;
    ccfg.protocol.state_donors = donors;
    let mut coordinator = CoordinatorNode::start(ccfg)?;
    let join = coordinator.join_string();
    let params = o.params as usize;
    let mut members = Vec::new();
    for (i, region) in regions.iter().enumerate() {
        let mut cfg = worker_config(&fabric, join.clone(), &format!("w{i}"), region)?;
        cfg.max_frame = max_frame;
        cfg.protocol.state_chunk = o.chunk;
        let node = WorkerNode::connect(cfg).await?;
        let s = state(params, i as u64);
        members.push(tokio::spawn(async move {
            if let Err(e) = member(node, s).await {
                eprintln!("member w{i}: {e}");
            }
        }));
    }
    // The newcomer comes once the run has committed a round.
    loop {
        match coordinator.next_event().await {
            Some(CoordinatorNodeEvent::Protocol(CoordinatorEvent::RoundCommitted {
                round: 1,
                ..
            })) => break,
            Some(_) => {}
            None => return Err("the coordinator stopped".into()),
        }
    }
    tokio::spawn(async move { while coordinator.next_event().await.is_some() {} });
    let start = Instant::now();
    if let Some((name, at)) = &o.kill {
        let index: usize = name.trim_start_matches('w').parse()?;
        let task = members.get(index).ok_or("--kill: no such member")?.abort_handle();
        let at = start + Duration::from_secs_f64(*at);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            task.abort();
        });
    }
    let mut cfg = worker_config(&fabric, join, "newcomer", &o.newcomer)?;
    cfg.max_frame = max_frame;
    let mut node = WorkerNode::connect(cfg).await?;
    loop {
        if let WorkerNodeEvent::Protocol(WorkerEvent::StateReceived { bytes, .. }) =
            node.next_event().await?
        {
            return Ok((start.elapsed().as_secs_f64(), bytes.len()));
        }
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    // RUST_LOG=info shows the transfer's steps.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let o = parse()?;
    println!(
        "catch-up of a {:.0e}-parameter state (12 bytes a parameter) into {}, cross-continent",
        o.params, o.newcomer
    );
    println!(
        "{:>7} {:>10} {:>10} {:>10} {:>7}",
        "donors", "state MB", "took s", "ideal s", "ratio"
    );
    for &donors in &o.donors {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()?;
        let wall = std::time::Instant::now();
        let (took, len) = rt.block_on(run(&o, donors))?;
        let ideal = len as f64 * 8.0 / PATH_RATE;
        println!(
            "{donors:>7} {:>10.1} {took:>10.2} {ideal:>10.2} {:>7.2}   ({:.0} s wall)",
            len as f64 / 1e6,
            took / ideal,
            wall.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
