//! The built-in topologies. Figures are rounded public numbers, each with its source beside
//! it; they describe typical paths, not a measurement of any one.
//!
//! The stage order of a link (loss before the queue, jitter without reordering unless
//! asked) follows `tc netem` (Hemminger, *Network Emulation with NetEm*, 2005).

use std::time::Duration;

use crate::link::{GilbertElliott, LinkSpec};
use crate::topology::Topology;
use crate::units::{Dur, Prob, QueueLimit, Rate};

/// Preset names, in the order the CLI lists them.
pub(crate) const NAMES: &[&str] = &["lan", "cross-continent", "home", "lossy"];

pub(crate) fn build(name: &str) -> Option<Topology> {
    match name {
        "lan" => Some(lan()),
        "cross-continent" => Some(cross_continent()),
        "home" => Some(home()),
        "lossy" => Some(lossy()),
        _ => None,
    }
}

fn ms(ms: f64) -> Dur {
    Dur::from_millis_f64(ms)
}

/// A one-way link: `delay_ms`, `rate_mbps`, queue of `queue_ms` of waiting.
fn link(delay_ms: f64, rate_mbps: f64, queue_ms: f64) -> LinkSpec {
    LinkSpec {
        delay: ms(delay_ms),
        rate: Some(Rate::mbps(rate_mbps)),
        queue: QueueLimit::Time(Duration::from_secs_f64(queue_ms / 1e3)),
        ..LinkSpec::default()
    }
}

/// A switched 10 Gb/s LAN: 0.1 ms RTT, 1 ms of switch buffer, no loss.
pub(crate) fn lan_link() -> LinkSpec {
    link(0.05, 10_000.0, 1.0)
}

/// Inside a cloud region (between availability zones): ~0.5 ms RTT, 10 Gb/s.
fn region_link() -> LinkSpec {
    link(0.25, 10_000.0, 5.0)
}

fn both(t: &mut Topology, a: &str, b: &str, spec: LinkSpec) {
    t.set_link(a, b, spec.clone());
    t.set_link(b, a, spec);
}

fn lan() -> Topology {
    let mut t = Topology::new("lan", &["lan"], "lan");
    t.set_link("lan", "lan", lan_link());
    t
}

/// Four cloud regions, 1 Gb/s between each pair (a datacenter VM's typical per-flow
/// share), a 50 ms drop-tail queue and ±0.5 ms jitter; RTTs and loss per pair.
const CONTINENTS: [&str; 4] = ["us-east", "us-west", "eu-west", "ap-southeast"];

/// (a, b, RTT ms, loss %) between the regions of `cross-continent`.
///
/// RTTs are rounded from public cloud inter-region latency tables: AWS inter-region p50
/// latencies as published by cloudping.co, and Microsoft's "Azure network round-trip
/// latency statistics" page; the 250 ms figure is the upper end for US East–Singapore,
/// where carrier SLAs allow up to ~260 ms. Random loss of 0.1% within North America, 0.2%
/// transatlantic and 0.5% on paths to Singapore is the range long-haul Internet paths show
/// in public measurement studies (e.g. the RIPE Atlas and PingER end-to-end loss reports),
/// chosen as a pessimistic-but-common case.
const CONTINENT_PAIRS: [(&str, &str, f64, f64); 6] = [
    ("us-east", "us-west", 70.0, 0.1),
    ("us-east", "eu-west", 80.0, 0.2),
    ("us-west", "eu-west", 140.0, 0.2),
    ("us-west", "ap-southeast", 160.0, 0.5),
    ("eu-west", "ap-southeast", 170.0, 0.5),
    ("us-east", "ap-southeast", 250.0, 0.5),
];

fn cross_continent() -> Topology {
    let mut t = Topology::new("cross-continent", &CONTINENTS, "us-east");
    for r in CONTINENTS {
        t.set_link(r, r, region_link());
    }
    for (a, b, rtt, loss) in CONTINENT_PAIRS {
        let spec = LinkSpec {
            jitter: ms(0.5),
            loss: Prob::percent(loss),
            ..link(rtt / 2.0, 1000.0, 50.0)
        };
        both(&mut t, a, b, spec);
    }
    t
}

/// The coordinator in `datacenter` (which takes no workers), workers at home on `cable` or
/// `fiber`. Upload rates follow the U.S. FCC *Measuring Broadband America* fixed-broadband
/// reports (cable upload tiers of 10–35 Mb/s, fiber tiers of 100 Mb/s and up) and Ookla's
/// Speedtest Global Index (U.S. median fixed upload of a few tens of Mb/s); the buffer sizes
/// follow the latency-under-load ("bufferbloat") measurements of those reports and of
/// Gettys & Nichols, *Bufferbloat: Dark Buffers in the Internet* (CACM 2012), where loaded
/// upstream latency reaches hundreds of milliseconds.
fn home() -> Topology {
    let mut t = Topology::new("home", &["datacenter", "cable", "fiber"], "datacenter");
    // Workers sit at home; the coordinator alone in the datacenter.
    t.set_capacity("datacenter", 0);
    t.set_link("datacenter", "datacenter", region_link());
    let jitter = |mut l: LinkSpec, j: f64| {
        l.jitter = ms(j);
        l
    };
    // Cable: 20 Mb/s up with a bloated 250 ms modem buffer, 200 Mb/s down.
    t.set_link("cable", "datacenter", jitter(link(15.0, 20.0, 250.0), 2.0));
    t.set_link("datacenter", "cable", jitter(link(15.0, 200.0, 50.0), 2.0));
    // Fiber: 100 Mb/s up (100 ms buffer), 500 Mb/s down.
    t.set_link("fiber", "datacenter", jitter(link(5.0, 100.0, 100.0), 1.0));
    t.set_link("datacenter", "fiber", jitter(link(5.0, 500.0, 20.0), 1.0));
    // Home to home: through both access links; the sender's uplink is the bottleneck.
    t.set_link("cable", "fiber", jitter(link(20.0, 20.0, 250.0), 2.0));
    t.set_link("fiber", "cable", jitter(link(20.0, 100.0, 100.0), 2.0));
    t.set_link("cable", "cable", jitter(link(30.0, 20.0, 250.0), 3.0));
    t.set_link("fiber", "fiber", jitter(link(10.0, 100.0, 100.0), 1.0));
    t
}

/// A stress case for degraded paths: three regions at the `cross-continent` RTTs, 100 Mb/s,
/// ±2 ms jitter and Gilbert–Elliott bursty loss. Model: E. N. Gilbert, *Capacity of a
/// burst-noise channel* (1960); E. O. Elliott, *Estimates of error rates for codes on
/// burst-noise channels* (1963); parameterised as in Linux `tc netem loss gemodel`
/// (Hasslinger & Hohlfeld, 2008).
fn lossy() -> Topology {
    let regions = ["us-east", "eu-west", "ap-southeast"];
    let mut t = Topology::new("lossy", &regions, "us-east");
    for r in regions {
        t.set_link(r, r, region_link());
    }
    // (a, b, RTT ms, long-run loss, mean burst in datagrams)
    let pairs = [
        ("us-east", "eu-west", 80.0, 0.02, 3.0),
        ("eu-west", "ap-southeast", 170.0, 0.03, 3.0),
        ("us-east", "ap-southeast", 250.0, 0.05, 4.0),
    ];
    for (a, b, rtt, loss, burst) in pairs {
        let spec = LinkSpec {
            jitter: ms(2.0),
            burst: GilbertElliott::with_mean(loss, burst).ok(),
            ..link(rtt / 2.0, 100.0, 50.0)
        };
        both(&mut t, a, b, spec);
    }
    t
}
