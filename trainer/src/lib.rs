//! The Meridian application: wraps a LibTorch training step, drives it with an outer
//! optimizer, and provides the `meridian` command-line tool.
//!
//! This is the top of the workspace and the only crate that knows about all the others.
//! Library crates below it stay free of application concerns.
//!
//! - [`model`]: what Meridian can train ([`model::LanguageModel`]): the built-in byte-level
//!   GPT, a small MLP, and a user's TorchScript module.
//! - [`data`]: the corpus, its validation split and one disjoint seeded shard per worker.
//! - [`adamw`]: the inner optimizer and its schedule; [`worker::LmWorker`] ties model,
//!   optimizer and shard into the `TrainStep` the outer optimizers drive.
//! - [`checkpoint`]: complete, atomic, bit-exact checkpoints of a run.
//! - [`train`], [`run_config`], [`metrics`], [`summary`], [`plot`]: `meridian train`.
//! - [`net_worker`], [`net_cli`], [`snapshot`], [`ring_reducer`]: `meridian coordinator` and
//!   `meridian worker`, one run across processes over QUIC.
//! - [`compress_demo`], [`compress_file`], [`codec`], [`tensor_file`]: `meridian compress`.

pub mod adamw;
pub mod atomic_write;
pub mod checkpoint;
pub mod codec;
pub mod compress_demo;
pub mod compress_file;
pub mod data;
pub mod device;
pub mod float_env;
pub mod metrics;
pub mod model;
pub mod net_cli;
pub mod net_worker;
pub mod node_link;
pub mod plot;
pub mod proxy_cli;
pub mod ring_reducer;
pub mod run_config;
pub mod sim;
pub mod snapshot;
pub mod summary;
pub mod tensor_file;
#[cfg(test)]
mod testing;
pub mod train;
pub mod whatif;
pub mod worker;
