//! The run signature at join: a worker that trains something else is refused with every
//! difference named, an equal or empty one is admitted, and a restarted coordinator keeps
//! enforcing the run's.

use std::time::Instant;

use super::{coordinator_config, worker_config};
use crate::protocol::{
    ConnId, Coordinator, CoordinatorEvent, CoordinatorState, CoordinatorTransmit, PeerInfo,
    RefuseReason, RunSignature, ToCoordinator, ToWorker, Topology, WorkerEvent, WorkerProto,
    WorkerTransmit,
};

fn signature(outer_lr: &str, head: &str) -> RunSignature {
    [
        ("algorithm", "diloco"),
        ("param.h.0.attn.weight", "f32[64, 64]"),
        ("param.lm_head.weight", head),
        ("setting.outer_lr", outer_lr),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn join(name: &str, signature: &RunSignature) -> ToCoordinator {
    joining(name, signature, false)
}

/// A fresh worker's join; `follows`: it asks for the run's settings.
fn joining(name: &str, signature: &RunSignature, follows: bool) -> ToCoordinator {
    ToCoordinator::Join {
        name: name.to_string(),
        last_applied: None,
        peer: PeerInfo::default(),
        signature: signature.clone(),
        follows,
    }
}

/// The coordinator's events and the refusals it sent, drained.
fn drain(c: &mut Coordinator) -> (Vec<CoordinatorEvent>, Vec<(ConnId, RefuseReason)>) {
    let events = std::iter::from_fn(|| c.poll_event()).collect();
    let refusals = std::iter::from_fn(|| c.poll_transmit())
        .filter_map(|t| match t {
            CoordinatorTransmit::Control { to, msg: ToWorker::Refused { reason } } => {
                Some((to, reason))
            }
            _ => None,
        })
        .collect();
    (events, refusals)
}

fn mismatch(lines: &[&str]) -> RefuseReason {
    RefuseReason::SignatureMismatch { differences: lines.iter().map(|l| l.to_string()).collect() }
}

#[test]
fn a_differing_signature_is_refused_naming_every_difference() {
    let now = Instant::now();
    let mut c = Coordinator::new(coordinator_config(Topology::Relay, 2), now).expect("config");
    let run = signature("0.7", "f32[256, 64]");
    // A tool without a signature neither is checked nor sets the run's.
    c.handle_message(now, ConnId(1), join("tool", &RunSignature::new()));
    assert_eq!(c.signature(), None);
    c.handle_message(now, ConnId(2), join("w0", &run));
    assert_eq!(c.signature(), Some(&run), "the first joiner with a signature sets the run's");
    let (events, refusals) = drain(&mut c);
    assert!(events.contains(&CoordinatorEvent::SignatureAdopted { member: 1 }), "{events:?}");
    assert!(refusals.is_empty(), "{refusals:?}");

    c.handle_message(now, ConnId(3), join("w1", &signature("0.5", "f32[256, 32]")));
    let expected = mismatch(&[
        "param lm_head.weight: the run has f32[256, 64], this worker f32[256, 32]",
        "setting outer_lr: the run has 0.7, this worker 0.5",
    ]);
    let (events, refusals) = drain(&mut c);
    assert_eq!(refusals, vec![(ConnId(3), expected.clone())]);
    assert!(events.contains(&CoordinatorEvent::Refused { conn: ConnId(3), reason: expected }));
    assert_eq!(c.member_id("w1"), None, "a refused worker gets no id");

    // The same signature, or none, is admitted.
    c.handle_message(now, ConnId(4), join("w2", &run));
    c.handle_message(now, ConnId(5), join("w3", &RunSignature::new()));
    let (_, refusals) = drain(&mut c);
    assert!(refusals.is_empty(), "{refusals:?}");
    assert_eq!((c.member_id("w2"), c.member_id("w3")), (Some(2), Some(3)));
    assert_eq!(c.connected(), vec![0, 1, 2, 3]);

    // A member that comes back under its name with other settings is refused too.
    c.handle_message(now, ConnId(6), join("w0", &signature("0.7", "f32[1]")));
    let (_, refusals) = drain(&mut c);
    assert_eq!(
        refusals,
        vec![(
            ConnId(6),
            mismatch(&["param lm_head.weight: the run has f32[256, 64], this worker f32[1]"])
        )]
    );
}

#[test]
fn a_configured_signature_is_the_runs_from_the_start() {
    let now = Instant::now();
    let mut config = coordinator_config(Topology::Relay, 1);
    config.signature = Some(signature("0.7", "f32[256, 64]"));
    let mut c = Coordinator::new(config, now).expect("config");
    c.handle_message(now, ConnId(1), join("w0", &signature("0.9", "f32[256, 64]")));
    let (events, refusals) = drain(&mut c);
    assert_eq!(
        refusals,
        vec![(ConnId(1), mismatch(&["setting outer_lr: the run has 0.7, this worker 0.9"]))]
    );
    assert!(!events.iter().any(|e| matches!(e, CoordinatorEvent::SignatureAdopted { .. })));
    c.handle_message(now, ConnId(2), join("w0", &signature("0.7", "f32[256, 64]")));
    assert_eq!(c.member_id("w0"), Some(0));
}

#[test]
fn a_restarted_coordinator_keeps_enforcing_the_runs_signature() {
    let now = Instant::now();
    let config = coordinator_config(Topology::Relay, 2);
    let mut c = Coordinator::new(config.clone(), now).expect("config");
    let run = signature("0.7", "f32[256, 64]");
    c.handle_message(now, ConnId(1), join("w0", &run));
    let state = c.persisted();
    assert_eq!(state.signature.as_ref(), Some(&run));
    let bytes = state.encode().expect("encode");
    let decoded = CoordinatorState::decode(&bytes).expect("decode");
    assert_eq!(decoded, state);

    let mut restored = Coordinator::restore(config.clone(), decoded, now).expect("restore");
    assert_eq!(restored.signature(), Some(&run));
    restored.handle_message(now, ConnId(7), join("w1", &signature("0.5", "f32[256, 64]")));
    restored.handle_message(now, ConnId(8), join("w0", &run));
    let (_, refusals) = drain(&mut restored);
    assert_eq!(
        refusals,
        vec![(ConnId(7), mismatch(&["setting outer_lr: the run has 0.7, this worker 0.5"]))]
    );
    assert_eq!(restored.member_id("w0"), Some(0));
    assert_eq!(restored.member_id("w1"), None);

    // A configured signature replaces the saved one.
    let mut configured = config.clone();
    configured.signature = Some(signature("0.5", "f32[256, 64]"));
    let replaced = Coordinator::restore(configured, state.clone(), now).expect("restore");
    assert_eq!(replaced.signature(), Some(&signature("0.5", "f32[256, 64]")));

    // A state saved before signatures existed (the same fields, without the last one)
    // still loads, without a signature.
    let old = postcard::to_allocvec(&(
        state.run,
        state.committed,
        state.next_id,
        &state.members,
        &state.last_round_members,
        &state.commits,
        &state.deadline,
    ))
    .expect("encode");
    let loaded = CoordinatorState::decode(&old).expect("an older state decodes");
    assert_eq!(loaded, CoordinatorState { signature: None, ..state });
}

#[test]
fn a_worker_sends_its_signature_in_every_join_and_reports_a_refusal() {
    let now = Instant::now();
    let mut config = worker_config();
    config.signature = signature("0.7", "f32[256, 64]");
    let mut w = WorkerProto::new(config.clone(), None).expect("config");
    for _ in 0..2 {
        w.handle_connected(now);
        let joins: Vec<RunSignature> = std::iter::from_fn(|| w.poll_transmit())
            .filter_map(|t| match t {
                WorkerTransmit::Control { msg: ToCoordinator::Join { signature, .. } } => {
                    Some(signature)
                }
                _ => None,
            })
            .collect();
        assert_eq!(joins, vec![config.signature.clone()]);
        w.handle_disconnected(now);
    }
    let reason = mismatch(&["setting outer_lr: the run has 0.5, this worker 0.7"]);
    w.handle_connected(now);
    w.handle_coordinator(now, ToWorker::Refused { reason: reason.clone() });
    let events: Vec<WorkerEvent> = std::iter::from_fn(|| w.poll_event()).collect();
    assert_eq!(events, vec![WorkerEvent::Refused { reason }]);
}

#[test]
fn a_refusal_with_its_lines_round_trips_on_the_wire() {
    let reason = mismatch(&["setting outer_lr: the run has 0.7, this worker 0.5", "and 3 more"]);
    let msg = ToWorker::Refused { reason };
    assert_eq!(ToWorker::decode(&msg.encode().expect("encode")).expect("decode"), msg);
    let join = join("w0", &signature("0.7", "f32[1]"));
    assert_eq!(ToCoordinator::decode(&join.encode().expect("encode")).expect("decode"), join);
}

/// Facts from pairs.
fn facts(pairs: &[(&str, &str)]) -> RunSignature {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The settings in the welcomes sent, by connection.
fn welcome_settings(c: &mut Coordinator) -> Vec<(ConnId, Option<String>)> {
    std::iter::from_fn(|| c.poll_transmit())
        .filter_map(|t| match t {
            CoordinatorTransmit::Control { to, msg: ToWorker::Welcome { settings, .. } } => {
                Some((to, settings))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_follower_gets_the_settings_and_is_checked_on_what_it_reads() {
    let now = Instant::now();
    // A coordinator without settings cannot be followed.
    let mut bare = Coordinator::new(coordinator_config(Topology::Relay, 1), now).expect("config");
    bare.handle_message(now, ConnId(1), joining("f", &RunSignature::new(), true));
    let (_, refusals) = drain(&mut bare);
    assert_eq!(refusals, vec![(ConnId(1), RefuseReason::NoSettings)]);
    assert_eq!(bare.member_id("f"), None, "a refused follower gets no id");

    let mut config = coordinator_config(Topology::Relay, 1);
    let run = facts(&[
        ("algorithm", "diloco"),
        ("corpus.fingerprint", "abc"),
        ("param.h.0.attn.weight", "f32[64, 64]"),
        ("param.lm_head.weight", "f32[256, 64]"),
        ("setting.outer_lr", "0.7"),
    ]);
    config.signature = Some(run.clone());
    let settings = "[run]\nalgo = \"diloco\"\n".to_string();
    config.settings = Some(settings.clone());
    let mut c = Coordinator::new(config, now).expect("config");

    // Compared on the corpus it reads, the one fact a follower brings.
    c.handle_message(now, ConnId(1), joining("f0", &facts(&[("corpus.fingerprint", "abd")]), true));
    let (_, refusals) = drain(&mut c);
    assert_eq!(
        refusals,
        vec![(ConnId(1), mismatch(&["corpus fingerprint: the run has abc, this worker abd"]))]
    );
    c.handle_message(now, ConnId(2), joining("f0", &facts(&[("corpus.fingerprint", "abc")]), true));
    assert_eq!(welcome_settings(&mut c), vec![(ConnId(2), Some(settings.clone()))]);
    assert_eq!(c.member_id("f0"), Some(0));

    // A worker with its own flags and no corpus fact is compared on everything else...
    c.handle_message(now, ConnId(3), join("w1", &signature("0.7", "f32[256, 64]")));
    assert_eq!(welcome_settings(&mut c), vec![(ConnId(3), Some(settings))]);
    // ...so one that brings only the corpus without following lacks the model.
    c.handle_message(now, ConnId(4), join("w2", &facts(&[("corpus.fingerprint", "abc")])));
    let (_, refusals) = drain(&mut c);
    let [(ConnId(4), RefuseReason::SignatureMismatch { differences })] = refusals.as_slice() else {
        panic!("{refusals:?}")
    };
    assert!(differences.iter().any(|d| d.starts_with("algorithm")), "{differences:?}");
    assert_eq!(c.signature(), Some(&run), "no follower or worker replaced the run's");
}

#[test]
fn the_run_adopts_no_follower_and_compares_a_corpus_only_where_both_hold_one() {
    let now = Instant::now();
    let mut config = coordinator_config(Topology::Relay, 1);
    config.settings = Some("[run]\n".to_string());
    let mut c = Coordinator::new(config, now).expect("config");
    c.handle_message(now, ConnId(1), joining("f0", &facts(&[("corpus.fingerprint", "abc")]), true));
    assert_eq!(c.signature(), None, "a follower's facts are not the run's");
    let first = facts(&[("algorithm", "diloco"), ("corpus.fingerprint", "abc")]);
    c.handle_message(now, ConnId(2), join("w0", &first));
    assert_eq!(c.signature(), Some(&first));
    // No corpus fact: not compared on it; another corpus: refused.
    c.handle_message(now, ConnId(3), join("w1", &facts(&[("algorithm", "diloco")])));
    c.handle_message(
        now,
        ConnId(4),
        join("w2", &facts(&[("algorithm", "diloco"), ("corpus.fingerprint", "x")])),
    );
    let (_, refusals) = drain(&mut c);
    assert_eq!(
        refusals,
        vec![(ConnId(4), mismatch(&["corpus fingerprint: the run has abc, this worker x"]))]
    );
    assert_eq!(c.member_id("w1"), Some(2));
}

#[test]
fn welcome_settings_are_bounded_on_the_wire_and_in_the_config() {
    let welcome = |len: usize| ToWorker::Welcome {
        member: 0,
        members: Vec::new(),
        next_round: 0,
        committed: None,
        topology: Topology::Relay,
        need_state: false,
        expected: 1,
        settings: Some("x".repeat(len)),
    };
    let max = crate::protocol::MAX_SETTINGS_LEN;
    let fits = welcome(max);
    assert_eq!(ToWorker::decode(&fits.encode().expect("encode")).expect("decode"), fits);
    let over = welcome(max + 1).encode().expect("encode");
    assert!(ToWorker::decode(&over).is_err(), "a welcome with oversized settings decoded");

    let mut config = coordinator_config(Topology::Relay, 1);
    config.settings = Some("x".repeat(max + 1));
    let Err(e) = Coordinator::new(config, Instant::now()) else {
        panic!("oversized settings accepted")
    };
    assert!(e.to_string().contains("settings exceed"), "{e}");
}
