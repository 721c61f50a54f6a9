//! The inner training step: the AdamW optimizer with its schedule ([`adamw`]) and
//! [`lm_step::LmStep`], which ties a model, its optimizer and a data shard into the
//! `TrainStep` every outer optimizer drives.

pub mod adamw;
pub mod lm_step;
