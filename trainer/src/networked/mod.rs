//! One run across processes and machines, over authenticated QUIC: the coordinator
//! process ([`coordinator`]) and the worker process ([`process`]).
//!
//! [`drive::drive`] is the documented entry point that trains one worker of a networked
//! run: it steps a [`meridian_optimizer::solo::SoloWorker`], publishes each exchange
//! through a [`drive::RoundLink`], applies every committed round in member-id order, and
//! answers catch-up requests. `meridian worker` calls it over the real network
//! ([`quic_link`]); `meridian simulate` calls it over the simulated one
//! (`crate::simulation::colink`). [`node_link`] gives both the same reading of the comm
//! node's events; [`snapshot`] is the state a newcomer takes from a peer; [`ring_reducer`]
//! lets a ring run sum payloads with the optimizer's dense ring.

pub mod coordinator;
pub mod drive;
pub mod node_link;
pub mod process;
pub mod quic_link;
pub mod ring_reducer;
pub mod settings;
pub mod snapshot;

use anyhow::{Context, Result};

/// The multi-threaded tokio runtime a real node runs on (two threads: the node's I/O is
/// light next to training).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the network runtime")
}
