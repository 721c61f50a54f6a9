//! Catch-up from several members at once: a newcomer takes one consistent state in chunks
//! from every donor, survives a donor that dies mid-transfer or sends a wrong chunk, and
//! takes the state relayed when it cannot reach the members.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use super::net::{End, Frame, Net, Verdict};
use super::{coordinator_config, worker_config, BOTH};
use crate::protocol::{CoordinatorEvent, RejectReason, Topology, WorkerConfig};

/// 3 × 4 KiB of replicated state, then 2 × 4 KiB + 100 bytes of per-member state: six
/// chunks of 4 KiB, two of them per-member and one mixed.
const LAYOUT: (usize, usize) = (3 * 4096 - 16, 2 * 4096 + 100);

fn chunked_worker() -> WorkerConfig {
    WorkerConfig { state_chunk: 4096, ..worker_config() }
}

/// Four workers on `topology` with [`LAYOUT`] states; the first three run a few rounds.
fn three_running(topology: Topology, seed: u64) -> Net {
    let mut net = Net::new(coordinator_config(topology, 3), chunked_worker(), 4, seed);
    net.state_layout = LAYOUT;
    for i in 0..3 {
        net.connect(i);
    }
    assert!(net
        .run_until(Duration::from_secs(10), |n| (0..3).all(|i| n.nodes[i].app.applied >= Some(2))));
    net
}

/// Counts the state chunks each worker sent to worker 3 (into `counts`), passing them on
/// after `delay`.
fn count_chunks(net: &mut Net, delay: Duration) -> Rc<RefCell<BTreeMap<usize, usize>>> {
    let counts = Rc::new(RefCell::new(BTreeMap::new()));
    let seen = counts.clone();
    net.rule = Some(Box::new(move |env, _| match (&env.frame, env.from, env.to) {
        (Frame::StateChunk { .. }, End::Worker(from), End::Worker(3)) => {
            *seen.borrow_mut().entry(from).or_insert(0) += 1;
            Verdict::Delay(delay)
        }
        _ => Verdict::Pass,
    }));
    counts
}

fn offered(net: &Net) -> usize {
    net.coordinator_events
        .iter()
        .filter(|e| matches!(e, CoordinatorEvent::StateOffered { .. }))
        .count()
}

fn relayed(net: &Net) -> usize {
    net.coordinator_events
        .iter()
        .filter(|e| matches!(e, CoordinatorEvent::StateRelayed { .. }))
        .count()
}

#[test]
fn a_newcomer_takes_one_consistent_state_in_chunks_from_every_donor() {
    for topology in BOTH {
        let mut net = three_running(topology, 1);
        let counts = count_chunks(&mut net, Duration::ZERO);
        net.connect(3);
        assert!(net.run_until(Duration::from_secs(20), |n| n.nodes[3].app.states_received > 0));
        assert!(net.run_until(Duration::from_secs(20), |n| n.all_applied(8)), "{topology:?}");
        net.check_consistency();
        assert_eq!((offered(&net), relayed(&net)), (1, 0), "{topology:?}: taken directly");
        let counts = counts.borrow();
        assert!(counts.len() >= 2, "{topology:?}: chunks from several donors: {counts:?}");
        // Six chunks, fetched once each: three of them only the reference serves.
        assert_eq!(counts.values().sum::<usize>(), 6, "{topology:?}: {counts:?}");
        let donor = net.nodes[3].app.state_donor.expect("a per-member part");
        assert!(counts[&donor] >= 3, "{topology:?}: the reference sent its own chunks");
    }
}

/// The reference donor crashes while its chunks are on their way: the newcomer picks
/// another donor's state, keeps the replicated chunks it has, and completes.
#[test]
fn a_donor_that_dies_mid_transfer_is_replaced() {
    for topology in BOTH {
        let mut net = three_running(topology, 2);
        let counts = count_chunks(&mut net, Duration::from_millis(300));
        net.connect(3);
        assert!(net.run_until(Duration::from_secs(10), |_| !counts.borrow().is_empty()));
        // The first donor asked whose chunk reached the wire: crash the donor serving most.
        let victim =
            *counts.borrow().iter().max_by_key(|(_, &n)| n).map(|(i, _)| i).expect("a donor");
        assert_eq!(net.nodes[3].app.states_received, 0, "mid-transfer");
        net.crash_worker(victim);
        assert!(
            net.run_until(Duration::from_secs(30), |n| n.nodes[3].app.states_received > 0),
            "{topology:?}: state after a donor died"
        );
        assert_ne!(net.nodes[3].app.state_donor, Some(victim), "{topology:?}");
        net.restart_worker(victim, true);
        assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(10)), "{topology:?}");
        net.check_consistency();
    }
}

/// A newcomer no member can exchange frames with gets no chunk, and asks for the state
/// relayed by the coordinator.
#[test]
fn a_newcomer_that_cannot_reach_the_members_takes_the_state_relayed() {
    let mut net = three_running(Topology::Relay, 3);
    net.rule = Some(Box::new(|env, _| match (env.from, env.to) {
        (End::Worker(a), End::Worker(b)) if a == 3 || b == 3 => Verdict::Drop,
        _ => Verdict::Pass,
    }));
    net.connect(3);
    assert!(net.run_until(Duration::from_secs(30), |n| n.nodes[3].app.states_received > 0));
    assert_eq!(relayed(&net), 1, "relayed after the direct offer failed");
    assert!(offered(&net) >= 1);
    assert!(net.run_until(Duration::from_secs(20), |n| n.all_applied(12)));
    net.check_consistency();
}

/// A donor whose chunks do not match its digests is dropped (its chunks rejected), and the
/// state comes from the others.
#[test]
fn a_wrong_chunk_drops_its_donor() {
    let mut net = three_running(Topology::Relay, 4);
    net.rule = Some(Box::new(|env, _| match (&env.frame, env.from, env.to) {
        (Frame::StateChunk { .. }, End::Worker(0), End::Worker(3)) => Verdict::Corrupt,
        _ => Verdict::Pass,
    }));
    net.connect(3);
    assert!(net.run_until(Duration::from_secs(30), |n| n.nodes[3].app.states_received > 0));
    assert!(net.worker_rejections(3).contains(&RejectReason::DigestMismatch));
    assert_ne!(net.nodes[3].app.state_donor, Some(0));
    assert!(net.run_until(Duration::from_secs(20), |n| n.all_applied(8)));
    net.check_consistency();
}

/// A state larger than the largest frame (`max_whole_state`) cannot be relayed whole, and
/// need not be: it travels in chunks.
#[test]
fn a_state_larger_than_a_frame_travels_in_chunks() {
    let workers = WorkerConfig { max_whole_state: 4096, ..chunked_worker() };
    let mut net = Net::new(coordinator_config(Topology::Relay, 3), workers, 4, 5);
    net.state_layout = LAYOUT;
    for i in 0..3 {
        net.connect(i);
    }
    assert!(net
        .run_until(Duration::from_secs(10), |n| (0..3).all(|i| n.nodes[i].app.applied >= Some(2))));
    net.connect(3);
    assert!(net.run_until(Duration::from_secs(20), |n| n.nodes[3].app.states_received > 0));
    assert_eq!((offered(&net), relayed(&net)), (1, 0));
    assert!(net.run_until(Duration::from_secs(20), |n| n.all_applied(8)));
    net.check_consistency();
}
