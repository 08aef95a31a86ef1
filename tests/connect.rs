//! CONNECT end to end: address types, data integrity, half-close, resets,
//! many concurrent tunnels.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::thread;

use crate::common::*;
use coresocks::proto::{Codec, TargetAddr};

#[test]
fn connects_to_ipv4_target() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    proxy.assert_serves(&echo);
    let line = proxy.wait_for_log(&["cmd=connect", "reply=succeeded", "end=closed"]);
    assert!(line.contains(&format!("target={}", echo.addr)), "{line}");
}

#[test]
fn connects_to_ipv6_target() {
    let echo = echo_server("[::1]:0");
    let proxy = Proxy::start(&[]);
    proxy.assert_serves(&echo);
}

#[test]
fn proxy_listens_on_ipv6() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--listen", "[::1]:0"]);
    assert!(proxy.addr.is_ipv6());
    proxy.assert_serves(&echo);
}

#[test]
fn listens_on_several_addresses_at_once() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
    let v6 = proxy.wait_for_log(&["ready on"]);
    let addrs: Vec<std::net::SocketAddr> = v6
        .split(" ready on ")
        .nth(1)
        .unwrap()
        .split(" with ")
        .next()
        .unwrap()
        .split(", ")
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(addrs.len(), 2, "{v6}");
    for addr in addrs {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        coresocks::client::handshake_blocking(
            &mut s,
            coresocks::proto::Command::Connect,
            &echo.target(),
            None,
        )
        .unwrap();
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
}

#[test]
fn connects_to_domain_target() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let target = TargetAddr::domain("localhost", echo.addr.port()).unwrap();
    let mut s = proxy.connect(&target).unwrap();
    s.write_all(b"hello").unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hello");
    drop(s);
    let line = proxy.wait_for_log(&["target=localhost:", "end=closed"]);
    assert!(
        line.contains(&format!("resolved=127.0.0.1:{}", echo.addr.port())),
        "{line}"
    );
}

#[test]
fn bound_address_is_the_outbound_socket() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let mut s = proxy.raw();
    let bound = coresocks::client::handshake_blocking(
        &mut s,
        coresocks::proto::Command::Connect,
        &echo.target(),
        None,
    )
    .unwrap();
    match bound {
        TargetAddr::Ip(sa) => {
            assert_eq!(sa.ip().to_string(), "127.0.0.1");
            assert_ne!(sa.port(), 0);
        }
        other => panic!("unexpected BND {other:?}"),
    }
}

const BIG: usize = 64 << 20;

#[test]
fn uploads_64_mib_intact() {
    // The target hashes until the client's FIN, then answers with the
    // digest: also proves the FIN is passed on while the reverse direction
    // stays open.
    let sink = Server::start("127.0.0.1:0", |mut s| {
        let (n, digest) = hash_until_eof(&mut s).unwrap();
        s.write_all(&n.to_be_bytes()).unwrap();
        s.write_all(&digest).unwrap();
    });
    let proxy = Proxy::start(&[]);
    let data = pattern(BIG, 1);
    let mut s = proxy.connect(&sink.target()).unwrap();
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let reply = read_to_end(&mut s);
    assert_eq!(reply.len(), 40);
    assert_eq!(
        u64::from_be_bytes(reply[..8].try_into().unwrap()),
        BIG as u64
    );
    assert_eq!(reply[8..], sha256(&data));
    let line = proxy.wait_for_log(&["end=closed", &format!("up={BIG}")]);
    assert!(line.contains("down=40"), "{line}");
}

#[test]
fn downloads_64_mib_intact() {
    let source = Server::start("127.0.0.1:0", |mut s| {
        let _ = s.write_all(&pattern(BIG, 2));
    });
    let proxy = Proxy::start(&[]);
    let mut s = proxy.connect(&source.target()).unwrap();
    let (n, digest) = hash_until_eof(&mut s).unwrap();
    assert_eq!(n, BIG as u64);
    assert_eq!(digest, sha256(&pattern(BIG, 2)));
}

#[test]
fn client_half_close_keeps_target_to_client_open() {
    // Target reads to EOF, then sends a reply after the client's FIN.
    let server = Server::start("127.0.0.1:0", |mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        thread::sleep(std::time::Duration::from_millis(100));
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .unwrap();
    });
    let proxy = Proxy::start(&[]);
    let mut s = proxy.connect(&server.target()).unwrap();
    s.write_all(&[7u8; 1000]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_to_end(&mut s), b"got 1000 bytes");
}

#[test]
fn target_half_close_keeps_client_to_target_open() {
    // Target sends a greeting and closes its write side at once, then keeps
    // reading; the client, having seen EOF, still sends.
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::start("127.0.0.1:0", move |mut s| {
        s.write_all(b"bye-ish").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        tx.lock().unwrap().send(got).unwrap();
    });
    let proxy = Proxy::start(&[]);
    let mut s = proxy.connect(&server.target()).unwrap();
    let mut first = [0u8; 7];
    s.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"bye-ish");
    let mut eof = [0u8; 1];
    assert_eq!(
        s.read(&mut eof).unwrap(),
        0,
        "target's FIN reaches the client"
    );
    s.write_all(b"late data").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(IO_TIMEOUT).unwrap();
    assert_eq!(got, b"late data");
    proxy.wait_for_log(&["end=closed", "up=9", "down=7"]);
}

#[test]
fn target_reset_mid_transfer_resets_client() {
    // The target resets only after the tunnel is up (it waits for the
    // client's first byte): a reset racing the proxy's connect would be a
    // failed connect, not a reset mid-transfer.
    let server = Server::start("127.0.0.1:0", |s| {
        let mut s = s;
        let mut first = [0u8; 1];
        s.read_exact(&mut first).unwrap();
        s.write_all(&[1u8; 100_000]).unwrap();
        let sock = socket2::SockRef::from(&s);
        sock.set_linger(Some(std::time::Duration::ZERO)).unwrap();
        drop(s);
    });
    let proxy = Proxy::start(&[]);
    let echo = echo_server("127.0.0.1:0");
    let mut s = proxy.connect(&server.target()).unwrap();
    s.write_all(b"go").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let err = loop {
        match s.read(&mut buf) {
            Ok(0) => panic!("clean EOF after a reset; expected the reset to reach the client"),
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::ConnectionReset);
    proxy.wait_for_log(&["end=target-reset"]);
    proxy.assert_serves(&echo);
}

#[test]
fn client_reset_mid_transfer_resets_target() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let server = Server::start("127.0.0.1:0", move |mut s| {
        let mut buf = vec![0u8; 65536];
        let result = loop {
            match s.read(&mut buf) {
                Ok(0) => break "eof".to_owned(),
                Ok(_) => continue,
                Err(e) => break format!("{:?}", e.kind()),
            }
        };
        tx.lock().unwrap().send(result).unwrap();
    });
    let proxy = Proxy::start(&[]);
    let echo = echo_server("127.0.0.1:0");
    let mut s = proxy.connect(&server.target()).unwrap();
    s.write_all(&[3u8; 200_000]).unwrap();
    socket2::SockRef::from(&s)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(s);
    assert_eq!(rx.recv_timeout(IO_TIMEOUT).unwrap(), "ConnectionReset");
    proxy.wait_for_log(&["end=client-reset"]);
    proxy.assert_serves(&echo);
}

#[test]
fn pipelined_handshake_and_early_data_reach_the_target() {
    use coresocks::proto::{Command, Greeting, Method, Request};
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let mut all = Vec::new();
    Greeting::new(&[Method::NO_AUTH]).encode(&mut all);
    Request {
        command: Command::Connect,
        target: echo.target(),
    }
    .encode(&mut all);
    all.extend_from_slice(b"early bytes");
    let mut s = proxy.raw();
    s.write_all(&all).unwrap();
    // Method selection (2) + reply (10 for IPv4) + echo of early data.
    let mut back = [0u8; 2 + 10 + 11];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back[..2], &[0x05, 0x00]);
    assert_eq!(&back[2..4], &[0x05, 0x00]);
    assert_eq!(&back[12..], b"early bytes");
}

#[test]
fn serves_500_concurrent_tunnels_on_all_cores() {
    const TUNNELS: usize = 500;
    const THREADS: usize = 10;
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let proxy_addr = proxy.addr;
            let target = echo.target();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut tunnels = Vec::new();
                for _ in 0..TUNNELS / THREADS {
                    let mut s = std::net::TcpStream::connect(proxy_addr).unwrap();
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    coresocks::client::handshake_blocking(
                        &mut s,
                        coresocks::proto::Command::Connect,
                        &target,
                        None,
                    )
                    .unwrap();
                    tunnels.push(s);
                }
                // Every tunnel is open before any carries data.
                barrier.wait();
                for (i, s) in tunnels.iter_mut().enumerate() {
                    let data = pattern(64 * 1024, (t * 1000 + i) as u64);
                    s.write_all(&data).unwrap();
                    let mut back = vec![0u8; data.len()];
                    s.read_exact(&mut back).unwrap();
                    assert!(back == data, "tunnel {t}/{i} corrupted data");
                }
                tunnels.len()
            })
        })
        .collect();
    let total: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, TUNNELS);
    let cores = coresocks_io::sys::allowed_cpus().unwrap();
    if cores.len() > 1 {
        // SO_REUSEPORT spreads connections by hash: with 500 of them every
        // core gets some.
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        loop {
            let lines = access_lines(&proxy);
            let served_by: std::collections::HashSet<String> = lines
                .iter()
                .filter_map(|l| l.split("conn=").nth(1))
                .map(|c| c.split('.').next().unwrap().to_owned())
                .collect();
            if lines.len() >= TUNNELS && served_by.len() == cores.len() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} access lines, cores {served_by:?}",
                lines.len()
            );
            thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Every `--event-ring` setup (and none) connects, answers a refused port
/// 0x05, and says at start which setup is in use. (Needs Linux 6.1+, for
/// defer-taskrun; on an older kernel asking for it falls back to no ring
/// with a warning, and this test says so.)
#[test]
fn every_event_ring_setup_connects_relays_and_reports_refusals() {
    let echo = echo_server("127.0.0.1:0");
    let sink = Server::start("127.0.0.1:0", |mut s| {
        let (n, digest) = hash_until_eof(&mut s).unwrap();
        s.write_all(&n.to_be_bytes()).unwrap();
        s.write_all(&digest).unwrap();
    });
    let data = pattern(4 << 20, 3);
    let closed = closed_port();
    // Every fallback a kernel may force: each ring setup, one-shot polls
    // instead of multishot, and no ring at all (glommio's waits).
    for (flags, said) in [
        (
            &["--event-ring", "defer-taskrun"][..],
            "event ring: single-issuer + defer-taskrun, multishot polls",
        ),
        (
            &["--event-ring", "coop-taskrun"],
            "event ring: coop-taskrun + taskrun-flag, multishot polls",
        ),
        (&["--event-ring", "plain"], "event ring: plain"),
        (&["--multishot-poll", "false"], ", one-shot polls"),
        (&["--event-ring", "off"], "event ring: off"),
    ] {
        let setup = flags.join(" ");
        let proxy = Proxy::start(flags);
        let line = proxy.wait_for_log(&["event ring: "]);
        assert!(line.contains(said), "{setup}: {line}");
        proxy.assert_serves(&echo);
        // 4 MiB up, the FIN passed on, the digest back down.
        let mut s = proxy.connect(&sink.target()).unwrap();
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let reply = read_to_end(&mut s);
        assert_eq!(reply.len(), 40, "{setup}");
        assert_eq!(reply[8..], sha256(&data), "{setup}");
        let err = proxy.connect(&TargetAddr::Ip(closed)).unwrap_err();
        assert!(
            matches!(
                err,
                coresocks::client::ClientError::Rejected(
                    coresocks::proto::ReplyCode::ConnectionRefused
                )
            ),
            "{setup}: {err}"
        );
        proxy.assert_serves(&echo);
    }
}
