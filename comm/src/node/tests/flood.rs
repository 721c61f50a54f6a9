//! Hostile load: while three workers run rounds, a stranger without the join secret opens
//! hundreds of connections to the coordinator and to a worker's peer listener. The run
//! completes with the same results everywhere, every hostile connection ends refused or
//! dropped at the deadline, and the process's resident memory stays within a loose bound.

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use super::preauth::{client_on, mute_client_on, refused_outright, source};
use super::*;
use crate::ids::CertFingerprint;
use crate::protocol::{CoordinatorEvent, ToCoordinator};
use crate::quic::{self, NodeIdentity, QuicEndpoint, QuicError, RefusalCode};
use crate::wire::{FrameCodec, FrameKind};

/// Sources the stranger connects from: 127.0.0.2 and up, more than the coordinator lets wait
/// at once (8 from each, 64 in all, by default).
const SOURCES: u8 = 20;
/// Connection attempts per wave, one wave a second.
const WAVE: usize = 100;
/// The deadline for a connection to prove itself in this test.
const PRE_AUTH: Duration = Duration::from_secs(3);
/// Resident memory the attack may add, at most: a loose bound, far above what it costs.
const RSS_BOUND: u64 = 200 << 20;

/// The process's resident set size, in bytes, from `/proc/self/status`.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What the stranger tries on one connection to the coordinator.
#[derive(Debug, Clone, Copy)]
enum Attack {
    /// Completes the handshake and sends nothing.
    Idle,
    /// Sends a frame-sized piece of noise.
    Garbage,
    /// Claims a frame of 4 GiB and sends nothing more.
    Oversized,
    /// Sends a join a byte a second.
    Trickle,
    /// Sends a well-formed join sealed with another secret.
    WrongSecret,
    /// Never completes its handshake.
    Mute,
}

const ATTACKS: [Attack; 6] = [
    Attack::Idle,
    Attack::Garbage,
    Attack::Oversized,
    Attack::Trickle,
    Attack::WrongSecret,
    Attack::Mute,
];

/// How a hostile connection ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    /// Refused before its handshake: a cap was reached.
    RefusedOutright,
    /// Closed by the listener with this refusal.
    Refused(String),
    /// Closed by the listener without a refusal, for this reason (the deadline).
    Closed(String),
    /// The handshake failed (a certificate the peer listener does not pin).
    HandshakeFailed,
    /// Its handshake never completed at the listener (dropped there at the deadline).
    Stalled,
    /// Closed by the listener during its handshake: the deadline came first (a loaded
    /// machine can be that slow; the listener gives no reason then); or reset by the
    /// listener once it had dropped the connection.
    Dropped,
}

/// Whether `e` is the listener closing a connection whose handshake it had not completed.
fn dropped_in_handshake(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
    )
}

/// How a failed connect ended, for the attempts the listener may refuse or drop.
fn failed_connect(what: &str, e: &CommError) -> Outcome {
    match e {
        e if refused_outright(e) => Outcome::RefusedOutright,
        CommError::Quic(QuicError::Handshake { source, .. }) if dropped_in_handshake(source) => {
            Outcome::Dropped
        }
        e => panic!("{what}: {e}"),
    }
}

/// The stranger's view of one connection: what arrived and how it ended.
async fn until_closed(conn: &quinn::Connection) -> (usize, QuicError) {
    let mut received = 0;
    while let Ok(frame) = quic::recv_frame(conn, 1 << 20).await {
        received += frame.len();
    }
    (received, quic::wait_closed(conn).await)
}

/// Attacks the coordinator at `addr` once, from `endpoint` (or, for [`Attack::Mute`], from
/// a mute endpoint on `ip`).
async fn attack_coordinator(
    attack: Attack,
    endpoint: Arc<QuicEndpoint>,
    ip: IpAddr,
    addr: SocketAddr,
    pin: CertFingerprint,
    forged: Arc<Vec<u8>>,
) -> Outcome {
    if let Attack::Mute = attack {
        return match mute_client_on(ip).connect(addr, pin).await {
            Ok(_) => Outcome::Stalled,
            Err(e) => failed_connect("mute", &e),
        };
    }
    let conn = match endpoint.connect(addr, pin).await {
        Ok(conn) => conn,
        Err(e) => return failed_connect(&format!("{attack:?}"), &e),
    };
    let act = async {
        // Errors are expected here: the coordinator may close first.
        match attack {
            Attack::Idle | Attack::Mute => {}
            Attack::Garbage => {
                let mut noise = 300u32.to_le_bytes().to_vec();
                noise.extend((0..300u32).map(|i| (i * 31 + 7) as u8));
                let _ = quic::send_frame(&conn, &noise).await;
            }
            Attack::Oversized => {
                if let Ok(mut stream) = conn.open_uni().await {
                    let _ = stream.write_all(&u32::MAX.to_le_bytes()).await;
                    // Held open, as if the rest were coming.
                    let _ = stream.stopped().await;
                }
            }
            Attack::Trickle => {
                if let Ok(mut stream) = conn.open_uni().await {
                    for byte in forged.iter() {
                        if stream.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Attack::WrongSecret => {
                let _ = quic::send_frame(&conn, &forged).await;
            }
        }
        std::future::pending::<()>().await;
    };
    let closed = tokio::select! {
        () = act => unreachable!("the attack waits for the close"),
        closed = tokio::time::timeout(EVENT_WAIT, until_closed(&conn)) => closed,
    };
    let (received, closed) = closed.unwrap_or_else(|_| panic!("{attack:?}: still open"));
    assert_eq!(received, 0, "{attack:?}: the coordinator sent a stranger frames");
    match closed {
        QuicError::Refused { code, reason } => Outcome::Refused(format!("{code}: {reason}")),
        QuicError::Closed { reason, .. } => Outcome::Closed(reason),
        QuicError::Connection(e) if dropped_in_handshake(&e) => Outcome::Dropped,
        // The listener closed the connection and had already forgotten it when the
        // stranger's next packet came (its close was overtaken, on a loaded machine):
        // answered with a stateless reset, which ends it just as well.
        QuicError::Connection(quinn::ConnectionError::Reset) => Outcome::Dropped,
        other => panic!("{attack:?}: closed without a refusal: {other}"),
    }
}

/// Attacks a worker's peer listener at `addr` once: a handshake with a certificate it does
/// not pin, or one that never completes.
async fn attack_listener(
    mute: bool,
    endpoint: Arc<QuicEndpoint>,
    ip: IpAddr,
    addr: SocketAddr,
    pin: CertFingerprint,
) -> Outcome {
    if mute {
        return match mute_client_on(ip).connect(addr, pin).await {
            Ok(_) => Outcome::Stalled,
            Err(e) => failed_connect("mute", &e),
        };
    }
    match endpoint.connect(addr, pin).await {
        // The listener rejects the certificate after our side of the handshake is done: the
        // connection dies on its first use.
        Ok(conn) => {
            let ended = tokio::time::timeout(EVENT_WAIT, quic::wait_closed(&conn)).await;
            ended.expect("a connection with an unpinned certificate stayed open");
            Outcome::HandshakeFailed
        }
        Err(e) if refused_outright(&e) => Outcome::RefusedOutright,
        Err(_) => Outcome::HandshakeFailed,
    }
}

#[test]
fn a_flood_of_strangers_neither_stops_the_run_nor_grows_memory_unboundedly() {
    const UNTIL: Round = 40;
    let rt = runtime();
    let mut cfg = coordinator_config(3, Duration::from_secs(5));
    cfg.pre_auth.timeout = PRE_AUTH;
    let mut node = {
        let _guard = rt.enter();
        CoordinatorNode::start(cfg).unwrap()
    };
    let join = node.join_string();

    // Worker 0's listener runs on a socket the test bound, so the stranger knows its port.
    let listener_identity = NodeIdentity::generate("w0").unwrap();
    let listener_socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let listener = SocketAddr::new(source(1), listener_socket.local_addr().unwrap().port());
    let progress: Vec<_> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    // The workers stay connected until the attack is over, so that every hostile attempt
    // meets a listening node.
    let release = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let mut cfg = worker_config(&join, &format!("w{i}"));
            cfg.pre_auth.timeout = PRE_AUTH;
            if i == 0 {
                cfg.identity = Some(listener_identity.clone());
                let _guard = rt.enter();
                let socket = quinn::Runtime::wrap_udp_socket(
                    &quinn::TokioRuntime,
                    listener_socket.try_clone().unwrap(),
                );
                cfg.socket = Some(socket.unwrap());
            }
            let (rt, progress, release) =
                (rt.handle().clone(), progress[i].clone(), release.clone());
            std::thread::spawn(move || {
                let handle = WorkerHandle::spawn(cfg, &rt).unwrap();
                let compute = Duration::from_millis(20);
                let (handle, app) = drive(handle, App::default(), UNTIL, compute, &progress);
                while !release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                handle.leave().unwrap();
                app
            })
        })
        .collect();
    let done = || progress.iter().all(|p| p.load(Ordering::SeqCst) > UNTIL);
    wait_until(Duration::from_secs(30), "round 2 everywhere", || {
        progress.iter().all(|p| p.load(Ordering::SeqCst) >= 3)
    });

    // Resident memory, sampled while the attack runs.
    let baseline = rss();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline.unwrap_or(0)));
    let sampler = {
        let (stop, peak) = (stop_sampling.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(now) = rss() {
                    peak.fetch_max(now, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The stranger: its own runtime, endpoints on 20 loopback sources, a certificate of its
    // own, no secret.
    let attacker =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let rounds_under_attack = attacker.block_on(async {
        let coordinator = join.socket_addr().unwrap();
        let endpoints: Vec<Arc<QuicEndpoint>> =
            (0..SOURCES).map(|n| Arc::new(client_on(source(2 + n)))).collect();
        let mut wrong = join.secret.clone();
        wrong.0[0] ^= 1;
        let forged = FrameCodec::new(&wrong, join.run, 1 << 20);
        let msg = ToCoordinator::bare_join("stranger", None);
        let forged = Arc::new(
            forged.encode(FrameKind::Control, 0, u32::MAX, &msg.encode().unwrap(), false).unwrap(),
        );
        let started_at = progress.iter().map(|p| p.load(Ordering::SeqCst)).min().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let mut wave = 0usize;
        // At least three waves, and on until the honest run is over.
        while wave < 3 || !done() {
            assert!(wave < 60, "the run did not finish under attack");
            for i in 0..WAVE {
                let n = (wave * WAVE + i) % usize::from(SOURCES);
                let (ip, endpoint) = (source(2 + n as u8), endpoints[n].clone());
                let outcomes = outcomes.clone();
                if i % 4 == 3 {
                    // A quarter at worker 0's peer listener.
                    // Most of them handshakes that stall, so its caps fill.
                    let (pin, mute) = (listener_identity.fingerprint(), i / 4 % 4 != 0);
                    tasks.spawn(async move {
                        let outcome = attack_listener(mute, endpoint, ip, listener, pin).await;
                        outcomes.lock().unwrap().push(("listener", outcome));
                    });
                } else {
                    let attack = ATTACKS[(wave + i) % ATTACKS.len()];
                    let (pin, forged) = (join.fingerprint, forged.clone());
                    tasks.spawn(async move {
                        let outcome =
                            attack_coordinator(attack, endpoint, ip, coordinator, pin, forged)
                                .await;
                        outcomes.lock().unwrap().push(("coordinator", outcome));
                    });
                }
            }
            wave += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let ended_at = progress.iter().map(|p| p.load(Ordering::SeqCst)).min().unwrap();
        while let Some(result) = tasks.join_next().await {
            result.unwrap();
        }
        ended_at.saturating_sub(started_at)
    });
    stop_sampling.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    release.store(true, Ordering::SeqCst);

    // The run: every round, every member's payload, the same results everywhere.
    let apps: Vec<App> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(assert_agree(&apps), 3 * (UNTIL as usize + 1));
    for app in &apps {
        assert_eq!(app.history.len() as u64, UNTIL + 1);
        assert!(app.payload_counts.values().all(|&n| n == 3), "{:?}", app.payload_counts);
    }
    assert!(rounds_under_attack > 0, "no round committed while the attack ran");

    // The strangers: each ended refused (outright, or closed with a reason), or closed,
    // stalled or dropped at the deadline.
    let outcomes = outcomes.lock().unwrap().clone();
    let mut tally: BTreeMap<(&str, Outcome), usize> = BTreeMap::new();
    for (target, outcome) in &outcomes {
        let outcome = match outcome {
            // Group refusals by code; the reasons name the attack.
            Outcome::Refused(reason) => {
                Outcome::Refused(reason.split(':').next().unwrap_or_default().to_string())
            }
            Outcome::Closed(_) => Outcome::Closed("no join in time".into()),
            other => other.clone(),
        };
        *tally.entry((target, outcome)).or_default() += 1;
    }
    let attempts = outcomes.len();
    assert!(attempts >= 3 * WAVE, "{attempts} attempts");
    let count = |target: &str, f: &dyn Fn(&Outcome) -> bool| {
        outcomes.iter().filter(|(t, o)| *t == target && f(o)).count()
    };
    // Every kind of refusal happened: the caps, a wrong secret, a bad frame, the deadline.
    assert!(count("coordinator", &|o| *o == Outcome::RefusedOutright) > 0, "{tally:?}");
    assert!(count("listener", &|o| *o == Outcome::RefusedOutright) > 0, "{tally:?}");
    assert!(count("listener", &|o| *o == Outcome::HandshakeFailed) > 0, "{tally:?}");
    for needle in [
        RefusalCode::WrongSecret.to_string(),
        RefusalCode::VersionMismatch.to_string(),
        "exceeds the".to_string(),
        "no join within".to_string(),
    ] {
        let seen = count("coordinator", &|o| match o {
            Outcome::Refused(reason) | Outcome::Closed(reason) => reason.contains(&needle),
            _ => false,
        });
        assert!(seen > 0, "no close with {needle:?}: {tally:?}");
    }

    let events = drain(&mut node);
    let joined: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match e {
            CoordinatorNodeEvent::Protocol(CoordinatorEvent::Joined { name, .. }) => {
                Some(name.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(joined, ["w0", "w1", "w2"].map(String::from).into());
    rt.block_on(node.shutdown()).unwrap();

    let growth = match baseline {
        Some(baseline) => peak.load(Ordering::SeqCst).saturating_sub(baseline),
        None => 0, // no /proc: nothing to measure
    };
    eprintln!(
        "hostile load: {attempts} attempts, {rounds_under_attack} rounds under attack, resident \
         memory growth {:.1} MiB (bound {} MiB); {tally:?}",
        growth as f64 / f64::from(1 << 20),
        RSS_BOUND >> 20
    );
    assert!(growth < RSS_BOUND, "resident memory grew by {growth} bytes under attack");
}
