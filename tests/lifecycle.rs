//! Limits, timeouts, shutdown, config errors, metrics and --help.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::*;

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

#[test]
fn shutdown_drains_an_open_tunnel_then_exits_0() {
    let echo = echo_server("127.0.0.1:0");
    let mut proxy = Proxy::start(&["--shutdown-grace", "20s"]);
    let mut tunnel = proxy.connect(&echo.target()).unwrap();
    echo_once(&mut tunnel, b"before");
    proxy.signal(libc::SIGTERM);
    proxy.wait_for_log(&["no longer accepting"]);
    proxy.wait_for_log(&["draining"]);
    // New clients are refused while the open tunnel keeps working.
    let deadline = Instant::now() + IO_TIMEOUT;
    while TcpStream::connect(proxy.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "listeners must close at shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    echo_once(&mut tunnel, b"during shutdown");
    drop(tunnel);
    assert_eq!(proxy.wait_exit(IO_TIMEOUT), Some(0));
    assert!(proxy.log().iter().any(|l| l.contains("end=closed")));
}

#[test]
fn shutdown_closes_what_is_left_after_the_grace_period() {
    let echo = echo_server("127.0.0.1:0");
    let mut proxy = Proxy::start(&["--shutdown-grace", "1s"]);
    let mut tunnel = proxy.connect(&echo.target()).unwrap();
    echo_once(&mut tunnel, b"x");
    let started = Instant::now();
    proxy.signal(libc::SIGINT);
    assert_eq!(proxy.wait_exit(IO_TIMEOUT), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(900));
    proxy.wait_for_log(&["grace period over"]);
    assert!(closed_without_data(&mut tunnel));
}

#[test]
fn idle_tunnel_is_closed_at_the_idle_timeout() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--idle-timeout", "2s"]);
    let mut tunnel = proxy.connect(&echo.target()).unwrap();
    // Activity keeps it open past the timeout...
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        echo_once(&mut tunnel, b"ping");
    }
    // ...silence closes it, no sooner than the timeout after the last byte.
    let quiet_since = Instant::now();
    assert!(closed_without_data(&mut tunnel));
    assert!(quiet_since.elapsed() >= Duration::from_millis(1800));
    proxy.wait_for_log(&["end=idle-timeout", "up=24", "down=24"]);
    proxy.assert_serves(&echo);
}

#[test]
fn connections_over_the_core_limit_are_closed_at_once() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--cores", "1", "--max-tunnels-per-core", "2"]);
    let mut a = proxy.connect(&echo.target()).unwrap();
    let mut b = proxy.connect(&echo.target()).unwrap();
    let mut over = proxy.raw();
    let _ = over.write_all(&[0x05, 0x01, 0x00]);
    assert!(closed_without_data(&mut over));
    proxy.wait_for_log(&["max-tunnels-per-core"]);
    echo_once(&mut a, b"a");
    echo_once(&mut b, b"b");
    drop(a);
    // The slot frees as soon as the proxy sees the close.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        if let Ok(mut c) = proxy.connect(&echo.target()) {
            echo_once(&mut c, b"c");
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coresocks"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn port_in_use_is_one_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run_to_exit(&["--listen", &addr]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("already in use") && err.contains(&addr),
        "{err}"
    );
    // One error line (log lines before it name the target `coresocks:`
    // further in, after their timestamp and level).
    assert_eq!(
        err.lines().filter(|l| l.starts_with("coresocks:")).count(),
        1,
        "{err}"
    );
}

#[test]
fn bad_config_file_is_one_clear_error() {
    let path = std::env::temp_dir().join(format!("coresocks-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "idle-timeout = \"forever\"\n").unwrap();
    let (code, err) = run_to_exit(&["--config", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, Some(2));
    assert!(
        err.contains("idle-timeout") || err.contains("forever"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let (code, err) = run_to_exit(&["--config", "/nonexistent/coresocks.toml"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/coresocks.toml"), "{err}");
}

#[test]
fn bad_flag_value_is_rejected() {
    let (code, err) = run_to_exit(&["--cores", "3-1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("3-1"), "{err}");
    let (code, err) = run_to_exit(&["--listen", "127.0.0.1:0", "--cores", "4096"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("4096"), "{err}");
}

#[test]
fn config_file_is_read_and_flags_win() {
    let echo = echo_server("127.0.0.1:0");
    let path = std::env::temp_dir().join(format!("coresocks-cfg-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "listen = [\"127.0.0.1:0\"]\ncores = \"1\"\nidle-timeout = \"1h\"\naccess-log = \"off\"\n",
    )
    .unwrap();
    let proxy = Proxy::start(&["--config", path.to_str().unwrap(), "--idle-timeout", "1s"]);
    std::fs::remove_file(&path).unwrap();
    proxy.wait_for_log(&["with 1 core(s)"]);
    let mut t = proxy.connect(&echo.target()).unwrap();
    assert!(
        closed_without_data(&mut t),
        "flag's 1s idle timeout applies"
    );
    // The tunnel's record would be out by the time the process exits.
    let mut proxy = proxy;
    let log = proxy.stop_and_collect_log();
    assert!(
        access_lines(&proxy).is_empty(),
        "access-log = off from the file:\n{}",
        log.join("\n")
    );
}

#[test]
fn access_log_can_go_to_a_file() {
    let echo = echo_server("127.0.0.1:0");
    let path = std::env::temp_dir().join(format!("coresocks-access-{}.log", std::process::id()));
    let proxy = Proxy::start(&["--access-log", path.to_str().unwrap()]);
    proxy.assert_serves(&echo);
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("reply=succeeded") {
            break;
        }
        assert!(Instant::now() < deadline, "access log file stayed empty");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn help_documents_every_option_with_its_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_coresocks"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--cores",
        "--backlog",
        "--users",
        "--handshake-timeout",
        "--resolve-timeout",
        "--connect-timeout",
        "--idle-timeout",
        "--shutdown-grace",
        "--max-tunnels-per-core",
        "--relay",
        "--log-level",
        "--access-log",
        "--metrics",
        "--config",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(help.contains("[default: 127.0.0.1:1080]"), "{help}");
    let options = help
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with("--") || (l.len() > 3 && l.starts_with('-') && &l[2..3] == ","))
        .count();
    let defaults = help.matches("[default:").count();
    // Every setting documents its default (--config, --help, --version don't have one).
    assert!(
        defaults + 3 >= options,
        "{defaults} defaults for {options} options:\n{help}"
    );
}

#[test]
fn metrics_endpoint_counts_replies_and_bytes() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, addr) = Proxy::start_with_metrics(&[]);
    proxy.assert_serves(&echo);
    let _ = proxy.connect(&coresocks::proto::TargetAddr::Ip(closed_port()));
    proxy.wait_for_log(&["reply=connection-refused"]);
    proxy.wait_for_log(&["end=closed"]);
    let body = scrape(&addr);
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let sum = |name: &str, filters: &[&str]| metric_sum(&body, name, filters);
    assert_eq!(sum("coresocks_replies_total", &["code=\"succeeded\""]), 1);
    assert_eq!(
        sum("coresocks_replies_total", &["code=\"connection-refused\""]),
        1
    );
    assert_eq!(sum("coresocks_bytes_client_to_target_total", &[]), 12);
    assert_eq!(sum("coresocks_bytes_target_to_client_total", &[]), 12);
    assert_eq!(sum("coresocks_connections_accepted_total", &[]), 2);
    assert_eq!(sum("coresocks_connections_active", &[]), 0);
    assert_eq!(sum("coresocks_tunnels_total", &[]), 1);
}

#[test]
fn metrics_move_while_a_tunnel_runs() {
    let echo = echo_server("127.0.0.1:0");
    let (proxy, addr) = Proxy::start_with_metrics(&[]);
    let mut s = proxy.connect(&echo.target()).unwrap();
    let mib = pattern(1 << 20, 7);
    let mut back = vec![0u8; mib.len()];
    let scrape_sum = |name: &str, filters: &[&str]| metric_sum(&scrape(&addr), name, filters);
    let mut seen = 0;
    for round in 1..=2u64 {
        s.write_all(&mib).unwrap();
        s.read_exact(&mut back).unwrap();
        // Counted as they move: the tunnel is still open.
        let up = scrape_sum("coresocks_bytes_client_to_target_total", &[]);
        let down = scrape_sum("coresocks_bytes_target_to_client_total", &[]);
        assert_eq!(up, round << 20, "round {round}");
        assert_eq!(down, round << 20, "round {round}");
        assert!(up > seen);
        seen = up;
        assert_eq!(
            scrape_sum("coresocks_tunnels_open", &["command=\"connect\""]),
            1
        );
        assert_eq!(scrape_sum("coresocks_tunnel_directions", &[]), 2);
    }
    drop(s);
    proxy.wait_for_log(&["end=closed"]);
    let body = scrape(&addr);
    let sum = |name: &str, filters: &[&str]| metric_sum(&body, name, filters);
    assert_eq!(sum("coresocks_tunnels_open", &[]), 0);
    assert_eq!(sum("coresocks_tunnel_directions", &[]), 0);
    assert_eq!(sum("coresocks_bytes_client_to_target_total", &[]), 2 << 20);
    assert_eq!(sum("coresocks_handshake_seconds_count", &[]), 1);
    assert_eq!(sum("coresocks_connect_seconds_count", &[]), 1);
    assert_eq!(sum("coresocks_tunnel_seconds_count", &[]), 1);
    assert_eq!(
        sum("coresocks_tunnel_seconds_bucket", &["le=\"+Inf\""]),
        1,
        "{body}"
    );
    assert_eq!(sum("coresocks_build_info", &[]), 1);
    for name in [
        "process_cpu_seconds_total ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
        "coresocks_access_lines_dropped_total 0",
    ] {
        assert!(
            body.contains(&format!("\n{name}")),
            "{name} missing:\n{body}"
        );
    }
}

/// Runs coresocks with an rlimit lowered (soft and hard) before exec.
fn command_with_rlimit(resource: libc::__rlimit_resource_t, limit: u64) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coresocks"));
    // SAFETY: setrlimit is async-signal-safe; the closure touches no locks
    // or allocations.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn too_small_memlock_limit_is_one_clear_error() {
    let out = command_with_rlimit(libc::RLIMIT_MEMLOCK, 64 * 1024)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RLIMIT_MEMLOCK") && err.contains("ulimit -l"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn out_of_descriptors_backs_off_and_recovers() {
    let echo = echo_server("127.0.0.1:0");
    let mut child = command_with_rlimit(libc::RLIMIT_NOFILE, 64)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--max-tunnels-per-core",
            "1000",
            "--log-level",
            "debug",
            "--allow",
            "127.0.0.0/8",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            log2.lock().unwrap().push(line);
        }
    });
    let wait_for = |needle: &str| -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(l) = log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let ready = wait_for("ready on ");
    let addr = ready
        .split(" ready on ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    // Hold more connections than the proxy has descriptors for.
    let hogs: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    wait_for("accept failed");
    drop(hogs);
    wait_for("accepting again");
    // Serves normally once descriptors are free.
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        if coresocks::client::handshake_blocking(
            &mut s,
            coresocks::proto::Command::Connect,
            &echo.target(),
            None,
        )
        .is_ok()
        {
            echo_once(&mut s, b"recovered");
            break;
        }
        assert!(Instant::now() < deadline, "proxy never recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
    let warnings = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning per episode, not one per failed accept"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn access_log_json_names_the_outbound_address_the_target_saw() {
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    let target = Server::start("127.0.0.1:0", move |mut s| {
        let _ = tx.lock().unwrap().send(s.peer_addr().unwrap());
        let mut buf = [0u8; 4];
        if s.read_exact(&mut buf).is_ok() {
            let _ = s.write_all(&buf);
        }
    });
    let proxy = Proxy::start(&["--access-log-format", "json"]);
    let mut s = proxy.connect(&target.target()).unwrap();
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    drop(s);
    let seen_by_target = rx.recv_timeout(IO_TIMEOUT).unwrap();
    let line = proxy.wait_for_log(&[" access: {"]);
    let json = line.split(" access: ").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(v["out"], seen_by_target.to_string(), "{v}");
    assert_eq!(v["cmd"], "connect");
    assert_eq!(v["reply"], "succeeded");
    assert_eq!(v["up"], 4);
    assert_eq!(v["down"], 4);
    assert_eq!(v["target"], target.addr.to_string());
    assert!(v["user"].is_null());
    proxy.assert_serves(&echo_server("127.0.0.1:0"));
}

/// `--access-log syslog:PATH`: one datagram per line, tagged and
/// prioritised as syslog daemons expect; a daemon that restarts gets the
/// lines again, and none at start is one clear error.
#[test]
fn access_log_can_go_to_syslog_and_survives_a_daemon_restart() {
    use std::os::unix::net::UnixDatagram;
    let echo = echo_server("127.0.0.1:0");
    let path = std::env::temp_dir().join(format!("coresocks-syslog-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let (code, err) = run_to_exit(&["--access-log", &format!("syslog:{}", path.display())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a syslog daemon running?"), "{err}");

    let daemon = UnixDatagram::bind(&path).unwrap();
    daemon.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let proxy = Proxy::start(&["--access-log", &format!("syslog:{}", path.display())]);
    let receive = |daemon: &UnixDatagram| {
        let mut buf = vec![0u8; 65536];
        let n = daemon.recv(&mut buf).expect("a syslog datagram");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    proxy.assert_serves(&echo);
    let line = receive(&daemon);
    let tag = format!("<30>coresocks[{}]: ", proxy.pid());
    assert!(line.starts_with(&tag), "{line}");
    assert!(
        line.contains("reply=succeeded") && !line.ends_with('\n'),
        "{line:?}"
    );

    // The daemon restarts: its socket is made anew at the same path.
    drop(daemon);
    std::fs::remove_file(&path).unwrap();
    proxy.assert_serves(&echo);
    let daemon = UnixDatagram::bind(&path).unwrap();
    daemon.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    proxy.assert_serves(&echo);
    assert!(receive(&daemon).starts_with(&tag));
    std::fs::remove_file(&path).unwrap();
}
