//! The `meridian` command line: one module per subcommand, each holding its `Args` (what
//! `--help` documents) and a `run()` that hands them to the code that does the work.
//!
//! | subcommand    | module          | the work                                 |
//! |---------------|-----------------|------------------------------------------|
//! | `train`       | [`train`]       | [`crate::local`]                         |
//! | `coordinator` | [`coordinator`] | [`crate::networked::coordinator`]        |
//! | `worker`      | [`worker`]      | [`crate::networked::process`]            |
//! | `simulate`    | [`simulate`]    | [`crate::simulation`]                    |
//! | `what-if`     | [`what_if`]     | [`crate::what_if`]                       |
//! | `proxy`       | [`proxy`]       | `meridian_simulate::Proxy`               |
//! | `compress`    | [`compress`]    | [`crate::compression`]                   |
//!
//! Flags several subcommands take are declared once in [`args`] and flattened.

pub mod args;
pub mod compress;
pub mod coordinator;
pub mod proxy;
pub mod simulate;
pub mod train;
pub mod what_if;
pub mod worker;
