//! What a run leaves behind: the summary ([`summary`]), loss curves ([`plot`]), per-round
//! metrics ([`metrics`]) and checkpoints ([`checkpoint`]).

pub mod checkpoint;
pub mod metrics;
pub mod plot;
pub mod summary;
