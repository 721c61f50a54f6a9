//! What a connection gets before it proves that it belongs to the run: a deadline, and a
//! place among a capped number of such connections, in total and per source address.
//!
//! "Proving" differs by listener. On the coordinator a connection is unverified from its
//! first packet until its first frame, a `Join` whose tag proves the join secret, has been
//! read (the TLS handshake accepts any certificate). On a worker's peer listener it is
//! unverified until its TLS handshake completes: the handshake itself checks the client's
//! certificate against the pinned fingerprints of the run's members, and no stream data
//! flows before it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use crate::protocol::ProtocolError;

/// How often a listener under a flood of refused attempts logs one line about them.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Limits on connections that have not yet proven they belong to the run (see
/// [`CoordinatorNodeConfig::pre_auth`](super::CoordinatorNodeConfig::pre_auth) and
/// [`WorkerNodeConfig::pre_auth`](super::WorkerNodeConfig::pre_auth)). An attempt over a
/// cap is refused before its handshake (QUIC's `CONNECTION_REFUSED`; a worker retries with
/// backoff) and logged with the limit it hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreAuthLimits {
    /// How long a connection has, from its first packet, to prove itself: on the
    /// coordinator, to complete its handshake and its whole `Join` frame; on a worker's
    /// peer listener, to complete its handshake. Not extended by anything the peer sends,
    /// so a peer trickling one byte a second is cut at this time: closed, not refused, so a
    /// worker whose join crawled over a bad link tries again. By default 10 s.
    pub timeout: Duration,
    /// Unverified connections at once, from everywhere. By default 64.
    pub max_connections: usize,
    /// Unverified connections at once from one source: one IPv4 address, or one IPv6 /64
    /// (what one host usually holds). By default 8.
    pub max_connections_per_source: usize,
}

impl Default for PreAuthLimits {
    fn default() -> Self {
        PreAuthLimits {
            timeout: Duration::from_secs(10),
            max_connections: 64,
            max_connections_per_source: 8,
        }
    }
}

impl PreAuthLimits {
    /// Refuses limits that would turn every peer away; `node` names the node in the error.
    pub(crate) fn check(&self, node: &str) -> Result<(), ProtocolError> {
        let zero = if self.timeout.is_zero() {
            "timeout"
        } else if self.max_connections == 0 {
            "max_connections"
        } else if self.max_connections_per_source == 0 {
            "max_connections_per_source"
        } else {
            return Ok(());
        };
        Err(ProtocolError::Config(format!(
            "{node}: pre_auth.{zero} is 0, which would refuse every connection"
        )))
    }
}

/// The count of unverified connections, shared by a listener's tasks.
#[derive(Debug, Clone)]
pub(crate) struct Unverified {
    limits: PreAuthLimits,
    counts: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One unverified connection's place: released when dropped (the connection proved itself,
/// failed or timed out).
#[derive(Debug)]
pub(crate) struct Slot {
    counts: Arc<Mutex<Counts>>,
    source: IpAddr,
}

impl Unverified {
    pub(crate) fn new(limits: PreAuthLimits) -> Self {
        Unverified { limits, counts: Arc::default() }
    }

    /// The limits.
    pub(crate) fn limits(&self) -> &PreAuthLimits {
        &self.limits
    }

    /// A place for a connection from `ip`, or why there is none (naming the limit).
    pub(crate) fn claim(&self, ip: IpAddr) -> Result<Slot, String> {
        let source = source_of(ip);
        let mut counts = lock(&self.counts);
        if counts.total >= self.limits.max_connections {
            return Err(format!(
                "{} connections are already waiting to prove they belong to the run (the \
                 limit, pre_auth.max_connections)",
                counts.total
            ));
        }
        let from_source = counts.by_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.max_connections_per_source {
            return Err(format!(
                "{from_source} connections from {source} are already waiting to prove they \
                 belong to the run (the limit, pre_auth.max_connections_per_source)"
            ));
        }
        counts.total += 1;
        *counts.by_source.entry(source).or_insert(0) += 1;
        Ok(Slot { counts: self.counts.clone(), source })
    }

    /// Unverified connections now (tests).
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        lock(&self.counts).total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_source.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// Logs refused connection attempts without letting a flood of them flood the log: the
/// first at once, then at most one line per [`REFUSAL_LOG_INTERVAL`], counting those in
/// between (each is still logged at debug).
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    last: Option<Instant>,
    unreported: u64,
}

impl RefusalLog {
    /// An attempt from `peer` to `listener` ("coordinator", "peer listener") was refused.
    pub(crate) fn refused(&mut self, listener: &str, peer: SocketAddr, detail: &str) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < REFUSAL_LOG_INTERVAL) {
            self.unreported += 1;
            return debug!(%peer, detail, "{listener}: refused a connection attempt");
        }
        warn!(
            %peer,
            detail,
            since_last_report = self.unreported,
            "{listener}: refused a connection attempt (and {} more since the last report)",
            self.unreported
        );
        self.last = Some(now);
        self.unreported = 0;
    }
}

/// The counts stay consistent under any panic (each update is one statement), so a
/// poisoned lock is still usable.
fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the per-source limit counts: an IPv4 address (also when it arrives mapped into
/// IPv6 on a dual-stack socket), or an IPv6 /64, since one host commonly holds a whole /64
/// and could otherwise take a fresh address for every connection.
fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize) -> PreAuthLimits {
        PreAuthLimits {
            max_connections: total,
            max_connections_per_source: per_source,
            ..PreAuthLimits::default()
        }
    }

    #[test]
    fn places_are_capped_in_total_and_per_source_and_freed_on_drop() {
        let unverified = Unverified::new(limits(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        let a1 = unverified.claim(a).unwrap();
        let _a2 = unverified.claim(a).unwrap();
        let err = unverified.claim(a).unwrap_err();
        assert!(err.contains("from 10.0.0.1") && err.contains("max_connections_per_source"));
        let _b1 = unverified.claim(b).unwrap();
        let err = unverified.claim(c).unwrap_err();
        assert!(err.contains("3 connections") && err.contains("pre_auth.max_connections)"));
        assert_eq!(unverified.count(), 3);
        drop(a1);
        assert_eq!(unverified.count(), 2);
        let _c1 = unverified.claim(c).unwrap();
        assert!(unverified.claim(a).is_err(), "the total is full again");
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let unverified = Unverified::new(limits(100, 1));
        let _v4 = unverified.claim("192.0.2.7".parse().unwrap()).unwrap();
        // The same IPv4 address, as a dual-stack socket reports it.
        assert!(unverified.claim("::ffff:192.0.2.7".parse().unwrap()).is_err());
        let _v6 = unverified.claim("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(unverified.claim("2001:db8:1:2:ffff::9".parse().unwrap()).is_err());
        assert!(unverified.claim("2001:db8:1:3::1".parse().unwrap()).is_ok());
    }

    #[test]
    fn limits_that_refuse_everyone_are_a_config_error() {
        assert!(PreAuthLimits::default().check("coordinator").is_ok());
        let zero = PreAuthLimits { max_connections_per_source: 0, ..PreAuthLimits::default() };
        let err = zero.check("coordinator").unwrap_err().to_string();
        assert!(err.contains("pre_auth.max_connections_per_source"), "{err}");
        let zero = PreAuthLimits { timeout: Duration::ZERO, ..PreAuthLimits::default() };
        assert!(zero.check("worker").unwrap_err().to_string().contains("pre_auth.timeout"));
    }
}
