//! The one error type of this crate.

use thiserror::Error;

/// Why an optimizer operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OptimizerError {
    /// A compression kernel refused its input.
    #[error(transparent)]
    Kernel(#[from] meridian_kernels::KernelError),
    /// LibTorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A tensor is not in the form a kernel can borrow (dtype, device, layout).
    #[error("tensor {name}: {reason}")]
    UnsupportedTensor {
        /// Which tensor.
        name: String,
        /// What about it is unsupported.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, OptimizerError>;
