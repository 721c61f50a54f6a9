//! The coordinator passing frames between members that cannot reach each other: to the
//! named member's connection, naming the sender; refused from a stranger, for a member that
//! is not connected or is the sender itself, and over the size limit.

use std::time::Instant;

use bytes::Bytes;

use super::coordinator_config;
use crate::protocol::{
    ConnId, Coordinator, CoordinatorEvent, CoordinatorTransmit, RejectReason, ToCoordinator,
    Topology,
};
use crate::wire::Carried;

#[test]
fn the_coordinator_passes_a_frame_to_the_named_member_and_refuses_the_rest() {
    let now = Instant::now();
    let mut c = Coordinator::new(coordinator_config(Topology::AllGather, 3), now).expect("config");
    for (conn, name) in [(10, "a"), (11, "b")] {
        c.handle_message(now, ConnId(conn), ToCoordinator::bare_join(name, None));
    }
    while c.poll_transmit().is_some() {}
    while c.poll_event().is_some() {}
    let body = Bytes::from_static(b"segment for b");
    let carried = Carried::Segment { slot: 3 };
    c.handle_forward(now, ConnId(10), 1, carried, 4, 0, body.clone());
    assert_eq!(
        c.poll_transmit(),
        Some(CoordinatorTransmit::Forwarded {
            to: ConnId(11),
            from: 0,
            carried,
            round: 4,
            sender: 0,
            bytes: body.clone(),
        })
    );

    c.handle_forward(now, ConnId(99), 1, carried, 4, 0, body.clone()); // a stranger
    c.handle_forward(now, ConnId(10), 7, carried, 4, 0, body.clone()); // nobody
    c.handle_forward(now, ConnId(10), 0, carried, 4, 0, body.clone()); // itself
    c.handle_forward(now, ConnId(10), 1, carried, 4, 0, Bytes::from(vec![0; (1 << 16) + 1]));
    assert_eq!(c.poll_transmit(), None, "nothing passed on");
    let rejected: Vec<RejectReason> = std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            CoordinatorEvent::Rejected { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    use RejectReason::*;
    assert_eq!(rejected, [NotJoined, NotMember, NotMember, Oversized]);
}
