//! Numeric compression primitives on borrowed memory.
//!
//! `meridian-kernels` is the bottom layer of Meridian: every function takes slices (or, with
//! the CUDA backend, device pointers and lengths) and returns results or typed errors. It
//! knows nothing of training algorithms, of LibTorch, or of the network; the optimizer
//! crate composes these primitives into DiLoCo, DeMo, SparseLoCo and Streaming DiLoCo.
//!
//! The primitives, in pipeline order:
//! - [`dct`]: chunked orthonormal DCT-II and its inverse, 1-D and 2-D (tiles).
//! - [`topk`]: exact top-k by magnitude, per chunk or global, lower index wins ties.
//! - [`quant`]: 8/4/2/1-bit quantizers, absmax or codebook, blockwise, optional stochastic
//!   rounding.
//! - [`pack`]: index packing (fixed width per chunk, delta + bit-packing, or a bitmap).
//! - [`aggregate`]: scatter many contributors' sparse values into a dense mean, in
//!   canonical order so the bits do not depend on arrival order.
//! - [`feedback`]: error feedback from exactly what was sent.
//! - [`pipeline`]: all of the above as one configured compressor with a byte encoding.
//! - `cuda` (feature `cuda`, on by default): the same primitives as CUDA kernels compiled
//!   at run time with NVRTC, with a CPU fallback when no device is present.
//!
//! Every input is validated: lengths, ranges, finiteness, and encoded bytes. Nothing here
//! panics on bad data.
//!
//! ```
//! use meridian_kernels::pipeline::{Compressor, CompressorConfig};
//! let x: Vec<f32> = (0..8192).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
//! let mut c = Compressor::new(CompressorConfig::sparseloco(), &[x.len()]).unwrap();
//! let sent = c.compress(&x).unwrap();
//! let back = c.decompress(&sent.bytes).unwrap();
//! assert_eq!(back.len(), x.len());
//! assert!(sent.bytes.len() < x.len() * 4 / 20);
//! ```

pub mod aggregate;
pub mod chunks;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dct;
pub mod error;
pub mod feedback;
pub mod pack;
pub mod pipeline;
pub mod quant;
pub mod rng;
pub mod sparse;
pub mod topk;

pub use error::{KernelError, Result};
pub use sparse::Sparse;
