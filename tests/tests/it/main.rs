//! Cross-crate integration tests, compiled into one binary.

mod kernels_on_tensors;
