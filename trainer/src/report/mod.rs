//! What a run leaves behind: the summary ([`summary`]), loss curves ([`plot`]) of the
//! synchronized model ([`sync_eval`]), bytes and loss against bf16 ring DDP ([`frontier`]),
//! per-round metrics ([`metrics`]) and checkpoints ([`checkpoint`]).

pub mod checkpoint;
pub mod frontier;
pub mod metrics;
pub mod plot;
pub mod summary;
pub mod sync_eval;
