//! UDP ASSOCIATE end to end.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::*;
use coresocks::client::{handshake_blocking, udp_datagram, udp_payload, ClientError};
use coresocks::proto::{Codec, Command, ReplyCode, TargetAddr};

/// A control connection with its association: (control, relay address).
fn associate(proxy: &Proxy, client_addr: SocketAddr) -> (TcpStream, SocketAddr) {
    let mut control = proxy.raw();
    let bound = handshake_blocking(
        &mut control,
        Command::UdpAssociate,
        &TargetAddr::Ip(client_addr),
        None,
    )
    .expect("UDP ASSOCIATE");
    let TargetAddr::Ip(relay) = bound else {
        panic!("relay address must be an IP, got {bound:?}");
    };
    assert!(
        !relay.ip().is_unspecified(),
        "BND.ADDR must be reachable, not {relay}"
    );
    (control, relay)
}

fn client_socket(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// A UDP echo target, a proxy and one association from a loopback client.
struct Association {
    echo: SocketAddr,
    proxy: Proxy,
    sock: UdpSocket,
    control: TcpStream,
    relay: SocketAddr,
}

impl Association {
    fn open(args: &[&str]) -> Association {
        let echo = udp_echo("127.0.0.1:0");
        let proxy = Proxy::start(args);
        let sock = client_socket("127.0.0.1:0");
        let (control, relay) = associate(&proxy, sock.local_addr().unwrap());
        Association {
            echo,
            proxy,
            sock,
            control,
            relay,
        }
    }

    /// `payload` to the echo target and back.
    fn echoes(&self, payload: &[u8]) {
        let (source, data) = roundtrip(&self.sock, self.relay, &TargetAddr::Ip(self.echo), payload);
        assert_eq!(
            source,
            TargetAddr::Ip(self.echo),
            "the header names the target"
        );
        assert_eq!(data, payload);
    }

    /// Sends `datagram` from `from`, then checks it was not relayed (see
    /// [`assert_not_relayed`]).
    fn drops(&self, from: &UdpSocket, datagram: &[u8], why: &str) {
        from.send_to(datagram, self.relay).unwrap();
        assert_not_relayed(
            from,
            &self.sock,
            self.relay,
            &TargetAddr::Ip(self.echo),
            why,
        );
    }

    /// Closes the control connection and waits for the association's
    /// access line with every one of `fields`.
    fn end_with(self, fields: &[&str]) -> Proxy {
        drop(self.control);
        let mut needles = vec!["cmd=udp-associate"];
        needles.extend_from_slice(fields);
        self.proxy.wait_for_log(&needles);
        self.proxy
    }
}

/// A datagram sent through `relay` before this call was not relayed: a
/// probe from `sock` to `target` comes back, and nothing came back before
/// it, to `sock` or to `sender`. An association relays its datagrams in
/// the order they arrive, so an answer to the earlier one would have been
/// sent first: the probe's echo is the evidence, not a timeout.
fn assert_not_relayed(
    sender: &UdpSocket,
    sock: &UdpSocket,
    relay: SocketAddr,
    target: &TargetAddr,
    why: &str,
) {
    let probe = b"probe after the drop";
    let (_, data) = roundtrip(sock, relay, target, probe);
    assert_eq!(data, probe, "{why}: the first answer is the probe's");
    sender.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 2048];
    let early = sender.recv_from(&mut buf);
    sender.set_nonblocking(false).unwrap();
    assert!(early.is_err(), "{why}: an answer came to the sender");
}

/// A datagram of `payload` to `target`, SOCKS5-framed.
fn datagram(target: &TargetAddr, payload: &[u8]) -> Vec<u8> {
    let mut dgram = Vec::new();
    udp_datagram(target, payload, &mut dgram);
    dgram
}

/// Sends `payload` to `target` through the relay and returns the reply.
fn roundtrip(
    sock: &UdpSocket,
    relay: SocketAddr,
    target: &TargetAddr,
    payload: &[u8],
) -> (TargetAddr, Vec<u8>) {
    sock.send_to(&datagram(target, payload), relay).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, from) = sock.recv_from(&mut buf).expect("reply through the relay");
    assert_eq!(from, relay, "replies come from the relay address");
    let (source, data) = udp_payload(&buf[..n]).unwrap();
    (source, data.to_vec())
}

/// The relay port is freed with the association (the kernel may need a
/// moment to finish the socket's last pending receive).
fn assert_port_released(relay: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = UdpSocket::bind(relay) {
        assert!(
            Instant::now() < deadline,
            "relay port {relay} still in use: {e}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn echoes_ipv4_payloads_from_1_byte_to_65000() {
    let echo = udp_echo("127.0.0.1:0");
    // The default (the core's ring, multishot polls) and each fallback.
    for flags in [
        &[][..],
        &["--multishot-poll", "false"],
        &["--event-ring", "off"],
    ] {
        let proxy = Proxy::start(flags);
        let sock = client_socket("127.0.0.1:0");
        let (_control, relay) = associate(&proxy, sock.local_addr().unwrap());
        for size in [1usize, 64, 1400, 8192, 32768, 65000] {
            let payload = pattern(size, size as u64);
            let (source, data) = roundtrip(&sock, relay, &TargetAddr::Ip(echo), &payload);
            assert_eq!(source, TargetAddr::Ip(echo), "header names the target");
            assert!(
                data == payload,
                "{flags:?}: payload of {size} bytes corrupted"
            );
        }
    }
}

#[test]
fn ipv6_client_and_ipv6_target() {
    let echo = udp_echo("[::1]:0");
    let proxy = Proxy::start(&["--listen", "[::1]:0"]);
    let sock = client_socket("[::1]:0");
    let (_control, relay) = associate(&proxy, sock.local_addr().unwrap());
    assert!(relay.is_ipv6(), "{relay}");
    for size in [1usize, 1400, 65000] {
        let payload = pattern(size, 3);
        let (source, data) = roundtrip(&sock, relay, &TargetAddr::Ip(echo), &payload);
        assert_eq!(source, TargetAddr::Ip(echo));
        assert!(data == payload);
    }
}

#[test]
fn ipv4_client_to_ipv6_target() {
    let mut a = Association::open(&[]);
    a.echo = udp_echo("[::1]:0");
    a.echoes(b"cross-family");
}

#[test]
fn domain_target_is_resolved() {
    let a = Association::open(&[]);
    let target = TargetAddr::domain("localhost", a.echo.port()).unwrap();
    for i in 0..3 {
        let (source, data) =
            roundtrip(&a.sock, a.relay, &target, format!("by name {i}").as_bytes());
        assert_eq!(source, TargetAddr::Ip(a.echo));
        assert_eq!(data, format!("by name {i}").as_bytes());
    }
}

/// A burst larger than one receive batch (16 datagrams), led by a name
/// that needs a lookup: the datagrams taken with it wait behind the lookup
/// and go out after it, none lost and in order, and the association then
/// serves the next datagram.
#[test]
fn a_burst_behind_a_name_lookup_arrives_whole_and_in_order() {
    let a = Association::open(&[]);
    let (echo, sock, relay) = (a.echo, &a.sock, a.relay);
    let by_name = TargetAddr::domain("localhost", echo.port()).unwrap();
    let by_ip = TargetAddr::Ip(echo);
    const BURST: usize = 50;
    for i in 0..BURST {
        let target = if i % 2 == 0 { &by_name } else { &by_ip };
        sock.send_to(&datagram(target, format!("burst {i:02}").as_bytes()), relay)
            .unwrap();
    }
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    for _ in 0..BURST {
        let (n, from) = sock
            .recv_from(&mut buf)
            .expect("every datagram of the burst comes back");
        assert_eq!(from, relay);
        let (source, data) = udp_payload(&buf[..n]).unwrap();
        assert_eq!(source, TargetAddr::Ip(echo));
        got.push(String::from_utf8(data.to_vec()).unwrap());
    }
    let sent: Vec<String> = (0..BURST).map(|i| format!("burst {i:02}")).collect();
    assert_eq!(got, sent, "in the order sent");
    let (_, data) = roundtrip(sock, relay, &by_name, b"after the burst");
    assert_eq!(data, b"after the burst");
}

#[test]
fn fragments_are_dropped_and_counted() {
    let a = Association::open(&[]);
    let mut dgram = Vec::new();
    coresocks::proto::UdpHeader {
        frag: 1,
        target: TargetAddr::Ip(a.echo),
    }
    .encode(&mut dgram);
    dgram.extend_from_slice(b"fragment");
    a.drops(&a.sock, &dgram, "a fragment");
    a.end_with(&["dropped_frag=1", "datagrams_up=1", "datagrams_down=1"]);
}

#[test]
fn datagrams_with_nonzero_reserved_bytes_are_dropped_and_counted() {
    let a = Association::open(&[]);
    let mut dgram = datagram(&TargetAddr::Ip(a.echo), b"reserved");
    dgram[0] = 0x01; // RSV must be 0x0000
    a.drops(&a.sock, &dgram, "RSV set");
    a.end_with(&["dropped_reserved=1", "datagrams_up=1", "datagrams_down=1"]);
}

#[test]
fn datagrams_from_another_source_are_dropped() {
    let a = Association::open(&[]);
    let stranger = client_socket("127.0.0.1:0");
    a.drops(
        &stranger,
        &datagram(&TargetAddr::Ip(a.echo), b"not mine"),
        "a stranger",
    );
    a.end_with(&["dropped_foreign=1"]);
}

#[test]
fn zero_address_binds_to_the_first_sender_port_of_the_control_peer() {
    let echo = udp_echo("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let sock = client_socket("127.0.0.1:0");
    let other = client_socket("127.0.0.1:0");
    let (_control, relay) = associate(&proxy, "0.0.0.0:0".parse().unwrap());
    let (_, data) = roundtrip(&sock, relay, &TargetAddr::Ip(echo), b"first");
    assert_eq!(data, b"first");
    other
        .send_to(&datagram(&TargetAddr::Ip(echo), b"second port"), relay)
        .unwrap();
    assert_not_relayed(
        &other,
        &sock,
        relay,
        &TargetAddr::Ip(echo),
        "the first datagram fixed the client's port",
    );
}

#[test]
fn closing_control_connection_ends_the_association() {
    let a = Association::open(&[]);
    a.echoes(b"before");
    let relay = a.relay;
    let _proxy = a.end_with(&["end=\"control-closed"]);
    // Once the port is free no socket of the association is left to relay.
    assert_port_released(relay);
}

#[test]
fn idle_association_times_out_and_closes_control() {
    let proxy = Proxy::start(&["--udp-idle-timeout", "1s"]);
    let sock = client_socket("127.0.0.1:0");
    let (mut control, relay) = associate(&proxy, sock.local_addr().unwrap());
    let started = Instant::now();
    assert!(closed_without_data(&mut control));
    assert!(started.elapsed() >= Duration::from_millis(900));
    proxy.wait_for_log(&["end=\"idle-timeout"]);
    assert_port_released(relay);
}

#[test]
fn association_limit_answers_general_failure() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--cores", "1", "--max-udp-associations-per-core", "1"]);
    let sock = client_socket("127.0.0.1:0");
    let (_first, _) = associate(&proxy, sock.local_addr().unwrap());
    let mut second = proxy.raw();
    let err = handshake_blocking(
        &mut second,
        Command::UdpAssociate,
        &TargetAddr::Ip("0.0.0.0:0".parse().unwrap()),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(ReplyCode::GeneralFailure)),
        "{err}"
    );
    proxy.wait_for_log(&["end=udp-limit"]);
    proxy.assert_serves(&echo);
}

#[test]
fn a_thousand_associations_over_all_cores_each_echo_intact() {
    const ASSOCIATIONS: usize = 1000;
    const THREADS: usize = 10;
    let echo = udp_echo("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let proxy_addr = proxy.addr;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut open = Vec::new();
                for i in 0..ASSOCIATIONS / THREADS {
                    let sock = client_socket("127.0.0.1:0");
                    let mut control = TcpStream::connect(proxy_addr).unwrap();
                    control.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let bound = handshake_blocking(
                        &mut control,
                        Command::UdpAssociate,
                        &TargetAddr::Ip(sock.local_addr().unwrap()),
                        None,
                    )
                    .unwrap();
                    let TargetAddr::Ip(relay) = bound else {
                        panic!()
                    };
                    let payload = pattern(512, (t * 10_000 + i) as u64);
                    let (_, data) = roundtrip(&sock, relay, &TargetAddr::Ip(echo), &payload);
                    assert!(data == payload, "association {t}/{i} corrupted");
                    open.push((control, sock));
                }
                open.len()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, ASSOCIATIONS);
    // Every association reports its datagrams on the core that owns it.
    let cores = coresocks_io::sys::allowed_cpus().unwrap().len();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let lines: Vec<String> = access_lines(&proxy)
            .into_iter()
            .filter(|l| l.contains("cmd=udp-associate"))
            .collect();
        if lines.len() == ASSOCIATIONS {
            for l in &lines {
                assert!(l.contains("datagrams_up=1 datagrams_down=1"), "{l}");
            }
            let served_by: std::collections::HashSet<&str> = lines
                .iter()
                .filter_map(|l| l.split("conn=").nth(1)?.split('.').next())
                .collect();
            assert_eq!(served_by.len(), cores, "{served_by:?}");
            break;
        }
        // Each thread closed its control connections when it returned;
        // wait for every association to log its end.
        assert!(
            Instant::now() < deadline,
            "{} of {ASSOCIATIONS} associations logged",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn datagrams_to_denied_destinations_are_dropped_in_every_spelling() {
    // Only 127.0.0.1 is open: 127.0.0.2 stays private, denied.
    let a = Association::open(&["--allow", "127.0.0.1"]);
    let port = a.echo.port();
    let denied = [
        TargetAddr::Ip(SocketAddr::from(([127, 0, 0, 2], port))),
        TargetAddr::Ip(format!("[::ffff:127.0.0.2]:{port}").parse().unwrap()),
        TargetAddr::Domain("127.0.0.2".into(), port),
    ];
    for target in &denied {
        a.drops(&a.sock, &datagram(target, b"denied"), &format!("{target}"));
    }
    a.end_with(&["dropped_denied=3", "datagrams_up=3"]);
}

#[test]
fn datagrams_leave_from_the_egress_source() {
    // A UDP target that answers with the address it saw.
    let target = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = target.recv_from(&mut buf) {
            let _ = target.send_to(from.ip().to_string().as_bytes(), from);
        }
    });
    let proxy = Proxy::start(&["--allow", "127.0.0.0/8", "--egress-source", "127.0.0.2"]);
    let sock = client_socket("127.0.0.1:0");
    let (_control, relay) = associate(&proxy, sock.local_addr().unwrap());
    let (_, seen) = roundtrip(&sock, relay, &TargetAddr::Ip(target_addr), b"who am i");
    assert_eq!(seen, b"127.0.0.2");
}

#[test]
fn the_advertised_relay_address_is_the_configured_one() {
    let mut a = Association::open(&["--udp-advertise", "192.0.2.7"]);
    assert_eq!(a.relay.ip().to_string(), "192.0.2.7");
    // The relay itself listens where the client connected, on that port.
    a.relay = SocketAddr::from(([127, 0, 0, 1], a.relay.port()));
    a.echoes(b"behind NAT");
}

#[test]
fn datagrams_over_the_bandwidth_limit_are_dropped_and_counted() {
    let echo = udp_echo("127.0.0.1:0");
    // 1,000 B/s each way: the bucket holds one 1,000-byte datagram (and
    // 50 bytes more), then refills a byte per millisecond.
    let (proxy, metrics) =
        Proxy::start_with_metrics(&["--cores", "1", "--bandwidth-per-client", "1000"]);
    let sock = client_socket("127.0.0.1:0");
    let (control, relay) = associate(&proxy, sock.local_addr().unwrap());
    let payload = vec![0x5a_u8; 1_000];
    let (_, data) = roundtrip(&sock, relay, &TargetAddr::Ip(echo), &payload);
    assert_eq!(data, payload, "the first datagram fits and comes back");
    let dgram = datagram(&TargetAddr::Ip(echo), &payload);
    for _ in 0..9 {
        sock.send_to(&dgram, relay).unwrap();
    }
    // A 1-byte probe once the bucket has refilled a little: its echo says
    // the proxy has judged everything sent before it.
    std::thread::sleep(Duration::from_millis(100));
    sock.send_to(&datagram(&TargetAddr::Ip(echo), b"!"), relay)
        .unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = sock.recv_from(&mut buf).expect("the probe's echo");
        if udp_payload(&buf[..n]).unwrap().1 == b"!" {
            break;
        }
    }
    drop(control);
    let line = proxy.wait_for_log(&["cmd=udp-associate", "dropped_bandwidth="]);
    let field = |name: &str| -> u64 {
        let at = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|v| v.parse().ok())
            .expect(name)
    };
    let (up, dropped) = (field("datagrams_up"), field("dropped_bandwidth"));
    // Nine datagrams sent back to back can refill the bucket for one more
    // only if the machine stalled the sender for about a second each.
    assert!(dropped >= 1, "{line}");
    assert!(up >= 2, "the first and the probe passed: {line}");
    // Every datagram sent was relayed or dropped for bandwidth (echoes
    // of those relayed may be dropped on the way down too).
    assert!(up + dropped >= 11 && up <= 11, "{line}");
    let body = scrape(&metrics);
    assert_eq!(
        metric_sum(&body, "coresocks_udp_datagrams_over_bandwidth_total", &[]),
        dropped
    );
    proxy.assert_serves(&echo_server("127.0.0.1:0"));
}
