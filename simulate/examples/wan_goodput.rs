//! QUIC goodput over a simulated 1 Gb/s, 150 ms-RTT path at 0%, 0.5% and 2% random loss
//! (both directions), with BBR, Cubic and Resilient, as a fraction of the link rate; and the
//! simulator's speed in simulated seconds per wall-clock second.
//!
//! ```text
//! cargo run --release -p meridian-simulate --example wan_goodput -- [--secs 20] [--warmup 5]
//!     [--queue 150ms] [--loss 0,0.005,0.02] [--cc bbr,cubic,resilient]
//! ```
//!
//! One bulk stream (comm's QUIC endpoints, windows sized by `TransportTuning` for the
//! bandwidth-delay product) runs for `--secs` of virtual time after the handshake.
//! "total" is the goodput over the whole transfer (slow start included); "steady" is over
//! the time after `--warmup`. Capacity is the link rate; IPv4/UDP/QUIC headers and AEAD
//! tags cap goodput at about 0.95 of it with 1472-byte datagrams.

use std::error::Error;
use std::time::Duration;

use meridian_comm::quic::{
    client_endpoint, server_endpoint, ClientAuth, Congestion, NodeIdentity, TransportTuning,
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
}

fn parse() -> Result<Options, Box<dyn Error>> {
    let mut o = Options {
        secs: 20.0,
        warmup: 5.0,
        queue: QueueLimit::Time(Duration::from_millis(150)),
        losses: vec![0.0, 0.005, 0.02],
        controllers: vec![Congestion::Bbr, Congestion::Cubic, Congestion::Resilient],
        window_rtt_ms: 2.0 * ONE_WAY.as_secs_f64() * 1e3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--secs" => o.secs = value.parse()?,
            "--warmup" => o.warmup = value.parse()?,
            "--queue" => o.queue = value.parse()?,
            "--window-rtt-ms" => o.window_rtt_ms = value.parse()?,
            "--loss" => {
                o.losses = value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--cc" => {
                o.controllers = value
                    .split(',')
                    .map(|c| match c {
                        "bbr" => Ok(Congestion::Bbr),
                        "cubic" => Ok(Congestion::Cubic),
                        "newreno" => Ok(Congestion::NewReno),
                        "resilient" => Ok(Congestion::Resilient),
                        other => Err(format!("unknown congestion controller {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown flag {other}").into()),
        }
    }
    if !(o.warmup >= 0.0 && o.secs > o.warmup) {
        return Err("--secs must exceed --warmup".into());
    }
    Ok(o)
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
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()?;
    let wall = std::time::Instant::now();
    let (total, steady, bytes, datagrams, lost, queue_drops) = rt.block_on(async {
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
        let (out, inc) =
            tokio::join!(sender.connect(to, receiver_id.fingerprint()), receiver.accept());
        let out = out?;
        let inc = inc.ok_or("receiver closed")??;

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
            match tokio::time::timeout_at(end, recv.read_chunk(usize::MAX, true)).await {
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

/// The fabric alone, without QUIC: full-size datagrams offered at the link rate for `secs`
/// of virtual time, in 1 ms batches, and drained at the receiver. Returns (datagrams
/// delivered, wall time).
fn fabric_only(secs: f64) -> Result<(u64, Duration), Box<dyn Error>> {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build()?;
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

fn main() -> Result<(), Box<dyn Error>> {
    let o = parse()?;
    let (delivered, wall) = fabric_only(o.secs)?;
    println!(
        "fabric alone (no QUIC), 1 Gb/s for {} s: {delivered} datagrams, {:.1} sim s / wall s, \
         {:.0} datagrams / wall s",
        o.secs,
        o.secs / wall.as_secs_f64(),
        delivered as f64 / wall.as_secs_f64()
    );
    println!(
        "QUIC goodput, 1 Gb/s, 150 ms RTT, queue {}, windows for {} ms, {} s per run \
         (steady: after {} s)",
        o.queue, o.window_rtt_ms, o.secs, o.warmup
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
                format!("{cc:?}").to_lowercase(),
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
