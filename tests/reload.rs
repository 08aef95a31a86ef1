//! SIGHUP: the config file and the users file read again, a bad one kept
//! out, the access log reopened after rotation, the log level changed;
//! `coresocks check-config`.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;
use coresocks::client::{ClientError, Credentials};
use coresocks::proto::ReplyCode;

/// Writes `text` to the file and sends SIGHUP; waits for the reload's
/// log line (applied or refused), the `n`th of its kind.
fn reload(proxy: &Proxy, file: &TempPath, text: &str, expect: &str, n: usize) {
    std::fs::write(&file.0, text).unwrap();
    proxy.signal(libc::SIGHUP);
    let deadline = Instant::now() + IO_TIMEOUT;
    while proxy.log().iter().filter(|l| l.contains(expect)).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {expect:?} line:\n{}",
            proxy.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const APPLIED: &str = "SIGHUP: configuration";
const KEPT: &str = "keeping the running configuration";

const OPEN_LOOPBACK: &str = "[[rule]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n";

fn echo_once(s: &mut std::net::TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn new_rules_apply_to_new_tunnels_and_open_ones_keep_theirs() {
    let echo = echo_server("127.0.0.1:0");
    let file = TempPath::new("reload.toml");
    std::fs::write(&file.0, OPEN_LOOPBACK).unwrap();
    // A --deny flag keeps the harness from opening loopback itself; the
    // file's rule is what opens it.
    let proxy = Proxy::start(&["--config", file.arg(), "--deny", "192.0.2.1"]);
    let mut open = proxy
        .connect(&echo.target())
        .expect("loopback opened by the file");
    echo_once(&mut open, b"before");
    reload(&proxy, &file, "idle-timeout = \"5m\"\n", APPLIED, 1);
    let err = proxy.connect(&echo.target()).unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(ReplyCode::NotAllowed)),
        "the rule is gone: {err}"
    );
    echo_once(&mut open, b"the open tunnel keeps its rules");
    reload(&proxy, &file, OPEN_LOOPBACK, APPLIED, 2);
    proxy.assert_serves(&echo);
    proxy.wait_for_log(&["configuration 2 applied (2 rule(s), 0 user(s))"]);
}

#[test]
fn a_bad_or_restart_only_change_keeps_the_running_configuration() {
    let echo = echo_server("127.0.0.1:0");
    let file = TempPath::new("reload-bad.toml");
    std::fs::write(&file.0, OPEN_LOOPBACK).unwrap();
    let proxy = Proxy::start(&["--config", file.arg(), "--deny", "192.0.2.1"]);
    reload(&proxy, &file, "idle-timeout = \n", KEPT, 1);
    proxy.assert_serves(&echo);
    reload(&proxy, &file, "no-such-setting = 1\n", KEPT, 2);
    reload(
        &proxy,
        &file,
        &format!("cores = \"1\"\n{OPEN_LOOPBACK}"),
        KEPT,
        3,
    );
    proxy.wait_for_log(&["SIGHUP: cores changed, which needs a restart"]);
    reload(&proxy, &file, "users = \"/nonexistent/users\"\n", KEPT, 4);
    reload(
        &proxy,
        &file,
        &format!("client-congestion = \"reno\"\n{OPEN_LOOPBACK}"),
        KEPT,
        5,
    );
    proxy.wait_for_log(&[
        "SIGHUP: ",
        "congestion control changed, which needs a restart",
    ]);
    // Each refusal is one line that says what is wrong; the rules stay.
    proxy.wait_for_log(&["SIGHUP: config file", "no-such-setting", KEPT]);
    proxy.wait_for_log(&["SIGHUP:", "/nonexistent/users", KEPT]);
    proxy.assert_serves(&echo);
    assert!(
        !proxy.log().iter().any(|l| l.contains(APPLIED)),
        "nothing was applied"
    );
}

fn creds(u: &str, p: &str) -> Credentials {
    Credentials {
        username: u.into(),
        password: p.into(),
    }
}

#[test]
fn the_users_file_is_read_again() {
    let echo = echo_server("127.0.0.1:0");
    let users = TempPath::new("reload-users");
    std::fs::write(&users.0, "alice:wonderland\n").unwrap();
    std::fs::set_permissions(&users.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let file = TempPath::new("reload-users.toml");
    std::fs::write(&file.0, format!("users = \"{}\"\n", users.arg())).unwrap();
    let proxy = Proxy::start(&["--config", file.arg()]);
    proxy.assert_serves_as(&echo, Some(&creds("alice", "wonderland")));
    std::fs::write(&users.0, "bob:builder\n").unwrap();
    proxy.signal(libc::SIGHUP);
    // "applied" is logged once every core serves new sessions with it.
    proxy.wait_for_log(&["configuration 1 applied", "1 user(s)"]);
    proxy.assert_serves_as(&echo, Some(&creds("bob", "builder")));
    let err = proxy
        .connect_as(&echo.target(), Some(&creds("alice", "wonderland")))
        .unwrap_err();
    assert!(
        matches!(err, ClientError::AuthRejected),
        "alice was removed: {err}"
    );
}

#[test]
fn the_access_log_is_reopened_after_rotation() {
    let echo = echo_server("127.0.0.1:0");
    let log = TempPath::new("reload-access.log");
    let rotated = TempPath::new("reload-access.log.1");
    let proxy = Proxy::start(&["--access-log", log.arg()]);
    let wait_for = |path: &TempPath, needle: &str| {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&path.0).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in {}:\n{text}",
                path.arg()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    proxy.assert_serves(&echo);
    wait_for(&log, "conn=");
    std::fs::rename(&log.0, &rotated.0).unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_log(&["configuration 1 applied"]);
    proxy.assert_serves(&echo);
    let fresh = wait_for(&log, "conn=");
    assert_eq!(fresh.lines().count(), 1, "only the new line: {fresh}");
    let old = std::fs::read_to_string(&rotated.0).unwrap();
    assert_eq!(
        old.lines().count(),
        1,
        "the rotated file keeps the old line: {old}"
    );
    // SIGUSR1 reopens too, without a reload.
    std::fs::rename(&log.0, &rotated.0).unwrap();
    proxy.signal(libc::SIGUSR1);
    proxy.wait_for_log(&["SIGUSR1: access log reopened"]);
    proxy.assert_serves(&echo);
    wait_for(&log, "conn=");
}

#[test]
fn the_log_level_follows_the_file() {
    let file = TempPath::new("reload-level.toml");
    let settings = |level: &str| {
        format!("listen = [\"127.0.0.1:0\"]\nlog-level = \"{level}\"\naccess-log = \"stderr\"\n")
    };
    std::fs::write(&file.0, settings("info")).unwrap();
    let mut proxy = Proxy::start_plain(&["--config", file.arg()]);
    // A client that sends garbage ends with a debug line only. Its access
    // line comes after that line would have been logged, so once it is out
    // the level it was judged at was info.
    let garbage = |proxy: &Proxy| exchange_raw(proxy, &[0x04, 0x01]);
    garbage(&proxy);
    proxy.wait_for_log(&["end=bad-request"]);
    reload(&proxy, &file, &settings("debug"), APPLIED, 1);
    garbage(&proxy);
    proxy.wait_for_log(&["DEBUG", "session ended"]);
    // Once the process has exited every line is out: the first client,
    // served at info, left none.
    let log = proxy.stop_and_collect_log();
    let ended = log.iter().filter(|l| l.contains("session ended")).count();
    assert_eq!(
        ended,
        1,
        "a debug line for the second client only:\n{}",
        log.join("\n")
    );
}

#[test]
fn check_config_validates_without_starting() {
    let bin = env!("CARGO_BIN_EXE_coresocks");
    let file = TempPath::new("check.toml");
    let check = |text: &str| {
        std::fs::write(&file.0, text).unwrap();
        let out = Command::new(bin)
            .args(["check-config", file.arg()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = check(&format!("listen = [\"127.0.0.1:1\"]\n{OPEN_LOOPBACK}"));
    assert_eq!(code, Some(0));
    assert!(
        out.contains(": ok (1 listener(s), 1 rule(s), 0 user(s))"),
        "{out}"
    );
    for (text, says) in [
        ("idle-timeout = \"0s\"\n", "idle-timeout"),
        ("listen = 5\n", "listen"),
        ("users = \"/nonexistent/users\"\n", "/nonexistent/users"),
        ("[[rule]]\naction = \"maybe\"\n", "maybe"),
        (
            "target-congestion = \"no_such_cc\"\n",
            "the kernel has no algorithm of that name",
        ),
    ] {
        let (code, _, err) = check(text);
        assert_eq!(code, Some(2), "{text}");
        assert!(
            err.starts_with("coresocks: ") && err.contains(says),
            "{text}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn a_reload_can_cut_the_tunnels_of_removed_users() {
    let echo = echo_server("127.0.0.1:0");
    let users = TempPath::new("reload-cut-users");
    std::fs::write(&users.0, "alice:wonderland\nbob:builder\n").unwrap();
    std::fs::set_permissions(&users.0, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = Proxy::start(&["--users", users.arg(), "--reload-closes-removed-users"]);
    let mut alice = proxy
        .connect_as(&echo.target(), Some(&creds("alice", "wonderland")))
        .unwrap();
    let mut bob = proxy
        .connect_as(&echo.target(), Some(&creds("bob", "builder")))
        .unwrap();
    echo_once(&mut alice, b"alice before");
    echo_once(&mut bob, b"bob before");
    std::fs::write(&users.0, "alice:wonderland\n").unwrap();
    proxy.signal(libc::SIGHUP);
    proxy.wait_for_log(&["configuration 1 applied", "1 user(s)"]);
    proxy.wait_for_log(&["user=bob", "end=user-removed"]);
    assert!(closed_without_data(&mut bob), "bob's tunnel is cut");
    echo_once(&mut alice, b"alice keeps hers");
}
