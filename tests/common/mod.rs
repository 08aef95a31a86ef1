//! Test harness: the real `coresocks` binary on an ephemeral loopback port,
//! real targets on loopback, and the crate's own client.
#![allow(dead_code)]

pub mod kdc;
pub mod root;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use coresocks::client::{handshake_blocking, ClientError, Credentials};
use coresocks::proto::{Command as Cmd, TargetAddr};

/// How long a test waits for I/O before calling the proxy hung. Only a hang
/// detector, never a speed check: generous, as a CI machine with half its
/// CPU stolen was seen to stall a 64 MiB debug-build transfer for 20 s.
pub const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// A running proxy. Killed on drop.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// Set once the log reader has seen the end of the proxy's stderr.
    log_ended: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Starts the proxy with `args` (plus `--listen 127.0.0.1:0` unless
    /// args listen elsewhere, and loopback opened unless args hold an
    /// `--allow` or `--deny`). `CORESOCKS_TEST_RELAY` picks the relay engine
    /// for the whole suite.
    pub fn start(args: &[&str]) -> Proxy {
        Proxy::try_start(args).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    pub fn try_start(args: &[&str]) -> Result<Proxy, String> {
        Proxy::try_start_in(&[], args)
    }

    /// [`Proxy::start`] with the binary run through `wrapper`, a command
    /// prefix such as `["ip", "netns", "exec", NS]`.
    pub fn start_in(wrapper: &[&str], args: &[&str]) -> Proxy {
        Proxy::try_start_in(wrapper, args)
            .unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    pub fn try_start_in(wrapper: &[&str], args: &[&str]) -> Result<Proxy, String> {
        Proxy::launch(wrapper, args, true)
    }

    /// [`Proxy::start`] without the harness's own flags (debug log level,
    /// loopback opened, the suite's relay engine): only what `args` and a
    /// config file say, as a reload test needs.
    pub fn start_plain(args: &[&str]) -> Proxy {
        Proxy::launch(&[], args, false).unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    /// [`Proxy::start`] with extra environment variables for the child.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Proxy {
        Proxy::launch_env(&[], args, true, env)
            .unwrap_or_else(|log| panic!("proxy did not start:\n{log}"))
    }

    fn launch(wrapper: &[&str], args: &[&str], defaults: bool) -> Result<Proxy, String> {
        Proxy::launch_env(wrapper, args, defaults, &[])
    }

    fn launch_env(
        wrapper: &[&str],
        args: &[&str],
        defaults: bool,
        env: &[(&str, &str)],
    ) -> Result<Proxy, String> {
        let bin = env!("CARGO_BIN_EXE_coresocks");
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        if !args.iter().any(|a| *a == "--listen" || *a == "-l") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if defaults && !args.contains(&"--log-level") {
            cmd.args(["--log-level", "debug"]);
        }
        // The suite's targets are on loopback, which the egress policy
        // denies by default: open it as a user would. A test that sets
        // --allow or --deny itself gets exactly the policy it asks for.
        if defaults && !args.iter().any(|a| *a == "--allow" || *a == "--deny") {
            cmd.args(["--allow", "127.0.0.0/8", "--allow", "::1"]);
        }
        if let (true, Ok(relay)) = (defaults, std::env::var("CORESOCKS_TEST_RELAY")) {
            if !args.contains(&"--relay") {
                cmd.args(["--relay", &relay]);
            }
        }

        cmd.envs(env.iter().copied());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn coresocks");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        let log_ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ended = log_ended.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split(" ready on ").nth(1) {
                    let addr = rest.split([' ', ',']).next().unwrap().to_owned();
                    let _ = tx.send(addr);
                }
                log2.lock().unwrap().push(line);
            }
            ended.store(true, std::sync::atomic::Ordering::Release);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Ok(Proxy {
                child,
                addr: addr.parse().unwrap(),
                log,
                log_ended,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                thread::sleep(Duration::from_millis(100));
                Err(log.lock().unwrap().join("\n"))
            }
        }
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Stops the proxy (SIGTERM), waits for it to exit and for the last of
    /// its stderr, and returns every line it logged: the evidence a check
    /// for a line that must not appear needs.
    pub fn stop_and_collect_log(&mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        assert!(
            self.wait_exit(IO_TIMEOUT).is_some(),
            "the proxy did not exit"
        );
        let deadline = Instant::now() + IO_TIMEOUT;
        while !self.log_ended.load(std::sync::atomic::Ordering::Acquire) {
            assert!(Instant::now() < deadline, "stderr stayed open");
            thread::sleep(Duration::from_millis(10));
        }
        self.log()
    }

    /// Waits until a log line containing every one of `needles` appears.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            if let Some(l) = self
                .log()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needles:?}:\n{}",
                self.log().join("\n")
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The proxy's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Starts a proxy with `--metrics` and returns it with the endpoint.
    pub fn start_with_metrics(args: &[&str]) -> (Proxy, String) {
        Proxy::start_in_with_metrics(&[], args)
    }

    /// [`Proxy::start_with_metrics`] run through `wrapper`.
    pub fn start_in_with_metrics(wrapper: &[&str], args: &[&str]) -> (Proxy, String) {
        let mut all = args.to_vec();
        all.extend(["--metrics", "127.0.0.1:0"]);
        let proxy = Proxy::start_in(wrapper, &all);
        let line = proxy.wait_for_log(&["metrics on http://"]);
        let addr = line
            .split("http://")
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_owned();
        (proxy, addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Descriptors the proxy holds open now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A connection to the proxy from `source` (any 127.0.0.0/8 address),
    /// with the I/O timeouts of [`Proxy::raw`].
    pub fn raw_from(&self, source: [u8; 4]) -> TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from((source, 0)).into()).unwrap();
        s.connect(&self.addr.into()).expect("connect to proxy");
        let s = TcpStream::from(s);
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A raw TCP connection to the proxy, with timeouts.
    pub fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to proxy");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// A tunnel through the proxy to `target`.
    pub fn connect(&self, target: &TargetAddr) -> Result<TcpStream, ClientError> {
        self.connect_as(target, None)
    }

    pub fn connect_as(
        &self,
        target: &TargetAddr,
        creds: Option<&Credentials>,
    ) -> Result<TcpStream, ClientError> {
        let mut s = self.raw();
        handshake_blocking(&mut s, Cmd::Connect, target, creds)?;
        Ok(s)
    }

    /// Proves the proxy still serves: a fresh tunnel echoes a message.
    pub fn assert_serves(&self, echo: &Echo) {
        self.assert_serves_as(echo, None)
    }

    pub fn assert_serves_as(&self, echo: &Echo, creds: Option<&Credentials>) {
        let mut s = self
            .connect_as(&echo.target(), creds)
            .expect("proxy no longer serves a fresh client");
        s.write_all(b"still alive?").unwrap();
        let mut back = [0u8; 12];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still alive?");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP server running `handler` on a thread per connection.
pub struct Server {
    pub addr: SocketAddr,
    accepted: Arc<Mutex<usize>>,
}

impl Server {
    pub fn start<F>(bind: &str, handler: F) -> Server
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(bind).expect("bind target");
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(handler);
        let accepted = Arc::new(Mutex::new(0));
        let acc = accepted.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                *acc.lock().unwrap() += 1;
                conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                conn.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
                let h = handler.clone();
                thread::spawn(move || h(conn));
            }
        });
        Server { addr, accepted }
    }

    pub fn target(&self) -> TargetAddr {
        TargetAddr::Ip(self.addr)
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

pub type Echo = Server;

/// Echoes everything back; passes the client's FIN on after the echo.
pub fn echo_server(bind: &str) -> Echo {
    Server::start(bind, |mut s| {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    })
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can check
/// content without storing it.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Reads until EOF, hashing as it goes; returns (bytes, digest).
pub fn hash_until_eof(s: &mut impl Read) -> std::io::Result<(u64, [u8; 32])> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok((total, h.finalize().into()));
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
}

/// Reads everything until EOF.
pub fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).expect("read to end");
    v
}

/// True when the peer closed the connection (EOF or reset) within the
/// read timeout, without sending anything.
pub fn closed_without_data(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

/// Writes `bytes` and returns whatever the proxy sends back before closing.
pub fn exchange_raw(proxy: &Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut s = proxy.raw();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// A port on 127.0.0.1 with nothing listening.
pub fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// The access-log lines (target `access`).
pub fn access_lines(proxy: &Proxy) -> Vec<String> {
    proxy
        .log()
        .into_iter()
        .filter(|l| l.contains(" access: "))
        .collect()
}

/// Fetches the Prometheus text from a metrics endpoint, within
/// Prometheus's default scrape timeout (10 s).
pub fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// Sum of a metric over all label sets whose line contains every filter.
pub fn metric_sum(body: &str, name: &str, filters: &[&str]) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A file path under the system temp dir, removed on drop.
pub struct TempPath(pub std::path::PathBuf);

impl TempPath {
    pub fn new(stem: &str) -> TempPath {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TempPath(
            std::env::temp_dir().join(format!("coresocks-test-{stem}-{}-{n}", std::process::id())),
        )
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Answers any HTTP request with a body naming the requested path
/// (`hello from /path`).
pub fn http_server(bind: &str) -> Server {
    Server::start(bind, |mut s| {
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let path = String::from_utf8_lossy(&req)
            .split(' ')
            .nth(1)
            .unwrap_or("?")
            .to_owned();
        let body = format!("hello from {path}\n");
        let _ = write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    })
}

/// Runs curl quietly with `args`: (succeeded, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl must be installed (apt-get install curl)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A UDP echo server; returns its address.
pub fn udp_echo(bind: &str) -> SocketAddr {
    let sock = std::net::UdpSocket::bind(bind).unwrap();
    let addr = sock.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    addr
}

/// What `ss -t<options>H` prints of the established TCP sockets that a
/// filter (e.g. `sport = :1080`) picks out.
pub fn ss_established(options: &str, filter: &str) -> String {
    let out = std::process::Command::new("ss")
        .arg(format!("-t{options}H"))
        .args(["state", "established"])
        .arg(filter)
        .output()
        .expect("ss (iproute2) runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The congestion control of the socket a filter picks out, as `ss -ti`
/// names it.
pub fn congestion_of(filter: &str) -> &'static str {
    let text = ss_established("ni", filter);
    ["reno", "cubic", "bbr"]
        .into_iter()
        .find(|cc| text.split_whitespace().any(|w| w == *cc))
        .unwrap_or_else(|| panic!("{filter}: no congestion control in {text:?}"))
}

/// Runs `cmd` with `input` on its stdin (then closed), to its exit.
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `coresocks hash-password` with `password` on stdin: (exit code, stdout,
/// stderr).
pub fn hash_password(password: &str) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_coresocks"));
    let out = output_with_input(cmd.arg("hash-password"), password.as_bytes());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
