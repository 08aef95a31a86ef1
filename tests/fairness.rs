//! No single client address can starve the others: a flood of UDP
//! associations, of wrong passwords or of idle connections to the metrics
//! endpoint, each from one address, while an honest client from another
//! address is served throughout, and descriptors return afterwards.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use coresocks::client::{handshake_blocking, ClientError, Credentials};
use coresocks::proto::{Command, ReplyCode, TargetAddr};

const ATTACKER: [u8; 4] = [127, 0, 0, 2];
const HONEST: [u8; 4] = [127, 0, 0, 1];

/// One honest fetch from 127.0.0.1: a tunnel to the echo server (logged in
/// as `creds`) and one round trip; the time from connect to the first byte
/// back, or `None` when it failed.
fn honest_fetch(proxy: &Proxy, echo: &Echo, creds: Option<&Credentials>) -> Option<Duration> {
    let started = Instant::now();
    let mut s = proxy.raw_from(HONEST);
    handshake_blocking(&mut s, Command::Connect, &echo.target(), creds).ok()?;
    s.write_all(b"honest").ok()?;
    let mut back = [0u8; 6];
    s.read_exact(&mut back).ok()?;
    (&back == b"honest").then(|| started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Waits until the proxy holds at most `fds` descriptors.
fn wait_for_fds(proxy: &Proxy, fds: usize) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while proxy.open_fds() > fds {
        assert!(
            Instant::now() < deadline,
            "the proxy still holds {} descriptors, {fds} before the attack",
            proxy.open_fds()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn udp_associations_from_one_address_cannot_take_the_descriptors() {
    let echo = echo_server("127.0.0.1:0");
    // A small limit makes the budget arithmetic visible: 1024 - 128
    // reserved, 89 pipes of 2, leaves 718 descriptors for sessions, 180 of
    // them (a quarter) for one address: 60 associations of 3.
    let (proxy, metrics) = Proxy::start_in_with_metrics(
        &["prlimit", "--nofile=1024:1024", "--"],
        &["--cores", "1", "--log-level", "info"],
    );
    proxy.wait_for_log(&["718 descriptors for sessions (180 per client address"]);
    let baseline = proxy.open_fds();
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut control = proxy.raw_from(ATTACKER);
        let any = TargetAddr::Ip("0.0.0.0:0".parse().unwrap());
        match handshake_blocking(&mut control, Command::UdpAssociate, &any, None) {
            Ok(_) => held.push(control),
            Err(ClientError::Rejected(code)) => {
                assert_eq!(code, ReplyCode::NotAllowed);
                refused += 1;
            }
            Err(e) => panic!("association {}: {e}", held.len()),
        }
        assert!(proxy.open_fds() < 1024 - 64, "{} open", proxy.open_fds());
    }
    assert!(
        (55..=60).contains(&held.len()),
        "{} associations held",
        held.len()
    );
    assert_eq!(refused, 300 - held.len());
    // Honest clients from another address are served, TCP and UDP.
    for _ in 0..50 {
        assert!(honest_fetch(&proxy, &echo, None).is_some());
    }
    let mut control = proxy.raw_from(HONEST);
    let any = TargetAddr::Ip("0.0.0.0:0".parse().unwrap());
    handshake_blocking(&mut control, Command::UdpAssociate, &any, None)
        .expect("an honest association");
    drop(control);
    proxy.wait_for_log(&["client address 127.0.0.2 holds its share", "--client-share"]);
    let body = scrape(&metrics);
    let counted = metric_sum(
        &body,
        "coresocks_quota_refusals_total",
        &["reason=\"client-share\""],
    );
    assert_eq!(counted as usize, refused);
    proxy.wait_for_log(&["end=client-share", "client=127.0.0.2:", "reply=not-allowed"]);
    assert!(!proxy
        .log()
        .iter()
        .any(|l| l.contains("out of file descriptors")));
    drop(held);
    wait_for_fds(&proxy, baseline);
    // Its share is whole again.
    let mut control = proxy.raw_from(ATTACKER);
    handshake_blocking(&mut control, Command::UdpAssociate, &any, None)
        .expect("the address is served again");
}

/// A one-core proxy (with `extra` flags and metrics) whose one user,
/// alice, has an Argon2 hash of "wonderland" from `coresocks
/// hash-password`; the users file lives as long as the first value.
fn proxy_with_argon2_alice(extra: &[&str]) -> (TempPath, Proxy, String) {
    let (code, hash, err) = hash_password("wonderland\n");
    assert_eq!(code, Some(0), "{err}");
    let users = TempPath::new("argon2-users");
    std::fs::write(&users.0, format!("alice:{}\n", hash.trim())).unwrap();
    let mut args = vec!["--users", users.arg(), "--cores", "1"];
    args.extend(extra);
    let (proxy, metrics) = Proxy::start_with_metrics(&args);
    (users, proxy, metrics)
}

fn as_alice(password: &str) -> Credentials {
    Credentials {
        username: "alice".into(),
        password: password.into(),
    }
}

#[test]
fn wrong_passwords_from_one_address_cannot_delay_other_logins() {
    let echo = echo_server("127.0.0.1:0");
    // No verified-login cache: every honest login is hashed too.
    let (_users, proxy, metrics) =
        proxy_with_argon2_alice(&["--auth-cache", "0s", "--log-level", "info"]);
    let alice = as_alice("wonderland");
    let unloaded = median(
        (0..7)
            .map(|_| honest_fetch(&proxy, &echo, Some(&alice)).expect("unloaded login"))
            .collect(),
    );
    let baseline_fds = proxy.open_fds();
    // 100 connections at a time from one address, wrong passwords as fast
    // as the proxy answers, for as long as the honest client measures.
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicUsize::new(0));
    let attackers: Vec<_> = (0..100)
        .map(|_| {
            let (stop, attempts, addr) = (stop.clone(), attempts.clone(), proxy.addr);
            let target = echo.target();
            thread::spawn(move || {
                let mallory = as_alice("guess");
                while !stop.load(Ordering::Relaxed) {
                    let s =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .unwrap();
                    s.bind(&std::net::SocketAddr::from((ATTACKER, 0)).into())
                        .unwrap();
                    if s.connect(&addr.into()).is_err() {
                        continue;
                    }
                    let mut s = TcpStream::from(s);
                    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                    let result =
                        handshake_blocking(&mut s, Command::Connect, &target, Some(&mallory));
                    assert!(
                        matches!(result, Err(ClientError::AuthRejected)),
                        "{result:?}"
                    );
                    attempts.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let loaded: Vec<Option<Duration>> = (0..40)
        .map(|_| honest_fetch(&proxy, &echo, Some(&alice)))
        .collect();
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let served: Vec<Duration> = loaded.iter().flatten().copied().collect();
    assert_eq!(served.len(), loaded.len(), "every honest login is served");
    let p50 = median(served);
    // A login waits behind at most the attacker's few queued checks.
    assert!(
        p50 <= unloaded * 10 + Duration::from_millis(100),
        "honest p50 {p50:?} under attack, {unloaded:?} without"
    );
    let body = scrape(&metrics);
    let refused = metric_sum(&body, "coresocks_auth_refusals_total", &[]);
    let checked = metric_sum(&body, "coresocks_auth_failures_total", &[]);
    let tried = attempts.load(Ordering::Relaxed) as u64;
    assert!(tried >= 200, "{tried} attempts");
    assert!(
        refused >= tried * 9 / 10,
        "{refused} of {tried} wrong logins refused unchecked"
    );
    assert!(
        metric_sum(
            &body,
            "coresocks_auth_refusals_total",
            &["reason=\"failure-rate\""]
        ) > 0,
        "{body}"
    );
    assert!(checked >= tried, "every wrong login counts as a failure");
    proxy.wait_for_log(&["end=auth-failure-rate", "client=127.0.0.2:"]);
    wait_for_fds(&proxy, baseline_fds);
    assert!(honest_fetch(&proxy, &echo, Some(&alice)).is_some());
}

#[test]
fn a_verified_login_is_not_hashed_again_and_passes_a_throttled_address() {
    let echo = echo_server("127.0.0.1:0");
    let (_users, proxy, metrics) = proxy_with_argon2_alice(&["--auth-failures-per-client", "6"]);
    proxy.assert_serves_as(&echo, Some(&as_alice("wonderland")));
    proxy.assert_serves_as(&echo, Some(&as_alice("wonderland")));
    let hits = |body: &str| metric_sum(body, "coresocks_auth_cache_hits_total", &[]);
    assert_eq!(hits(&scrape(&metrics)), 1);
    // 6 a minute: one wrong password empties the bucket (a burst of one).
    for expected in ["auth-failed", "auth-failure-rate"] {
        let err = proxy
            .connect_as(&echo.target(), Some(&as_alice("wrong")))
            .unwrap_err();
        assert!(matches!(err, ClientError::AuthRejected), "{err}");
        proxy.wait_for_log(&[&format!("end={expected}")]);
    }
    // The remembered login still passes; a wrong one is not checked.
    proxy.assert_serves_as(&echo, Some(&as_alice("wonderland")));
    assert_eq!(hits(&scrape(&metrics)), 2);
    // A reload forgets what was verified against the old file.
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_log(&["configuration 1 applied"]);
    let err = proxy
        .connect_as(&echo.target(), Some(&as_alice("wonderland")))
        .unwrap_err();
    assert!(
        matches!(err, ClientError::AuthRejected),
        "not remembered across a reload, and the address is still throttled: {err}"
    );
}

#[test]
fn idle_connections_to_the_metrics_endpoint_cannot_block_a_scrape() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) = Proxy::start_with_metrics(&["--cores", "1", "--log-level", "info"]);
    let baseline = proxy.open_fds();
    // Far more idle connections than the endpoint keeps, and a few that
    // send half a request and stop.
    let mut idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(&metrics).unwrap())
        .collect();
    for s in idle.iter_mut().take(5) {
        s.write_all(b"GET /metr").unwrap();
    }
    for _ in 0..5 {
        let started = Instant::now();
        let body = scrape(&metrics);
        assert!(
            body.contains("coresocks_connections_accepted_total"),
            "a scrape is answered ({:?}): {body}",
            started.elapsed()
        );
    }
    let body = scrape(&metrics);
    let shed: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("coresocks_metrics_connections_shed_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the shed counter");
    assert!(shed >= 300 - 64, "{shed} shed");
    proxy.assert_serves(&echo);
    drop(idle);
    wait_for_fds(&proxy, baseline);
}
