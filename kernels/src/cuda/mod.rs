//! The CUDA backend: the same primitives as the CPU modules, as CUDA kernels compiled at run
//! time with NVRTC and launched on memory that stays on the device.
//!
//! # Sources and compilation
//! The kernels are CUDA C files beside this crate (`kernels/cuda/*.cu`, with shared device
//! helpers in `prelude.cuh`). On first use in a process they are compiled together, once per
//! GPU architecture, with NVRTC (found as described in [`loader`]) and the image is cached
//! ([`source::module_image`]). Nothing CUDA is needed to build the crate: cudarc loads
//! NVRTC and the driver dynamically.
//!
//! # Stream ordering
//! Every launch, copy and allocation goes to the CUDA *legacy default stream* (the null
//! stream) of the device's primary context, which is also the context and the default
//! current stream of LibTorch. Work queued by LibTorch on its default stream before a call
//! is therefore finished before our kernels read the tensor, and LibTorch work queued after
//! the call starts after our kernels. A caller that moved LibTorch onto a side stream
//! must synchronize that stream first. Calls returning host data (bytes, selections)
//! synchronize the stream before returning.
//!
//! # Fallback
//! [`loader::device_count`] probes for the driver without panicking (cudarc's
//! `CudaContext::new` panics when `libcuda` is missing). Without a driver, a device or
//! NVRTC, [`CudaBackend::get`] returns [`crate::KernelError::Device`], and callers (the
//! optimizer's device dispatch) log one line and use the CPU backend.
//!
//! # Agreement with the CPU backend
//! - Top-k (per chunk): the exact same index sets and values, ties to the lower index.
//! - Quantization: the same codes and parameters, bit for bit. Order-dependent
//!   statistics are summed by one thread in element order in `f64`, as on the CPU; the
//!   per-element formulas are the CPU's; programs are compiled with `--fmad=false` (and
//!   the one fused operation, error-feedback accumulation, uses `fmaf` as the CPU uses
//!   `mul_add`). Stochastic rounding draws element `i`'s number from position `i` of the
//!   same SplitMix64 stream.
//! - Index packing, scatter-mean and error feedback: bit-identical (scatter-mean adds the
//!   contributions one launch per worker, in ascending worker id, with no float atomics).
//! - DCT: bit-identical. `dct.cuh` replays the CPU's arithmetic operation for operation:
//!   the O(n log n) factorization for power-of-two chunks (with the CPU's own twiddle
//!   tables, uploaded), the dense product (from `+0.0`, in increasing index) otherwise, and
//!   the two dimensions of a tile in the order the CPU uses for that combination. The CPU
//!   vectorizes only across independent lines, so its per-line arithmetic is the scalar
//!   sequence the GPU runs. GPU and CPU replicas can therefore be mixed in one run.
//!   Chunks are limited to 64 points per dimension (the default chunk is 64); larger chunks
//!   and global (non-per-chunk) selection are reported as unsupported so the caller uses
//!   the CPU.
//!
//! # What is tested where
//! - Everywhere (CPU-only CI included): every `.cu` file, and the whole module, compiles
//!   with NVRTC for `sm_80` and `sm_90` with an empty NVRTC log (any warning fails); and
//!   `dct.cuh`, compiled as host C++ with one thread per block, gives the CPU DCT's bits on
//!   shapes that cover every path (fast and dense dimensions, lines, padding); and all
//!   kernel sources, compiled as host C++ with one thread per block (blocks run one after
//!   another), run the fused compress and the quantizer and give the CPU pipeline's bytes
//!   for every preset and several quantizers, once with one thread per block and once with
//!   64 OS threads per block (barriers for `__syncthreads`, per-warp ballots), which runs
//!   the cross-warp scans as on a device; index unpacking, dequantization and scatter-mean
//!   are run the same way. The host runs check indices, formulas, layouts and the
//!   multi-warp logic; a missing barrier shows there only by chance, and timing, memory
//!   model and launch configuration only on a device.
//! - With a CUDA device: parity with the CPU backend on fresh random inputs at several
//!   sizes, including sizes that are not multiples of the chunk; outputs are poisoned
//!   before each run so unwritten elements show. Without one those tests print
//!   `skipped: no CUDA device` and return.

pub mod backend;
pub mod compressor;
pub mod loader;
pub mod source;

pub use backend::{CudaBackend, DctBases, DeviceBuffer};
pub use compressor::CudaCompressor;
pub use loader::{cuda_available, device_count};

#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
