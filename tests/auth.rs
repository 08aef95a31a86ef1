//! RFC 1929 username/password.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;
use coresocks::client::{ClientError, Credentials};

fn users_file(mode: u32) -> TempPath {
    let path = TempPath::new("users");
    let mut f = std::fs::File::create(&path.0).unwrap();
    writeln!(f, "# test users\nalice:wonderland\nbob:builder:2\n").unwrap();
    std::fs::set_permissions(&path.0, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn creds(u: &str, p: &str) -> Credentials {
    Credentials {
        username: u.into(),
        password: p.into(),
    }
}

#[test]
fn right_password_is_served() {
    let users = users_file(0o600);
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--users", users.arg()]);
    proxy.assert_serves_as(&echo, Some(&creds("alice", "wonderland")));
    proxy.assert_serves_as(&echo, Some(&creds("bob", "builder:2")));
    proxy.wait_for_log(&["user=alice", "reply=succeeded"]);
}

#[test]
fn wrong_password_is_rejected_with_status_and_close() {
    let users = users_file(0o600);
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--users", users.arg()]);
    // Byte-exact: method 0x02 chosen, then status 0x01, then close.
    let mut msg = vec![0x05, 0x01, 0x02, 0x01, 5];
    msg.extend_from_slice(b"alice");
    msg.push(5);
    msg.extend_from_slice(b"wrong");
    assert_eq!(exchange_raw(&proxy, &msg), [0x05, 0x02, 0x01, 0x01]);
    let err = proxy
        .connect_as(&echo.target(), Some(&creds("mallory", "wonderland")))
        .unwrap_err();
    assert!(matches!(err, ClientError::AuthRejected), "{err}");
    proxy.wait_for_log(&["user=mallory", "end=auth-failed"]);
    proxy.assert_serves_as(&echo, Some(&creds("alice", "wonderland")));
}

#[test]
fn no_auth_is_refused_when_users_are_configured() {
    let users = users_file(0o600);
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--users", users.arg()]);
    assert_eq!(exchange_raw(&proxy, &[0x05, 0x01, 0x00]), [0x05, 0xFF]);
    let err = proxy.connect(&echo.target()).unwrap_err();
    assert!(matches!(err, ClientError::NoAcceptableMethod), "{err}");
    proxy.assert_serves_as(&echo, Some(&creds("alice", "wonderland")));
}

#[test]
fn bad_auth_version_and_empty_username_are_rejected() {
    let users = users_file(0o600);
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--users", users.arg()]);
    assert_eq!(
        exchange_raw(&proxy, &[0x05, 0x01, 0x02, 0x05, 1, b'a', 1, b'b']),
        [0x05, 0x02, 0x01, 0x01]
    );
    assert_eq!(
        exchange_raw(&proxy, &[0x05, 0x01, 0x02, 0x01, 0, 1, b'b']),
        [0x05, 0x02, 0x01, 0x01]
    );
    proxy.assert_serves_as(&echo, Some(&creds("alice", "wonderland")));
}

#[test]
fn world_readable_users_file_is_warned_about() {
    let users = users_file(0o644);
    let proxy = Proxy::start(&["--users", users.arg()]);
    proxy.wait_for_log(&["WARN", "readable by every user", "chmod 600"]);
}

#[test]
fn malformed_users_file_is_one_clear_error() {
    let path = TempPath::new("badusers");
    std::fs::write(&path.0, "alice:ok\nnocolon\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coresocks"))
        .args(["--listen", "127.0.0.1:0", "--users", path.arg()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("user:password"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn hashed_passwords_from_hash_password_work_beside_plain_ones() {
    let (code, hash, err) = hash_password("wonderland\n");
    assert_eq!(code, Some(0), "{err}");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let users = TempPath::new("hashed-users");
    std::fs::write(&users.0, format!("alice:{hash}\nbob:builder\n")).unwrap();
    std::fs::set_permissions(&users.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--users", users.arg()]);
    proxy.assert_serves_as(&echo, Some(&creds("alice", "wonderland")));
    proxy.assert_serves_as(&echo, Some(&creds("bob", "builder")));
    for (user, password) in [("alice", "wonderlan"), ("alice", hash), ("carol", "x")] {
        let err = proxy
            .connect_as(&echo.target(), Some(&creds(user, password)))
            .unwrap_err();
        assert!(matches!(err, ClientError::AuthRejected), "{user}: {err}");
    }
    proxy.wait_for_log(&["user=carol", "end=auth-failed"]);
    proxy.assert_serves_as(&echo, Some(&creds("alice", "wonderland")));
}

#[test]
fn hash_password_refuses_an_empty_password_and_a_bad_hash_stops_the_start() {
    let (code, out, err) = hash_password("\n");
    assert_eq!(code, Some(2), "{out}");
    assert!(err.contains("1 to 255 bytes"), "{err}");
    let users = TempPath::new("bad-hash-users");
    std::fs::write(&users.0, "alice:$argon2id$v=19$truncated\n").unwrap();
    let log = match Proxy::try_start(&["--users", users.arg()]) {
        Ok(_) => panic!("started with a malformed hash"),
        Err(log) => log,
    };
    assert!(
        log.contains("line 1") && log.contains("hash-password"),
        "{log}"
    );
}
