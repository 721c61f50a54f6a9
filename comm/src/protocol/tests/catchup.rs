//! Catching up after restarts of the coordinator and of payload authors: a member whose
//! committed payloads nobody holds any more asks for state at once, and the member asked to
//! provide a state is one that applied the latest round.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::net::{End, Frame, Net, Verdict};
use super::{coordinator_config, worker_config};
use crate::ids::{MemberId, Round};
use crate::protocol::{
    CommitRecord, ConnId, Coordinator, CoordinatorEvent, CoordinatorState, CoordinatorTransmit,
    DeadlineStats, Delivery, Digest, RejectReason, ToCoordinator, ToWorker, Topology, WorkerEvent,
};

/// The fetch timeout of `meridian worker`: a member that waited out even one of these
/// before asking for state could find the run over and nobody left to provide one.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The soak's case: the far member had not received round 2's payloads when the coordinator
/// died; the coordinator came back without them, and two of their authors restarted too
/// (from their checkpoints at round 2, without their payloads). The far member must ask for
/// state as soon as the authors said so, not after its fetch timeouts, while the others can
/// still provide one.
#[test]
fn a_member_whose_committed_payloads_nobody_holds_asks_for_state_at_once() {
    let mut workers = worker_config();
    workers.fetch_timeout = FETCH_TIMEOUT;
    let mut net = Net::new(coordinator_config(Topology::Relay, 4), workers, 4, 3);
    // The far member's copies of round 2's payloads are slow: the coordinator dies before
    // they arrive, and they die with it.
    net.rule = Some(Box::new(|env, _| match (&env.frame, env.from, env.to) {
        (Frame::Payload { round: 2, .. }, End::Coordinator, End::Worker(2)) => {
            Verdict::Delay(Duration::from_millis(500))
        }
        _ => Verdict::Pass,
    }));
    net.connect_all();
    let others_applied_2 = |n: &Net| [0, 1, 3].iter().all(|&i| n.nodes[i].app.applied == Some(2));
    assert!(net.run_until(Duration::from_secs(10), others_applied_2));
    assert_eq!(net.nodes[2].app.applied, Some(1), "the far member still waits for round 2");
    net.crash_coordinator();
    for author in [0, 1] {
        net.crash_worker(author);
    }
    net.run_for(Duration::from_millis(200));
    for author in [0, 1] {
        net.restart_worker(author, true);
    }
    net.restart_coordinator();
    let restarted = net.now;

    let caught_up = |n: &Net| n.nodes[2].app.states_received > 0;
    assert!(
        net.run_until(FETCH_TIMEOUT, caught_up),
        "the far member was still fetching payloads nobody holds after {FETCH_TIMEOUT:?}"
    );
    // Virtual time: a few round trips and the fetch grace, far from one fetch timeout.
    assert!(net.now - restarted < FETCH_TIMEOUT / 2, "{:?}", net.now - restarted);
    let fell_behind =
        net.nodes[2].app.events.iter().any(|e| matches!(e, WorkerEvent::FellBehind { round: 2 }));
    assert!(fell_behind, "it gave up on replaying round 2");
    // The state came from a member that applied round 2, and the run goes on with all four.
    assert!(net.run_until(Duration::from_secs(30), |n| n.all_applied(6)));
    net.check_consistency();
    assert_eq!(net.commits()[&6], vec![0, 1, 2, 3]);
}

/// A coordinator restored after committing `committed`, with `members` (ids in order) and
/// rounds that open with `min_members` live, taking states from `donors` members at once.
fn restored(members: &[&str], committed: Round, min_members: usize, donors: usize) -> Coordinator {
    let digest = Digest(7);
    let ids: Vec<MemberId> = (0..members.len() as MemberId).collect();
    let commits = (committed - 3..=committed)
        .map(|round| CommitRecord {
            round,
            delivered: ids.iter().map(|&member| Delivery { member, digest }).collect(),
            stragglers: Vec::new(),
            aggregate: None,
        })
        .collect();
    let state = CoordinatorState {
        run: coordinator_config(Topology::Relay, 1).run,
        committed: Some(committed),
        next_id: members.len() as MemberId,
        members: ids.iter().map(|&id| (id, members[id as usize].to_string())).collect(),
        last_round_members: ids.clone(),
        commits,
        deadline: DeadlineStats::default(),
        signature: None,
    };
    let mut config = coordinator_config(Topology::Relay, min_members);
    config.state_donors = donors;
    Coordinator::restore(config, state, Instant::now()).expect("restore")
}

fn join(c: &mut Coordinator, now: Instant, conn: u64, name: &str, last_applied: Option<Round>) {
    let msg = ToCoordinator::bare_join(name, last_applied);
    c.handle_message(now, ConnId(conn), msg);
}

fn snapshot_requests(c: &mut Coordinator) -> Vec<(MemberId, Round)> {
    std::iter::from_fn(|| c.poll_event())
        .filter_map(|e| match e {
            CoordinatorEvent::SnapshotRequested { provider, round } => Some((provider, round)),
            _ => None,
        })
        .collect()
}

/// After a restart the coordinator knows what each member applied from its join: a member
/// still replaying (round 37 of 39 committed) must not be asked for the newcomer's state
/// while another applied round 39, or the newcomer waits on rounds that member may never
/// apply. (With one donor: several are asked at once otherwise, the most current first.)
#[test]
fn the_snapshot_provider_is_a_member_that_applied_the_committed_round() {
    for donors in [0, 1] {
        let now = Instant::now();
        let mut c = restored(&["behind", "current", "newcomer"], 39, 3, donors);
        join(&mut c, now, 10, "behind", Some(37));
        join(&mut c, now, 11, "current", Some(39));
        assert!(snapshot_requests(&mut c).is_empty(), "nobody needs state yet");
        join(&mut c, now, 12, "newcomer", None);
        assert_eq!(snapshot_requests(&mut c), [(1, 39)], "{donors} donors");
    }
}

/// A member known to have applied the last commit stays known as current through the
/// commits after it. One that rejoins later, still behind by a round, reported a higher
/// round than the current one did at its own join; the current one is asked all the same,
/// though its id is higher.
#[test]
fn a_member_current_at_its_join_stays_preferred_through_later_commits() {
    let mut now = Instant::now();
    let mut c = restored(&["behind", "current", "newcomer"], 9, 1, 1);
    join(&mut c, now, 11, "current", Some(9));
    now += Duration::from_secs(3); // past the rejoin grace: round 10 opens without the others
    c.handle_timeout(now);
    for round in 10..=12 {
        assert_eq!(c.open_round(), Some(round));
        c.handle_payload(now, ConnId(11), round, 1, Bytes::from(format!("round {round}")));
        assert_eq!(c.committed(), Some(round));
    }
    // Back from a checkpoint at round 11: it replays round 12.
    join(&mut c, now, 10, "behind", Some(11));
    assert!(snapshot_requests(&mut c).is_empty(), "nobody needs state yet");
    join(&mut c, now, 12, "newcomer", None);
    assert_eq!(snapshot_requests(&mut c), [(1, 12)]);
}

/// The coordinator's side of a payload nobody holds: the author's `NotHeld` (or an upload
/// of other bytes than the committed ones) answers every waiting fetch with `Unavailable`,
/// later fetches are answered at once, and a `NotHeld` nobody asked for is rejected.
#[test]
fn a_payload_its_author_no_longer_holds_is_unavailable_at_once() {
    let mut now = Instant::now();
    let mut c = restored(&["a", "b", "c"], 5, 3, 4);
    for (conn, name) in [(10, "a"), (11, "b"), (12, "c")] {
        join(&mut c, now, conn, name, Some(4));
    }
    let drain = |c: &mut Coordinator| {
        let sent: Vec<(ConnId, ToWorker)> = std::iter::from_fn(|| c.poll_transmit())
            .filter_map(|t| match t {
                CoordinatorTransmit::Control { to, msg } => Some((to, msg)),
                _ => None,
            })
            .collect();
        let rejected: Vec<RejectReason> = std::iter::from_fn(|| c.poll_event())
            .filter_map(|e| match e {
                CoordinatorEvent::Rejected { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        (sent, rejected)
    };
    drain(&mut c);
    let fetch = |member| ToCoordinator::Fetch { round: 5, member, digest: Digest(7) };
    let unavailable = |member| ToWorker::Unavailable { round: 5, member };

    // Member 0's payload: its author says it lost it.
    now += Duration::from_millis(1);
    c.handle_message(now, ConnId(12), fetch(0));
    let (sent, _) = drain(&mut c);
    assert_eq!(sent, [(ConnId(10), ToWorker::Reupload { round: 5 })]);
    c.handle_message(now, ConnId(10), ToCoordinator::NotHeld { round: 5 });
    assert_eq!(drain(&mut c), (vec![(ConnId(12), unavailable(0))], vec![]));
    c.handle_message(now, ConnId(11), fetch(0));
    assert_eq!(drain(&mut c), (vec![(ConnId(11), unavailable(0))], vec![]), "at once");

    // Member 1's payload: its author uploads other bytes (it published the round again).
    c.handle_message(now, ConnId(12), fetch(1));
    let (sent, _) = drain(&mut c);
    assert_eq!(sent, [(ConnId(11), ToWorker::Reupload { round: 5 })]);
    c.handle_payload(now, ConnId(11), 5, 1, Bytes::from_static(b"published again"));
    let (sent, rejected) = drain(&mut c);
    assert_eq!(sent, [(ConnId(12), unavailable(1))]);
    assert_eq!(rejected, [RejectReason::Late]);

    // Nobody asked member 2 for anything.
    c.handle_message(now, ConnId(12), ToCoordinator::NotHeld { round: 5 });
    assert_eq!(drain(&mut c), (vec![], vec![RejectReason::Unsolicited]));
}
