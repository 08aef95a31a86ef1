//! Per-user and per-client quotas: tunnels held at once (0x02 past the
//! limit) and new tunnels per second (0x01). One core, so a core's share is
//! the whole limit. After each refusal the proxy serves the next client.

use std::os::unix::fs::PermissionsExt;

use crate::common::*;
use coresocks::client::{ClientError, Credentials};
use coresocks::proto::ReplyCode;

fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: password.into(),
    }
}

#[test]
fn tunnels_per_client_are_capped_and_given_back() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) =
        Proxy::start_with_metrics(&["--cores", "1", "--max-tunnels-per-client", "2"]);
    let first = proxy.connect(&echo.target()).unwrap();
    let _second = proxy.connect(&echo.target()).unwrap();
    let r = proxy.connect(&echo.target());
    assert!(
        matches!(r, Err(ClientError::Rejected(ReplyCode::NotAllowed))),
        "{r:?}"
    );
    proxy.wait_for_log(&["reply=not-allowed", "end=over-limit"]);
    let body = scrape(&metrics);
    assert_eq!(
        metric_sum(
            &body,
            "coresocks_quota_refusals_total",
            &["reason=\"client-tunnels\""]
        ),
        1
    );
    drop(first);
    // The slot comes back when the tunnel's session ends.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while proxy.connect(&echo.target()).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn tunnels_per_user_are_capped_per_user() {
    let echo = echo_server("127.0.0.1:0");
    let users = TempPath::new("quota-users");
    std::fs::write(&users.0, "alice:a\nbob:b\n").unwrap();
    std::fs::set_permissions(&users.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = Proxy::start(&[
        "--cores",
        "1",
        "--users",
        users.arg(),
        "--max-tunnels-per-user",
        "1",
    ]);
    let _alice = proxy
        .connect_as(&echo.target(), Some(&creds("alice", "a")))
        .unwrap();
    let r = proxy.connect_as(&echo.target(), Some(&creds("alice", "a")));
    assert!(
        matches!(r, Err(ClientError::Rejected(ReplyCode::NotAllowed))),
        "{r:?}"
    );
    proxy.wait_for_log(&["user=alice", "end=over-limit"]);
    proxy.assert_serves_as(&echo, Some(&creds("bob", "b")));
}

#[test]
fn new_tunnels_per_client_are_rate_limited_with_0x01() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) =
        Proxy::start_with_metrics(&["--cores", "1", "--tunnel-rate-per-client", "1"]);
    // A bucket of one per second: ten tunnels back to back cannot all pass.
    let mut refused = 0;
    for _ in 0..10 {
        match proxy.connect(&echo.target()) {
            Ok(_) => {}
            Err(ClientError::Rejected(ReplyCode::GeneralFailure)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        refused >= 1,
        "ten tunnels at once passed a rate of one per second"
    );
    proxy.wait_for_log(&["reply=general-failure", "end=rate-limited"]);
    let body = scrape(&metrics);
    assert_eq!(
        metric_sum(
            &body,
            "coresocks_quota_refusals_total",
            &["reason=\"client-rate\""]
        ),
        refused
    );
    // The bucket refills: within a few seconds a tunnel passes again.
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while proxy.connect(&echo.target()).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the bucket never refilled"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Sends `len` patterned bytes through `tunnel` to the echo, reads them
/// back, checks them, and returns how long it took.
fn echo_through(mut tunnel: std::net::TcpStream, len: usize) -> std::time::Duration {
    use std::io::{Read, Write};
    let data = pattern(len, 7);
    let started = std::time::Instant::now();
    let mut writer = tunnel.try_clone().unwrap();
    let sent = data.clone();
    let send = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(len);
    tunnel.read_to_end(&mut back).unwrap();
    send.join().unwrap();
    assert_eq!(sha256(&back), sha256(&data), "the echo came back intact");
    started.elapsed()
}

#[test]
fn bandwidth_per_client_meters_each_direction() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, metrics) =
        Proxy::start_with_metrics(&["--cores", "1", "--bandwidth-per-client", "1MB"]);
    // 1.5 MB each way at 1 MB/s: the bucket's burst (50 ms of the rate
    // plus 16 KiB) covers a small part; the rest takes over a second. A
    // lower bound only: a slow machine can only take longer.
    let took = echo_through(proxy.connect(&echo.target()).unwrap(), 1_500_000);
    assert!(
        took >= std::time::Duration::from_millis(1_300),
        "1.5 MB crossed a 1 MB/s limit in {took:?}"
    );
    proxy.wait_for_log(&["up=1500000", "down=1500000"]);
    let body = scrape(&metrics);
    assert!(metric_sum(&body, "coresocks_bandwidth_waits_total", &[]) > 0);
    proxy.assert_serves(&echo);
}

#[test]
fn bandwidth_per_user_is_the_users_own() {
    let echo = echo_server("127.0.0.1:0");
    let users = TempPath::new("bandwidth-users");
    std::fs::write(&users.0, "alice:a\nbob:b\n").unwrap();
    std::fs::set_permissions(&users.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (proxy, metrics) = Proxy::start_with_metrics(&[
        "--cores",
        "1",
        "--users",
        users.arg(),
        "--bandwidth-per-user",
        "4Mbit",
    ]);
    // 4 Mbit/s is 500 kB/s: 600 kB each way takes over a second.
    let alice = proxy
        .connect_as(&echo.target(), Some(&creds("alice", "a")))
        .unwrap();
    let took = echo_through(alice, 600_000);
    assert!(
        took >= std::time::Duration::from_millis(1_000),
        "600 kB crossed a 500 kB/s limit in {took:?}"
    );
    proxy.wait_for_log(&["user=alice", "up=600000"]);
    let waits = metric_sum(&scrape(&metrics), "coresocks_bandwidth_waits_total", &[]);
    assert!(waits > 0);
    // Bob's bucket is his own, full: a small transfer waits for nothing.
    let bob = proxy
        .connect_as(&echo.target(), Some(&creds("bob", "b")))
        .unwrap();
    echo_through(bob, 10_000);
    proxy.wait_for_log(&["user=bob", "up=10000"]);
    assert_eq!(
        metric_sum(&scrape(&metrics), "coresocks_bandwidth_waits_total", &[]),
        waits
    );
}

#[test]
fn bad_bandwidth_stops_the_start_with_the_setting_named() {
    for bad in ["0", "fast", "10 parsecs"] {
        let err = Proxy::try_start(&["--bandwidth-per-client", bad])
            .err()
            .unwrap_or_else(|| panic!("{bad:?} was accepted"));
        assert!(err.contains("bandwidth-per-client"), "{err}");
    }
}
