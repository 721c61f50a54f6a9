//! Cross-crate integration tests of the Meridian workspace; the tests live in `tests/tests/`.
//!
//! This crate has no library code of its own. Tests here exercise the layers together
//! (kernels on LibTorch memory through the optimizer's views, and later the full round over
//! comm and the simulator); each crate's own behaviour is tested inside that crate.
