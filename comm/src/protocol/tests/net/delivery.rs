//! How frames move: transmits become envelopes on the faulty links, envelopes are delivered
//! to their node, and each toy application reacts to its worker's events.

use std::cmp::Reverse;
use std::time::Duration;

use bytes::Bytes;

use super::{End, Envelope, Frame, Net, Node, Verdict};
use crate::ids::{MemberId, Round};
use crate::protocol::{
    CoordinatorEvent, CoordinatorTransmit, Dest, PeerMessage, ToCoordinator, ToWorker, WorkerEvent,
    WorkerTransmit,
};

impl Net {
    pub(super) fn schedule_publish(&mut self, i: usize, round: Round) {
        let at = self.now + self.nodes[i].app.compute;
        self.nodes[i].app.publish_at = Some((round, at));
    }

    pub(super) fn payload_bytes(&self, node: &Node, round: Round) -> Bytes {
        if self.reducer.is_some() {
            // Ring runs: 16 f32 derived from the same inputs, with fractions, so that the
            // order of summation shows in the low bits.
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(node.name.as_bytes());
            h.update(&round.to_le_bytes());
            h.update(&node.app.state.to_le_bytes());
            h.update(&node.app.incarnation.to_le_bytes());
            let mut seed = h.digest();
            let mut out = Vec::with_capacity(64);
            for _ in 0..16 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.7;
                out.extend_from_slice(&v.to_le_bytes());
            }
            return Bytes::from(out);
        }
        Bytes::from(format!(
            "{}|round {round}|state {:016x}|incarnation {}",
            node.name, node.app.state, node.app.incarnation
        ))
    }

    fn member_index(&self, member: MemberId) -> Option<usize> {
        self.nodes.iter().position(|n| n.proto.as_ref().is_some_and(|p| p.member() == Some(member)))
    }

    fn enqueue(&mut self, mut env: Envelope) {
        let verdict = match self.rule.as_mut() {
            Some(rule) => rule(&env, self.now),
            None => Verdict::Pass,
        };
        let extra = match verdict {
            Verdict::Drop => return,
            Verdict::Pass => Duration::ZERO,
            Verdict::Delay(d) => d,
            Verdict::Corrupt => {
                if let Frame::Payload { bytes, .. }
                | Frame::State { bytes, .. }
                | Frame::StateChunk { bytes, .. } = &mut env.frame
                {
                    let mut flipped = bytes.to_vec();
                    if let Some(b) = flipped.first_mut() {
                        *b ^= 1;
                    }
                    *bytes = Bytes::from(flipped);
                }
                Duration::ZERO
            }
        };
        if self.rng.chance(self.faults.drop) {
            return;
        }
        let copies = if self.rng.chance(self.faults.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter_ns = self.rng.below(self.faults.jitter.as_nanos() as u64);
            let at = self.now + self.faults.latency + extra + Duration::from_nanos(jitter_ns);
            self.seq += 1;
            self.queue.push(Reverse((at, self.seq)));
            self.in_flight.insert(self.seq, env.clone());
        }
    }

    /// Moves every pending output into the network and lets the apps react, until quiet.
    pub(super) fn drain(&mut self) {
        loop {
            let mut busy = false;
            if let Some(c) = self.coordinator.as_mut() {
                let mut events = Vec::new();
                while let Some(e) = c.poll_event() {
                    events.push(e);
                }
                let mut transmits = Vec::new();
                for e in &events {
                    if matches!(e, CoordinatorEvent::RoundCommitted { .. }) {
                        // Persist before the commit goes out, as a driver must.
                        self.persisted = Some(c.persisted());
                    }
                }
                while let Some(t) = c.poll_transmit() {
                    transmits.push(t);
                }
                busy |= !events.is_empty() || !transmits.is_empty();
                self.coordinator_events.extend(events);
                for t in transmits {
                    self.send_from_coordinator(t);
                }
            }
            for i in 0..self.nodes.len() {
                let Some(p) = self.nodes[i].proto.as_mut() else { continue };
                let mut events = Vec::new();
                while let Some(e) = p.poll_event() {
                    events.push(e);
                }
                let mut transmits = Vec::new();
                while let Some(t) = p.poll_transmit() {
                    transmits.push(t);
                }
                busy |= !events.is_empty() || !transmits.is_empty();
                for t in transmits {
                    self.send_from_worker(i, t);
                }
                for e in events {
                    self.app_event(i, e);
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn send_from_coordinator(&mut self, t: CoordinatorTransmit) {
        let (conn, frame) = match t {
            CoordinatorTransmit::Control { to, msg } => {
                (to, Frame::Control(msg.encode().expect("encode")))
            }
            CoordinatorTransmit::Payload { to, round, from_member, bytes } => {
                (to, Frame::Payload { round, sender: from_member, bytes })
            }
            CoordinatorTransmit::State { to, round, bytes } => (to, Frame::State { round, bytes }),
            // Only the QUIC driver forwards frames between members (it alone sees a dial
            // fail); this network delivers every worker's frames directly.
            CoordinatorTransmit::Forwarded { .. } => return,
        };
        let Some(i) = self.nodes.iter().position(|n| n.conn == conn && n.proto.is_some()) else {
            return;
        };
        let env = Envelope {
            from: End::Coordinator,
            to: End::Worker(i),
            conn: Some(conn),
            from_member: None,
            epoch: self.epoch,
            frame,
        };
        self.enqueue(env);
    }

    fn send_from_worker(&mut self, i: usize, t: WorkerTransmit) {
        let me = self.nodes[i].proto.as_ref().and_then(|p| p.member());
        let conn = Some(self.nodes[i].conn);
        let (to, frame) = match t {
            WorkerTransmit::Control { msg } => {
                (Dest::Coordinator, Frame::Control(msg.encode().expect("encode")))
            }
            WorkerTransmit::Peer { to, msg } => {
                (Dest::Member(to), Frame::Control(msg.encode().expect("encode")))
            }
            WorkerTransmit::Payload { to, round, from_member, bytes } => {
                (to, Frame::Payload { round, sender: from_member, bytes })
            }
            WorkerTransmit::State { round, bytes } => {
                (Dest::Coordinator, Frame::State { round, bytes })
            }
            WorkerTransmit::Segment { to, round, slot, bytes } => {
                (Dest::Member(to), Frame::Segment { round, slot, bytes })
            }
            WorkerTransmit::StateChunk { to, round, index, bytes } => {
                (Dest::Member(to), Frame::StateChunk { round, index, bytes })
            }
        };
        let to = match to {
            Dest::Coordinator => End::Coordinator,
            Dest::Member(m) => match self.member_index(m) {
                Some(j) => End::Worker(j),
                None => return,
            },
        };
        let env =
            Envelope { from: End::Worker(i), to, conn, from_member: me, epoch: self.epoch, frame };
        self.enqueue(env);
    }

    fn app_event(&mut self, i: usize, e: WorkerEvent) {
        let now = self.now;
        self.nodes[i].app.events.push(e.clone());
        match e {
            WorkerEvent::Welcomed { need_state: false, .. } => {
                let app = &self.nodes[i].app;
                if app.publish_at.is_none() {
                    let round = crate::protocol::types::next_after(app.applied);
                    self.schedule_publish(i, round);
                }
            }
            WorkerEvent::RoundReady { round, payloads, .. } => {
                let app = &mut self.nodes[i].app;
                assert_eq!(
                    round,
                    crate::protocol::types::next_after(app.applied),
                    "{}: RoundReady out of order",
                    self.nodes[i].name
                );
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&app.state.to_le_bytes());
                h.update(&round.to_le_bytes());
                for (m, b) in &payloads {
                    h.update(&m.to_le_bytes());
                    h.update(&(b.len() as u64).to_le_bytes());
                    h.update(b);
                }
                app.state = h.digest();
                app.applied = Some(round);
                app.states.insert(round, app.state);
                app.ready.insert(round, payloads);
                self.schedule_publish(i, round + 1);
            }
            WorkerEvent::AggregateReady { round, members, aggregate, .. } => {
                let app = &mut self.nodes[i].app;
                assert_eq!(round, crate::protocol::types::next_after(app.applied));
                let mut h = xxhash_rust::xxh3::Xxh3::new();
                h.update(&app.state.to_le_bytes());
                h.update(&round.to_le_bytes());
                for m in &members {
                    h.update(&m.to_le_bytes());
                }
                h.update(&aggregate);
                app.state = h.digest();
                app.applied = Some(round);
                app.states.insert(round, app.state);
                app.aggregates.insert(round, (members, aggregate));
                self.schedule_publish(i, round + 1);
            }
            WorkerEvent::SnapshotRequested { round } => {
                let app = &mut self.nodes[i].app;
                assert_eq!(Some(round), app.applied, "snapshot of the round just applied");
                app.snapshots_served += 1;
                let bytes = super::snapshot_bytes(round, app.state, i, self.state_layout);
                let proto = self.nodes[i].proto.as_mut().expect("alive");
                proto.provide_state(now, round, bytes).expect("provide state");
            }
            WorkerEvent::StateReceived { round, bytes } => {
                let workers = self.nodes.len();
                let (r, state, donor) = super::read_snapshot(&bytes, self.state_layout, workers);
                assert_eq!(r, round);
                let app = &mut self.nodes[i].app;
                app.state = state;
                app.state_donor = donor;
                app.applied = Some(round);
                app.states.insert(round, app.state);
                app.states_received += 1;
                self.schedule_publish(i, round + 1);
            }
            _ => {}
        }
    }

    pub(super) fn deliver(&mut self, env: Envelope) {
        let now = self.now;
        match env.to {
            End::Coordinator => {
                if env.epoch != self.epoch {
                    return;
                }
                let Some(c) = self.coordinator.as_mut() else { return };
                let End::Worker(i) = env.from else { return };
                let conn = env.conn.expect("conn");
                if self.nodes[i].conn != conn || self.nodes[i].proto.is_none() {
                    return; // that connection is closed
                }
                match env.frame {
                    Frame::Control(b) => match ToCoordinator::decode(&b) {
                        Ok(msg) => c.handle_message(now, conn, msg),
                        Err(e) => panic!("undecodable: {e}"),
                    },
                    Frame::Payload { round, sender, bytes } => {
                        c.handle_payload(now, conn, round, sender, bytes)
                    }
                    Frame::State { round, bytes } => c.handle_state(now, conn, round, bytes),
                    Frame::Segment { .. } | Frame::StateChunk { .. } => {}
                }
            }
            End::Worker(j) => {
                let node = &mut self.nodes[j];
                let Some(p) = node.proto.as_mut() else { return };
                match env.from {
                    End::Coordinator => {
                        if env.epoch != self.epoch || env.conn != Some(node.conn) {
                            return;
                        }
                        match env.frame {
                            Frame::Control(b) => {
                                p.handle_coordinator(now, ToWorker::decode(&b).expect("decode"))
                            }
                            Frame::Payload { round, sender, bytes } => {
                                p.handle_payload(now, Dest::Coordinator, round, sender, bytes)
                            }
                            Frame::State { round, bytes } => p.handle_state(now, round, bytes),
                            Frame::Segment { .. } | Frame::StateChunk { .. } => {}
                        }
                    }
                    End::Worker(_) => {
                        let Some(from) = env.from_member else { return };
                        match env.frame {
                            Frame::Control(b) => {
                                p.handle_peer(now, from, PeerMessage::decode(&b).expect("decode"))
                            }
                            Frame::Payload { round, sender, bytes } => {
                                p.handle_payload(now, Dest::Member(from), round, sender, bytes)
                            }
                            Frame::State { .. } => {}
                            Frame::Segment { round, slot, bytes } => {
                                p.handle_segment(from, round, slot, bytes)
                            }
                            Frame::StateChunk { round, index, bytes } => {
                                p.handle_state_chunk(now, from, round, index, bytes)
                            }
                        }
                    }
                }
            }
        }
    }
}
