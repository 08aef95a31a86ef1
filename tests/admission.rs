//! Admission under attack and at shutdown: stalled handshakes never lock
//! out honest clients or established tunnels, and the end of the shutdown
//! grace is a reset that is logged, never a clean end of stream.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::*;
use socket2::{Domain, Socket, Type};

/// A connection to the proxy from `source` (any 127.0.0.0/8 address) that
/// sends the first byte of a greeting and then says nothing more.
fn stalled_from(proxy: &Proxy, source: [u8; 4]) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    s.connect(&proxy.addr.into()).unwrap();
    let mut s = TcpStream::from(s);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&[0x05]).unwrap();
    s
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

fn shed_count(metrics: &str, reason: &str) -> u64 {
    metric_sum(
        &scrape(metrics),
        "coresocks_handshakes_shed_total",
        &[&format!("reason=\"{reason}\"")],
    )
}

#[test]
fn stalled_handshakes_from_one_address_do_not_lock_out_others() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) = Proxy::start_with_metrics(&[
        "--cores",
        "1",
        "--max-tunnels-per-core",
        "200",
        "--max-handshakes-per-client",
        "20",
        "--handshake-timeout",
        "60s",
        "--log-level",
        "info",
    ]);
    let mut tunnel = proxy.connect(&echo.target()).unwrap();
    // Far more stalled handshakes from 127.0.0.2 than the connection cap.
    let mut flood: Vec<TcpStream> = (0..400)
        .map(|_| stalled_from(&proxy, [127, 0, 0, 2]))
        .collect();
    // Clients from another address are served while the flood holds, and
    // the tunnel that was open before it keeps working.
    for _ in 0..5 {
        proxy.assert_serves(&echo);
    }
    echo_once(&mut tunnel, b"still relaying");
    // The flood cost only its own oldest handshakes: the first ones were
    // reset, the last 20 are still waiting.
    assert!(closed_without_data(&mut flood[0]));
    let shed = shed_count(&metrics, "client-handshake-budget");
    assert!(shed >= 380, "{shed} shed");
    proxy.wait_for_log(&["end=handshake-shed", "client=127.0.0.2:"]);
    flood.truncate(0);
    proxy.assert_serves(&echo);
}

#[test]
fn stalled_handshakes_from_many_addresses_are_shed_oldest_first_at_the_cap() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) = Proxy::start_with_metrics(&[
        "--cores",
        "1",
        "--max-tunnels-per-core",
        "50",
        "--handshake-timeout",
        "60s",
        "--log-level",
        "info",
    ]);
    // Established tunnels take 10 of the 50 slots.
    let mut tunnels: Vec<TcpStream> = (0..10)
        .map(|_| proxy.connect(&echo.target()).unwrap())
        .collect();
    // 300 stalled handshakes from 30 addresses: 10 each, under any
    // per-address budget, so only the connection cap applies.
    let mut flood = Vec::new();
    for i in 0..300u32 {
        flood.push(stalled_from(&proxy, [127, 0, 1, 1 + (i % 30) as u8]));
    }
    for t in &mut tunnels {
        echo_once(t, b"established tunnels are never shed");
    }
    for _ in 0..5 {
        proxy.assert_serves(&echo);
    }
    let shed = shed_count(&metrics, "connection-limit");
    assert!(shed >= 250, "{shed} shed");
    // The oldest went first; the newest are still waiting for their turn.
    assert!(closed_without_data(&mut flood[0]));
    let last = flood.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut b = [0u8; 1];
    let err = last.read(&mut b).expect_err("the newest handshake is kept");
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn the_core_handshake_budget_sheds_the_oldest() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) = Proxy::start_with_metrics(&[
        "--cores",
        "1",
        "--max-handshakes-per-core",
        "30",
        "--handshake-timeout",
        "60s",
    ]);
    let mut flood: Vec<TcpStream> = (0..100u8)
        .map(|i| stalled_from(&proxy, [127, 0, 2, 1 + i]))
        .collect();
    proxy.assert_serves(&echo);
    assert!(closed_without_data(&mut flood[0]));
    let shed = shed_count(&metrics, "handshake-budget");
    assert!(shed >= 70, "{shed} shed");
}

#[test]
fn at_the_cap_with_every_connection_established_new_ones_are_refused_and_counted() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) =
        Proxy::start_with_metrics(&["--cores", "1", "--max-tunnels-per-core", "3"]);
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| proxy.connect(&echo.target()).unwrap())
        .collect();
    let mut over = proxy.raw();
    let _ = over.write_all(&[0x05, 0x01, 0x00]);
    assert!(closed_without_data(&mut over));
    let body = scrape(&metrics);
    assert_eq!(
        metric_sum(&body, "coresocks_connections_rejected_total", &[]),
        1
    );
    assert_eq!(metric_sum(&body, "coresocks_handshakes_shed_total", &[]), 0);
    for t in &mut held {
        echo_once(t, b"kept");
    }
}

/// A target that streams data until the connection breaks.
fn streaming_target() -> (Server, std::sync::mpsc::Receiver<std::io::ErrorKind>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::start("127.0.0.1:0", move |mut s| {
        let chunk = vec![7u8; 16 * 1024];
        let kind = loop {
            if let Err(e) = s.write_all(&chunk) {
                break e.kind();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let _ = tx.lock().unwrap().send(kind);
    });
    (server, rx)
}

#[test]
fn the_end_of_the_shutdown_grace_resets_both_sides_and_logs_the_cut() {
    let (target, target_saw) = streaming_target();
    let (mut proxy, metrics) = Proxy::start_with_metrics(&["--shutdown-grace", "1s"]);
    let mut tunnel = proxy.connect(&target.target()).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    tunnel.read_exact(&mut buf[..1024]).unwrap();
    let started = Instant::now();
    proxy.signal(libc::SIGTERM);
    proxy.wait_for_log(&["draining"]);
    let before = scrape(&metrics);
    assert_eq!(metric_sum(&before, "coresocks_shutdown_cuts_total", &[]), 0);
    // The download goes on through the grace, then breaks with a reset:
    // never a clean end of stream that would pass for a complete file.
    let mut received = 1024u64;
    let end = loop {
        match tunnel.read(&mut buf) {
            Ok(0) => panic!("clean EOF after {received} bytes: a cut must be a reset"),
            Ok(n) => received += n as u64,
            Err(e) => break e.kind(),
        }
    };
    assert_eq!(end, std::io::ErrorKind::ConnectionReset);
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(
        target_saw.recv_timeout(IO_TIMEOUT).unwrap(),
        std::io::ErrorKind::ConnectionReset,
        "the target is reset too"
    );
    assert_eq!(proxy.wait_exit(IO_TIMEOUT), Some(0));
    let line = proxy.wait_for_log(&["end=shutdown-cut", "cmd=connect"]);
    let down: u64 = line
        .split(" down=")
        .nth(1)
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(
        down >= received,
        "logged {down} bytes, client got {received}"
    );
}

#[test]
fn the_end_of_the_shutdown_grace_cuts_stalled_handshakes_and_udp_too() {
    let mut proxy = Proxy::start(&["--shutdown-grace", "500ms", "--handshake-timeout", "60s"]);
    let mut stalled = stalled_from(&proxy, [127, 0, 0, 1]);
    let mut control = proxy.raw();
    coresocks::client::handshake_blocking(
        &mut control,
        coresocks::proto::Command::UdpAssociate,
        &coresocks::proto::TargetAddr::Ip("0.0.0.0:0".parse().unwrap()),
        None,
    )
    .unwrap();
    proxy.signal(libc::SIGINT);
    assert_eq!(proxy.wait_exit(IO_TIMEOUT), Some(0));
    let mut b = [0u8; 1];
    assert_eq!(
        stalled.read(&mut b).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    assert_eq!(
        control.read(&mut b).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionReset
    );
    proxy.wait_for_log(&["end=shutdown-cut", "cmd=-"]);
    proxy.wait_for_log(&["end=\"shutdown-cut", "cmd=udp-associate"]);
}
