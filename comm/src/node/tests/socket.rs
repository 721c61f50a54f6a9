//! Nodes run over a UDP socket handed to them (what the WAN simulator and proxies use).

use std::io::IoSliceMut;
use std::pin::Pin;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};

use super::*;

/// A real socket that counts the datagrams passing through it.
#[derive(Debug)]
struct Counting {
    inner: Arc<dyn AsyncUdpSocket>,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Counting {
    fn bind() -> Arc<Self> {
        let std = std::net::UdpSocket::bind(localhost()).unwrap();
        let inner = quinn::TokioRuntime.wrap_udp_socket(std).unwrap();
        Arc::new(Counting { inner, sent: AtomicU64::new(0), received: AtomicU64::new(0) })
    }
}

impl AsyncUdpSocket for Counting {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> std::io::Result<()> {
        self.inner.try_send(transmit)?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<std::io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            self.received.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[test]
fn coordinator_and_workers_run_over_the_sockets_they_are_given() {
    let rt = runtime();
    let coordinator_socket = {
        let _guard = rt.enter();
        Counting::bind()
    };
    let mut cfg = coordinator_config(2, Duration::from_secs(5));
    cfg.socket = Some(coordinator_socket.clone());
    let node = {
        let _guard = rt.enter();
        CoordinatorNode::start(cfg).unwrap()
    };
    let join = node.join_string();
    assert_eq!(join.port, coordinator_socket.local_addr().unwrap().port());
    let sockets: Vec<Arc<Counting>> = (0..2)
        .map(|_| {
            let _guard = rt.enter();
            Counting::bind()
        })
        .collect();
    let workers: Vec<_> = sockets
        .iter()
        .enumerate()
        .map(|(i, socket)| {
            let mut cfg = worker_config(&join, &format!("w{i}"));
            cfg.socket = Some(socket.clone());
            let progress = Arc::new(AtomicU64::new(0));
            spawn_worker(rt.handle(), cfg, App::default(), 4, Duration::ZERO, progress)
        })
        .collect();
    let apps: Vec<App> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(apps.iter().all(|a| a.history.len() == 5));
    assert_agree(&apps);
    for s in sockets.iter().chain(std::iter::once(&coordinator_socket)) {
        assert!(s.sent.load(Ordering::Relaxed) > 0, "datagrams went out through it");
        assert!(s.received.load(Ordering::Relaxed) > 0, "datagrams came in through it");
    }
    drop(node);
}

#[test]
fn a_worker_reports_its_round_trip_time_to_the_coordinator() {
    let rt = runtime();
    let node = {
        let _guard = rt.enter();
        CoordinatorNode::start(coordinator_config(1, Duration::from_secs(5))).unwrap()
    };
    let handle =
        WorkerHandle::spawn(worker_config(&node.join_string(), "w0"), rt.handle()).unwrap();
    let rtt = handle.coordinator_rtt().expect("connected");
    // Measured over the handshake on loopback: positive, and far below the initial guess.
    assert!(rtt > Duration::ZERO && rtt < Duration::from_millis(50), "{rtt:?}");
    handle.leave().unwrap();
    drop(node);
}
