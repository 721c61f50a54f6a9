//! QUIC over a simulated 1 Gb/s, 150 ms-RTT path with random loss (both directions), per
//! congestion controller: bulk goodput as a fraction of the link rate, the time a round's
//! burst takes to arrive after idle, and the simulator's speed.
//!
//! ```text
//! cargo run --release -p meridian-simulate --example wan_goodput -- [--secs 20] [--warmup 5]
//!     [--queue 150ms] [--loss 0,0.005,0.02] [--cc bbr,cubic,resilient] [--read unordered]
//!     [--burst-mb 2,26] [--idle-s 7.5] [--bursts 5]
//! ```
//!
//! Bulk: one stream (comm's QUIC endpoints, windows sized by `TransportTuning` for the
//! bandwidth-delay product) written for `--secs` of virtual time after the handshake.
//! "total" is the goodput over the whole transfer (slow start included); "steady" is over
//! the time after `--warmup`. Capacity is the link rate; IPv4/UDP/QUIC headers and AEAD
//! tags cap goodput at about 0.95 of it with 1452-byte datagrams. `--read unordered` takes
//! chunks as they arrive, as `recv_frame` (quinn's `read_to_end`) does for every Meridian
//! frame, so bytes past a lost packet return their flow-control credit at once; `ordered`
//! holds them until the hole is filled (a stream consumed in order).
//!
//! Bursts (with `--burst-mb`): on one connection, `--bursts` frames of each size sent the
//! way a round sends its payload (`send_frame` / `recv_frame`), the first right after the
//! handshake ("cold"), each later one after `--idle-s` of silence ("after idle", the mean).
//! Times run from the first write to the whole frame at the receiver; "ideal" is the
//! one-way delay plus the frame at the link rate (a window open to the full pipe at once).

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use meridian_comm::quic::{
    client_endpoint, recv_frame, send_frame, server_endpoint, ClientAuth, Congestion, NodeIdentity,
    TransportTuning,
};
use meridian_simulate::{Dur, Fabric, LinkSpec, Prob, QueueLimit, Rate, Topology};
use tokio::time::Instant;

const RATE: f64 = 1e9;
const ONE_WAY: Duration = Duration::from_millis(75);

struct Options {
    secs: f64,
    warmup: f64,
    queue: QueueLimit,
    losses: Vec<f64>,
    controllers: Vec<Congestion>,
    /// RTT the QUIC windows are sized for (`TransportTuning::rtt_ms`).
    window_rtt_ms: f64,
    /// Read the bulk stream in order (true) or as chunks arrive (false).
    ordered: bool,
    /// Burst sizes, MB; empty: bulk mode.
    burst_mb: Vec<f64>,
    idle: Duration,
    bursts: usize,
}

fn controller(name: &str) -> Result<Congestion, String> {
    match name {
        "bbr" => Ok(Congestion::Bbr),
        "cubic" => Ok(Congestion::Cubic),
        "newreno" => Ok(Congestion::NewReno),
        "resilient" => Ok(Congestion::Resilient),
        other => Err(format!("--cc: unknown congestion controller {other:?}")),
    }
}

fn list<T: std::str::FromStr>(flag: &str, value: &str) -> Result<Vec<T>, String> {
    value.split(',').map(|v| v.parse().map_err(|_| format!("{flag}: bad value {v:?}"))).collect()
}

fn parse() -> Result<Options, Box<dyn Error>> {
    let mut o = Options {
        secs: 20.0,
        warmup: 5.0,
        queue: QueueLimit::Time(Duration::from_millis(150)),
        losses: vec![0.0, 0.005, 0.02],
        controllers: vec![Congestion::Bbr, Congestion::Cubic, Congestion::Resilient],
        window_rtt_ms: 2.0 * ONE_WAY.as_secs_f64() * 1e3,
        ordered: false,
        burst_mb: Vec::new(),
        idle: Duration::from_millis(7500),
        bursts: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => o.secs = value.parse()?,
            "--warmup" => o.warmup = value.parse()?,
            "--queue" => o.queue = value.parse()?,
            "--window-rtt-ms" => o.window_rtt_ms = value.parse()?,
            "--loss" => o.losses = list("--loss", &value)?,
            "--cc" => o.controllers = value.split(',').map(controller).collect::<Result<_, _>>()?,
            "--read" => {
                o.ordered = match value.as_str() {
                    "ordered" => true,
                    "unordered" => false,
                    other => {
                        return Err(format!("--read: {other:?} is not ordered|unordered").into())
                    }
                }
            }
            "--burst-mb" => o.burst_mb = list("--burst-mb", &value)?,
            "--idle-s" => o.idle = Duration::try_from_secs_f64(value.parse()?)?,
            "--bursts" => o.bursts = value.parse()?,
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if !(o.warmup >= 0.0 && o.secs > o.warmup) {
        return Err("--secs must exceed --warmup".into());
    }
    if o.burst_mb.iter().any(|mb| !(mb.is_finite() && *mb > 0.0 && *mb <= 4096.0)) {
        return Err("--burst-mb: sizes must be in (0, 4096] MB".into());
    }
    if o.bursts < 2 {
        return Err("--bursts must be at least 2 (one cold, one after idle)".into());
    }
    Ok(o)
}

/// A fabric with one 1 Gb/s, 75 ms link each way and a QUIC connection across it.
struct Path {
    fabric: Fabric,
    out: quinn::Connection,
    inc: quinn::Connection,
}

async fn connect(o: &Options, congestion: Congestion, loss: f64) -> Result<Path, Box<dyn Error>> {
    let link = LinkSpec {
        delay: Dur(ONE_WAY),
        rate: Some(Rate::new(RATE)?),
        queue: o.queue,
        loss: Prob::new(loss)?,
        ..LinkSpec::default()
    };
    let fabric = Fabric::new(Topology::point_to_point(link.clone(), link), 1);
    let (sa, sb) = (fabric.bind("a")?, fabric.bind("b")?);
    let to = sb.addr();
    let tuning = TransportTuning {
        bandwidth_bps: RATE,
        rtt_ms: o.window_rtt_ms,
        initial_rtt_ms: Some(2.0 * ONE_WAY.as_secs_f64() * 1e3),
        congestion,
        rng_seed: Some(1),
        ..TransportTuning::default()
    };
    let receiver_id = NodeIdentity::generate("receiver")?;
    let receiver = server_endpoint(&receiver_id, ClientAuth::AcceptAny, &tuning, sb)?;
    let sender = client_endpoint(&NodeIdentity::generate("sender")?, &tuning, sa)?;
    let (out, inc) = tokio::join!(sender.connect(to, receiver_id.fingerprint()), receiver.accept());
    let out = out?;
    let inc = inc.ok_or("receiver closed")??;
    Ok(Path { fabric, out, inc })
}

fn paused_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()
}

struct Outcome {
    total: f64,
    steady: f64,
    bytes: u64,
    wall: Duration,
    datagrams: u64,
    lost: u64,
    queue_drops: u64,
}

fn run(o: &Options, congestion: Congestion, loss: f64) -> Result<Outcome, Box<dyn Error>> {
    let rt = paused_runtime()?;
    let wall = std::time::Instant::now();
    let (total, steady, bytes, datagrams, lost, queue_drops) = rt.block_on(async {
        let Path { fabric, out, inc } = connect(o, congestion, loss).await?;
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(o.secs);
        let warm = start + Duration::from_secs_f64(o.warmup);
        let mut send = out.open_uni().await?;
        let chunk = bytes::Bytes::from(vec![0x5au8; 1 << 20]);
        let writer = tokio::spawn(async move {
            while Instant::now() < end {
                if send.write_chunk(chunk.clone()).await.is_err() {
                    break;
                }
            }
        });
        let mut recv = inc.accept_uni().await?;
        let (mut got, mut at_warmup) = (0u64, None);
        while Instant::now() < end {
            match tokio::time::timeout_at(end, recv.read_chunk(usize::MAX, o.ordered)).await {
                Ok(Ok(Some(c))) => {
                    if at_warmup.is_none() && Instant::now() >= warm {
                        at_warmup = Some(got);
                    }
                    got += c.bytes.len() as u64;
                }
                Ok(_) | Err(_) => break,
            }
        }
        writer.abort();
        let secs = o.secs;
        let total = got as f64 * 8.0 / secs / RATE;
        let steady = (got - at_warmup.unwrap_or(got)) as f64 * 8.0 / (secs - o.warmup) / RATE;
        let stats = fabric.stats();
        let datagrams: u64 = stats.links.values().map(|s| s.offered.datagrams).sum();
        let lost: u64 = stats.links.values().map(|s| s.lost_random.datagrams).sum();
        let queue_drops: u64 = stats.links.values().map(|s| s.dropped_queue.datagrams).sum();
        out.close(0u32.into(), b"done");
        Ok::<_, Box<dyn Error>>((total, steady, got, datagrams, lost, queue_drops))
    })?;
    Ok(Outcome { total, steady, bytes, wall: wall.elapsed(), datagrams, lost, queue_drops })
}

/// Seconds each of `o.bursts` frames of `mb` MB took to arrive: the first right after the
/// handshake, each later one after `o.idle` without traffic.
fn bursts(
    o: &Options,
    congestion: Congestion,
    loss: f64,
    mb: f64,
) -> Result<Vec<f64>, Box<dyn Error>> {
    paused_runtime()?.block_on(async {
        let Path { out, inc, .. } = connect(o, congestion, loss).await?;
        // Checked at parse time: positive and at most 4096 MB.
        let payload: Arc<[u8]> = vec![0x5au8; (mb * 1e6) as usize].into();
        let mut times = Vec::with_capacity(o.bursts);
        for i in 0..o.bursts {
            if i > 0 {
                tokio::time::sleep(o.idle).await;
            }
            let start = Instant::now();
            let (sent, got) =
                tokio::join!(send_frame(&out, &payload), recv_frame(&inc, payload.len()));
            sent?;
            if got?.len() != payload.len() {
                return Err("a burst arrived truncated".into());
            }
            times.push(start.elapsed().as_secs_f64());
        }
        out.close(0u32.into(), b"done");
        Ok(times)
    })
}

/// The fabric alone, without QUIC: full-size datagrams offered at the link rate for `secs`
/// of virtual time, in 1 ms batches, and drained at the receiver. Returns (datagrams
/// delivered, wall time).
fn fabric_only(secs: f64) -> Result<(u64, Duration), Box<dyn Error>> {
    let rt = paused_runtime()?;
    let wall = std::time::Instant::now();
    let delivered = rt.block_on(async {
        let link =
            LinkSpec { delay: Dur(ONE_WAY), rate: Some(Rate::new(RATE)?), ..LinkSpec::default() };
        let fabric = Fabric::new(Topology::point_to_point(link.clone(), link), 1);
        let (a, b) = (fabric.bind("a")?, fabric.bind("b")?);
        let to = b.addr();
        let per_ms = (RATE / 8.0 / 1500.0 / 1000.0) as usize;
        let ms = (secs * 1000.0) as usize;
        let sender = tokio::spawn(async move {
            let datagram = [0u8; 1472];
            for _ in 0..ms {
                for _ in 0..per_ms {
                    a.send_to(to, &datagram);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut delivered = 0u64;
        while !sender.is_finished() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            while b.try_recv().is_some() {
                delivered += 1;
            }
        }
        Ok::<_, Box<dyn Error>>(delivered)
    })?;
    Ok((delivered, wall.elapsed()))
}

fn name(cc: Congestion) -> String {
    format!("{cc:?}").to_lowercase()
}

fn burst_table(o: &Options) -> Result<(), Box<dyn Error>> {
    println!(
        "Bursts, 1 Gb/s, 150 ms RTT, queue {}, windows for {} ms: {} frames per run, {} s idle \
         between them",
        o.queue,
        o.window_rtt_ms,
        o.bursts,
        o.idle.as_secs_f64()
    );
    println!("| cc | loss | MB | cold s | after idle s (mean) | after idle s (max) | ideal s |");
    println!("|---|---|---|---|---|---|---|");
    for &mb in &o.burst_mb {
        let ideal = ONE_WAY.as_secs_f64() + mb * 1e6 * 8.0 / RATE;
        for &cc in &o.controllers {
            for &loss in &o.losses {
                let times = bursts(o, cc, loss, mb)?;
                let later = &times[1..];
                let mean = later.iter().sum::<f64>() / later.len() as f64;
                let max = later.iter().copied().fold(0.0, f64::max);
                println!(
                    "| {} | {:.1}% | {mb} | {:.3} | {mean:.3} | {max:.3} | {ideal:.3} |",
                    name(cc),
                    loss * 100.0,
                    times[0],
                );
            }
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let o = parse()?;
    if !o.burst_mb.is_empty() {
        return burst_table(&o);
    }
    let (delivered, wall) = fabric_only(o.secs)?;
    println!(
        "fabric alone (no QUIC), 1 Gb/s for {} s: {delivered} datagrams, {:.1} sim s / wall s, \
         {:.0} datagrams / wall s",
        o.secs,
        o.secs / wall.as_secs_f64(),
        delivered as f64 / wall.as_secs_f64()
    );
    println!(
        "QUIC goodput, 1 Gb/s, 150 ms RTT, queue {}, windows for {} ms, {} reads, {} s per run \
         (steady: after {} s)",
        o.queue,
        o.window_rtt_ms,
        if o.ordered { "ordered" } else { "unordered" },
        o.secs,
        o.warmup
    );
    println!(
        "| cc    | loss | goodput total | goodput steady | MB received | sim s / wall s | datagrams / wall s | lost | queue drops |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &cc in &o.controllers {
        for &loss in &o.losses {
            let r = run(&o, cc, loss)?;
            let wall = r.wall.as_secs_f64();
            println!(
                "| {:<5} | {:.1}% | {:.3} | {:.3} | {:.0} | {:.2} | {:.0} | {} | {} |",
                name(cc),
                loss * 100.0,
                r.total,
                r.steady,
                r.bytes as f64 / 1e6,
                o.secs / wall,
                r.datagrams as f64 / wall,
                r.lost,
                r.queue_drops,
            );
        }
    }
    Ok(())
}
