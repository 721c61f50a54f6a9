//! Passing frames between members that cannot reach each other directly (a firewall, NAT):
//! the sender hands the coordinator a frame for one member, and the coordinator passes it
//! on over that member's connection, naming the sender. Per pair and per frame: members
//! that reach each other keep their direct links, and the coordinator stores nothing.

use std::time::Instant;

use bytes::Bytes;
use tracing::debug;

use super::{Coordinator, Transmit};
use crate::ids::{MemberId, Round};
use crate::protocol::types::{ConnId, Dest, RejectReason};
use crate::wire::Carried;

impl Coordinator {
    /// Member-to-member frame from `conn` for member `to`: passed on to `to`'s connection.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_forward(
        &mut self,
        now: Instant,
        conn: ConnId,
        to: MemberId,
        carried: Carried,
        round: Round,
        sender: MemberId,
        bytes: Bytes,
    ) {
        let _ = now;
        let Some(&from) = self.conns.get(&conn) else {
            return self.reject(conn, Some(round), RejectReason::NotJoined);
        };
        if bytes.len() > self.config.max_payload {
            return self.reject(conn, Some(round), RejectReason::Oversized);
        }
        let Some(target) = self.members.get(&to).and_then(|m| m.conn).filter(|_| to != from) else {
            // Gone since (it catches up when it returns), or not a member: dropped.
            return self.reject(conn, Some(round), RejectReason::NotMember);
        };
        debug!(from, to, round, ?carried, len = bytes.len(), "frame passed on between members");
        self.traffic.received(Dest::Member(from), bytes.len());
        self.traffic.sent(Dest::Member(to), bytes.len());
        self.transmits.push_back(Transmit::Forwarded {
            to: target,
            from,
            carried,
            round,
            sender,
            bytes,
        });
    }
}
