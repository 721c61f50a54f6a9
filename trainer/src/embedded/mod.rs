//! Meridian inside another program's training loop: what the Python package (`python/`)
//! wraps. The program owns the model, the data, the backward pass and the inner optimizer;
//! Meridian owns the outer optimizer, the exchange and catch-up, and drives them through
//! the same [`Driver`](crate::networked::drive::Driver) as `meridian worker`, so a wrapped
//! script and a `meridian worker` of the same run behave alike round for round.
//!
//! - [`script_step`]: the program's training as a [`TrainStep`](meridian_optimizer::train_step::TrainStep)
//!   whose inner optimizer is a callback ([`ScriptOptimizer`](script_step::ScriptOptimizer)).
//! - [`worker`]: joining a run and stepping through it one inner step per call.
//! - [`site`]: several ranks (a torchrun job) training as one worker.
//! - [`coordinator`]: a coordinator on a background thread, for tests and notebooks.

pub mod coordinator;
pub mod script_step;
pub mod shard;
pub mod site;
pub mod worker;
