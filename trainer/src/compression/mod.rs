//! `meridian compress`: each compression pipeline on one round's pseudo-gradient of a
//! small model ([`demo`]) or on a user's safetensors file ([`file`]), through the
//! algorithms' own encoders ([`codec`]); [`tensor_file`] reads and writes the files.

pub mod codec;
pub mod demo;
pub mod file;
pub mod tensor_file;
