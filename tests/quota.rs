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
