//! Workers that drop out and come back, and a coordinator that restarts.

use super::*;
use crate::protocol::CoordinatorEvent;

const LAST: Round = 29;
const COMPUTE: Duration = Duration::from_millis(40);

/// Three workers run to [`LAST`]; a fourth drops its connection after round 3 (no leave)
/// and comes back under its name once the others applied round 6, with `rejoin` deciding
/// its app and `last_applied`. Returns the four final apps (the returning one last) and
/// the app the fourth had when it dropped out.
fn drop_and_rejoin(topology: Topology, rejoin: impl FnOnce(&App) -> App) -> (Vec<App>, App) {
    let rt = runtime();
    let node = {
        let _guard = rt.enter();
        let cfg = topology_config(topology, 2, Duration::from_millis(500));
        CoordinatorNode::start(cfg).unwrap()
    };
    let join = node.join_string();
    // All four are welcomed before round 0 commits, so none starts from a snapshot.
    let handles: Vec<_> = (0..4)
        .map(|i| WorkerHandle::spawn(worker_config(&join, &format!("w{i}")), rt.handle()).unwrap())
        .collect();
    let mut handles = handles.into_iter();
    let progress: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let live: Vec<_> = progress
        .iter()
        .zip(handles.by_ref())
        .map(|(progress, handle)| {
            spawn_driver(handle, App::default(), LAST, COMPUTE, progress.clone())
        })
        .collect();

    let dropped = {
        let handle = handles.next().unwrap();
        let (handle, app) = drive(handle, App::default(), 3, COMPUTE, &AtomicU64::new(0));
        drop(handle); // the connection closes without a Leave
        app
    };
    assert!(dropped.states_received.is_empty());
    wait_until(Duration::from_secs(10), "the others to apply round 6", || {
        progress.iter().all(|p| p.load(Ordering::SeqCst) >= 7)
    });
    let app = rejoin(&dropped);
    let mut cfg = worker_config(&join, "w3");
    cfg.last_applied = app.applied;
    let back = spawn_worker(rt.handle(), cfg, app, LAST, COMPUTE, Arc::new(AtomicU64::new(0)));

    let mut apps: Vec<App> = live.into_iter().map(|w| w.join().unwrap()).collect();
    apps.push(back.join().unwrap());
    rt.block_on(node.shutdown()).unwrap();
    // Rounds went on without the dropped worker: some committed three payloads.
    assert!(apps[0].payload_counts.values().any(|&n| n == 3), "{:?}", apps[0].payload_counts);
    assert_eq!(apps[3].member, dropped.member, "the name keeps its id");
    (apps, dropped)
}

#[test]
fn a_dropped_worker_rejoins_fresh_from_a_snapshot_and_agrees_relay() {
    rejoin_from_a_snapshot(Topology::Relay);
}

#[test]
fn a_dropped_worker_rejoins_fresh_from_a_snapshot_and_agrees_all_gather() {
    rejoin_from_a_snapshot(Topology::AllGather);
}

fn rejoin_from_a_snapshot(topology: Topology) {
    let (apps, dropped) = drop_and_rejoin(topology, |_| App::default());
    let back = &apps[3];
    assert_eq!(back.states_received.len(), 1, "one snapshot");
    let snapshot_round = back.states_received[0];
    assert!(snapshot_round >= 6);
    assert!(apps[..3].iter().any(|a| a.snapshots_given.contains(&snapshot_round)));
    // It applied every round after the snapshot, and agrees on all of them.
    assert_eq!(back.history.len() as u64, LAST - snapshot_round + 1);
    let compared = assert_agree(&apps);
    assert!(compared >= 3 * 30 + 3 * (LAST - snapshot_round) as usize);
    assert_eq!(assert_agree(&[apps[0].clone(), dropped]), 4);
}

#[test]
fn a_dropped_worker_rejoins_with_its_state_by_replay_and_agrees_relay() {
    rejoin_by_replay(Topology::Relay);
}

/// The missed payloads come from the members that keep them (the coordinator holds none).
#[test]
fn a_dropped_worker_rejoins_with_its_state_by_replay_and_agrees_all_gather() {
    rejoin_by_replay(Topology::AllGather);
}

fn rejoin_by_replay(topology: Topology) {
    let (apps, _) = drop_and_rejoin(topology, |dropped| dropped.clone());
    let back = &apps[3];
    assert!(back.states_received.is_empty(), "caught up by replayed commits, not a snapshot");
    assert_eq!(back.history.len() as u64, LAST + 1);
    assert_eq!(assert_agree(&apps), 6 * 30);
}

#[test]
fn a_restarted_coordinator_keeps_its_join_string_and_the_run_continues() {
    let dir = std::env::temp_dir().join(format!("meridian-node-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = runtime();
    let mut cfg = coordinator_config(3, Duration::from_secs(2));
    cfg.state_dir = Some(dir.clone());
    let node = {
        let _guard = rt.enter();
        CoordinatorNode::start(cfg.clone()).unwrap()
    };
    let join = node.join_string();
    let progress: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let wcfg = worker_config(&join, &format!("w{i}"));
            spawn_worker(rt.handle(), wcfg, App::default(), 19, COMPUTE, progress[i].clone())
        })
        .collect();

    wait_until(Duration::from_secs(10), "round 5", || {
        progress.iter().all(|p| p.load(Ordering::SeqCst) >= 6)
    });
    rt.block_on(node.shutdown()).unwrap();
    let stopped_at = progress.iter().map(|p| p.load(Ordering::SeqCst)).max().unwrap();

    cfg.listen = join.socket_addr().unwrap();
    let start = Instant::now();
    let mut node = loop {
        let _guard = rt.enter();
        match CoordinatorNode::start(cfg.clone()) {
            Ok(node) => break node,
            Err(e) if start.elapsed() < Duration::from_secs(3) => {
                drop(e);
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("restart: {e}"),
        }
    };
    assert_eq!(node.join_string().to_string(), join.to_string());

    let apps: Vec<App> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(assert_agree(&apps), 3 * 20);
    let commits: Vec<Round> = drain(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::RoundCommitted { round, .. }) => {
                Some(round)
            }
            _ => None,
        })
        .collect();
    // The restarted coordinator went on from where it stopped, not from round 0.
    assert!(commits.first().is_some_and(|&r| r + 1 >= stopped_at), "{commits:?} vs {stopped_at}");
    assert!(commits.contains(&19), "{commits:?}");
    rt.block_on(node.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
