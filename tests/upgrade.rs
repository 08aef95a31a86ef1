//! Zero-downtime upgrade (`--upgrade-socket`): a new process takes the
//! running one's listening sockets over while a connection loop runs
//! through the swap, and an open tunnel lives on in the old process until
//! it ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::common::*;
use coresocks::client::handshake_blocking;
use coresocks::proto::{Command, TargetAddr};

fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// Connects, negotiates, echoes and closes, over and over on four
/// threads, until told to stop; counts what worked and keeps what did not.
struct ConnectionLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<Mutex<u64>>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl ConnectionLoop {
    fn start(proxy: SocketAddr, target: TargetAddr) -> ConnectionLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(Mutex::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..4)
            .map(|_| {
                let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
                let target = target.clone();
                thread::spawn(move || {
                    while !s.load(Ordering::Relaxed) {
                        let attempt = || -> Result<(), String> {
                            let mut c =
                                TcpStream::connect(proxy).map_err(|e| format!("connect: {e}"))?;
                            c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                            handshake_blocking(&mut c, Command::Connect, &target, None)
                                .map_err(|e| format!("handshake: {e}"))?;
                            c.write_all(b"ping").map_err(|e| format!("write: {e}"))?;
                            let mut back = [0u8; 4];
                            c.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
                            if &back != b"ping" {
                                return Err(format!("echo: {back:?}"));
                            }
                            Ok(())
                        };
                        match attempt() {
                            Ok(()) => *o.lock().unwrap() += 1,
                            Err(e) => f.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        ConnectionLoop {
            stop,
            ok,
            failures,
            threads,
        }
    }

    fn ok(&self) -> u64 {
        *self.ok.lock().unwrap()
    }

    /// Stops the loop: (connections that worked, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        (self.ok(), self.failures.lock().unwrap().clone())
    }
}

fn wait_for_more(lp: &ConnectionLoop, than: u64) {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while lp.ok() < than + 20 {
        assert!(std::time::Instant::now() < deadline, "the loop stalled");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_new_process_takes_over_and_nothing_is_refused_reset_or_broken() {
    let echo = echo_server("127.0.0.1:0");
    let sock = TempPath::new("upgrade.sock");
    let mut old = Proxy::start(&["--upgrade-socket", sock.arg(), "--shutdown-grace", "60s"]);
    let addr = old.addr.to_string();
    let mut long = old.connect(&echo.target()).unwrap();
    echo_once(&mut long, b"before the swap");
    let lp = ConnectionLoop::start(old.addr, echo.target());
    wait_for_more(&lp, 0);

    let mut new = Proxy::start(&["--upgrade-socket", sock.arg(), "--listen", &addr]);
    old.wait_for_log(&["upgrade: process", "took over the listeners"]);
    new.wait_for_log(&["upgrade: the old process stopped accepting and drains"]);
    let at_swap = lp.ok();
    wait_for_more(&lp, at_swap);
    // The open tunnel lives on in the old process, which waits for it.
    echo_once(
        &mut long,
        b"after the swap, still relayed by the old process",
    );
    assert_eq!(
        old.wait_exit(Duration::from_millis(300)),
        None,
        "the old one drains"
    );
    drop(long);
    assert_eq!(
        old.wait_exit(IO_TIMEOUT),
        Some(0),
        "the old one exits once drained"
    );
    let after_exit = lp.ok();
    wait_for_more(&lp, after_exit);

    // Again, onto one core: a core takes both sockets of the group.
    let newer = Proxy::start(&[
        "--upgrade-socket",
        sock.arg(),
        "--listen",
        &addr,
        "--cores",
        "1",
    ]);
    new.wait_for_log(&["took over the listeners"]);
    assert_eq!(new.wait_exit(IO_TIMEOUT), Some(0));
    let last = lp.ok();
    wait_for_more(&lp, last);
    let (ok, failures) = lp.finish();
    assert!(
        failures.is_empty(),
        "{} of {ok} failed: {failures:?}",
        failures.len()
    );
    assert!(
        access_lines(&newer)
            .iter()
            .any(|l| l.contains("reply=succeeded")),
        "the newest process serves"
    );
    newer.assert_serves(&echo);
    eprintln!("upgrade: {ok} connections through two swaps, 0 failed");
}

/// The one listener option that takes on a listening socket follows the
/// new process: clients it accepts through the inherited listeners get its
/// congestion control.
#[test]
fn inherited_listeners_take_the_new_processs_congestion_control() {
    let echo = echo_server("127.0.0.1:0");
    let sock = TempPath::new("upgrade-cc.sock");
    let mut old = Proxy::start(&[
        "--upgrade-socket",
        sock.arg(),
        "--client-congestion",
        "cubic",
    ]);
    let addr = old.addr.to_string();
    let filter = format!("sport = :{}", old.addr.port());
    let mut tunnel = old.connect(&echo.target()).unwrap();
    echo_once(&mut tunnel, b"through the old process");
    assert_eq!(congestion_of(&filter), "cubic");
    drop(tunnel);
    let new = Proxy::start(&[
        "--upgrade-socket",
        sock.arg(),
        "--listen",
        &addr,
        "--client-congestion",
        "reno",
    ]);
    new.wait_for_log(&["upgrade: the old process stopped accepting and drains"]);
    assert_eq!(old.wait_exit(IO_TIMEOUT), Some(0), "the old one exits");
    let mut tunnel = new.connect(&echo.target()).unwrap();
    echo_once(&mut tunnel, b"through the new process");
    assert_eq!(congestion_of(&filter), "reno");
}

#[test]
fn without_a_running_process_the_socket_is_simply_created() {
    let echo = echo_server("127.0.0.1:0");
    let sock = TempPath::new("upgrade-first.sock");
    let proxy = Proxy::start(&["--upgrade-socket", sock.arg()]);
    proxy.assert_serves(&echo);
    let mode = std::fs::metadata(&sock.0).unwrap();
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    assert!(mode.file_type().is_socket());
    assert_eq!(
        mode.permissions().mode() & 0o777,
        0o600,
        "only its user may take over"
    );
    // Something that is not coresocks on the path: one clear error.
    let junk = TempPath::new("upgrade-junk.sock");
    let listener = std::os::unix::net::UnixListener::bind(&junk.0).unwrap();
    let talker = thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let _ = c.write_all(b"hello, I am something else\n");
        }
    });
    let log = Proxy::try_start(&["--upgrade-socket", junk.arg()])
        .err()
        .expect("no start against a stranger");
    assert!(log.contains("is not a coresocks upgrade socket"), "{log}");
    talker.join().unwrap();
    proxy.assert_serves(&echo);
}

#[test]
fn a_new_process_that_dies_before_ready_leaves_the_old_one_serving() {
    let echo = echo_server("127.0.0.1:0");
    let sock = TempPath::new("upgrade-dies.sock");
    let old = Proxy::start(&["--upgrade-socket", sock.arg()]);
    let addr = old.addr.to_string();
    // A taker that asks for the sockets, gets them, and goes away.
    {
        let mut taker = std::os::unix::net::UnixStream::connect(&sock.0).unwrap();
        taker.write_all(b"TAKEOVER 1\n").unwrap();
        let mut got = [0u8; 4096];
        let n = taker.read(&mut got).unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with("coresocks-upgrade 1\nlisten "), "{text}");
    }
    old.wait_for_log(&["upgrade: takeover failed", "still serving"]);
    old.assert_serves(&echo);
    // The socket still works for a real upgrade afterwards.
    let new = Proxy::start(&["--upgrade-socket", sock.arg(), "--listen", &addr]);
    old.wait_for_log(&["took over the listeners"]);
    new.assert_serves(&echo);
}
