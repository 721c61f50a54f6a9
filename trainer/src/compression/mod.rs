//! `meridian compress`: each compression pipeline on one round's pseudo-gradient of a
//! small model ([`demo`]), on a user's safetensors file ([`file`]) or on a seeded tensor of
//! a chosen distribution ([`synthetic`]), through the algorithms' own encoders ([`codec`]);
//! [`values`] measures the kept values' error and the quantizers' level occupancy;
//! [`tensor_file`] reads and writes the files.

pub mod codec;
pub mod demo;
pub mod file;
pub mod synthetic;
pub mod tensor_file;
pub mod values;
