//! A worker that trains something else than the run is refused over QUIC with an error that
//! names every difference, also by a coordinator restarted from its state folder.

use super::*;
use crate::protocol::{CoordinatorEvent, RefuseReason, RunSignature};

fn signature(outer_lr: &str) -> RunSignature {
    [("algorithm", "diloco"), ("param.w", "f32[4, 4]"), ("setting.outer_lr", outer_lr)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn signed(join: &JoinString, name: &str, signature: RunSignature) -> WorkerNodeConfig {
    let mut cfg = worker_config(join, name);
    cfg.signature = signature;
    cfg
}

/// Connecting `name` with `signature` fails with the refusal naming the outer_lr.
fn assert_refused(rt: &tokio::runtime::Runtime, join: &JoinString, name: &str, lr: &str) {
    let err = match WorkerHandle::spawn(signed(join, name, signature(lr)), rt.handle()) {
        Ok(_) => panic!("{name} with outer_lr {lr} was admitted"),
        Err(e) => e,
    };
    let line = format!("setting outer_lr: the run has 0.7, this worker {lr}");
    let text = err.to_string();
    assert!(text.contains("refused by coordinator") && text.contains(&line), "{text}");
    match err {
        CommError::Node(NodeError::Refused(Refusal::Protocol(
            RefuseReason::SignatureMismatch { differences },
        ))) => assert_eq!(differences, vec![line]),
        other => panic!("not a signature refusal: {other:?}"),
    }
}

#[test]
fn a_worker_with_other_settings_is_refused_with_the_differences_even_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("meridian-node-signature-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let rt = runtime();
    let mut cfg = coordinator_config(2, Duration::from_secs(2));
    cfg.state_dir = Some(dir.clone());
    let node = {
        let _guard = rt.enter();
        CoordinatorNode::start(cfg.clone()).unwrap()
    };
    let join = node.join_string();
    let first = WorkerHandle::spawn(signed(&join, "w0", signature("0.7")), rt.handle()).unwrap();
    assert_refused(&rt, &join, "w1", "0.5");

    // No round committed: the signature was saved when it was adopted.
    rt.block_on(node.shutdown()).unwrap();
    drop(first);
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
    assert_refused(&rt, &join, "w1", "0.9");
    let again = WorkerHandle::spawn(signed(&join, "w2", signature("0.7")), rt.handle()).unwrap();
    assert_eq!(again.member(), 1, "w0 kept id 0");
    let joined: Vec<String> = drain(&mut node)
        .into_iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::Joined { name, .. }) => Some(name),
            _ => None,
        })
        .collect();
    assert_eq!(joined, ["w2"]);
    drop(again);
    rt.block_on(node.shutdown()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
