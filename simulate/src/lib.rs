//! WAN simulation for Meridian: link models and a virtual UDP fabric that QUIC runs over,
//! in virtual time.
//!
//! `meridian-simulate` moves datagrams the way a wide-area network would, so one machine
//! can show what a cross-continent run will do. It knows nothing of training, tensors or
//! the round protocol: it only carries datagrams.
//!
//! - [`LinkSpec`] configures one direction of a link: propagation delay, jitter, a rate
//!   with a drop-tail queue (in bytes or milliseconds), random loss, Gilbert–Elliott bursty
//!   loss, reordering, duplication, and schedules of outages and parameter changes.
//!   [`LinkModel`] is its deterministic, sans-IO model (one seeded RNG per link direction);
//!   see the [`link`] module for the order of the stages.
//! - [`Topology`]: named regions, a link per ordered region pair (asymmetric allowed) and
//!   inside each region, the coordinator's region, worker placement; presets, or TOML
//!   files ([`Topology::from_toml`], format in its docs, units in [`units`]).
//! - [`Fabric`]: hosts bound in regions get a [`SimSocket`] implementing
//!   [`quinn::AsyncUdpSocket`], so the QUIC stack runs unchanged over simulated links in
//!   one process. Every directed host pair gets its own [`LinkModel`] built from its
//!   regions' [`LinkSpec`] (flows do not share a bottleneck). Deliveries are ordered by
//!   (time, sequence); [`Fabric::stats`] counts every datagram's fate per region pair;
//!   [`Fabric::set_host_down`] and [`Fabric::set_link_down`] are the fault switches.
//! - [`Proxy`]: the same link models between real processes: a UDP proxy on real sockets
//!   (real time) that forwards to a server through an up and a down [`LinkModel`], giving
//!   each client its own upstream socket, like a NAT (`meridian proxy` on the command line).
//!
//! # Virtual time
//! The fabric runs on tokio's clock. In a current-thread runtime built with
//! `start_paused(true)` (tokio's `test-util` feature), quinn's timers (its `TokioRuntime`
//! reads tokio's clock), the links and everything else wait on the same virtual clock,
//! which jumps to the next timer whenever all tasks are idle. The same seed and the same
//! sequence of sends give the same deliveries at the same times. Tokio timers have 1 ms
//! resolution, so deliveries land on the first millisecond tick at or after their arrival.
//! QUIC draws random numbers of its own (skipped packet numbers, key-update intervals,
//! greasing) that change packet sizes and timings; for exact replays its endpoints need a
//! fixed seed too (in `meridian-comm`, `TransportTuning::rng_seed`). Drive applications
//! with async tasks on the same runtime, charging compute as `tokio::time::sleep`: work on
//! other OS threads is invisible to the paused clock, which would jump ahead meanwhile
//! (tokio does hold it for `spawn_blocking` tasks).
//!
//! # Benchmark
//! `cargo run --release -p meridian-simulate --example wan_goodput` measures QUIC goodput
//! over a 1 Gb/s, 150 ms-RTT simulated path at 0, 0.5 and 2% loss with BBR and Cubic, and
//! the simulator's speed; results are in the workspace's `BENCHMARKS.md`.
//!
//! ```
//! use std::time::Duration;
//! use meridian_simulate::{Fabric, Topology};
//!
//! let rt = tokio::runtime::Builder::new_current_thread()
//!     .enable_time()
//!     .start_paused(true)
//!     .build()
//!     .unwrap();
//! rt.block_on(async {
//!     let fabric = Fabric::new(Topology::preset("cross-continent").unwrap(), 7);
//!     let a = fabric.bind("us-east").unwrap();
//!     let b = fabric.bind("ap-southeast").unwrap();
//!     a.send_to(b.addr(), b"hello");
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     assert!(b.try_recv().is_none(), "still crossing the Pacific");
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     // 125 ms one way (plus up to 0.5 ms of jitter), unless the 0.5% loss took it.
//!     let _maybe = b.try_recv();
//! });
//! ```
//!
//! # Presets
//! Figures are rounded; they describe typical paths, not a measurement of one. Each
//! figure's source stands beside it in `presets.rs`.
//!
//! - `lan`: one region, 10 Gb/s, 0.1 ms RTT, 1 ms of switch buffer, no loss.
//! - `cross-continent`: regions `us-east`, `us-west`, `eu-west`, `ap-southeast` (coordinator
//!   in `us-east`), 1 Gb/s per path, 50 ms drop-tail queue, ±0.5 ms jitter. RTTs:
//!   us-east–us-west 70 ms, us-east–eu-west 80 ms, us-west–eu-west 140 ms,
//!   us-west–ap-southeast 160 ms, eu-west–ap-southeast 170 ms, us-east–ap-southeast 250 ms.
//!   Random loss 0.1% within North America, 0.2% transatlantic, 0.5% on paths to
//!   Singapore. Inside a region: 0.5 ms RTT (between availability zones), 10 Gb/s.
//! - `home`: the coordinator in `datacenter` (which takes no workers), workers in `cable`
//!   (20 Mb/s up, 200 Mb/s down, 30 ms RTT, a bloated 250 ms upstream modem buffer) and
//!   `fiber` (100 Mb/s up, 500 Mb/s down, 10 ms RTT, 100 ms buffer).
//! - `lossy`: `us-east` (coordinator), `eu-west`, `ap-southeast` at the RTTs above,
//!   100 Mb/s, ±2 ms jitter, and Gilbert–Elliott bursty loss of 2% (us-east–eu-west,
//!   bursts of 3), 3% (eu-west–ap-southeast, bursts of 3) and 5% (us-east–ap-southeast,
//!   bursts of 4).

pub mod error;
pub mod fabric;
pub mod link;
pub mod pace;
mod presets;
pub mod proxy;
mod rng;
pub mod topology;
pub mod units;

pub use error::{Result, SimError};
pub use fabric::{Counter, Fabric, FabricStats, LinkStats, SimSocket};
pub use link::{Change, DropReason, Fate, GilbertElliott, LinkModel, LinkSpec, Window};
pub use pace::Pace;
pub use proxy::{Proxy, ProxyConfig, ProxyStats};
pub use topology::Topology;
pub use units::{Dur, Prob, QueueLimit, Rate};
