//! The Meridian application: wraps a LibTorch training step, drives it with an outer
//! optimizer, and provides the `meridian` command-line tool.
//!
//! This is the top of the workspace and the only crate that knows about all the others:
//! models and data, checkpoints, the CLI (`meridian compress`, and the training, simulation
//! and multi-process commands as they land). Library crates below it stay free of
//! application concerns.

pub mod adamw;
pub mod atomic_write;
pub mod checkpoint;
pub mod codec;
pub mod compress_demo;
pub mod compress_file;
pub mod data;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod run_config;
pub mod summary;
pub mod tensor_file;
pub mod train;
pub mod worker;
