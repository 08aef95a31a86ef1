//! Bad input gives one clear line and a non-zero exit, never a panic.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use crate::common::*;

fn users_file() -> TempFile {
    let f = TempFile::new("users");
    let mut file = std::fs::File::create(&f.0).expect("create users file");
    writeln!(file, "alice:wonderland").expect("write users file");
    std::fs::set_permissions(&f.0, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    f
}

const SHORT: [&str; 4] = ["--duration", "0.5", "--warmup", "0"];

fn with_short<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend_from_slice(&SHORT);
    v
}

#[test]
fn proxy_not_listening() {
    let port = closed_port();
    for scenario in ["throughput", "cps", "latency", "udp", "idle"] {
        loadgen(&with_short(&[scenario, "--proxy", &port])).assert_clean_error(&format!(
            "cannot connect to the proxy at {port}: connection refused"
        ));
    }
}

#[test]
fn target_down_direct() {
    let port = closed_port();
    loadgen(&with_short(&["cps", "--direct", "--target", &port])).assert_clean_error(&format!(
        "cannot connect to the target at {port}: connection refused"
    ));
}

#[test]
fn proxy_refuses_with_a_reply_code() {
    let _serial = serial();
    let proxy = coresocks(&[]);
    let port = closed_port();
    loadgen(&with_short(&[
        "throughput",
        "--proxy",
        &proxy.arg(),
        "--target",
        &port,
    ]))
    .assert_clean_error("connection-refused (0x05)");
}

#[test]
fn auth_failures() {
    let _serial = serial();
    let users = users_file();
    let proxy = coresocks(&["--users", users.arg()]);
    loadgen(&with_short(&[
        "latency",
        "--proxy",
        &proxy.arg(),
        "--user",
        "alice",
        "--password",
        "wrong",
    ]))
    .assert_clean_error("rejected the username or password");
    loadgen(&with_short(&["latency", "--proxy", &proxy.arg()]))
        .assert_clean_error("accepts none of the offered authentication methods");
    // The right password works.
    loadgen(&with_short(&[
        "cps",
        "--proxy",
        &proxy.arg(),
        "--user",
        "alice",
        "--password",
        "wonderland",
    ]))
    .assert_ok();
}

#[test]
fn not_a_loadgen_target() {
    let _serial = serial();
    // A SOCKS5 proxy is not a loadgen target.
    let proxy = coresocks(&[]);
    loadgen(&with_short(&[
        "cps",
        "--direct",
        "--target",
        &proxy.arg(),
        "--timeout",
        "1s",
    ]))
    .assert_clean_error("(is it a `loadgen serve`?)");
}

#[test]
fn udp_needs_a_udp_echo_on_the_target_port() {
    // A target that passes the TCP hello but has no UDP echo.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    std::thread::spawn(move || {
        use std::io::Read;
        for mut stream in listener.incoming().flatten() {
            let mut mode = [0u8; 1];
            if stream.read_exact(&mut mode).is_ok() && mode[0] == b'H' {
                let _ = stream.write_all(b"LGT1");
            }
        }
    });
    loadgen(&with_short(&[
        "udp",
        "--direct",
        "--target",
        &addr,
        "--timeout",
        "0.5",
    ]))
    .assert_clean_error("no UDP echo from");
}

#[test]
fn usage_errors() {
    loadgen(&["throughput", "--direct", "--cores", "9999-9999"]).assert_clean_error("CPU 9999");
    loadgen(&["latency", "--direct", "--rate", "0"]).assert_clean_error("--rate");
    loadgen(&["throughput", "--proxy", "no-such-host.invalid:1080"])
        .assert_clean_error("cannot resolve proxy");
    // clap's own errors exit 2 without a panic.
    let run = loadgen(&["throughput"]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"));
}
