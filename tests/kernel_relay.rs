//! The sockmap engine (`--relay sockmap`): random data of random sizes both
//! ways at once, hashes compared, under every close order; bytes the target
//! sent before the kernel took the tunnel; the access log's counts; and the
//! tunnels that fall back to user space. (The rest of the suite's relay
//! areas run again under it from scripts/test, as under copy and splice.)

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;
use std::time::Duration;

use crate::common::*;

/// A proxy relaying with sockmap, or `None` (said why) where the kernel or
/// privileges do not allow it.
fn sockmap_proxy(args: &[&str]) -> Option<Proxy> {
    let mut all = vec!["--relay", "sockmap", "--cores", "1"];
    all.extend_from_slice(args);
    sockmap_available(Proxy::start(&all))
}

/// `proxy`, if it says the kernel relays its tunnels.
fn sockmap_available(proxy: Proxy) -> Option<Proxy> {
    let line = proxy.wait_for_log(&["relay: sockmap"]);
    if line.contains("not available") {
        crate::common::root::skip(&format!("no sockmap here: {line}"));
        return None;
    }
    Some(proxy)
}

/// How a tunnel ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The client's FIN first; the target answers with its own afterwards.
    ClientFirst,
    /// The target's FIN first; the client keeps sending after it.
    TargetFirst,
    /// Both FIN as soon as each has sent, at once.
    Together,
    /// The client resets mid-transfer.
    ClientReset,
    /// The target resets mid-transfer.
    TargetReset,
}

/// Sizes from none to several MiB, odd ones among them (splitmix64, so a
/// failure repeats).
fn sizes(seed: u64, n: usize) -> Vec<usize> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            match z >> 62 {
                0 => (z % 16) as usize,
                1 => (z % 70_000) as usize,
                _ => (z % (6 << 20)) as usize,
            }
        })
        .collect()
}

/// What one end received: byte count and digest, or the error that ended
/// its read.
type Received = Result<(u64, [u8; 32]), ErrorKind>;

/// Sends `out` (then FINs, unless told to wait for the peer's FIN first),
/// while reading and hashing what the peer sends until its FIN.
fn exchange(mut s: TcpStream, out: Vec<u8>, fin_after_eof: bool) -> Received {
    let mut reader = s.try_clone().unwrap();
    let reading = thread::spawn(move || hash_until_eof(&mut reader).map_err(|e| e.kind()));
    let sent = s.write_all(&out);
    if fin_after_eof {
        let got = reading.join().unwrap();
        let _ = s.shutdown(Shutdown::Write);
        sent.map_err(|e| e.kind())?;
        return got;
    }
    let _ = s.shutdown(Shutdown::Write);
    let got = reading.join().unwrap();
    sent.map_err(|e| e.kind())?;
    got
}

/// One tunnel through `proxy` to a fresh target, under `close`, with
/// `up` bytes from the client and `down` from the target.
fn tunnel(proxy: &Proxy, close: Close, up: usize, down: usize, seed: u64) {
    let (to_test, from_target) = mpsc::channel();
    let to_test = Mutex::new(to_test);
    let down_data = pattern(down, seed ^ 0xd0);
    let server = Server::start("127.0.0.1:0", move |mut s| {
        let got = match close {
            Close::ClientFirst => exchange(s, down_data.clone(), true),
            Close::TargetFirst | Close::Together => exchange(s, down_data.clone(), false),
            // A hello first: once the client has it, the tunnel is up, so
            // the reset comes mid-transfer, not before the kernel took it.
            Close::ClientReset => {
                s.write_all(b"h").unwrap();
                hash_until_eof(&mut s).map_err(|e| e.kind())
            }
            Close::TargetReset => {
                s.write_all(b"h").unwrap();
                let mut first = [0u8; 1];
                let _ = s.read_exact(&mut first);
                let _ = s.write_all(&down_data);
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                Err(ErrorKind::Other)
            }
        };
        to_test.lock().unwrap().send(got).unwrap();
    });
    let s = proxy.connect(&server.target()).unwrap();
    let up_data = pattern(up, seed ^ 0x0f);
    match close {
        Close::ClientFirst | Close::Together | Close::TargetFirst => {
            let got = exchange(s, up_data.clone(), close == Close::TargetFirst);
            assert_eq!(
                got,
                Ok((down as u64, sha256(&pattern(down, seed ^ 0xd0)))),
                "{close:?} {up}/{down}: client's bytes"
            );
        }
        Close::ClientReset => {
            let mut s = s;
            s.read_exact(&mut [0u8; 1]).unwrap();
            s.write_all(&pattern(200_000 + up, seed)).unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
            let got = from_target.recv_timeout(IO_TIMEOUT).unwrap();
            assert_eq!(
                got.map(|_| ()),
                Err(ErrorKind::ConnectionReset),
                "{close:?}: target sees the reset"
            );
            return;
        }
        Close::TargetReset => {
            let mut s = s;
            s.read_exact(&mut [0u8; 1]).unwrap();
            s.write_all(b"go").unwrap();
            let err = loop {
                match hash_until_eof(&mut s) {
                    Ok(_) => panic!("clean EOF after the target's reset"),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => break e,
                }
            };
            assert_eq!(
                err.kind(),
                ErrorKind::ConnectionReset,
                "{close:?}: client sees the reset"
            );
            return;
        }
    }
    let at_target = from_target.recv_timeout(IO_TIMEOUT).unwrap();
    assert_eq!(
        at_target,
        Ok((up as u64, sha256(&up_data))),
        "{close:?} {up}/{down}: target's bytes"
    );
}

#[test]
fn random_sizes_both_ways_arrive_whole_under_every_close_order() {
    let Some(proxy) = sockmap_proxy(&[]) else {
        return;
    };
    let orders = [Close::ClientFirst, Close::TargetFirst, Close::Together];
    let mut expected = Vec::new();
    for (round, close) in orders.iter().cycle().take(12).enumerate() {
        let s = sizes(round as u64 + 1, 2);
        tunnel(&proxy, *close, s[0], s[1], round as u64 + 7);
        expected.push(format!("up={} down={}", s[0], s[1]));
    }
    // Several at once, on one core.
    let proxy = std::sync::Arc::new(proxy);
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let proxy = proxy.clone();
            let s = sizes(100 + i, 2);
            thread::spawn(move || tunnel(&proxy, orders[i as usize % 3], s[0], s[1], i))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    // The access log: each of the sequential tunnels with its exact counts,
    // closed cleanly. A side that sent its FIN before the kernel could
    // take the tunnel (the kernel takes only established sockets) makes it
    // run in user space, with the reason in the debug log.
    for counts in expected {
        let line = proxy.wait_for_log(&[&counts, "end=closed"]);
        assert!(line.contains("engine="), "{line}");
    }
    let lines = access_lines(&proxy);
    assert_eq!(lines.len(), 18, "{lines:#?}");
    assert!(lines.iter().all(|l| l.contains("end=closed")), "{lines:#?}");
    let in_kernel = lines
        .iter()
        .filter(|l| l.contains("engine=sockmap"))
        .count();
    let declined = proxy
        .log()
        .iter()
        .filter(|l| l.contains("relaying this tunnel in user space"))
        .count();
    assert_eq!(in_kernel + declined, 18, "{lines:#?}");
    assert!(in_kernel >= 9, "most tunnels are the kernel's: {lines:#?}");
}

#[test]
fn a_reset_on_either_side_reaches_the_other_and_the_next_client_is_served() {
    let Some(proxy) = sockmap_proxy(&[]) else {
        return;
    };
    let echo = echo_server("127.0.0.1:0");
    tunnel(&proxy, Close::ClientReset, 1000, 0, 1);
    proxy.wait_for_log(&["end=client-reset", "engine=sockmap"]);
    proxy.assert_serves(&echo);
    tunnel(&proxy, Close::TargetReset, 0, 300_000, 2);
    proxy.wait_for_log(&["end=target-reset", "engine=sockmap"]);
    proxy.assert_serves(&echo);
}

#[test]
fn bytes_the_target_sent_before_the_kernel_took_over_reach_the_client() {
    // Server speaks first (SMTP, SSH): its banner is queued at the proxy's
    // outbound socket before the reply goes to the client.
    let Some(proxy) = sockmap_proxy(&[]) else {
        return;
    };
    let server = Server::start("127.0.0.1:0", |mut s| {
        s.write_all(b"220 banner\r\n").unwrap();
        let mut line = [0u8; 6];
        s.read_exact(&mut line).unwrap();
        s.write_all(&line).unwrap();
    });
    let mut s = proxy.connect(&server.target()).unwrap();
    let mut banner = [0u8; 12];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"220 banner\r\n");
    s.write_all(b"HELO\r\n").unwrap();
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"HELO\r\n");
    drop(s);
    proxy.wait_for_log(&["engine=sockmap", "up=6", "down=18"]);
}

#[test]
fn tunnels_with_bandwidth_limits_or_early_data_that_waits_fall_back_to_user_space() {
    let Some(proxy) = sockmap_proxy(&["--bandwidth-per-client", "100MB"]) else {
        return;
    };
    let echo = echo_server("127.0.0.1:0");
    proxy.assert_serves(&echo);
    let line = proxy.wait_for_log(&["cmd=connect", "end=closed"]);
    assert!(
        line.contains("engine=copy"),
        "a metered tunnel is copied: {line}"
    );
}

#[test]
fn idle_tunnels_are_closed_and_counters_move_while_the_kernel_relays() {
    let (proxy, metrics) =
        Proxy::start_with_metrics(&["--relay", "sockmap", "--cores", "1", "--idle-timeout", "2s"]);
    let Some(proxy) = sockmap_available(proxy) else {
        return;
    };
    let metrics = metrics.as_str();
    let echo = echo_server("127.0.0.1:0");
    let mut s = proxy.connect(&echo.target()).unwrap();
    let chunk = vec![5u8; 1 << 20];
    s.write_all(&chunk).unwrap();
    let mut back = vec![0u8; chunk.len()];
    s.read_exact(&mut back).unwrap();
    // The live counters move within a tick (a second), the tunnel still open.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let body = scrape(metrics);
        let up = metric_sum(&body, "coresocks_bytes_client_to_target_total", &[]);
        if up >= 1 << 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "counters did not move: {body}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    // Then nothing moves: the idle timeout closes it.
    assert!(closed_without_data(&mut s));
    proxy.wait_for_log(&[
        "end=idle-timeout",
        "engine=sockmap",
        "up=1048576",
        "down=1048576",
    ]);
}

#[test]
fn without_the_privilege_to_load_bpf_it_says_why_and_relays_in_user_space() {
    if !crate::common::root::root_or_skip("dropping to an unprivileged user") {
        return;
    }
    // As nobody: no CAP_BPF, so the maps cannot be made.
    let nobody = [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let proxy = Proxy::start_in(&nobody, &["--relay", "sockmap", "--cores", "1"]);
    let warning = proxy.wait_for_log(&["relay: sockmap is not available here"]);
    assert!(warning.contains("Operation not permitted"), "{warning}");
    let echo = echo_server("127.0.0.1:0");
    proxy.assert_serves(&echo);
    let line = proxy.wait_for_log(&["cmd=connect", "end=closed"]);
    assert!(!line.contains("engine=sockmap"), "{line}");

    let config = TempPath::new("sockmap.toml");
    std::fs::write(&config.0, "relay = \"sockmap\"\n").unwrap();
    let mut perms = std::fs::metadata(&config.0).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
    std::fs::set_permissions(&config.0, perms).unwrap();
    let out = std::process::Command::new(nobody[0])
        .args(&nobody[1..])
        .arg(env!("CARGO_BIN_EXE_coresocks"))
        .args(["check-config", config.arg()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("relay = \"sockmap\" is not available here"),
        "{stderr}"
    );
    assert!(stderr.contains("tunnels would run auto"), "{stderr}");
}

#[test]
fn bind_tunnels_are_relayed_by_the_kernel_after_the_second_reply() {
    use coresocks::proto::{Command, TargetAddr};
    let Some(proxy) = sockmap_proxy(&[]) else {
        return;
    };
    let mut control = proxy.raw();
    let bound = coresocks::client::handshake_blocking(
        &mut control,
        Command::Bind,
        &TargetAddr::Ip("127.0.0.1:0".parse().unwrap()),
        None,
    )
    .unwrap();
    let TargetAddr::Ip(listen) = bound else {
        panic!("{bound:?}")
    };
    let peer = TcpStream::connect(listen).unwrap();
    peer.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut s = futures_lite::io::AssertAsync::new(&mut control);
    futures_lite::future::block_on(coresocks::client::read_reply(&mut s)).unwrap();
    let up = pattern(3 << 20, 11);
    let down = pattern(1 << 20, 12);
    let from_client = {
        let (control, up) = (control.try_clone().unwrap(), up.clone());
        thread::spawn(move || exchange(control, up, false))
    };
    let at_peer = exchange(peer, down.clone(), true);
    assert_eq!(at_peer, Ok((up.len() as u64, sha256(&up))));
    assert_eq!(
        from_client.join().unwrap(),
        Ok((down.len() as u64, sha256(&down)))
    );
    proxy.wait_for_log(&[
        "cmd=bind",
        "engine=sockmap",
        "end=closed",
        "up=3145728",
        "down=1048576",
    ]);
}
