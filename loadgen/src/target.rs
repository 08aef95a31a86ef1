//! The targets: what sits behind the proxy and answers loadgen's traffic.
//!
//! One TCP port serves every mode. The client's first byte picks the mode:
//!
//! | byte | mode   | what the target does |
//! |------|--------|----------------------|
//! | `H`  | hello  | answers `LGT1` and closes: the check that a target speaks this protocol |
//! | `E`  | echo   | sends every byte back |
//! | `S`  | sink   | reads and discards; acknowledges the running total of bytes received as 8-byte little-endian numbers, at least every 64 KiB, and once more after the client's FIN with bit 63 set (the final count); then closes |
//! | `R`  | source | sends data until the client's FIN, then closes |
//! | `D`  | duplex | sink and source at once: the data it sends is cut in 64 KiB units whose first 8 bytes carry the sink's running total; after the client's FIN it sends one 8-byte header alone with bit 63 set and closes |
//!
//! The mode byte itself is not echoed nor counted. Acknowledgements let the
//! client count exactly the bytes the target received (not the bytes it
//! handed to its own kernel), which is what makes throughput honest through a
//! proxy that buffers.
//!
//! The same port number on UDP is an echo: every datagram goes back, as is,
//! to the address it came from. One UDP socket per target core (SO_REUSEPORT,
//! so the kernel keeps each client address on one core); it waits for
//! readability with a 1-byte peek and moves datagrams with non-blocking
//! recvfrom/sendto through one 64 KiB buffer per core.

use std::cell::Cell;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use coresocks_io::events::{Listener, Stream};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::UdpSocket;
use serde::Serialize;

use crate::stream::{fair_share, split};
use crate::wire::{
    ACK_FINAL, HELLO_REPLY, MODE_DUPLEX, MODE_ECHO, MODE_HELLO, MODE_SINK, MODE_SOURCE, UNIT,
};

/// The sink acknowledges at least this often (bytes).
const ACK_EVERY: u64 = 64 * 1024;
/// Large reads and writes keep the target's cost per byte low.
const BULK_BUF: usize = 256 * 1024;
const ECHO_BUF: usize = 64 * 1024;

/// What one core's targets saw (also the JSON of `loadgen serve`).
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TargetStats {
    /// TCP connections accepted, whatever their mode.
    pub accepted: u64,
    /// Connections by mode (hello, echo, sink, source, duplex, unknown).
    pub hello_connections: u64,
    pub echo_connections: u64,
    pub sink_connections: u64,
    pub source_connections: u64,
    pub duplex_connections: u64,
    /// Connections that closed before sending a mode byte or sent an
    /// unknown one.
    pub other_connections: u64,
    /// Echo: read calls and bytes echoed.
    pub echo_reads: u64,
    pub echo_bytes: u64,
    /// Echo connections that ended with the client's FIN (an end of
    /// stream), not a reset or an error.
    #[serde(default)]
    pub echo_ended_with_fin: u64,
    /// Sink and duplex: bytes received after the mode byte.
    pub bytes_received: u64,
    /// Source and duplex: bytes sent (headers included).
    pub bytes_sent: u64,
    /// UDP echo: datagrams and payload bytes received.
    #[serde(default)]
    pub udp_datagrams: u64,
    #[serde(default)]
    pub udp_bytes: u64,
    /// UDP echo: datagrams not echoed because the test hook dropped them
    /// (`serve --udp-drop-every`).
    #[serde(default)]
    pub udp_dropped_on_purpose: u64,
    /// UDP echo: answers the kernel refused to send.
    #[serde(default)]
    pub udp_send_failures: u64,
}

impl TargetStats {
    pub fn merge(&mut self, o: &TargetStats) {
        self.accepted += o.accepted;
        self.hello_connections += o.hello_connections;
        self.echo_connections += o.echo_connections;
        self.sink_connections += o.sink_connections;
        self.source_connections += o.source_connections;
        self.duplex_connections += o.duplex_connections;
        self.other_connections += o.other_connections;
        self.echo_reads += o.echo_reads;
        self.echo_bytes += o.echo_bytes;
        self.echo_ended_with_fin += o.echo_ended_with_fin;
        self.bytes_received += o.bytes_received;
        self.bytes_sent += o.bytes_sent;
        self.udp_datagrams += o.udp_datagrams;
        self.udp_bytes += o.udp_bytes;
        self.udp_dropped_on_purpose += o.udp_dropped_on_purpose;
        self.udp_send_failures += o.udp_send_failures;
    }
}

/// A test hook: freeze the whole core once, after this many echo reads.
#[derive(Debug, Clone, Copy)]
pub struct PauseHook {
    pub after_reads: u64,
    pub pause: Duration,
}

/// The test hooks of `loadgen serve`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetHooks {
    pub pause: Option<PauseHook>,
    /// Drop every Nth datagram the UDP echo receives (per core).
    pub udp_drop_every: Option<u64>,
}

/// Per-core counters, shared by the core's connection tasks.
#[derive(Default)]
struct Counters {
    accepted: Cell<u64>,
    hello: Cell<u64>,
    echo: Cell<u64>,
    sink: Cell<u64>,
    source: Cell<u64>,
    duplex: Cell<u64>,
    other: Cell<u64>,
    echo_reads: Cell<u64>,
    echo_bytes: Cell<u64>,
    echo_fin: Cell<u64>,
    received: Cell<u64>,
    sent: Cell<u64>,
    paused: Cell<bool>,
    udp_datagrams: Cell<u64>,
    udp_bytes: Cell<u64>,
    udp_dropped: Cell<u64>,
    udp_send_failures: Cell<u64>,
}

fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get() + n);
}

/// The targets running on one core.
pub struct TargetCore {
    accept_loop: glommio::task::JoinHandle<()>,
    udp_loop: Option<glommio::task::JoinHandle<()>>,
    counters: Rc<Counters>,
}

impl TargetCore {
    /// Starts accepting on `listener` (a bound, listening socket) and
    /// echoing datagrams on `udp` (a bound UDP socket).
    pub fn start(listener: OwnedFd, udp: Option<OwnedFd>, hooks: TargetHooks) -> TargetCore {
        let listener = crate::ring::listener(listener);
        let counters = Rc::new(Counters::default());
        let task =
            coresocks_io::events::spawn(accept_loop(listener, counters.clone(), hooks.pause))
                .detach();
        let udp_loop = udp.map(|fd| {
            let sock = coresocks_io::sys::glommio_udp_socket(fd);
            coresocks_io::events::spawn(udp_echo(sock, counters.clone(), hooks.udp_drop_every))
                .detach()
        });
        TargetCore {
            accept_loop: task,
            udp_loop,
            counters,
        }
    }

    /// Stops accepting and returns the counters. Open connections end when
    /// the executor does.
    pub fn finish(self) -> TargetStats {
        self.accept_loop.cancel();
        if let Some(u) = self.udp_loop {
            u.cancel();
        }
        let c = &self.counters;
        TargetStats {
            accepted: c.accepted.get(),
            hello_connections: c.hello.get(),
            echo_connections: c.echo.get(),
            sink_connections: c.sink.get(),
            source_connections: c.source.get(),
            duplex_connections: c.duplex.get(),
            other_connections: c.other.get(),
            echo_reads: c.echo_reads.get(),
            echo_bytes: c.echo_bytes.get(),
            echo_ended_with_fin: c.echo_fin.get(),
            bytes_received: c.received.get(),
            bytes_sent: c.sent.get(),
            udp_datagrams: c.udp_datagrams.get(),
            udp_bytes: c.udp_bytes.get(),
            udp_dropped_on_purpose: c.udp_dropped.get(),
            udp_send_failures: c.udp_send_failures.get(),
        }
    }
}

async fn accept_loop(mut listener: Listener, counters: Rc<Counters>, hook: Option<PauseHook>) {
    loop {
        match listener.next().await {
            // The client left before it was taken.
            Ok(None) => {}
            Ok(Some((stream, _))) => {
                bump(&counters.accepted, 1);
                coresocks_io::sys::set_nodelay(&stream);
                coresocks_io::events::spawn(serve_connection(stream, counters.clone(), hook))
                    .detach();
            }
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => coresocks_io::events::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_connection(mut stream: Stream, c: Rc<Counters>, hook: Option<PauseHook>) {
    let mut mode = [0u8; 1];
    if stream.read_exact(&mut mode).await.is_err() {
        bump(&c.other, 1);
        return;
    }
    // Errors below only mean the client went away: nothing to report.
    let _ = match mode[0] {
        MODE_HELLO => {
            bump(&c.hello, 1);
            stream.write_all(HELLO_REPLY).await
        }
        MODE_ECHO => {
            bump(&c.echo, 1);
            echo(stream, &c, hook).await
        }
        MODE_SINK => {
            bump(&c.sink, 1);
            sink(stream, &c).await
        }
        MODE_SOURCE => {
            bump(&c.source, 1);
            source(stream, c.clone()).await
        }
        MODE_DUPLEX => {
            bump(&c.duplex, 1);
            duplex(stream, c.clone()).await
        }
        _ => {
            bump(&c.other, 1);
            Ok(())
        }
    };
}

async fn echo(mut stream: Stream, c: &Counters, hook: Option<PauseHook>) -> io::Result<()> {
    let mut buf = vec![0u8; ECHO_BUF];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            bump(&c.echo_fin, 1);
            return Ok(());
        }
        bump(&c.echo_reads, 1);
        bump(&c.echo_bytes, n as u64);
        if let Some(h) = hook {
            if !c.paused.get() && c.echo_reads.get() >= h.after_reads {
                c.paused.set(true);
                // Deliberately blocks the executor thread: a stalled server,
                // as a GC pause or a page fault storm would stall it.
                std::thread::sleep(h.pause);
            }
        }
        stream.write_all(&buf[..n]).await?;
        fair_share().await;
    }
}

async fn sink(mut stream: Stream, c: &Counters) -> io::Result<()> {
    let mut buf = vec![0u8; BULK_BUF];
    let mut total = 0u64;
    let mut acked = 0u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        bump(&c.received, n as u64);
        if total - acked >= ACK_EVERY {
            stream.write_all(&total.to_le_bytes()).await?;
            acked = total;
        }
        fair_share().await;
    }
    stream.write_all(&(total | ACK_FINAL).to_le_bytes()).await
}

/// Sends until the client's FIN (seen by a reader running beside the
/// writer), so the client decides when the flow ends.
async fn source(stream: Stream, c: Rc<Counters>) -> io::Result<()> {
    let (mut rd, mut wr) = split(stream);
    let eof = Rc::new(Cell::new(false));
    let reader = {
        let eof = eof.clone();
        coresocks_io::events::spawn(async move {
            let mut scratch = [0u8; 512];
            // Anything but more data (EOF or an error) ends the flow.
            while let Ok(n) = rd.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
            eof.set(true);
        })
    };
    let buf = vec![0x5a_u8; BULK_BUF];
    while !eof.get() {
        let n = wr.write(&buf).await?;
        bump(&c.sent, n as u64);
        fair_share().await;
    }
    drop(reader);
    wr.shutdown_write();
    Ok(())
}

async fn duplex(stream: Stream, c: Rc<Counters>) -> io::Result<()> {
    let (mut rd, mut wr) = split(stream);
    let received = Rc::new(Cell::new(0u64));
    let eof = Rc::new(Cell::new(false));
    let reader = {
        let (received, eof, c) = (received.clone(), eof.clone(), c.clone());
        coresocks_io::events::spawn(async move {
            let mut buf = vec![0u8; BULK_BUF];
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                received.set(received.get() + n as u64);
                bump(&c.received, n as u64);
                fair_share().await;
            }
            eof.set(true);
        })
    };
    let mut buf = vec![0x5a_u8; BULK_BUF];
    while !eof.get() {
        let total = received.get().to_le_bytes();
        for unit in buf.chunks_mut(UNIT) {
            unit[..8].copy_from_slice(&total);
        }
        wr.write_all(&buf).await?;
        bump(&c.sent, buf.len() as u64);
        fair_share().await;
    }
    drop(reader);
    wr.write_all(&(received.get() | ACK_FINAL).to_le_bytes())
        .await?;
    bump(&c.sent, 8);
    wr.shutdown_write();
    Ok(())
}

/// The UDP echo: waits with a 1-byte peek (no large buffer held while
/// idle), then drains the socket with non-blocking calls.
async fn udp_echo(sock: UdpSocket, c: Rc<Counters>, drop_every: Option<u64>) {
    let fd = coresocks_io::sys::borrow(&sock);
    let mut buf = vec![0u8; UDP_BUF];
    let mut wait = crate::ring::datagram_wait(&sock);
    loop {
        if wait.readable(&sock).await.is_err() {
            coresocks_io::events::sleep(Duration::from_millis(10)).await;
            continue;
        }
        // A bounded batch, then the other tasks of the core get a turn.
        for _ in 0..UDP_BATCH {
            let (n, from) = match coresocks_io::sys::udp_recv_from(fd, &mut buf) {
                Ok(r) => r,
                Err(_) => break,
            };
            bump(&c.udp_datagrams, 1);
            bump(&c.udp_bytes, n as u64);
            if drop_every.is_some_and(|k| c.udp_datagrams.get() % k == 0) {
                bump(&c.udp_dropped, 1);
                continue;
            }
            if coresocks_io::sys::udp_send_to(fd, &buf[..n], from).is_err() {
                bump(&c.udp_send_failures, 1);
            }
        }
        fair_share().await;
    }
}

/// Largest datagram the UDP echo takes (anything longer is truncated).
const UDP_BUF: usize = 65_536;
/// Datagrams moved per wake-up before yielding.
const UDP_BATCH: usize = 64;
/// Socket buffers asked for on loadgen's UDP sockets (the kernel caps them
/// at net.core.rmem_max / wmem_max unless loadgen may force them).
pub const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// A non-blocking UDP socket with large buffers, bound to `addr`.
pub fn udp_socket(addr: std::net::SocketAddr, reuse_port: bool) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    grow_buffers(&socket);
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Asks for [`UDP_SOCKET_BUFFER`]-sized buffers: forced where loadgen has
/// CAP_NET_ADMIN, else up to the sysctl maximum. Failures keep the defaults.
fn grow_buffers(socket: &socket2::Socket) {
    coresocks_io::sys::force_buffers(
        std::os::fd::AsFd::as_fd(socket),
        UDP_SOCKET_BUFFER as libc::c_int,
    );
}

/// The targets' sockets: per core, one TCP listener and one UDP socket, all
/// on the same port number.
pub struct TargetSockets {
    pub addr: std::net::SocketAddr,
    pub tcp: Vec<OwnedFd>,
    pub udp: Vec<OwnedFd>,
}

/// Binds one listening socket and one UDP socket per core on `addr`, all on
/// the same port (SO_REUSEPORT: the kernel spreads connections and client
/// addresses over them). With port 0, the TCP listener picks the port; if
/// that port is taken on UDP, another is tried.
pub fn bind_targets(addr: std::net::SocketAddr, count: usize) -> io::Result<TargetSockets> {
    let mut last_error = None;
    for _ in 0..16 {
        let (bound, tcp) = bind_listeners(addr, count)?;
        match bind_udp(bound, count) {
            Ok(udp) => {
                return Ok(TargetSockets {
                    addr: bound,
                    tcp,
                    udp,
                })
            }
            Err(e) if addr.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                last_error = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse)))
}

fn bind_udp(addr: std::net::SocketAddr, count: usize) -> io::Result<Vec<OwnedFd>> {
    (0..count)
        .map(|_| udp_socket(addr, true).map(OwnedFd::from))
        .collect()
}

/// Binds one listening socket per core on `addr`, all on the same port
/// (SO_REUSEPORT: the kernel spreads connections over them).
fn bind_listeners(
    addr: std::net::SocketAddr,
    count: usize,
) -> io::Result<(std::net::SocketAddr, Vec<OwnedFd>)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut bound = addr;
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        // Non-blocking: accepts on loadgen's ring take connections until
        // EAGAIN.
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_port(true)?;
        socket.set_reuse_address(true)?;
        socket.bind(&bound.into())?;
        socket.listen(4096)?;
        if let Some(local) = socket.local_addr()?.as_socket() {
            // The first bind picks the port when asked for port 0.
            bound = local;
        }
        fds.push(OwnedFd::from(socket));
    }
    Ok((bound, fds))
}
