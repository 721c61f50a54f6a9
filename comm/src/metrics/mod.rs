//! Live metrics in the Prometheus text format, served over HTTP at `/metrics`.
//!
//! A node keeps its counters in a [`prometheus_client`] [`Registry`] (the coordinator's
//! are in the coordinator node, a worker's in the application that trains it) and hands the
//! registry to [`MetricsServer::start`], which serves its text exposition (version 0.0.4)
//! to every `GET /metrics` on a TCP address. The server is deliberately small
//! (see `http`): one request per connection, bounded request size, a deadline per
//! connection and a cap on connections at once, so an open metrics port cannot be used to
//! exhaust the node. It serves whoever reaches it: bind a private address.
//!
//! Names follow Prometheus' conventions: `meridian_*`, the unit in the name (`_bytes`,
//! `_seconds`) and `_total` on counters.

mod http;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use http::HttpLimits;
/// The crate the registries are built with, re-exported so that callers register their
/// metrics with the same version the server encodes.
pub use prometheus_client;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Started outside a tokio runtime.
    #[error("cannot serve metrics on {addr}: not called inside a tokio runtime")]
    NoRuntime {
        /// The address asked for.
        addr: SocketAddr,
    },
}

/// The registry's text exposition, as a scrape gets it.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        // Writing to a String cannot fail; a metric's own encoder could, and a partial
        // page is still worth serving.
        warn!(error = %e, "encoding the metrics failed");
    }
    text
}

/// An HTTP endpoint serving one registry; it stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Binds `addr` and serves `registry` there with the default [`HttpLimits`]. Must be
    /// called inside a tokio runtime, whose tasks then serve the scrapes.
    pub fn start(addr: SocketAddr, registry: Registry) -> Result<Self, MetricsError> {
        Self::start_with(addr, registry, HttpLimits::default())
    }

    /// [`MetricsServer::start`] with other limits.
    pub fn start_with(
        addr: SocketAddr,
        registry: Registry,
        limits: HttpLimits,
    ) -> Result<Self, MetricsError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(MetricsError::NoRuntime { addr });
        }
        let bind = |source| MetricsError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind)?;
        let registry = Arc::new(registry);
        let page = Arc::new(move || (render(&registry), prometheus_text::CONTENT_TYPE));
        let task = tokio::spawn(http::serve(listener, limits, page));
        // Tests and scripts that ask for port 0 read the chosen port from this line.
        info!("serving Prometheus metrics at http://{local}/metrics");
        Ok(MetricsServer { addr: local, task })
    }

    /// The address it listens on (the chosen port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn an_address_that_cannot_be_bound_is_named_in_the_error() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = MetricsServer::start(addr, Registry::default()).unwrap_err().to_string();
        assert!(err.contains(&format!("cannot serve metrics on {addr}")), "{err}");
        drop(_guard);
        let outside = MetricsServer::start("127.0.0.1:0".parse().unwrap(), Registry::default());
        assert!(matches!(outside, Err(MetricsError::NoRuntime { .. })));
    }

    #[test]
    fn the_text_names_counters_with_total_and_help() {
        let mut registry = Registry::default();
        let rounds = Counter::<u64>::default();
        registry.register("meridian_rounds_committed", "Rounds committed.", rounds.clone());
        rounds.inc_by(3);
        let text = render(&registry);
        assert!(
            text.contains("# HELP meridian_rounds_committed_total Rounds committed."),
            "{text}"
        );
        assert!(text.contains("\nmeridian_rounds_committed_total 3\n"), "{text}");
    }
}
