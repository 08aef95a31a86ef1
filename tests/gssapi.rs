//! GSSAPI (RFC 1961) against a real MIT Kerberos KDC on loopback: curl,
//! the crate's client at every protection level, UDP under protection,
//! wrong, expired and replayed tickets, a client that stalls mid-context,
//! and method selection beside RFC 1929.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::kdc::{kdc, REALM};
use crate::common::*;
use coresocks::client::{
    handshake_gssapi_blocking, udp_datagram_sealed, udp_payload_sealed, ClientError, GssapiOptions,
    SealedStream,
};
use coresocks::gss_binding::{LevelEncoding, ProtectionLevel};
use coresocks::proto::{Codec, Command as Cmd, GssMessage, GssMessageType, TargetAddr};
use libgssapi::context::SecurityContext;

/// A proxy that offers GSSAPI with the test realm's keytab.
fn gss_proxy(extra: &[&str]) -> Proxy {
    let kdc = kdc();
    let mut args = vec!["--gssapi-keytab", kdc.keytab_arg()];
    args.extend_from_slice(extra);
    Proxy::start(&args)
}

fn opts(level: ProtectionLevel, encoding: LevelEncoding) -> GssapiOptions {
    GssapiOptions {
        level,
        encoding,
        ..GssapiOptions::new("127.0.0.1")
    }
}

const MIB16: usize = 16 << 20;

/// A GSSAPI handshake through `proxy` for `command` to `target`: the
/// stream, the BND address and the protection, if any.
fn gss_connect(
    proxy: &Proxy,
    command: Cmd,
    target: &TargetAddr,
    level: ProtectionLevel,
    encoding: LevelEncoding,
) -> (
    TcpStream,
    TargetAddr,
    Option<coresocks::gss_binding::Protection>,
) {
    let mut s = proxy.raw();
    let (bound, protection) =
        handshake_gssapi_blocking(&mut s, command, target, &opts(level, encoding))
            .unwrap_or_else(|e| panic!("{command:?} at {level:?}: {e}"));
    (s, bound, protection)
}

/// Proves the proxy still serves: a fresh GSSAPI tunnel at integrity
/// echoes a message.
fn assert_gss_serves(proxy: &Proxy, echo: &Echo) {
    let integrity = (ProtectionLevel::Integrity, LevelEncoding::Wrapped);
    let (s, _, p) = gss_connect(
        proxy,
        Cmd::Connect,
        &echo.target(),
        integrity.0,
        integrity.1,
    );
    let mut sealed = SealedStream::new(s, p.expect("integrity"));
    sealed.write_all(b"still alive?").unwrap();
    let mut back = [0u8; 12];
    sealed.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still alive?");
}

/// Reads 16 MiB, answers with their SHA-256, then sends 16 MiB of its own
/// (seed 2) and closes: both directions in turn, so a client without a
/// second thread cannot deadlock.
fn both_ways_server() -> Server {
    Server::start("127.0.0.1:0", |mut s| {
        let mut got = vec![0u8; MIB16];
        if s.read_exact(&mut got).is_err() {
            return;
        }
        let _ = s.write_all(&sha256(&got));
        let _ = s.write_all(&pattern(MIB16, 2));
        let _ = s.shutdown(Shutdown::Write);
    })
}

fn check_both_ways(stream: &mut (impl Read + Write)) {
    let up = pattern(MIB16, 1);
    stream.write_all(&up).unwrap();
    let mut hash = [0u8; 32];
    stream.read_exact(&mut hash).unwrap();
    assert_eq!(
        hash,
        sha256(&up),
        "the target got other bytes than were sent"
    );
    let mut down = Vec::new();
    stream.read_to_end(&mut down).unwrap();
    assert_eq!(down.len(), MIB16);
    assert!(
        down == pattern(MIB16, 2),
        "the client got other bytes than the target sent"
    );
}

#[test]
fn client_moves_16_mib_both_ways_at_every_level() {
    let target = both_ways_server();
    let proxy = gss_proxy(&["--gssapi-protection", "clear"]);
    let levels = [
        (
            ProtectionLevel::Clear,
            LevelEncoding::Wrapped,
            "gssapi-clear",
        ),
        (
            ProtectionLevel::Integrity,
            LevelEncoding::Wrapped,
            "gssapi-integrity",
        ),
        (
            ProtectionLevel::Confidentiality,
            LevelEncoding::Wrapped,
            "gssapi-confidentiality",
        ),
        (
            ProtectionLevel::Confidentiality,
            LevelEncoding::Nec,
            "gssapi-confidentiality",
        ),
        // Selective is answered with confidentiality.
        (
            ProtectionLevel::Selective,
            LevelEncoding::Wrapped,
            "gssapi-confidentiality",
        ),
    ];
    for (level, encoding, auth) in levels {
        let (mut s, _, protection) =
            gss_connect(&proxy, Cmd::Connect, &target.target(), level, encoding);
        match protection {
            None => {
                assert_eq!(level, ProtectionLevel::Clear);
                check_both_ways(&mut s);
                drop(s);
            }
            Some(p) => {
                assert_ne!(level, ProtectionLevel::Clear);
                check_both_ways(&mut SealedStream::new(s, p));
            }
        }
        // The stream is closed here: the tunnel ends and is logged.
        let engine = if level == ProtectionLevel::Clear {
            "engine="
        } else {
            "engine=sealed"
        };
        proxy.wait_for_log(&[
            &format!("user=alice@{REALM}"),
            &format!("auth={auth}"),
            engine,
            "up=16777216",
            "down=16777248",
        ]);
    }
}

#[test]
fn the_minimum_level_raises_what_a_client_asks_for() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = gss_proxy(&["--gssapi-protection", "confidentiality"]);
    let (s, _, protection) = gss_connect(
        &proxy,
        Cmd::Connect,
        &echo.target(),
        ProtectionLevel::Integrity,
        LevelEncoding::Wrapped,
    );
    let p = protection.expect("a protected tunnel");
    assert_eq!(p.level(), ProtectionLevel::Confidentiality);
    let mut sealed = SealedStream::new(s, p);
    sealed.write_all(b"raised").unwrap();
    let mut back = [0u8; 6];
    sealed.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"raised");
    drop(sealed);
    proxy.wait_for_log(&["auth=gssapi-confidentiality", "engine=sealed"]);
}

/// What curl 7.88 (Debian 12) says after the proxy selects GSSAPI. Its
/// SOCKS state machine forgets that it offered the method when the answer
/// comes in a later call (the usual case), so it never starts the context;
/// when the answer is there at once it completes the context and the
/// protection level, then falls into its "undocumented mode" error
/// instead of sending the request. A curl without those bugs must fetch
/// the page.
const CURL_GSSAPI_BUGS: [&str; 2] = [
    "SOCKS5 GSSAPI per-message authentication is not supported",
    "Undocumented SOCKS5 mode attempted to be used by server",
];

#[test]
fn curl_with_gssapi_fetches_or_meets_its_known_bug_and_the_proxy_serves_on() {
    let web = http_server("127.0.0.1:0");
    let echo = echo_server("127.0.0.1:0");
    let proxy = gss_proxy(&["--gssapi-protection", "clear"]);
    let url = format!("http://{}/", web.addr);
    let via = format!("socks5h://{}", proxy.addr);
    for nec in [false, true] {
        let mut args = vec!["--socks5-gssapi", "--proxy", &via, &url];
        if nec {
            args.insert(0, "--socks5-gssapi-nec");
        }
        let (ok, body, err) = curl(&args);
        if ok {
            assert_eq!(body, "hello from /\n");
            proxy.wait_for_log(&[&format!("user=alice@{REALM}"), "auth=gssapi-clear"]);
        } else {
            assert!(
                CURL_GSSAPI_BUGS.iter().any(|bug| err.contains(bug)),
                "curl (nec: {nec}) failed: {err}"
            );
            eprintln!("note: this curl cannot finish SOCKS5 GSSAPI (its own bug): {err}");
        }
    }
    // The proxy chose GSSAPI, curl hung up, and the next client is served.
    gss_connect(
        &proxy,
        Cmd::Connect,
        &echo.target(),
        ProtectionLevel::Clear,
        LevelEncoding::Nec,
    );
}

#[test]
fn udp_datagrams_are_encapsulated_under_protection() {
    let echo = udp_echo("127.0.0.1:0");
    let proxy = gss_proxy(&[]);
    for level in [ProtectionLevel::Integrity, ProtectionLevel::Confidentiality] {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let me = TargetAddr::Ip(sock.local_addr().unwrap());
        let (control, bound, protection) = gss_connect(
            &proxy,
            Cmd::UdpAssociate,
            &me,
            level,
            LevelEncoding::Wrapped,
        );
        let TargetAddr::Ip(relay) = bound else {
            panic!("{bound:?}")
        };
        let mut p = protection.expect("protected association");
        // A datagram without the encapsulation is dropped.
        let mut plain = Vec::new();
        coresocks::client::udp_datagram(&TargetAddr::Ip(echo), b"unwrapped", &mut plain);
        sock.send_to(&plain, relay).unwrap();
        for i in 0..20u32 {
            let payload = format!("sealed datagram {i}").repeat(1 + i as usize * 50);
            let d = udp_datagram_sealed(&mut p, &TargetAddr::Ip(echo), payload.as_bytes()).unwrap();
            assert!(!d
                .windows(8)
                .any(|w| level == ProtectionLevel::Confidentiality && w == b"datagram"));
            sock.send_to(&d, relay).unwrap();
            let mut buf = vec![0u8; 65536];
            let (n, from) = sock.recv_from(&mut buf).expect("a reply through the relay");
            assert_eq!(from, relay);
            let (source, back) = udp_payload_sealed(&mut p, &buf[..n]).unwrap();
            assert_eq!(source, TargetAddr::Ip(echo));
            assert_eq!(back, payload.as_bytes());
        }
        drop(control);
        proxy.wait_for_log(&[
            &format!("auth=gssapi-{}", level.as_str()),
            "datagrams_up=20",
            "datagrams_down=20",
            "dropped_unprotected=1",
        ]);
    }
}

/// Sends the greeting and one context token by hand; returns what the
/// proxy answers before it closes.
fn raw_context(proxy: &Proxy, token: &[u8]) -> Vec<u8> {
    let mut msg = vec![0x05, 0x01, 0x01];
    GssMessage::new(GssMessageType::Context, token.to_vec()).encode(&mut msg);
    exchange_raw(proxy, &msg)
}

#[test]
fn a_ticket_for_a_key_the_proxy_lacks_is_refused_with_the_abort() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = gss_proxy(&[]);
    let mut s = proxy.raw();
    let err = handshake_gssapi_blocking(
        &mut s,
        Cmd::Connect,
        &echo.target(),
        &GssapiOptions {
            service: "stale".into(),
            ..opts(ProtectionLevel::Integrity, LevelEncoding::Wrapped)
        },
    )
    .unwrap_err();
    assert!(matches!(err, ClientError::GssapiAborted), "{err}");
    proxy.wait_for_log(&["end=gssapi-failed"]);
    assert_gss_serves(&proxy, &echo);
}

#[test]
fn expired_and_replayed_tickets_are_refused() {
    let k = kdc();
    let proxy = gss_proxy(&[]);
    // A context token made while the ticket is good, sent after it expired
    // (the realm allows one second of skew).
    k.kinit("brief", "brief-password", Some("3s"));
    let mut ctx = coresocks::gss_binding::initiator(
        "rcmd",
        "127.0.0.1",
        Some(&format!("brief@{REALM}")),
        true,
    )
    .unwrap();
    let token = ctx
        .step(None, None)
        .unwrap()
        .expect("a first token")
        .to_vec();
    let made = Instant::now();
    // A fresh token is accepted once, and refused when replayed.
    let mut good = coresocks::gss_binding::initiator("rcmd", "127.0.0.1", None, true).unwrap();
    let good_token = good.step(None, None).unwrap().unwrap().to_vec();
    let mut first = proxy.raw();
    let mut msg = vec![0x05, 0x01, 0x01];
    GssMessage::new(GssMessageType::Context, good_token.clone()).encode(&mut msg);
    first.write_all(&msg).unwrap();
    let mut head = [0u8; 4];
    first.read_exact(&mut head).unwrap();
    assert_eq!(
        head,
        [0x05, 0x01, 0x01, 0x01],
        "the first use gets a context token back"
    );
    drop(first);
    assert_eq!(
        raw_context(&proxy, &good_token),
        [0x05, 0x01, 0x01, 0xFF],
        "a replay"
    );
    std::thread::sleep(Duration::from_secs(6).saturating_sub(made.elapsed()));
    assert_eq!(
        raw_context(&proxy, &token),
        [0x05, 0x01, 0x01, 0xFF],
        "an expired ticket"
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    while access_lines(&proxy)
        .iter()
        .filter(|l| l.contains("end=gssapi-failed"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:#?}", access_lines(&proxy));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The reasons come on the debug log, which may trail the access log.
    proxy.wait_for_log(&["session ended", "Request is a replay"]);
    // A token that old fails on the ticket's end time or on its
    // authenticator's time, whichever krb5 checks first.
    while !proxy
        .log()
        .iter()
        .any(|l| l.contains("Ticket expired") || l.contains("Clock skew too great"))
    {
        assert!(Instant::now() < deadline, "{:#?}", proxy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let echo = echo_server("127.0.0.1:0");
    assert_gss_serves(&proxy, &echo);
}

#[test]
fn a_client_that_stalls_mid_context_is_cut_at_the_handshake_timeout() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = gss_proxy(&["--handshake-timeout", "1s"]);
    let mut s = proxy.raw();
    // Greeting, then a context message that announces 50 octets and stops.
    s.write_all(&[0x05, 0x01, 0x01, 0x01, 0x01, 0x00, 0x32, 0x60, 0x30])
        .unwrap();
    let mut selection = [0u8; 2];
    s.read_exact(&mut selection).unwrap();
    assert_eq!(selection, [0x05, 0x01]);
    let started = Instant::now();
    assert!(
        closed_without_data(&mut s),
        "the proxy must close, not answer"
    );
    assert!(started.elapsed() < IO_TIMEOUT);
    proxy.wait_for_log(&["end=handshake-timeout"]);
    assert_gss_serves(&proxy, &echo);
}

#[test]
fn bad_messages_get_the_abort_and_the_next_client_is_served() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = gss_proxy(&[]);
    let cases: &[(&str, &[u8])] = &[
        (
            "wrong sub-negotiation version",
            &[0x05, 0x01, 0x01, 0x02, 0x01, 0x00, 0x00],
        ),
        (
            "unknown message type",
            &[0x05, 0x01, 0x01, 0x01, 0x07, 0x00, 0x00],
        ),
        (
            "protection before a context",
            &[0x05, 0x01, 0x01, 0x01, 0x02, 0x00, 0x01, 0x02],
        ),
        (
            "a token that is not Kerberos",
            &[0x05, 0x01, 0x01, 0x01, 0x01, 0x00, 0x03, 1, 2, 3],
        ),
        ("the client's own abort", &[0x05, 0x01, 0x01, 0x01, 0xFF]),
    ];
    for (what, bytes) in cases {
        assert_eq!(
            exchange_raw(&proxy, bytes),
            [0x05, 0x01, 0x01, 0xFF],
            "{what}"
        );
    }
    // A protection level no RFC defines, after a good context.
    let mut s = proxy.raw();
    let mut ctx = coresocks::gss_binding::initiator("rcmd", "127.0.0.1", None, true).unwrap();
    let token = ctx.step(None, None).unwrap().unwrap().to_vec();
    let mut msg = vec![0x05, 0x01, 0x01];
    GssMessage::new(GssMessageType::Context, token).encode(&mut msg);
    s.write_all(&msg).unwrap();
    let mut head = [0u8; 6];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head[..4], &[0x05, 0x01, 0x01, 0x01]);
    let mut reply = vec![0u8; u16::from_be_bytes([head[4], head[5]]) as usize];
    s.read_exact(&mut reply).unwrap();
    assert!(ctx.step(Some(&reply), None).unwrap().is_none());
    assert!(ctx.is_complete());
    s.write_all(&[0x01, 0x02, 0x00, 0x01, 0x09]).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert_eq!(rest, [0x01, 0xFF], "protection level 9");
    proxy.wait_for_log(&["unknown GSS-API protection level 0x09"]);
    assert_gss_serves(&proxy, &echo);
}

#[test]
fn a_tampered_message_breaks_only_its_own_tunnel() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = gss_proxy(&[]);
    let (mut s, _, protection) = gss_connect(
        &proxy,
        Cmd::Connect,
        &echo.target(),
        ProtectionLevel::Integrity,
        LevelEncoding::Wrapped,
    );
    let mut p = protection.unwrap();
    let mut msg = Vec::new();
    p.seal(b"integrity protects this", &mut msg).unwrap();
    let at = msg.len() - 20;
    msg[at] ^= 0x01;
    s.write_all(&msg).unwrap();
    assert!(
        closed_without_data(&mut s),
        "a forged message must end the tunnel"
    );
    proxy.wait_for_log(&["end=\"client-error", "engine=sealed"]);
    assert_gss_serves(&proxy, &echo);
}

#[test]
fn method_selection_follows_the_clients_order() {
    let users = TempPath::new("gss-users");
    std::fs::write(&users.0, "bob:builder\n").unwrap();
    std::fs::set_permissions(
        &users.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let proxy = gss_proxy(&["--users", users.arg()]);
    let choose = |greeting: &[u8]| {
        let mut s = proxy.raw();
        s.write_all(greeting).unwrap();
        let mut sel = [0u8; 2];
        s.read_exact(&mut sel).unwrap();
        sel
    };
    assert_eq!(choose(&[0x05, 0x02, 0x02, 0x01]), [0x05, 0x02]);
    assert_eq!(choose(&[0x05, 0x02, 0x01, 0x02]), [0x05, 0x01]);
    assert_eq!(choose(&[0x05, 0x03, 0x00, 0x80, 0x01]), [0x05, 0x01]);
    assert_eq!(exchange_raw(&proxy, &[0x05, 0x01, 0x00]), [0x05, 0xFF]);
    let echo = echo_server("127.0.0.1:0");
    proxy.assert_serves_as(
        &echo,
        Some(&coresocks::client::Credentials {
            username: "bob".into(),
            password: "builder".into(),
        }),
    );
    assert_gss_serves(&proxy, &echo);
}

#[test]
fn a_missing_keytab_or_principal_stops_the_start_with_one_clear_error() {
    let k = kdc();
    let log = Proxy::try_start(&["--gssapi-keytab", "/nonexistent/proxy.keytab"])
        .err()
        .expect("no keytab: no start");
    assert!(
        log.contains("cannot read keytab /nonexistent/proxy.keytab"),
        "{log}"
    );
    let log = Proxy::try_start(&[
        "--gssapi-keytab",
        k.keytab_arg(),
        "--gssapi-principal",
        "nobody/127.0.0.1",
    ])
    .err()
    .expect("a principal the keytab lacks: no start");
    assert!(
        log.contains("no key for nobody/127.0.0.1 in keytab"),
        "{log}"
    );
    let log = Proxy::try_start(&["--gssapi-protection", "integrity"])
        .err()
        .expect("protection without a keytab: no start");
    assert!(log.contains("need gssapi-keytab"), "{log}");
    let proxy = Proxy::start(&[
        "--gssapi-keytab",
        k.keytab_arg(),
        "--gssapi-principal",
        &format!("rcmd/127.0.0.1@{REALM}"),
    ]);
    proxy.wait_for_log(&["GSSAPI: accepting rcmd/127.0.0.1@", "at least integrity"]);
}

#[test]
fn bind_replies_are_encapsulated() {
    let proxy = gss_proxy(&[]);
    let (s, bound, protection) = gss_connect(
        &proxy,
        Cmd::Bind,
        &TargetAddr::Ip("127.0.0.1:0".parse().unwrap()),
        ProtectionLevel::Confidentiality,
        LevelEncoding::Wrapped,
    );
    let TargetAddr::Ip(listen) = bound else {
        panic!("{bound:?}")
    };
    let mut p = protection.unwrap();
    let mut peer = TcpStream::connect(listen).unwrap();
    let mut s2 = futures_lite::io::AssertAsync::new(s.try_clone().unwrap());
    let second = coresocks::client::read_reply_protected(&mut s2, Some(&mut p));
    let from = futures_lite::future::block_on(second).unwrap();
    assert_eq!(from, TargetAddr::Ip(peer.local_addr().unwrap()));
    let mut sealed = SealedStream::new(s, p);
    peer.write_all(b"from the peer").unwrap();
    let mut got = [0u8; 13];
    sealed.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"from the peer");
    sealed.write_all(b"to the peer").unwrap();
    let mut back = [0u8; 11];
    peer.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"to the peer");
}

#[test]
fn the_principal_is_the_user_for_per_user_limits() {
    let echo = echo_server("127.0.0.1:0");
    // Quotas are per core (README, Limits): one core, one count.
    let proxy = gss_proxy(&["--cores", "1", "--max-tunnels-per-user", "1"]);
    let open = || {
        let mut s = proxy.raw();
        handshake_gssapi_blocking(
            &mut s,
            Cmd::Connect,
            &echo.target(),
            &opts(ProtectionLevel::Integrity, LevelEncoding::Wrapped),
        )
        .map(|(_, p)| (s, p))
    };
    let first = open().expect("alice's first tunnel");
    let err = open().map(|_| ()).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Rejected(coresocks::proto::ReplyCode::NotAllowed)
        ),
        "{err}"
    );
    proxy.wait_for_log(&[&format!("user=alice@{REALM}"), "reply=not-allowed"]);
    drop(first);
    // Her slot comes back when the first tunnel ends.
    let deadline = Instant::now() + IO_TIMEOUT;
    while open().is_err() {
        assert!(Instant::now() < deadline, "the slot never came back");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sighup_keeps_gssapi_and_a_new_keytab_path_needs_a_restart() {
    let k = kdc();
    let echo = echo_server("127.0.0.1:0");
    let file = TempPath::new("gss-reload.toml");
    let copy = TempPath::new("gss-reload.keytab");
    std::fs::copy(&k.keytab, &copy.0).unwrap();
    let settings = |keytab: &str| format!("gssapi-keytab = \"{keytab}\"\n");
    std::fs::write(&file.0, settings(k.keytab_arg())).unwrap();
    let proxy = Proxy::start(&["--config", file.arg()]);
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_log(&["SIGHUP: configuration 1 applied", "GSSAPI"]);
    assert_gss_serves(&proxy, &echo);
    std::fs::write(&file.0, settings(copy.arg())).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_log(&[
        "SIGHUP:",
        "needs a restart",
        "keeping the running configuration",
    ]);
    assert_gss_serves(&proxy, &echo);
}
