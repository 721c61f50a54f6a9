//! The fabric in a paused runtime: what the receiving socket sees matches the link.

use std::future::poll_fn;

use super::*;
use crate::link::LinkSpec;
use crate::units::{Dur, Prob, QueueLimit, Rate};

fn paused<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(f)
}

/// Receives one datagram through the `AsyncUdpSocket` interface quinn uses.
async fn recv(socket: &SimSocket) -> (SocketAddr, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    let mut meta = [RecvMeta::default()];
    let n = poll_fn(|cx| socket.poll_recv(cx, &mut [IoSliceMut::new(&mut buf)], &mut meta))
        .await
        .unwrap();
    assert_eq!(n, 1);
    (meta[0].addr, buf[..meta[0].len].to_vec())
}

fn transmit(to: SocketAddr, data: &[u8]) -> Transmit<'_> {
    Transmit { destination: to, ecn: None, contents: data, segment_size: None, src_ip: None }
}

fn one_way(spec: LinkSpec) -> Topology {
    Topology::point_to_point(spec, LinkSpec::default())
}

#[test]
fn one_way_delay_over_the_fabric_is_the_link_delay() {
    paused(async {
        let spec = LinkSpec { delay: Dur(Duration::from_millis(35)), ..LinkSpec::default() };
        let fabric = Fabric::new(one_way(spec), 1);
        let (a, b) = (fabric.bind("a").unwrap(), fabric.bind("b").unwrap());
        assert!(!a.may_fragment());
        for i in 0..20u8 {
            let sent = Instant::now();
            a.try_send(&transmit(b.addr(), &[i; 100])).unwrap();
            let (from, data) = recv(&b).await;
            let took = sent.elapsed();
            assert_eq!((from, data), (a.addr(), vec![i; 100]));
            // Delivered on the first 1 ms timer tick at or after the arrival time.
            let ms = Duration::from_millis(1);
            assert!(took >= 35 * ms && took <= 36 * ms, "{took:?}");
            tokio::time::sleep(Duration::from_micros(1700)).await;
        }
    });
}

#[test]
fn throughput_over_the_fabric_is_the_link_rate() {
    paused(async {
        let rate = 100e6;
        let spec = LinkSpec {
            delay: Dur(Duration::from_millis(20)),
            rate: Some(Rate::new(rate).unwrap()),
            queue: QueueLimit::Bytes(256 * 1024),
            ..LinkSpec::default()
        };
        let fabric = Fabric::new(one_way(spec), 1);
        let (a, b) = (fabric.bind("a").unwrap(), fabric.bind("b").unwrap());
        let dst = b.addr();
        // Offer 1.5× the rate for 3 s: 1 ms batches of 1222-byte payloads (1250 on the wire).
        let per_ms = (1.5 * rate / 8.0 / 1250.0 / 1000.0).ceil() as usize;
        let sender = tokio::spawn(async move {
            for _ in 0..3000 {
                for _ in 0..per_ms {
                    a.try_send(&transmit(dst, &[7; 1222])).unwrap();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let start = Instant::now();
        let mut arrivals = Vec::new();
        // 10 000 datagrams a second arrive: 26 000 takes past the end of the window.
        while arrivals.len() < 26_000 {
            recv(&b).await;
            arrivals.push(start.elapsed());
        }
        sender.abort();
        let (from, to) = (Duration::from_millis(500), Duration::from_millis(2500));
        let n = arrivals.iter().filter(|t| **t >= from && **t < to).count();
        let measured = n as f64 * 1250.0 * 8.0 / (to - from).as_secs_f64();
        assert!((measured / rate - 1.0).abs() < 0.02, "{measured} b/s");
        let stats = fabric.stats();
        let ab = stats.links[&("a".to_string(), "b".to_string())];
        assert!(ab.dropped_queue.datagrams > 0, "the excess is dropped at the tail");
    });
}

#[test]
fn loss_over_the_fabric_matches_the_link_and_the_stats() {
    paused(async {
        let p = 0.01;
        let spec = LinkSpec {
            delay: Dur(Duration::from_millis(5)),
            loss: Prob::new(p).unwrap(),
            ..LinkSpec::default()
        };
        let fabric = Fabric::new(one_way(spec), 3);
        let (a, b) = (fabric.bind("a").unwrap(), fabric.bind("b").unwrap());
        let n = 50_000;
        for i in 0..n {
            a.send_to(b.addr(), &(i as u32).to_le_bytes());
            if i % 100 == 99 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut received = 0;
        while b.try_recv().is_some() {
            received += 1;
        }
        let ab = fabric.stats().links[&("a".to_string(), "b".to_string())];
        assert_eq!(ab.offered.datagrams, n);
        assert_eq!(ab.delivered.datagrams, received);
        let lost = (n - received) as f64 / n as f64;
        assert!((lost - p).abs() < 5.0 * (p * (1.0 - p) / n as f64).sqrt(), "{lost}");
        assert_eq!(ab.lost_random.datagrams, n - received);
    });
}

#[test]
fn a_host_that_is_down_neither_sends_nor_receives() {
    paused(async {
        let fabric = Fabric::new(one_way(LinkSpec::default()), 1);
        let (a, b) = (fabric.bind("a").unwrap(), fabric.bind("b").unwrap());
        fabric.set_host_down(b.addr(), true);
        a.send_to(b.addr(), b"lost");
        b.send_to(a.addr(), b"lost too");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(b.try_recv().is_none() && a.try_recv().is_none());
        fabric.set_host_down(b.addr(), false);
        a.send_to(b.addr(), b"back");
        assert_eq!(recv(&b).await.1, b"back");
        let stats = fabric.stats();
        assert_eq!(stats.links[&("a".into(), "b".into())].dropped_host.datagrams, 1);
        assert_eq!(stats.links[&("b".into(), "a".into())].dropped_host.datagrams, 1);
        // A link set down drops too, until it is restored.
        fabric.set_link_down("a", "b", true).unwrap();
        a.send_to(b.addr(), b"cut");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(b.try_recv().is_none());
        fabric.set_link_down("a", "b", false).unwrap();
        a.send_to(b.addr(), b"restored");
        assert_eq!(recv(&b).await.1, b"restored");
        assert!(fabric.set_link_down("a", "mars", true).is_err());
    });
}

#[test]
fn a_rebound_address_reaches_the_new_socket_and_the_old_one_goes_silent() {
    paused(async {
        let fabric = Fabric::new(one_way(LinkSpec::default()), 1);
        let (a, b) = (fabric.bind("a").unwrap(), fabric.bind("b").unwrap());
        let old = b.addr();
        let b2 = fabric.rebind(old).unwrap();
        assert_eq!(b2.addr(), old);
        a.send_to(old, b"to the restarted host");
        assert_eq!(recv(&b2).await.1, b"to the restarted host");
        assert!(b.try_recv().is_none(), "the old socket hears nothing");
        b.send_to(a.addr(), b"from the dead");
        b2.send_to(a.addr(), b"from the living");
        assert_eq!(recv(&a).await, (old, b"from the living".to_vec()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(a.try_recv().is_none());
        // Dropping the old socket late does not close the new one.
        drop(b);
        a.send_to(old, b"still there");
        assert_eq!(recv(&b2).await.1, b"still there");
        let unknown: SocketAddr = "10.9.9.9:1".parse().unwrap();
        assert!(matches!(fabric.rebind(unknown), Err(SimError::UnknownHost { .. })));
    });
}

#[test]
fn a_scheduled_outage_counts_from_the_fabric_start() {
    paused(async {
        let spec = LinkSpec {
            outages: vec![crate::link::Window {
                at: Dur(Duration::from_secs(1)),
                duration: Dur(Duration::from_secs(1)),
            }],
            ..LinkSpec::default()
        };
        let fabric = Fabric::new(one_way(spec), 1);
        let (a, b) = (fabric.bind("a").unwrap(), fabric.bind("b").unwrap());
        let mut got = Vec::new();
        for i in 0..30u8 {
            a.send_to(b.addr(), &[i]);
            tokio::time::sleep(Duration::from_millis(100)).await;
            while let Some((_, d)) = b.try_recv() {
                got.push(d[0]);
            }
        }
        // Sent at 0.0 .. 2.9 s; those sent in [1 s, 2 s) are gone.
        let expect: Vec<u8> = (0..30).filter(|i| !(10..20).contains(i)).collect();
        assert_eq!(got, expect);
    });
}

/// Arrival times and contents at `b` for a fixed send pattern over a lossy, jittery link.
fn trace(seed: u64) -> Vec<(Duration, Vec<u8>)> {
    paused(async move {
        let spec = LinkSpec {
            delay: Dur(Duration::from_millis(40)),
            jitter: Dur(Duration::from_millis(10)),
            rate: Some(Rate::new(10e6).unwrap()),
            loss: Prob::new(0.05).unwrap(),
            reorder: Prob::new(0.05).unwrap(),
            duplicate: Prob::new(0.02).unwrap(),
            ..LinkSpec::default()
        };
        let fabric = Fabric::new(one_way(spec), seed);
        let (a, b) = (fabric.bind("a").unwrap(), fabric.bind("b").unwrap());
        let start = Instant::now();
        let dst = b.addr();
        tokio::spawn(async move {
            for i in 0..2000u32 {
                a.send_to(dst, &i.to_le_bytes().repeat(100));
                tokio::time::sleep(Duration::from_micros(300 + (i % 7) as u64 * 100)).await;
            }
        });
        let mut out = Vec::new();
        while start.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            while let Some((_, d)) = b.try_recv() {
                out.push((start.elapsed(), d.to_vec()));
            }
        }
        out
    })
}

#[test]
fn same_seed_same_deliveries_at_the_same_times() {
    let first = trace(42);
    assert!(first.len() > 1500);
    assert_eq!(first, trace(42));
    assert_ne!(first, trace(43));
}

#[test]
fn binding_an_unknown_region_is_an_error() {
    paused(async {
        let fabric = Fabric::new(Topology::preset("lan").unwrap(), 1);
        let e = fabric.bind("mars").unwrap_err().to_string();
        assert!(e.contains("mars") && e.contains("lan"), "{e}");
        let s = fabric.bind("lan").unwrap();
        assert_eq!(fabric.region_of(s.addr()).as_deref(), Some("lan"));
    });
}
