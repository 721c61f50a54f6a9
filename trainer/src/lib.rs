//! The Meridian application: wraps a LibTorch training step, drives it with an outer
//! optimizer, and provides the `meridian` command-line tool.
//!
//! This is the top of the workspace and the only crate that knows about all the others.
//! Library crates below it stay free of application concerns.
//!
//! Where things are, by what they do:
//! - [`cli`]: one module per subcommand (`train`, `coordinator`, `worker`, `simulate`,
//!   `what-if`, `proxy`, `compress`), each holding its `Args` and a `run()`, and
//!   [`cli::args`], the argument groups several of them share.
//! - What trains: [`model`] (the built-in byte-level GPT, a small MLP, a user's
//!   TorchScript module), [`data`] (the corpus, its validation split, one seeded shard per
//!   worker), [`step`] (the inner AdamW and [`step::lm_step::LmStep`], the training step
//!   the outer optimizers drive), [`run_config`] (a run's settings from file and `--set`),
//!   [`device`] (`--device`).
//! - How it runs: [`local`] (in-process training, `meridian train`), [`networked`] (one
//!   worker of a run across processes: [`networked::drive`] is the entry point `meridian
//!   worker` and `meridian simulate` both call; the coordinator process too),
//!   [`simulation`] (a whole run over a simulated WAN in virtual time), [`what_if`]
//!   (estimates without training), [`compression`] (`meridian compress` on a demo or a
//!   user's safetensors file).
//! - What a run leaves behind: [`report`] (summary, plots, per-round metrics,
//!   checkpoints).
//! - Small utilities: [`atomic_write`], [`float_env`], [`units`].

pub mod atomic_write;
pub mod cli;
pub mod compression;
pub mod data;
pub mod device;
pub mod embedded;
pub mod float_env;
pub mod local;
pub mod model;
pub mod networked;
pub mod report;
pub mod run_config;
pub mod simulation;
pub mod step;
#[cfg(test)]
mod testing;
pub mod units;
pub mod what_if;
