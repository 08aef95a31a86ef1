//! UDP, open loop: K associations send S-byte datagrams to the UDP echo at a
//! fixed total rate R, through the proxy's UDP ASSOCIATE or directly.
//!
//! Through a proxy, each association has a TCP control connection that does
//! `net::negotiate(.., Command::UdpAssociate, ..)` and stays open for the
//! whole run (the association lives as long as it), and its own UDP socket;
//! the reply's BND address is the relay, and every datagram to it carries
//! the RFC 1928 header naming the echo target. Directly, each association is
//! just a UDP socket sending to the echo.
//!
//! The schedule is the latency scenario's: association j sends datagram n at
//! `start + j/R + n*K/R`, whatever happened to the earlier ones. The first
//! 16 payload bytes carry n and that intended send time (nanoseconds after
//! the load's start, little-endian), so the receiver needs no shared state
//! with the sender: each echo gives its own latency, measured from the
//! intended send time. UDP may drop, duplicate or reorder; a bitmap per
//! association catches duplicates, and datagrams still unanswered when the
//! drain after the window ends count as lost.
//!
//! Sockets wait for readability on loadgen's event ring (`crate::ring`; a
//! 1-byte peek through glommio with `--glommio-io`), then drain with
//! non-blocking recvfrom into one 64 KiB buffer per core. Sends are
//! non-blocking sendto from one buffer per core; only when the socket's
//! send buffer is full does a datagram wait (through glommio, on a copy).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use coresocks_io::events::Stream;
use coresocks_proto::{Codec, Command, Decoded, TargetAddr, UdpHeader};
use glommio::net::UdpSocket;

use crate::cli::UdpArgs;
use crate::error::{Failure, FailureCounts, LoadgenError, Stage};
use crate::net::{self, describe_udp, relay_addr, PathSpec};
use crate::result::{Report, ScenarioResult, UdpResult};
use crate::runner::{self, CoreCtx, Live, LiveKind, Sampling, Window};
use crate::scenario::latency::Schedule;
use crate::scenario::{PathChoice, RunSetup};
use crate::stats::{self, Recorder};
use crate::stream::{self, sleep_until};
use crate::target::udp_socket;

/// Bytes of the payload that carry the sequence number and send time.
pub const STAMP: usize = 16;
/// Receive buffer: the largest datagram plus the longest SOCKS5 header.
const RECV_BUF: usize = 65_536 + 262;
/// Datagrams moved per turn before the other tasks of the core get one.
const BATCH: u64 = 64;

#[derive(Default)]
struct CoreStats {
    latency: Option<Recorder>,
    scheduled: u64,
    sent: u64,
    received: u64,
    send_failures: u64,
    duplicates: u64,
    invalid: u64,
    control_closed: u64,
    max_lag: Duration,
    failures: FailureCounts,
}

impl CoreStats {
    fn latency(&mut self, start: Instant) -> &mut Recorder {
        self.latency.get_or_insert_with(|| Recorder::new(start))
    }
}

pub fn run(path: &PathChoice, args: &UdpArgs) -> Result<Report, LoadgenError> {
    if path.proxy.is_some() && path.protocol != crate::net::ProxyProtocol::Socks5 {
        return Err(LoadgenError::Usage(format!(
            "UDP goes through SOCKS5's UDP ASSOCIATE only, not {}",
            path.protocol.as_str()
        )));
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1e7) {
        return Err(LoadgenError::Usage(format!(
            "--rate {} must be a number of datagrams per second between 0 and 1e7",
            args.rate
        )));
    }
    let mut setup = RunSetup::new(&args.run, path, LiveKind::Datagrams)?;
    setup.plan.udp_check = true;
    setup.plan.sampling = Sampling::Window;
    let rcvbuf_before = udp_rcvbuf_errors();
    let params = Arc::new(args.clone());
    let p = params.clone();
    let mut out = runner::run(&setup.plan, move |ctx| core(ctx, p.clone()))?;
    let rcvbuf_after = udp_rcvbuf_errors();

    let mut total = CoreStats::default();
    let mut latency: Option<Recorder> = None;
    for s in std::mem::take(&mut out.per_core) {
        if let Some(r) = &s.latency {
            stats::merge_into(&mut latency, r);
        }
        total.failures.merge(&s.failures);
        total.scheduled += s.scheduled;
        total.sent += s.sent;
        total.received += s.received;
        total.send_failures += s.send_failures;
        total.duplicates += s.duplicates;
        total.invalid += s.invalid;
        total.control_closed += s.control_closed;
        total.max_lag = total.max_lag.max(s.max_lag);
    }
    let window = args.run.duration.as_secs_f64();
    let lost = total.sent.saturating_sub(total.received);
    let per_s = |n: f64| if window > 0.0 { n / window } else { 0.0 };
    let result = UdpResult {
        associations: args.associations,
        size: args.size,
        target_rate: args.rate,
        scheduled: total.scheduled,
        sent: total.sent,
        received: total.received,
        lost,
        loss_percent: if total.sent > 0 {
            lost as f64 * 100.0 / total.sent as f64
        } else {
            0.0
        },
        pps: per_s(total.received as f64),
        payload_mbit_s: per_s(total.received as f64 * args.size as f64 * 2.0 * 8.0) / 1e6,
        send_failures: total.send_failures,
        duplicates: total.duplicates,
        invalid: total.invalid,
        control_closed: total.control_closed,
        latency: stats::percentiles(&latency),
        max_send_lag_us: total.max_lag.as_secs_f64() * 1e6,
        kernel_udp_rcvbuf_errors: match (rcvbuf_before, rcvbuf_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
    };
    let mut notes = Vec::new();
    if result.max_send_lag_us > 1000.0 {
        notes.push(format!(
            "a sender fell {:.1} ms behind its schedule: the latencies include that wait (they are measured from the intended send time)",
            result.max_send_lag_us / 1000.0
        ));
    }
    if result.control_closed > 0 {
        notes.push(format!(
            "the proxy closed the control connection of {} association(s) during the run",
            result.control_closed
        ));
    }
    if let Some(n) = result
        .kernel_udp_rcvbuf_errors
        .filter(|&n| n > 0 && lost > 0)
    {
        notes.push(format!(
            "the kernel counted {n} UDP receive-buffer overflows on this machine during the run (a receiver, the proxy's or loadgen's, fell behind)"
        ));
    }
    Ok(setup
        .report(
            "udp",
            serde_json::json!({
                "associations": args.associations,
                "rate": args.rate,
                "size": args.size,
            }),
            out,
            ScenarioResult::Udp(result),
            total.failures,
            notes,
        )
        .with_latencies([("latency", latency)]))
}

/// `RcvbufErrors` of the `Udp:` lines of /proc/net/snmp.
fn udp_rcvbuf_errors() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// One association: its socket, where its datagrams go, and (through a
/// proxy) the control connection that keeps it alive.
struct Association {
    index: usize,
    sock: UdpSocket,
    dest: SocketAddr,
    control: Option<Stream>,
}

async fn open_association(
    path: &PathSpec,
    index: usize,
    stage: &Cell<Stage>,
) -> Result<Association, Failure> {
    let io = |stage: Stage| move |e: std::io::Error| Failure::from_io(&e, stage);
    stage.set(Stage::Connect);
    let Some(proxy) = path.proxy else {
        let any = match path.target {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        };
        let sock = glommio_udp(udp_socket(any, false).map_err(io(Stage::Connect))?);
        stage.set(Stage::Target);
        return Ok(Association {
            index,
            sock,
            dest: path.target,
            control: None,
        });
    };
    let mut control = crate::ring::connect(proxy)
        .await
        .map_err(io(Stage::Connect))?;
    coresocks_io::sys::set_nodelay(&control);
    let local = control.local_addr().map_err(io(Stage::Connect))?;
    // The client's address goes in the request, so the relay knows it.
    let sock = udp_socket(SocketAddr::new(local.ip(), 0), false).map_err(io(Stage::Connect))?;
    let me = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or(Failure::Io)?;
    stage.set(Stage::Handshake);
    let (bound, _) = crate::net::negotiate(
        &mut control,
        Command::UdpAssociate,
        &TargetAddr::Ip(me),
        path,
    )
    .await
    .map_err(|e| Failure::from_client(&e))?;
    let relay = relay_addr(&bound, proxy).map_err(|_| Failure::ProxyProtocol)?;
    stage.set(Stage::Target);
    Ok(Association {
        index,
        sock: glommio_udp(sock),
        dest: relay,
        control: Some(control),
    })
}

fn glommio_udp(sock: socket2::Socket) -> UdpSocket {
    coresocks_io::sys::glommio_udp_socket(sock.into())
}

/// What every association of a core shares.
struct Shared {
    window: Window,
    args: Arc<UdpArgs>,
    timeout: Duration,
    /// The SOCKS5 header (empty when direct), then the payload; the stamp is
    /// written before each send. Never borrowed across an await.
    send_buf: RefCell<Vec<u8>>,
    header_len: usize,
    /// Never borrowed across an await.
    recv_buf: RefCell<Vec<u8>>,
    stats: RefCell<CoreStats>,
    live: Live,
}

async fn core(ctx: CoreCtx, args: Arc<UdpArgs>) -> Result<CoreStats, LoadgenError> {
    let associations = args.associations as usize;
    let mine = ctx.share(associations);
    let mut opened = Vec::with_capacity(mine.len());
    for &j in &mine {
        let stage = Cell::new(Stage::Connect);
        let result = net::within(ctx.timeout, open_association(&ctx.path, j, &stage), || {
            net::timeout_failure(stage.get())
        })
        .await;
        match result {
            Ok(a) => opened.push(a),
            Err(f) => {
                return Err(LoadgenError::Setup(format!(
                    "association {} of {associations} could not be opened: {}",
                    j + 1,
                    describe_udp(f, stage.get(), &ctx.path)
                )))
            }
        }
    }
    let mut send_buf = Vec::with_capacity(args.size + 32);
    if ctx.path.proxy.is_some() {
        UdpHeader {
            frag: 0,
            target: TargetAddr::Ip(ctx.path.target),
        }
        .encode(&mut send_buf);
    }
    let header_len = send_buf.len();
    send_buf.extend((0..args.size).map(|i| (i % 251) as u8));
    let window = ctx.ready().await?;
    let shared = Rc::new(Shared {
        window,
        args: args.clone(),
        timeout: ctx.timeout,
        send_buf: RefCell::new(send_buf),
        header_len,
        recv_buf: RefCell::new(vec![0u8; RECV_BUF]),
        stats: RefCell::new(CoreStats::default()),
        live: ctx.live(),
    });
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|a| {
            let schedule = Schedule::new(&window, a.index, associations, args.rate);
            coresocks_io::events::spawn(run_association(a, schedule, shared.clone()))
        })
        .collect();
    for t in tasks {
        t.await;
    }
    match Rc::try_unwrap(shared) {
        Ok(s) => Ok(s.stats.into_inner()),
        Err(_) => Err(LoadgenError::Executor(
            "udp associations still running".into(),
        )),
    }
}

/// Set once, awaited by one waiter.
#[derive(Default)]
struct Signal {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Signal {
    fn set(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn is_set(&self) -> bool {
        self.set.get()
    }

    fn wait(&self) -> impl Future<Output = ()> + '_ {
        futures_lite::future::poll_fn(move |cx| {
            if self.set.get() {
                Poll::Ready(())
            } else {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

/// The counts one association's sender and receiver share.
#[derive(Default)]
struct Progress {
    /// Datagrams the kernel accepted, warmup included.
    sent: Cell<u64>,
    /// Distinct echoes received, warmup included.
    received: Cell<u64>,
    sender_done: Signal,
}

async fn run_association(a: Association, schedule: Schedule, shared: Rc<Shared>) {
    let progress = Progress::default();
    let w = shared.window;
    sleep_until(w.start).await;
    let work = futures_lite::future::zip(
        send(&a, schedule, &shared, &progress),
        receive(&a, schedule, &shared, &progress),
    );
    futures_lite::future::or(
        async {
            work.await;
        },
        sleep_until(w.t1 + shared.timeout),
    )
    .await;
    if let Some(control) = &a.control {
        if stream::peer_closed(control).is_some() {
            shared.stats.borrow_mut().control_closed += 1;
        }
    }
}

async fn send(a: &Association, schedule: Schedule, shared: &Shared, progress: &Progress) {
    let fd = coresocks_io::sys::borrow(&a.sock);
    let w = shared.window;
    let size = shared.args.size;
    let end = shared.header_len + size;
    let mut n = 0u64;
    let mut max_lag = Duration::ZERO;
    while n < schedule.total {
        // Everything due by now goes out, a batch at a time.
        let (due, lag) = schedule.due_from(n, BATCH).await;
        max_lag = max_lag.max(lag);
        for _ in 0..due {
            let in_window = schedule.at(n) >= w.t0;
            let attempt = {
                let mut buf = shared.send_buf.borrow_mut();
                let stamp = &mut buf[shared.header_len..shared.header_len + STAMP];
                stamp[..8].copy_from_slice(&n.to_le_bytes());
                stamp[8..].copy_from_slice(&schedule.offset_ns(n).to_le_bytes());
                match coresocks_io::sys::udp_send_to(fd, &buf[..end], a.dest) {
                    Ok(_) => Attempt::Sent,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        Attempt::Full(buf[..end].to_vec())
                    }
                    Err(e) => Attempt::Failed(e),
                }
            };
            let result = match attempt {
                Attempt::Sent => Ok(()),
                Attempt::Failed(e) => Err(e),
                // The socket's send buffer is full: wait for room, on a copy.
                Attempt::Full(copy) => a
                    .sock
                    .send_to(&copy, a.dest)
                    .await
                    .map(|_| ())
                    .map_err(std::io::Error::from),
            };
            let mut s = shared.stats.borrow_mut();
            match result {
                Ok(()) => {
                    progress.sent.set(progress.sent.get() + 1);
                    if in_window {
                        s.scheduled += 1;
                        s.sent += 1;
                    }
                }
                Err(e) => {
                    if in_window {
                        s.scheduled += 1;
                        s.send_failures += 1;
                        s.failures.add(Failure::from_io(&e, Stage::Target));
                        shared.live.add_errors(1);
                    }
                }
            }
            n += 1;
        }
        if n < schedule.total && schedule.at(n) <= Instant::now() {
            stream::fair_share().await;
        }
    }
    {
        let mut s = shared.stats.borrow_mut();
        s.max_lag = s.max_lag.max(max_lag);
    }
    progress.sender_done.set();
}

enum Attempt {
    Sent,
    Failed(std::io::Error),
    Full(Vec<u8>),
}

async fn receive(a: &Association, schedule: Schedule, shared: &Shared, progress: &Progress) {
    let mut seen = vec![0u64; schedule.total.div_ceil(64) as usize];
    let mut wait = crate::ring::datagram_wait(&a.sock);
    loop {
        let done = progress.sender_done.is_set();
        if done && progress.received.get() >= progress.sent.get() {
            return;
        }
        let ready = if done {
            wait.readable(&a.sock).await.map(|()| true)
        } else {
            futures_lite::future::or(
                async { wait.readable(&a.sock).await.map(|()| true) },
                async {
                    progress.sender_done.wait().await;
                    Ok(false)
                },
            )
            .await
        };
        match ready {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                shared
                    .stats
                    .borrow_mut()
                    .failures
                    .add(Failure::from_io(&e, Stage::Target));
                shared.live.add_errors(1);
                coresocks_io::events::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        while drain(a, schedule, shared, progress, &mut seen) {
            stream::fair_share().await;
        }
    }
}

/// Takes up to [`BATCH`] datagrams; true when there may be more.
fn drain(
    a: &Association,
    schedule: Schedule,
    shared: &Shared,
    progress: &Progress,
    seen: &mut [u64],
) -> bool {
    let fd = coresocks_io::sys::borrow(&a.sock);
    let w = shared.window;
    let mut buf = shared.recv_buf.borrow_mut();
    let mut s = shared.stats.borrow_mut();
    for _ in 0..BATCH {
        let (len, from) = match coresocks_io::sys::udp_recv_from(fd, &mut buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) => {
                s.failures.add(Failure::from_io(&e, Stage::Target));
                shared.live.add_errors(1);
                return false;
            }
        };
        let now = Instant::now();
        let stamp = if from != a.dest {
            None
        } else {
            let payload = if shared.header_len > 0 {
                unframe(&buf[..len])
            } else {
                Some(&buf[..len])
            };
            payload
                .filter(|p| p.len() == shared.args.size)
                .map(read_stamp)
        };
        let Some((n, offset_ns)) =
            stamp.filter(|&(n, off)| n < schedule.total && off == schedule.offset_ns(n))
        else {
            s.invalid += 1;
            continue;
        };
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if seen[word] & bit != 0 {
            s.duplicates += 1;
            continue;
        }
        seen[word] |= bit;
        progress.received.set(progress.received.get() + 1);
        shared.live.add_primary(1);
        let due = schedule.start + Duration::from_nanos(offset_ns);
        if due >= w.t0 {
            s.received += 1;
            s.latency(w.start)
                .record(now, now.saturating_duration_since(due));
        }
    }
    true
}

/// The sequence number and intended send time at the front of a payload.
fn read_stamp(payload: &[u8]) -> (u64, u64) {
    let mut n = [0u8; 8];
    let mut t = [0u8; 8];
    n.copy_from_slice(&payload[..8]);
    t.copy_from_slice(&payload[8..STAMP]);
    (u64::from_le_bytes(n), u64::from_le_bytes(t))
}

/// The payload of a datagram from the relay. Fragments (FRAG != 0) and
/// malformed headers are dropped, as RFC 1928 allows.
pub fn unframe(datagram: &[u8]) -> Option<&[u8]> {
    match UdpHeader::decode(datagram) {
        Ok(Decoded::Complete(header, len)) if header.frag == 0 => Some(&datagram[len..]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coresocks_client as client;

    #[test]
    fn unframe_takes_whole_datagrams_only() {
        let target: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let mut d = Vec::new();
        client::udp_datagram(&TargetAddr::Ip(target), b"seq-1", &mut d);
        assert_eq!(unframe(&d), Some(&b"seq-1"[..]));
        assert!(unframe(&d[..4]).is_none());
        d[2] = 1; // a fragment
        assert!(unframe(&d).is_none());
    }

    #[test]
    fn stamps_round_trip() {
        let mut p = vec![0u8; 64];
        p[..8].copy_from_slice(&7u64.to_le_bytes());
        p[8..16].copy_from_slice(&123_456u64.to_le_bytes());
        assert_eq!(read_stamp(&p), (7, 123_456));
    }
}
