//! Outer optimizers and their compression pipeline, on tch tensors.
//!
//! `meridian-optimizer` turns a worker's parameters into a [`payload::Payload`] to send,
//! and a set of received payloads into a parameter update: DiLoCo, DeMo, SparseLoCo,
//! Streaming DiLoCo, and plain data-parallel as the yardstick. LibTorch owns the memory;
//! the numeric work is done by `meridian-kernels`, which borrows it through [`view`]. The
//! parameters may live on the CPU or a GPU: each optimizer keeps its state on their device,
//! and [`device`] runs the CPU or the CUDA kernels accordingly, with the same bits.
//!
//! It knows nothing of the network: payloads go in and out as values, and the caller (the
//! in-process [`harness`], or the comm layer) decides who receives them.
//!
//! - [`outer::OuterOptimizer`]: the interface and its call order; [`outer::receive`], the
//!   one receive path every algorithm's `apply` takes (admit, decode, screen);
//!   [`outer::OptimizerState`], what an optimizer checkpoints.
//! - [`config::AlgoConfig`]: an algorithm picked by name with its settings, from TOML and
//!   `--set` overrides; every settings struct implements [`config::AlgoSettings`].
//! - [`params::ParamSet`]: a model's parameters in canonical order, with a bit-exact hash.
//! - [`payload`]: the versioned, validated message format.
//! - [`rejection::Rejection`]: why a member's payload was left out of a round.
//! - [`harness::Harness`]: N workers in one process.
//! - [`solo::SoloWorker`]: one worker exchanging through the network ([`solo::Exchange`]).
//! - [`ring::DenseRing`]: summing dense payloads in bytes, for a ring all-reduce.
//! - [`robust`]: Byzantine-robust aggregation (norm clipping, trimmed mean, outliers); its
//!   [`robust::Robust`] settings are part of every algorithm's settings.
//! - [`byzantine`]: a worker that sends doctored updates, for testing those defences.
//! - [`toy`]: a small MLP task for tests and examples.
//! - [`divergence`]: a loss or the parameters turning non-finite stops the run with an
//!   error that names the algorithm, the round and the likely setting.
//! - [`device`]: the tensor's device picks the kernels (CPU, or CUDA in place); whether
//!   LibTorch can use a GPU here ([`device::cuda_is_available`]).

pub mod algorithm;
#[cfg(test)]
mod attacks;
pub mod balance;
pub mod byzantine;
pub mod config;
pub mod device;
pub mod divergence;
pub mod error;
pub mod harness;
pub mod outer;
pub mod params;
pub mod payload;
pub mod reference;
pub mod rejection;
pub mod ring;
pub mod robust;
pub mod signature;
pub mod solo;
pub mod toy;
pub mod train_step;
pub mod view;

#[cfg(test)]
mod testing;

pub use algorithm::Algorithm;
pub use error::{OptimizerError, Result};
pub use rejection::Rejection;
