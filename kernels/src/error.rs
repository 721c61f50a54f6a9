//! The one error type of this crate.

use thiserror::Error;

/// Why a kernel refused its input. Every kernel validates what it is given and returns one
/// of these rather than panicking, so bad data from a peer or a file is an error upstream.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum KernelError {
    /// A buffer's length does not match what the other arguments imply.
    #[error("{what}: length {actual} does not match the expected {expected}")]
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// The length the other arguments imply.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// An input that must hold at least one element was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which input.
        what: &'static str,
    },
    /// A configuration value is outside its documented range.
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A NaN or infinity where only finite values are allowed.
    #[error("{what}: non-finite value {value} at index {index}")]
    NonFinite {
        /// Which buffer.
        what: &'static str,
        /// Position of the first offending element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// Finite input whose transform overflows f32: a coefficient or an intermediate sum of
    /// the DCT came out infinite or NaN although every input value was finite.
    #[error(
        "{what}: values up to {max_abs:.3e} in magnitude are too large for the DCT in f32 \
         (its {} overflowed); it handles magnitudes up to {limit:.3e}: scale the tensor down",
        tile_words(*tile_rows, *tile_cols)
    )]
    TransformOverflow {
        /// Which buffer.
        what: &'static str,
        /// The largest magnitude in it.
        max_abs: f32,
        /// The largest magnitude the transform is guaranteed to take
        /// ([`crate::dct::DctPlan::max_magnitude`]).
        limit: f32,
        /// Rows of a tile (1 for a 1-D transform).
        tile_rows: usize,
        /// Columns of a tile.
        tile_cols: usize,
    },
    /// An index that points outside the buffer it addresses.
    #[error("{what}: index {index} out of range for length {len}")]
    IndexOutOfRange {
        /// Which index list.
        what: &'static str,
        /// The offending index.
        index: u64,
        /// The length it must stay below.
        len: u64,
    },
    /// Encoded bytes that do not decode: truncated, trailing garbage, unknown tags,
    /// unsorted or duplicate indices, counts that disagree with the header.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The CUDA backend could not run: no driver or device, a compile or launch failure, or
    /// a configuration it does not implement (callers fall back to the CPU backend).
    #[error("cuda: {reason}")]
    Device {
        /// What failed.
        reason: String,
    },
    /// Two inputs claim the same contributor identity where each must be unique.
    #[error("duplicate contributor id {id}")]
    DuplicateContributor {
        /// The repeated id.
        id: u32,
    },
}

/// A transform's unit in words: `64-point chunks` (1-D) or `64×64 tiles`.
fn tile_words(rows: usize, cols: usize) -> String {
    if rows == 1 {
        format!("{cols}-point chunks")
    } else {
        format!("{rows}×{cols} tiles")
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, KernelError>;

/// Returns an error naming the first non-finite element of `values`, if any.
pub fn check_finite(what: &'static str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(KernelError::NonFinite { what, index, value: values[index] }),
    }
}

/// Returns an error unless `actual == expected`.
pub fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(KernelError::LengthMismatch { what, expected, actual })
    }
}

/// Builds an [`KernelError::InvalidParameter`].
pub fn invalid(name: &'static str, reason: impl Into<String>) -> KernelError {
    KernelError::InvalidParameter { name, reason: reason.into() }
}

/// Builds a [`KernelError::Malformed`].
pub fn malformed(what: &'static str, reason: impl Into<String>) -> KernelError {
    KernelError::Malformed { what, reason: reason.into() }
}
