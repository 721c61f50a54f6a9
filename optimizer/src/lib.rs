//! Outer optimizers and their compression pipeline, on tch tensors.
//!
//! `meridian-optimizer` turns a worker's parameters into a payload to send and a set of
//! received payloads into a parameter update (DiLoCo, DeMo, SparseLoCo, Streaming DiLoCo,
//! and plain data-parallel as the yardstick). LibTorch owns the memory; the numeric work is
//! done by `meridian-kernels`, which borrows it through [`view`].
//!
//! It knows nothing of the network: payloads go in and out as values, and the caller
//! (the in-process harness, or the comm layer) decides who receives them.

pub mod error;
pub mod view;

pub use error::{OptimizerError, Result};
