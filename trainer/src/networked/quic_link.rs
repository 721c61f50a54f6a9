//! The comm crate's worker node as a [`RoundLink`]: how `meridian worker` reaches the
//! network, counting the bytes it moves per round and peer.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_comm::node::{
    peer_label, round_buckets, snake_case, PeerLabel, ReasonLabel, WorkerHandle, WorkerNodeEvent,
};
use meridian_comm::protocol::{Dest, RoundStats, WorkerEvent};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use serde::Serialize;

use super::drive::{NetEvent, RoundLink};
use super::node_link::{net_event, published};

/// The comm node seen as a [`RoundLink`], with the bytes it moved.
pub struct HandleLink {
    pub(crate) handle: WorkerHandle,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    /// Time spent waiting for the network, shared with the per-round accounting.
    pub(crate) waiting: Rc<Cell<Duration>>,
    /// The run is a ring: bytes are counted from the protocol's per-link counters (a
    /// payload is never sent whole).
    pub(crate) ring: bool,
    /// Per applied round: bytes per peer, as the protocol counted them.
    pub(crate) links: Rc<RefCell<BTreeMap<u64, Vec<LinkRecord>>>>,
    /// The round-trip estimate to the coordinator at the last commit.
    pub(crate) rtt: Rc<Cell<Option<Duration>>>,
    /// Asked a few times a second while waiting: an error ends the wait (a Python
    /// program's Ctrl-C). `None`: wait as long as it takes.
    pub(crate) interrupt: Option<Box<dyn FnMut() -> Result<()>>>,
    /// Live metrics of what the network did (rejected input, stragglers, round latency),
    /// where the worker serves them.
    pub(crate) counters: Option<NetCounters>,
}

/// What a worker's live metrics count as the network's events arrive, between the rounds
/// it applies: input it rejected, by reason; members that missed a round's deadline; and
/// each round's latency from its opening to its commit. Cheap to clone (shared counters).
#[derive(Debug, Clone)]
pub struct NetCounters {
    /// Input rejected, by reason.
    pub rejections: Family<ReasonLabel, Counter>,
    /// Rounds each member missed.
    pub stragglers: Family<PeerLabel, Counter>,
    /// Round opening (as received) to commit.
    pub round_seconds: Histogram,
}

impl Default for NetCounters {
    fn default() -> Self {
        NetCounters {
            rejections: Family::default(),
            stragglers: Family::default(),
            round_seconds: Histogram::new(round_buckets()),
        }
    }
}

impl NetCounters {
    /// Counts what `event` says, if anything.
    pub(crate) fn observe(&self, event: &WorkerNodeEvent) {
        match event {
            WorkerNodeEvent::Protocol(WorkerEvent::Rejected { reason, .. }) => {
                let reason = snake_case(&format!("{reason:?}"));
                self.rejections.get_or_create(&ReasonLabel { reason }).inc();
            }
            WorkerNodeEvent::Protocol(
                WorkerEvent::RoundReady { stats, .. } | WorkerEvent::AggregateReady { stats, .. },
            ) => self.committed(stats),
            _ => {}
        }
    }

    /// Counts a committed round's stragglers and latency.
    pub fn committed(&self, stats: &RoundStats) {
        for &m in &stats.stragglers {
            self.stragglers.get_or_create(&PeerLabel { peer: peer_label(Dest::Member(m)) }).inc();
        }
        if let Some(d) = stats.duration {
            self.round_seconds.observe(d.as_secs_f64());
        }
    }
}

/// How often a wait asks [`HandleLink::interrupt`].
const INTERRUPT_POLL: Duration = Duration::from_millis(100);

impl HandleLink {
    /// Records a round's per-link bytes (and, in a ring, counts them).
    fn count(&mut self, round: u64, stats: &RoundStats) {
        let links: Vec<LinkRecord> = stats
            .traffic
            .iter()
            .map(|t| LinkRecord { peer: peer_label(t.peer), sent: t.sent, received: t.received })
            .collect();
        if self.ring {
            self.sent += links.iter().map(|l| l.sent).sum::<u64>();
            self.received += links.iter().map(|l| l.received).sum::<u64>();
        }
        self.links.borrow_mut().insert(round, links);
    }

    fn map(&mut self, event: WorkerNodeEvent) -> Result<Option<NetEvent>> {
        if matches!(
            event,
            WorkerNodeEvent::Protocol(
                WorkerEvent::RoundReady { .. } | WorkerEvent::AggregateReady { .. }
            )
        ) {
            self.rtt.set(self.handle.coordinator_rtt());
        }
        if let Some(counters) = &self.counters {
            counters.observe(&event);
        }
        let Some(mapped) = net_event(event, self.handle.member())? else { return Ok(None) };
        if let Some((round, stats)) = &mapped.stats {
            self.count(*round, stats);
        }
        if !self.ring {
            self.received += mapped.received;
        }
        Ok(Some(mapped.event))
    }
}

impl RoundLink for HandleLink {
    fn publish(&mut self, round: u64, payload: Vec<u8>) -> Result<()> {
        let len = payload.len() as u64;
        if published(round, self.handle.publish(round, payload))? && !self.ring {
            self.sent += len;
        }
        Ok(())
    }

    fn next_event(&mut self) -> Result<NetEvent> {
        let start = Instant::now();
        loop {
            let event = match &mut self.interrupt {
                None => self.handle.next_event(None)?,
                Some(interrupt) => match self.handle.next_event(Some(INTERRUPT_POLL))? {
                    Some(event) => Some(event),
                    None => {
                        if let Err(e) = interrupt() {
                            self.waiting.set(self.waiting.get() + start.elapsed());
                            return Err(e);
                        }
                        continue;
                    }
                },
            };
            let event = event.context("the network closed")?;
            if let Some(e) = self.map(event)? {
                self.waiting.set(self.waiting.get() + start.elapsed());
                return Ok(e);
            }
        }
    }

    fn poll_event(&mut self) -> Result<Option<NetEvent>> {
        while let Some(event) = self.handle.next_event(Some(Duration::ZERO))? {
            if let Some(e) = self.map(event)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    fn provide_state(&mut self, round: u64, state: Vec<u8>) -> Result<()> {
        Ok(self.handle.provide_state(round, state)?)
    }
}

/// Bytes moved with one peer in one round, as the protocol counted them (payload and
/// segment bodies, before compression and framing).
#[derive(Debug, Clone, Serialize)]
pub struct LinkRecord {
    /// `coordinator` or `member N`.
    pub peer: String,
    /// Bytes sent to the peer.
    pub sent: u64,
    /// Bytes received from it.
    pub received: u64,
}
