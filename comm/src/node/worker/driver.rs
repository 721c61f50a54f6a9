//! The driver task: it owns the [`WorkerProto`], feeds it the link's frames, the
//! application's commands and timeouts, queues its frames on the coordinator connection's
//! writer (or a member's, through [`Peers`]) and hands its events to the application.

use std::time::Duration;

use quinn::Connection;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::peers::Peers;
use super::{Command, Ended, LinkMsg, Status, WorkerNodeEvent};
use crate::error::{CommError, Result};
use crate::ids::MemberId;
use crate::node::link::{self, Out};
use crate::node::{NodeError, Refusal, UNASSIGNED_SENDER};
use crate::protocol::{
    Dest, PeerMessage, ToCoordinator, ToWorker, Topology, WorkerEvent, WorkerProto, WorkerTransmit,
};
use crate::quic::{close_done, QuicError};
use crate::wire::{Carried, Frame, FrameHeader, FrameKind};

/// How long a leaving worker waits for its frames to other members to be delivered.
const LEAVE_DRAIN: Duration = Duration::from_secs(30);

/// The driver task's state.
pub(super) struct Driver {
    proto: WorkerProto,
    events: mpsc::UnboundedSender<WorkerNodeEvent>,
    status: watch::Sender<Status>,
    conn: Option<(Connection, mpsc::UnboundedSender<Out>)>,
    /// Told when the Leave frame was acknowledged.
    leave_ack: Option<oneshot::Sender<Result<(), QuicError>>>,
    /// Links to other members (all-gather).
    peers: Peers,
    /// The link, accept and peer reader tasks.
    tasks: JoinSet<()>,
}

impl Driver {
    /// A driver for `proto`, not connected yet; `tasks` holds the link and accept tasks.
    pub(super) fn new(
        proto: WorkerProto,
        events: mpsc::UnboundedSender<WorkerNodeEvent>,
        status: watch::Sender<Status>,
        peers: Peers,
        tasks: JoinSet<()>,
    ) -> Self {
        Driver { proto, events, status, conn: None, leave_ack: None, peers, tasks }
    }

    /// Runs until the worker stops, then records why in the status.
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut link_rx: mpsc::UnboundedReceiver<LinkMsg>,
    ) {
        let ended = loop {
            // Reap finished peer tasks (their results are nothing).
            while self.tasks.try_join_next().is_some() {}
            let timeout = self.proto.poll_timeout();
            let step = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.command(command).await,
                    None => Err(Ended::Other("the worker was dropped".into())),
                },
                msg = link_rx.recv() => match msg {
                    Some(msg) => self.link(msg),
                    None => Err(Ended::Other("the link task ended".into())),
                },
                _ = link::sleep_until(timeout) => {
                    self.proto.handle_timeout(link::now());
                    Ok(())
                }
            };
            if let Err(ended) = step.and_then(|()| self.flush()) {
                break ended;
            }
        };
        self.tasks.abort_all();
        self.peers.drop_links();
        if let Some((conn, _)) = self.conn.take() {
            close_done(&conn, "worker stopped");
        }
        match &ended {
            Ended::Refused(r) => {
                warn!(refusal = %r, "refused");
                let _ = self.events.send(WorkerNodeEvent::Refused(r.clone()));
            }
            Ended::Other(reason) => debug!(reason, "worker driver stops"),
            other => {
                let reason = CommError::from(other.clone()).to_string();
                warn!(reason, "worker stops");
                let _ = self.events.send(WorkerNodeEvent::Failed { reason });
            }
        }
        self.status.send_modify(|s| s.ended = Some(ended));
    }

    async fn command(&mut self, command: Command) -> Result<(), Ended> {
        let now = link::now();
        match command {
            Command::Publish { round, bytes, reply } => {
                let _ = reply.send(self.proto.publish(now, round, bytes).map_err(Into::into));
            }
            Command::ProvideState { round, bytes, reply } => {
                let _ = reply.send(self.proto.provide_state(now, round, bytes).map_err(Into::into));
            }
            Command::Leave { reply } => {
                // Frames to other members go out first, while this worker still counts as
                // a member (a payload pushed after the last round is still wanted).
                self.peers.drain(LEAVE_DRAIN).await;
                let now = link::now();
                self.proto.leave(now);
                let (ack, acked) = oneshot::channel();
                self.leave_ack = Some(ack);
                self.flush()?;
                let result = match self.conn.take() {
                    Some((conn, _writer)) => {
                        // The Leave frame is queued after every frame sent so far; wait
                        // until the coordinator acknowledged it, then close.
                        let result = tokio::time::timeout(Duration::from_secs(2), acked).await;
                        close_done(&conn, "worker left");
                        match result {
                            Ok(Ok(Ok(()))) => Ok(()),
                            Ok(Ok(Err(e))) => Err(e.into()),
                            _ => {
                                Err(NodeError::Stopped("leave was not acknowledged".into()).into())
                            }
                        }
                    }
                    None => Ok(()),
                };
                let _ = reply.send(result);
                return Err(Ended::Other("the worker left".into()));
            }
        }
        Ok(())
    }

    fn link(&mut self, msg: LinkMsg) -> Result<(), Ended> {
        let now = link::now();
        match msg {
            LinkMsg::Up { conn, writer } => {
                info!(coordinator = %conn.remote_address(), "connected");
                let shared = conn.clone();
                self.status.send_modify(|s| s.coordinator = Some(shared));
                self.conn = Some((conn, writer));
                self.proto.handle_connected(now);
            }
            LinkMsg::Frame(frame) => self.frame(frame),
            LinkMsg::Down(reason) => {
                self.conn = None;
                self.status.send_modify(|s| s.coordinator = None);
                self.proto.handle_disconnected(now);
                let _ = self.events.send(WorkerNodeEvent::Disconnected { reason });
            }
            LinkMsg::Refused(refusal) => return Err(Ended::Refused(refusal)),
            LinkMsg::GaveUp(reason) => return Err(Ended::Unreachable(reason)),
            LinkMsg::PeerIn(conn) => self.peers.accept(&mut self.tasks, conn),
            LinkMsg::PeerFrame { from, frame } => self.peer_frame(from, frame),
            LinkMsg::Unreachable { member, frames } => {
                self.peers.unreachable(member);
                for out in frames {
                    self.forward(member, out);
                }
            }
        }
        Ok(())
    }

    /// Sends `out` to member `to`: directly, or through the coordinator when `to` could not
    /// be dialed.
    fn send_peer(&mut self, to: MemberId, out: Out) {
        if let Some(out) = self.peers.send(to, out) {
            self.forward(to, out);
        }
    }

    /// Hands the coordinator `out` to pass on to member `to`.
    fn forward(&mut self, to: MemberId, mut out: Out) {
        let Some(carried) = Carried::of(out.kind) else { return };
        out.kind = FrameKind::Forward { to, carried };
        match &self.conn {
            Some((_, writer)) => {
                let _ = writer.send(out);
            }
            None => debug!(to, "not connected; frame for a member dropped"),
        }
    }

    fn peer_frame(&mut self, from: MemberId, frame: Frame) {
        let now = link::now();
        let Frame { header, body } = frame;
        match header.kind {
            FrameKind::Control => match PeerMessage::decode(&body) {
                Ok(msg) => self.proto.handle_peer(now, from, msg),
                Err(e) => warn!(from, error = %e, "undecodable control message from a member"),
            },
            FrameKind::Payload => self.proto.handle_payload(
                now,
                Dest::Member(from),
                header.round,
                header.sender,
                body.into(),
            ),
            FrameKind::State => warn!(from, "a member sent a state frame; dropped"),
            FrameKind::Segment { slot } => {
                self.proto.handle_segment(from, header.round, slot, body.into())
            }
            FrameKind::StateChunk { index } => {
                self.proto.handle_state_chunk(now, from, header.round, index, body.into())
            }
            FrameKind::Forward { .. } | FrameKind::Forwarded { .. } => {
                warn!(from, "a member sent a frame to pass on; dropped")
            }
        }
    }

    fn frame(&mut self, frame: Frame) {
        let now = link::now();
        let Frame { header, body } = frame;
        match header.kind {
            FrameKind::Control => match ToWorker::decode(&body) {
                Ok(msg) => self.proto.handle_coordinator(now, msg),
                Err(e) => warn!(error = %e, "undecodable control message from the coordinator"),
            },
            FrameKind::Payload => self.proto.handle_payload(
                now,
                Dest::Coordinator,
                header.round,
                header.sender,
                body.into(),
            ),
            FrameKind::State => self.proto.handle_state(now, header.round, body.into()),
            FrameKind::Segment { .. } => warn!("the coordinator sent a ring segment; dropped"),
            FrameKind::StateChunk { .. } => warn!("the coordinator sent a state chunk; dropped"),
            FrameKind::Forwarded { from, carried } => {
                let header = FrameHeader { kind: carried.kind(), ..header };
                self.peer_frame(from, Frame { header, body })
            }
            FrameKind::Forward { .. } => warn!("the coordinator sent a frame to pass on; dropped"),
        }
    }

    fn sender(&self) -> MemberId {
        self.proto.member().unwrap_or(UNASSIGNED_SENDER)
    }

    /// What the node does with a protocol event it passes on: a new member list re-pins the
    /// peer mesh (payloads in all-gather and ring, state chunks in every topology), a
    /// finished round is logged.
    fn observe(&mut self, event: &WorkerEvent) {
        match event {
            WorkerEvent::Members { members } => self.peers.update(self.proto.member(), members),
            WorkerEvent::RoundReady { round, stats, .. } => {
                link::log_round(*round, stats, "round ready")
            }
            WorkerEvent::AggregateReady { round, members, stats, .. } => debug!(
                round,
                members = ?members,
                duration_ms = stats.duration.map(|d| d.as_millis() as u64),
                traffic = ?link::traffic(stats),
                "ring aggregate ready"
            ),
            _ => {}
        }
    }

    /// Events to the application, then frames to the coordinator.
    fn flush(&mut self) -> Result<(), Ended> {
        while let Some(event) = self.proto.poll_event() {
            let event = match event {
                WorkerEvent::Welcomed { member, next_round, need_state } => {
                    self.status.send_modify(|s| s.member = Some(member));
                    let topology = self.proto.topology().unwrap_or(Topology::Relay);
                    let expected = self.proto.expected_members().unwrap_or(1);
                    let settings = self.proto.run_settings().map(str::to_string);
                    WorkerNodeEvent::Welcomed {
                        member,
                        next_round,
                        need_state,
                        topology,
                        expected,
                        settings,
                    }
                }
                WorkerEvent::Refused { reason } => {
                    return Err(Ended::Refused(Refusal::Protocol(reason)))
                }
                event => {
                    self.observe(&event);
                    WorkerNodeEvent::Protocol(event)
                }
            };
            if self.events.send(event).is_err() {
                return Err(Ended::Other("the worker was dropped".into()));
            }
        }
        let sender = self.sender();
        while let Some(transmit) = self.proto.poll_transmit() {
            let out = match transmit {
                WorkerTransmit::Control { msg } => match msg.encode() {
                    Ok(body) => {
                        let mut out = Out::new(FrameKind::Control, 0, sender, body.into());
                        if msg == ToCoordinator::Leave {
                            out.delivered = self.leave_ack.take();
                        }
                        out
                    }
                    Err(e) => {
                        warn!(error = %e, "cannot encode a control message");
                        continue;
                    }
                },
                WorkerTransmit::Payload { to: Dest::Coordinator, round, from_member, bytes } => {
                    Out::new(FrameKind::Payload, round, from_member, bytes)
                }
                WorkerTransmit::State { round, bytes } => {
                    Out::new(FrameKind::State, round, sender, bytes)
                }
                WorkerTransmit::Payload { to: Dest::Member(to), round, from_member, bytes } => {
                    let out = Out::new(FrameKind::Payload, round, from_member, bytes);
                    self.send_peer(to, out);
                    continue;
                }
                WorkerTransmit::Segment { to, round, slot, bytes } => {
                    let out = Out::new(FrameKind::Segment { slot }, round, sender, bytes);
                    self.send_peer(to, out);
                    continue;
                }
                WorkerTransmit::StateChunk { to, round, index, bytes } => {
                    let out = Out::new(FrameKind::StateChunk { index }, round, sender, bytes);
                    self.send_peer(to, out);
                    continue;
                }
                WorkerTransmit::Peer { to, msg } => {
                    match msg.encode() {
                        Ok(body) => {
                            let out = Out::new(FrameKind::Control, 0, sender, body.into());
                            self.send_peer(to, out);
                        }
                        Err(e) => warn!(error = %e, "cannot encode a peer message"),
                    }
                    continue;
                }
            };
            match &self.conn {
                Some((_, writer)) => {
                    let _ = writer.send(out);
                }
                None => debug!(kind = ?out.kind, "not connected; frame dropped"),
            }
        }
        Ok(())
    }
}
