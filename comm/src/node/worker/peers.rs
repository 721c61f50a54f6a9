//! The peer mesh (all-gather and ring payloads, state chunks): how this worker reaches the other members and
//! reads what they send it.
//!
//! The worker's endpoint accepts connections from the members the coordinator announced
//! (their fingerprints pinned in a [`PinSet`]), one reader task per accepted connection; to
//! send to a member the driver dials it (pinning its fingerprint) and keeps that connection,
//! with its writer task, for later frames. Each direction of a pair of members thus has its
//! own connection: frames are read on accepted connections and written on dialed ones.
//!
//! How a member is reached travels as its [`PeerInfo`](crate::protocol::PeerInfo): the
//! postcard encoding of a [`PeerAddr`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::LinkMsg;
use crate::ids::{CertFingerprint, MemberId};
use crate::node::guard::{RefusalLog, Unverified};
use crate::node::link::{self, Out, Read};
use crate::protocol::MemberInfo;
use crate::quic::{self, close_refused, peer_fingerprint, PinSet, QuicEndpoint, RefusalCode};
use crate::wire::FrameCodec;

/// How long frames for a member that could not be dialed go through the coordinator before
/// a dial is tried again.
pub(super) const VIA_COORDINATOR_FOR: Duration = Duration::from_secs(300);

/// What a worker's [`PeerInfo`](crate::protocol::PeerInfo) holds: how other members reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PeerAddr {
    /// Where the member listens.
    pub(super) addr: SocketAddr,
    /// Its certificate's fingerprint, pinned when dialing it.
    pub(super) fingerprint: CertFingerprint,
}

/// The links to other members (all-gather).
pub(super) struct Peers {
    endpoint: Arc<QuicEndpoint>,
    codec: FrameCodec,
    /// The members' fingerprints: whom this worker's endpoint accepts.
    pins: PinSet,
    link_tx: mpsc::UnboundedSender<LinkMsg>,
    connect_timeout: Duration,
    /// How to reach each other member, as last announced.
    known: BTreeMap<MemberId, PeerAddr>,
    /// Dialed links, by member: frames queue here until the dial completes.
    out: HashMap<MemberId, mpsc::UnboundedSender<Out>>,
    /// Members this worker could not dial, with when to try again: until then their frames
    /// go through the coordinator.
    via_coordinator: HashMap<MemberId, std::time::Instant>,
    /// The dialed links' tasks (dial, then write the queue): a leaving worker waits for
    /// them to deliver what is queued ([`Peers::drain`]).
    dialed: JoinSet<()>,
}

impl Peers {
    /// No members known yet; `link_tx` is where readers of accepted links send frames.
    pub(super) fn new(
        endpoint: Arc<QuicEndpoint>,
        codec: FrameCodec,
        pins: PinSet,
        link_tx: mpsc::UnboundedSender<LinkMsg>,
        connect_timeout: Duration,
    ) -> Self {
        Peers {
            endpoint,
            codec,
            pins,
            link_tx,
            connect_timeout,
            known: BTreeMap::new(),
            out: HashMap::new(),
            via_coordinator: HashMap::new(),
            dialed: JoinSet::new(),
        }
    }

    /// The members changed: pin the new ones, forget the departed and the changed ones.
    pub(super) fn update(&mut self, me: Option<MemberId>, members: &[MemberInfo]) {
        let mut known = BTreeMap::new();
        for member in members.iter().filter(|m| Some(m.id) != me) {
            match postcard::from_bytes::<PeerAddr>(&member.peer.0) {
                Ok(addr) => {
                    known.insert(member.id, addr);
                }
                Err(e) => {
                    warn!(member = member.id, error = %e, "unusable peer info; member unreachable")
                }
            }
        }
        for (id, old) in &self.known {
            if known.get(id) != Some(old) {
                self.pins.remove(&old.fingerprint);
                self.out.remove(id);
            }
        }
        for addr in known.values() {
            self.pins.insert(addr.fingerprint);
        }
        self.known = known;
    }

    /// Queues `out` for member `to`, dialing it first if there is no link. Returns it when
    /// it must go through the coordinator instead: `to` could not be dialed lately, or has
    /// no known address.
    pub(super) fn send(&mut self, to: MemberId, out: Out) -> Option<Out> {
        while self.dialed.try_join_next().is_some() {}
        if self.via_coordinator.get(&to).is_some_and(|&until| link::now() < until) {
            return Some(out);
        }
        let out = match self.out.get(&to) {
            Some(queue) => match queue.send(out) {
                Ok(()) => return None,
                // The link failed; dial again.
                Err(mpsc::error::SendError(out)) => out,
            },
            None => out,
        };
        let Some(&peer) = self.known.get(&to) else {
            debug!(to, kind = ?out.kind, "no address for the member; through the coordinator");
            return Some(out);
        };
        let (queue, mut frames) = mpsc::unbounded_channel();
        let _ = queue.send(out);
        self.out.insert(to, queue);
        let (endpoint, codec, timeout) =
            (self.endpoint.clone(), self.codec.clone(), self.connect_timeout);
        let link_tx = self.link_tx.clone();
        self.dialed.spawn(async move {
            let reason =
                match tokio::time::timeout(timeout, endpoint.connect(peer.addr, peer.fingerprint))
                    .await
                {
                    Ok(Ok(conn)) => {
                        debug!(to, peer = %peer.addr, "connected to a member");
                        let _ = link::spawn_writer(conn, codec, frames).await;
                        return;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no handshake in time".to_string(),
                };
            warn!(to, reason, "cannot reach a member; its frames go through the coordinator");
            frames.close();
            let mut queued = Vec::new();
            while let Ok(out) = frames.try_recv() {
                queued.push(out);
            }
            let _ = link_tx.send(LinkMsg::Unreachable { member: to, frames: queued });
        });
        None
    }

    /// `member` could not be dialed: its frames go through the coordinator for a while
    /// ([`VIA_COORDINATOR_FOR`]), then a dial is tried again.
    pub(super) fn unreachable(&mut self, member: MemberId) {
        self.out.remove(&member);
        self.via_coordinator.insert(member, link::now() + VIA_COORDINATOR_FOR);
    }

    /// A member connected: read its frames on a task of `tasks`, if it is one.
    pub(super) fn accept(&self, tasks: &mut JoinSet<()>, conn: Connection) {
        let fingerprint = peer_fingerprint(&conn);
        let from = self
            .known
            .iter()
            .find(|(_, p)| Some(p.fingerprint) == fingerprint)
            .map(|(&member, _)| member);
        let Some(from) = from else {
            // Pinned when the handshake began, gone from the members since.
            return close_refused(&conn, RefusalCode::UnknownPeer, "not a member of the run");
        };
        debug!(from, peer = %conn.remote_address(), "member connected");
        let (codec, tx) = (self.codec.clone(), self.link_tx.clone());
        tasks.spawn(async move {
            loop {
                match link::read_frame(&conn, &codec).await {
                    Read::Frame(frame) => {
                        if tx.send(LinkMsg::PeerFrame { from, frame }).is_err() {
                            return;
                        }
                    }
                    Read::Bad(error, _) => warn!(from, error, "rejected a frame from a member"),
                    Read::Lost(e) => return debug!(from, error = %e, "member link closed"),
                }
            }
        });
    }

    /// Drops every dialed link's queue (the worker stops). Their tasks end once what was
    /// queued is delivered ([`Peers::drain`] waits for that); dropping `Peers` aborts them.
    pub(super) fn drop_links(&mut self) {
        self.out.clear();
    }

    /// Closes every dialed link's queue and waits, up to `limit`, until each has delivered
    /// what it held: a worker that leaves right after its last round still hands its
    /// payload to the members that have not received it yet (all-gather), instead of
    /// closing the connections under it.
    pub(super) async fn drain(&mut self, limit: Duration) {
        self.drop_links();
        let dialed = &mut self.dialed;
        let all = async { while dialed.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            warn!(
                links = self.dialed.len(),
                "leaving with frames to other members still undelivered"
            );
            self.dialed.abort_all();
        }
    }
}

/// Hands every connection from a member (its handshake passed the pins) to the driver.
///
/// Until its handshake completes a connection is unverified: attempts over the caps of
/// `unverified` are refused before their handshake, and a handshake not complete by the
/// deadline (from the first packet) is abandoned. After it, the peer is a member: no stream
/// data is read before the handshake checked its certificate against the pins.
pub(super) async fn accept_peers(
    endpoint: Arc<QuicEndpoint>,
    unverified: Unverified,
    tx: mpsc::UnboundedSender<LinkMsg>,
) {
    let timeout = unverified.limits().timeout;
    let mut refusals = RefusalLog::default();
    while let Some(incoming) = endpoint.incoming().await {
        let peer = incoming.remote_address();
        let slot = match unverified.claim(peer.ip()) {
            Ok(slot) => slot,
            Err(detail) => {
                incoming.refuse();
                refusals.refused("peer listener", peer, &detail);
                continue;
            }
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, quic::handshake(incoming)).await {
                Ok(Ok(conn)) => {
                    drop(slot);
                    let _ = tx.send(LinkMsg::PeerIn(conn));
                }
                Ok(Err(_)) => {} // logged by the handshake
                // Dropping the handshake abandons the connection.
                Err(_) => info!(%peer, ?timeout, "a peer's handshake did not complete in time"),
            }
        });
    }
}
