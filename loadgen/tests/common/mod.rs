//! Harness: the real loadgen binary, `loadgen serve` as a separate target
//! process, and the real coresocks binary (found next to loadgen in
//! target/<profile>/; building it is the caller's job, e.g.
//! `cargo build -p coresocks` or `cargo test --workspace`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Load tests share two cores: one at a time within a test binary.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn loadgen_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_loadgen"))
}

pub fn coresocks_bin() -> PathBuf {
    let bin = loadgen_bin().with_file_name("coresocks");
    assert!(
        bin.exists(),
        "{} is missing: build the proxy first with `cargo build -p coresocks` in the same profile",
        bin.display()
    );
    bin
}

/// A temporary file path, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(tag: &str) -> TempFile {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TempFile(
            std::env::temp_dir().join(format!("loadgen-test-{}-{n}-{tag}", std::process::id())),
        )
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }

    pub fn json(&self) -> Value {
        let text = std::fs::read_to_string(&self.0)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.0.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad JSON in {}: {e}\n{text}", self.0.display()))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What one loadgen run printed.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn assert_ok(&self) -> &Run {
        assert_eq!(
            self.code,
            Some(0),
            "loadgen failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// A clean failure: non-zero exit, one `loadgen: ...` line, no panic.
    pub fn assert_clean_error(&self, needle: &str) {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure, got {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "panic:\n{}", self.stderr);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one error line:\n{}", self.stderr);
        assert!(lines[0].starts_with("loadgen: "), "{}", lines[0]);
        assert!(
            lines[0].contains(needle),
            "error line lacks {needle:?}: {}",
            lines[0]
        );
    }
}

pub fn loadgen(args: &[&str]) -> Run {
    let out: Output = Command::new(loadgen_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A child process that prints "ready on ADDR" on stderr. Killed on drop.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    stderr_lines: std::sync::Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(mut cmd: Command, what: &str) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("ready on ").nth(1) {
                    let addr = rest.split([' ', ',']).next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                keep.lock().unwrap().push(line);
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Daemon {
                child,
                addr: addr
                    .parse()
                    .unwrap_or_else(|_| panic!("{what} printed a bad address {addr:?}")),
                stderr_lines: lines,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{what} did not start:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        }
    }

    pub fn arg(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait for a clean exit; returns stdout.
    pub fn stop(mut self) -> String {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "exit {status}:\n{}",
                    self.stderr_lines.lock().unwrap().join("\n")
                );
                break;
            }
            assert!(Instant::now() < deadline, "did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            use std::io::Read;
            let _ = stdout.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `loadgen serve` on an ephemeral loopback port, writing its counters to
/// `json` when stopped.
pub fn serve(json: &TempFile, extra: &[&str]) -> Daemon {
    let mut cmd = Command::new(loadgen_bin());
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--json", json.arg()])
        .args(extra);
    Daemon::start(cmd, "loadgen serve")
}

/// coresocks with one core on an ephemeral loopback port, loopback
/// targets opened (the egress policy denies them by default).
pub fn coresocks(extra: &[&str]) -> Daemon {
    let mut cmd = Command::new(coresocks_bin());
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--cores",
        "1",
        "--allow",
        "127.0.0.0/8",
    ])
    .args(extra);
    Daemon::start(cmd, "coresocks")
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr.to_string()
}

pub fn u64_at(v: &Value, pointer: &str) -> u64 {
    v.pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer at {pointer} in\n{v:#}"))
}

pub fn f64_at(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in\n{v:#}"))
}
