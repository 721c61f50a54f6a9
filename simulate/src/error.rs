//! The crate's error type.

/// What can go wrong building a topology or using the fabric. Every variant names the
/// thing at fault, so a CLI can print it as is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// No preset has this name.
    #[error("unknown topology preset {name:?} (known presets: {known})")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The preset names, comma-separated.
        known: String,
    },
    /// A topology file is not valid TOML or a value in it does not parse (the message
    /// names the key and the line).
    #[error("topology file: {0}")]
    Parse(String),
    /// A region is named that the topology does not have.
    #[error("unknown region {region:?} in {context} (regions: {known})")]
    UnknownRegion {
        /// The region named.
        region: String,
        /// Where it was named.
        context: String,
        /// The topology's regions, comma-separated.
        known: String,
    },
    /// Two regions have no link in this direction.
    #[error(
        "no link from region {from:?} to region {to:?}: add [links.\"{from} -> {to}\"] \
         or [links.\"{from} <-> {to}\"]"
    )]
    MissingLink {
        /// Sending region.
        from: String,
        /// Receiving region.
        to: String,
    },
    /// The same directed link is given more than once.
    #[error("link from {from:?} to {to:?} is given more than once")]
    DuplicateLink {
        /// Sending region.
        from: String,
        /// Receiving region.
        to: String,
    },
    /// A link spec given on its own (not in a topology file) does not parse.
    #[error("link spec {0}")]
    LinkSpec(String),
    /// A value is out of its range (a negative rate, a loss above 100%, ...).
    #[error("{field}: {reason}")]
    InvalidValue {
        /// The field, with the link it belongs to.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The topology cannot place this many workers.
    #[error("cannot place {requested} workers: the topology holds at most {capacity}")]
    TooManyWorkers {
        /// Workers asked for.
        requested: usize,
        /// Workers the topology can hold.
        capacity: usize,
    },
    /// The fabric was used outside a tokio runtime (its driver needs one).
    #[error("the simulated fabric must be used inside a tokio runtime")]
    NoRuntime,
    /// A real socket operation failed (the proxy).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An address the fabric never gave out.
    #[error("no simulated host has the address {addr}")]
    UnknownHost {
        /// The address.
        addr: std::net::SocketAddr,
    },
    /// A region ran out of virtual addresses.
    #[error("region {region:?} has no free virtual address left")]
    AddressesExhausted {
        /// The region.
        region: String,
    },
}

/// Result with [`SimError`].
pub type Result<T, E = SimError> = std::result::Result<T, E>;
