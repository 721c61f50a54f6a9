//! The proxy over loopback with real sockets and real time. Delays are asserted as lower
//! bounds that follow from the model; upper bounds only catch gross errors.

use super::*;

const MS: Duration = Duration::from_millis(1);

fn spec(text: &str) -> LinkSpec {
    parse_link_spec(text).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// A quiet proxy's settings, from a fresh port to `server`.
fn config(server: &UdpSocket, up: LinkSpec, down: LinkSpec) -> ProxyConfig {
    let mut cfg =
        ProxyConfig::new("127.0.0.1:0".parse().unwrap(), server.local_addr().unwrap(), up, down);
    cfg.report_every = None;
    cfg
}

/// A proxy from a fresh port to `server`.
async fn proxy(server: &UdpSocket, up: LinkSpec, down: LinkSpec) -> Proxy {
    Proxy::start(config(server, up, down)).await.unwrap()
}

async fn recv(s: &UdpSocket, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    tokio::time::timeout(Duration::from_secs(5), s.recv_from(buf)).await.ok().map(|r| r.unwrap())
}

#[test]
fn echo_through_the_proxy_sees_each_directions_delay() {
    rt().block_on(async {
        let server = socket().await;
        let p = proxy(&server, spec("delay = \"30ms\""), spec("{ delay = \"20ms\" }")).await;
        let client = socket().await;
        let mut buf = [0u8; 64];
        for i in 0..3u8 {
            let sent = Instant::now();
            client.send_to(&[i; 10], p.local_addr()).await.unwrap();
            let (len, from) = recv(&server, &mut buf).await.unwrap();
            let up = sent.elapsed();
            assert_eq!(&buf[..len], &[i; 10]);
            server.send_to(b"reply", from).await.unwrap();
            let back = Instant::now();
            let (len, from) = recv(&client, &mut buf).await.unwrap();
            let down = back.elapsed();
            assert_eq!(&buf[..len], b"reply");
            assert_eq!(from, p.local_addr(), "the reply comes from the proxy");
            assert!(up >= 30 * MS, "up {up:?}");
            assert!(down >= 20 * MS, "down {down:?}");
            // Gross errors only (a delay applied twice, a lost timer): this machine is noisy.
            assert!(up < 30 * MS + Duration::from_secs(2), "up {up:?}");
        }
        let s = p.shutdown();
        assert_eq!((s.up.offered.datagrams, s.up.delivered.datagrams), (3, 3));
        assert_eq!((s.down.offered.datagrams, s.down.delivered.datagrams), (3, 3));
        assert_eq!(s.up.delivered.bytes, 30);
        assert_eq!(s.mappings, 1, "one client, one mapping");
    });
}

#[test]
fn total_loss_drops_everything_and_counts_it() {
    rt().block_on(async {
        let server = socket().await;
        let p = proxy(&server, spec("loss = \"100%\""), LinkSpec::default()).await;
        let client = socket().await;
        for _ in 0..20 {
            client.send_to(&[7; 100], p.local_addr()).await.unwrap();
        }
        let mut buf = [0u8; 200];
        let got = tokio::time::timeout(200 * MS, server.recv_from(&mut buf)).await;
        assert!(got.is_err(), "a datagram crossed a link with 100% loss");
        let s = p.stats();
        assert_eq!(s.up.offered.datagrams, 20);
        assert_eq!(s.up.lost_random.datagrams, 20);
        assert_eq!(s.up.lost_random.bytes, 2000);
        assert_eq!(s.up.delivered.datagrams, 0);
    });
}

#[test]
fn a_rate_limit_spreads_a_burst_over_its_serialization_time() {
    rt().block_on(async {
        let server = socket().await;
        // 472 B + 28 B of headers = 4000 bits: 4 ms each at 1 Mb/s; 20 of them take 80 ms,
        // inside the default 100 ms queue.
        let p = proxy(&server, spec("rate = \"1Mbps\""), LinkSpec::default()).await;
        let client = socket().await;
        let start = Instant::now();
        for i in 0..20u8 {
            client.send_to(&[i; 472], p.local_addr()).await.unwrap();
        }
        let mut buf = [0u8; 600];
        for i in 0..20u8 {
            let (len, _) = recv(&server, &mut buf).await.unwrap();
            assert_eq!((len, buf[0]), (472, i), "in order, whole");
        }
        let took = start.elapsed();
        assert!(took >= 80 * MS, "20 × 4 ms of serialization took only {took:?}");
        assert_eq!(p.stats().up.dropped_queue.datagrams, 0);
    });
}

#[test]
fn each_client_gets_its_own_mapping_and_idle_ones_expire() {
    rt().block_on(async {
        let server = socket().await;
        let mut cfg = config(&server, LinkSpec::default(), LinkSpec::default());
        cfg.idle_timeout = 100 * MS;
        let p = Proxy::start(cfg).await.unwrap();
        let (a, b) = (socket().await, socket().await);
        a.send_to(b"a", p.local_addr()).await.unwrap();
        b.send_to(b"b", p.local_addr()).await.unwrap();
        let mut buf = [0u8; 8];
        let mut upstream = Vec::new();
        for _ in 0..2 {
            let (len, from) = recv(&server, &mut buf).await.unwrap();
            upstream.push((buf[..len].to_vec(), from));
        }
        assert_ne!(upstream[0].1, upstream[1].1, "two clients, two upstream sockets");
        // Reply to each upstream socket with its own client's letter, upper-cased.
        for (data, from) in &upstream {
            server.send_to(&[data[0].to_ascii_uppercase()], from).await.unwrap();
        }
        let (len, _) = recv(&a, &mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"A");
        let (len, _) = recv(&b, &mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"B");
        assert_eq!(p.stats().mappings, 2);
        tokio::time::sleep(300 * MS).await;
        let s = p.stats();
        assert_eq!((s.mappings, s.expired), (0, 2), "idle mappings expire");
        // A client that comes back gets a new mapping and still gets through.
        a.send_to(b"again", p.local_addr()).await.unwrap();
        let (len, _) = recv(&server, &mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"again");
    });
}

#[test]
fn clients_beyond_the_limit_are_refused() {
    rt().block_on(async {
        let server = socket().await;
        let mut cfg = config(&server, LinkSpec::default(), LinkSpec::default());
        cfg.max_clients = 1;
        let p = Proxy::start(cfg).await.unwrap();
        let (a, b) = (socket().await, socket().await);
        a.send_to(b"a", p.local_addr()).await.unwrap();
        let mut buf = [0u8; 8];
        let (len, _) = recv(&server, &mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"a");
        b.send_to(b"b", p.local_addr()).await.unwrap();
        a.send_to(b"a2", p.local_addr()).await.unwrap();
        let (len, _) = recv(&server, &mut buf).await.unwrap();
        assert_eq!(&buf[..len], b"a2", "the mapped client still passes, the new one does not");
        let s = p.stats();
        assert_eq!((s.mappings, s.refused, s.up.offered.datagrams), (1, 1, 2));
    });
}

#[test]
fn link_specs_parse_from_inline_tables_and_bad_ones_are_clear_errors() {
    let s = spec("{ delay = \"20ms\", rate = \"100Mbps\", loss = \"1%\" }");
    assert_eq!(s.delay.0, 20 * MS);
    assert_eq!(s.rate.map(|r| r.bits_per_sec()), Some(100e6));
    assert_eq!(spec("delay = \"5ms\", jitter = \"1ms\"").jitter.0, MS);
    for (text, needle) in [
        ("rate = \"-5Mbps\"", "positive"),
        ("delay = 20", "unit"),
        ("{ delay = \"20ms\", colour = 1 }", "colour"),
        ("delay = \"20ms", "link spec"),
        ("max_datagram = 0", "max_datagram"),
    ] {
        let err = parse_link_spec(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
}

#[test]
fn topology_links_give_up_and_reverse_down() {
    let t = Topology::preset("cross-continent").unwrap();
    let (up, down) = links_from_topology(&t, "ap-southeast -> us-east").unwrap();
    assert_eq!(&up, t.link("ap-southeast", "us-east").unwrap());
    assert_eq!(&down, t.link("us-east", "ap-southeast").unwrap());
    let err = links_from_topology(&t, "mars -> us-east").unwrap_err().to_string();
    assert!(err.contains("mars"), "{err}");
    let err = links_from_topology(&t, "us-east").unwrap_err().to_string();
    assert!(err.contains("->"), "{err}");
}

#[test]
fn a_bad_link_is_refused_before_binding() {
    rt().block_on(async {
        let bad = LinkSpec { max_datagram: 0, ..LinkSpec::default() };
        let cfg = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            LinkSpec::default(),
            bad,
        );
        let err = Proxy::start(cfg).await.err().unwrap().to_string();
        assert!(err.contains("down link") && err.contains("max_datagram"), "{err}");
    });
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn forwarding_to_its_own_listen_address_is_recognised() {
    let a = |s: &str| s.parse::<SocketAddr>().unwrap();
    for (listen, to) in [
        ("127.0.0.1:7071", "127.0.0.1:7071"),
        ("0.0.0.0:7071", "127.0.0.1:7071"),
        ("127.0.0.1:7071", "0.0.0.0:7071"),
        ("[::]:7071", "127.0.0.1:7071"),
        ("[::1]:7071", "[::1]:7071"),
        ("127.0.0.1:7071", "[::ffff:127.0.0.1]:7071"),
    ] {
        assert!(forwards_to_itself(a(listen), a(to)), "{listen} -> {to} loops");
    }
    for (listen, to) in [
        ("127.0.0.1:7071", "127.0.0.1:7070"),
        ("127.0.0.1:7071", "127.0.0.2:7071"),
        ("0.0.0.0:7071", "[::1]:7071"),
        // TEST-NET-2: an address of no host here.
        ("0.0.0.0:7071", "198.51.100.1:7071"),
    ] {
        assert!(!forwards_to_itself(a(listen), a(to)), "{listen} -> {to} does not loop");
    }
}

#[test]
fn a_proxy_that_would_forward_to_itself_is_refused_at_start() {
    rt().block_on(async {
        let port = free_port();
        for listen in ["127.0.0.1", "0.0.0.0"] {
            let cfg = ProxyConfig::new(
                format!("{listen}:{port}").parse().unwrap(),
                format!("127.0.0.1:{port}").parse().unwrap(),
                LinkSpec::default(),
                LinkSpec::default(),
            );
            let err = Proxy::start(cfg).await.err().expect("a looping proxy started").to_string();
            assert!(err.contains("own listen address") && err.contains(&port.to_string()), "{err}");
        }
        let cfg = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
            LinkSpec::default(),
            LinkSpec::default(),
        );
        let err = Proxy::start(cfg).await.err().expect("forwarding to port 0").to_string();
        assert!(err.contains("port 0"), "{err}");
    });
}

#[test]
fn a_closed_server_port_counts_refusals_and_no_datagram_is_called_delivered() {
    rt().block_on(async {
        let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cfg = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            closed,
            LinkSpec::default(),
            LinkSpec::default(),
        );
        cfg.report_every = None;
        let p = Proxy::start(cfg).await.unwrap();
        let client = socket().await;
        for i in 0..5u8 {
            client.send_to(&[i; 10], p.local_addr()).await.unwrap();
            // Time for the port-unreachable answer to come back before the next one.
            tokio::time::sleep(50 * MS).await;
        }
        let s = p.shutdown();
        assert_eq!(s.up.offered.datagrams, 5);
        assert_eq!(s.up.delivered.datagrams + s.up_errors.failed.datagrams, 5, "{s}");
        assert!(s.up_errors.refused >= 1, "nobody listens at {closed}, yet no refusal: {s}");
        let text = s.to_string();
        assert!(text.contains("forwarded") && !text.contains("delivered"), "{text}");
        assert!(
            text.contains(&format!("{} refused by the receiver", s.up_errors.refused)),
            "{text}"
        );
    });
}

#[test]
fn a_destination_the_socket_cannot_send_to_counts_as_failed_not_forwarded() {
    rt().block_on(async {
        // The limited broadcast address: sockets refuse it without SO_BROADCAST.
        let mut cfg = ProxyConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            "255.255.255.255:9".parse().unwrap(),
            LinkSpec::default(),
            LinkSpec::default(),
        );
        cfg.report_every = None;
        let p = Proxy::start(cfg).await.unwrap();
        let client = socket().await;
        for _ in 0..3 {
            client.send_to(b"x", p.local_addr()).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.stats().up_errors.failed.datagrams < 3 {
            assert!(Instant::now() < deadline, "{}", p.stats());
            tokio::time::sleep(10 * MS).await;
        }
        let s = p.stats();
        assert_eq!((s.up.delivered.datagrams, s.up_errors.failed.datagrams), (0, 3), "{s}");
    });
}
