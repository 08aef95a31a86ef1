//! SOCKS4/4a and HTTP CONNECT beside SOCKS5 on one port (`--protocols`):
//! each protocol's bytes on the wire, its error paths, and after each
//! error a next client served.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

const ALL: &[&str] = &["--protocols", "socks5,socks4,http-connect"];

/// A proxy serving all three protocols, with `extra` flags.
fn proxy(extra: &[&str]) -> Proxy {
    let mut args = ALL.to_vec();
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

/// A users file with alice (plain password) and the flags that load it.
fn with_users() -> (TempPath, Proxy) {
    let users = TempPath::new("protocols-users");
    std::fs::write(&users.0, "alice:wonderland\n").unwrap();
    std::fs::set_permissions(&users.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = proxy(&["--users", users.arg()]);
    (users, proxy)
}

/// A SOCKS4 request: VN 4, CD, port, IP, USERID, NUL (and 4a's domain).
fn socks4(command: u8, target: SocketAddr, user_id: &[u8], domain: Option<&str>) -> Vec<u8> {
    let SocketAddr::V4(v4) = target else {
        panic!("SOCKS4 is IPv4")
    };
    let mut m = vec![4, command];
    m.extend_from_slice(&v4.port().to_be_bytes());
    match domain {
        Some(_) => m.extend_from_slice(&[0, 0, 0, 1]),
        None => m.extend_from_slice(&v4.ip().octets()),
    }
    m.extend_from_slice(user_id);
    m.push(0);
    if let Some(name) = domain {
        m.extend_from_slice(name.as_bytes());
        m.push(0);
    }
    m
}

/// Reads one 8-byte SOCKS4 reply.
fn socks4_reply(s: &mut TcpStream) -> [u8; 8] {
    let mut r = [0u8; 8];
    s.read_exact(&mut r).expect("an 8-byte SOCKS4 reply");
    r
}

/// Writes `bytes`, then reads the proxy's answer up to its close.
fn answer(proxy: &Proxy, bytes: &[u8]) -> String {
    String::from_utf8_lossy(&exchange_raw(proxy, bytes)).into_owned()
}

fn echo_through(s: &mut TcpStream, payload: &[u8]) {
    s.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, payload);
}

#[test]
fn socks4_and_4a_connect_reply_90_and_relay() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = proxy(&[]);
    let addr = TargetAddrIp::of(&echo.target()).0;
    for (domain, what) in [(None, "socks4"), (Some("localhost"), "socks4a")] {
        let mut s = proxy.raw();
        s.write_all(&socks4(1, addr, b"someone", domain)).unwrap();
        let reply = socks4_reply(&mut s);
        assert_eq!(&reply[..2], &[0, 90], "{what}: VN 0, CD 90");
        echo_through(&mut s, what.as_bytes());
    }
    proxy.wait_for_log(&["proto=socks4", "target=localhost:", "reply=succeeded"]);
}

#[test]
fn socks4_errors_reply_91_and_the_next_client_is_served() {
    let echo = echo_server("127.0.0.1:0");
    // Only 127.0.0.1 is open: 127.0.0.2 stays private, denied.
    let proxy = proxy(&["--allow", "127.0.0.1"]);
    let addr = TargetAddrIp::of(&echo.target()).0;
    let closed = closed_port();
    let denied = SocketAddr::from(([127, 0, 0, 2], addr.port()));
    let long_id = vec![b'x'; 300];
    let cases: [(&str, Vec<u8>, &str); 5] = [
        (
            "unknown command",
            socks4(3, addr, b"", None),
            "end=bad-request",
        ),
        (
            "denied target",
            socks4(1, denied, b"", None),
            "end=not-allowed",
        ),
        (
            "closed port",
            socks4(1, closed, b"", None),
            "end=connect-failed",
        ),
        (
            "USERID past 255 bytes",
            socks4(1, addr, &long_id, None),
            "end=bad-request",
        ),
        (
            "4a name that is not one",
            socks4(1, addr, b"", Some("bad name!")),
            "end=bad-request",
        ),
    ];
    for (what, request, end) in cases {
        let got = exchange_raw(&proxy, &request);
        assert_eq!(got.len(), 8, "{what}: one reply, then the close: {got:?}");
        assert_eq!(&got[..2], &[0, 91], "{what}");
        proxy.wait_for_log(&["proto=socks4", end]);
        proxy.assert_serves(&echo);
    }
    // Cut short: no reply is owed, and the proxy carries on.
    let mut s = proxy.raw();
    s.write_all(&socks4(1, addr, b"half", None)[..6]).unwrap();
    drop(s);
    proxy.wait_for_log(&["proto=socks4", "end=client-closed"]);
    proxy.assert_serves(&echo);
}

#[test]
fn socks4_userid_carries_the_users_password() {
    let echo = echo_server("127.0.0.1:0");
    let (_users, proxy) = with_users();
    let addr = TargetAddrIp::of(&echo.target()).0;
    for (user_id, code) in [
        (&b"alice:wonderland"[..], 90),
        (b"alice:wrong", 91),
        (b"alice", 91),
        (b"", 91),
    ] {
        let mut s = proxy.raw();
        s.write_all(&socks4(1, addr, user_id, None)).unwrap();
        assert_eq!(
            socks4_reply(&mut s)[1],
            code,
            "{:?}",
            String::from_utf8_lossy(user_id)
        );
        if code == 90 {
            echo_through(&mut s, b"logged in");
        } else {
            assert!(closed_without_data(&mut s));
        }
    }
    proxy.wait_for_log(&["user=alice", "auth=socks4-userid", "proto=socks4"]);
    proxy.wait_for_log(&["proto=socks4", "end=auth-failed"]);
}

#[test]
fn socks4_bind_sends_two_replies_and_relays() {
    let proxy = proxy(&[]);
    let mut control = proxy.raw();
    // DSTIP names the host that will connect.
    control
        .write_all(&socks4(2, "127.0.0.1:0".parse().unwrap(), b"", None))
        .unwrap();
    let first = socks4_reply(&mut control);
    assert_eq!(&first[..2], &[0, 90]);
    let port = u16::from_be_bytes([first[2], first[3]]);
    assert_eq!(&first[4..], &[127, 0, 0, 1], "the listener's address");
    let mut peer = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let second = socks4_reply(&mut control);
    assert_eq!(&second[..2], &[0, 90]);
    peer.write_all(b"from the peer").unwrap();
    let mut got = [0u8; 13];
    control.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the peer");
    drop((control, peer));
    proxy.wait_for_log(&["proto=socks4", "cmd=bind"]);
}

#[test]
fn http_connect_answers_200_and_relays_early_data() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = proxy(&[]);
    let target = format!("127.0.0.1:{}", echo.target().port());
    for version in ["1.1", "1.0"] {
        let mut s = proxy.raw();
        // The first tunnel bytes ride in the same write as the head.
        let head = format!("CONNECT {target} HTTP/{version}\r\nHost: {target}\r\n\r\nearly");
        s.write_all(head.as_bytes()).unwrap();
        let want = format!("HTTP/{version} 200 Connection established\r\n\r\n");
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8_lossy(&got), want);
        let mut early = [0u8; 5];
        s.read_exact(&mut early).unwrap();
        assert_eq!(&early, b"early", "bytes after the head reach the target");
        echo_through(&mut s, b"and then the tunnel");
    }
    // By name too.
    let mut s = proxy.raw();
    let port = echo.target().port();
    write!(
        s,
        "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost\r\n\r\n"
    )
    .unwrap();
    let mut got = [0u8; 39];
    s.read_exact(&mut got).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200 "));
    echo_through(&mut s, b"by name");
    drop(s);
    proxy.wait_for_log(&["proto=http-connect", "target=localhost:", "reply=succeeded"]);
}

#[test]
fn http_errors_get_their_status_and_the_next_client_is_served() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = proxy(&["--allow", "127.0.0.1"]);
    let port = echo.target().port();
    let closed = closed_port().port();
    let huge = format!(
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nX: {}\r\n\r\n",
        "y".repeat(9000)
    );
    let cases: [(&str, String, &str, &str); 6] = [
        (
            "a plain GET",
            "GET http://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".into(),
            "HTTP/1.1 405 ",
            "Allow: CONNECT",
        ),
        (
            "origin-form target",
            "CONNECT / HTTP/1.1\r\n\r\n".into(),
            "HTTP/1.1 400 ",
            "Content-Length: ",
        ),
        (
            "a head past 8 KiB",
            huge,
            "HTTP/1.1 431 ",
            "Connection: close",
        ),
        (
            "a denied target",
            format!("CONNECT 127.0.0.2:{port} HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 403 ",
            "egress policy",
        ),
        (
            "a closed port",
            format!("CONNECT 127.0.0.1:{closed} HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 502 ",
            "Connection refused",
        ),
        (
            "HTTP/2 in a request line",
            format!("CONNECT 127.0.0.1:{port} HTTP/2.0\r\n\r\n"),
            "HTTP/1.1 505 ",
            "Connection: close",
        ),
    ];
    for (what, request, status, also) in cases {
        let got = answer(&proxy, request.as_bytes());
        assert!(got.starts_with(status), "{what}: {got:?}");
        assert!(got.contains(also), "{what}: {also:?} in {got:?}");
        proxy.assert_serves(&echo);
    }
    proxy.wait_for_log(&["proto=http-connect", "reply=not-allowed", "end=not-allowed"]);
    // Cut short inside the head.
    let mut s = proxy.raw();
    s.write_all(b"CONNECT 127.0.0.1:1 HT").unwrap();
    drop(s);
    proxy.wait_for_log(&["proto=http-connect", "end=client-closed"]);
    proxy.assert_serves(&echo);
}

#[test]
fn http_proxy_authorization_basic_is_checked() {
    let echo = echo_server("127.0.0.1:0");
    let (_users, proxy) = with_users();
    let port = echo.target().port();
    let connect = |auth: Option<&str>| {
        let header = auth.map_or(String::new(), |a| {
            format!("Proxy-Authorization: Basic {a}\r\n")
        });
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n{header}\r\n")
    };
    // base64("alice:wrong") and base64("alice:wonderland")
    for (auth, status) in [(None, "407"), (Some("YWxpY2U6d3Jvbmc="), "407")] {
        let got = answer(&proxy, connect(auth).as_bytes());
        assert!(got.starts_with(&format!("HTTP/1.1 {status} ")), "{got:?}");
        assert!(
            got.contains("Proxy-Authenticate: Basic realm=\"coresocks\""),
            "{got:?}"
        );
    }
    let mut s = proxy.raw();
    s.write_all(connect(Some("YWxpY2U6d29uZGVybGFuZA==")).as_bytes())
        .unwrap();
    let mut got = [0u8; 39];
    s.read_exact(&mut got).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    echo_through(&mut s, b"authorized");
    drop(s);
    proxy.wait_for_log(&["user=alice", "auth=basic", "proto=http-connect"]);
    proxy.wait_for_log(&["proto=http-connect", "end=auth-required"]);
    proxy.wait_for_log(&["proto=http-connect", "end=auth-failed"]);
}

#[test]
fn only_the_protocols_asked_for_are_served() {
    let echo = echo_server("127.0.0.1:0");
    // The default is SOCKS5 alone: a SOCKS4 or HTTP client is closed on
    // without an answer in its protocol.
    let proxy = Proxy::start(&[]);
    let addr = TargetAddrIp::of(&echo.target()).0;
    assert!(exchange_raw(&proxy, &socks4(1, addr, b"", None)).is_empty());
    let http = format!("CONNECT 127.0.0.1:{} HTTP/1.1\r\n\r\n", addr.port());
    assert!(exchange_raw(&proxy, http.as_bytes()).is_empty());
    proxy.assert_serves(&echo);
    // Per protocol in the metrics.
    let (proxy, metrics) = Proxy::start_with_metrics(ALL);
    let mut s = proxy.raw();
    s.write_all(&socks4(1, addr, b"", None)).unwrap();
    assert_eq!(socks4_reply(&mut s)[1], 90);
    drop(s);
    proxy.assert_serves(&echo);
    let count = |p: &str| {
        metric_sum(
            &scrape(&metrics),
            "coresocks_sessions_total",
            &[&format!("protocol=\"{p}\"")],
        )
    };
    assert_eq!(count("socks4"), 1);
    assert_eq!(count("socks5"), 1);
    assert_eq!(count("http-connect"), 0);
}

/// A stand-in for the harness's target type, taken apart as an IPv4
/// address (SOCKS4 has no other).
pub struct TargetAddrIp(pub SocketAddr);

impl TargetAddrIp {
    pub fn of(t: &coresocks::proto::TargetAddr) -> TargetAddrIp {
        match t {
            coresocks::proto::TargetAddr::Ip(a) => TargetAddrIp(*a),
            other => panic!("an IP target, not {other}"),
        }
    }
}

#[test]
fn a_reload_changes_the_protocols_served() {
    let echo = echo_server("127.0.0.1:0");
    let file = TempPath::new("protocols-reload.toml");
    let settings = |protocols: &str| {
        format!("protocols = [{protocols}]\n[[rule]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n")
    };
    std::fs::write(&file.0, settings("\"socks5\"")).unwrap();
    let proxy = Proxy::start(&["--config", file.arg(), "--deny", "192.0.2.1"]);
    let port = echo.target().port();
    let request = format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n");
    assert!(
        exchange_raw(&proxy, request.as_bytes()).is_empty(),
        "not served yet"
    );
    std::fs::write(&file.0, settings("\"socks5\", \"http-connect\"")).unwrap();
    proxy.signal(libc::SIGHUP);
    // Logged once every core serves new sessions with it.
    proxy.wait_for_log(&["configuration 1 applied"]);
    let mut s = proxy.raw();
    s.write_all(request.as_bytes()).unwrap();
    let mut got = [0u8; 39];
    s.read_exact(&mut got).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 200 "), "{got:?}");
    echo_through(&mut s, b"after the reload");
    proxy.assert_serves(&echo);
}
