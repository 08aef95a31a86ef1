//! The metrics endpoint: `GET /metrics` over HTTP/1.1, served on a thread
//! of its own (never on a core) by one poll(2) loop over every open
//! connection, so a client that connects and says nothing, or reads its
//! answer slowly, costs a descriptor and never delays anyone else's
//! scrape.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] open at once (a new one closes the
//! oldest that has not finished its request: an idle crowd cannot keep a
//! scraper out); a request head within [`HEAD_BYTES`] and [`HEAD_TIME`],
//! with no silence longer than [`IDLE_TIME`]; the answer written within
//! [`WRITE_TIME`]. Each connection carries one request (`Connection:
//! close`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::{render, AllMetrics};

/// Connections open at once; their descriptors come out of the process's
/// reserve (see `runtime::Limits`).
pub(super) const MAX_CONNECTIONS: usize = 64;
/// The longest request head read.
const HEAD_BYTES: usize = 8192;
/// From accept to the end of the request head.
const HEAD_TIME: Duration = Duration::from_secs(5);
/// The longest silence while the head is read.
const IDLE_TIME: Duration = Duration::from_secs(2);
/// From the first byte of the answer to its last.
const WRITE_TIME: Duration = Duration::from_secs(10);

/// Connections closed unanswered to make room.
pub(super) static SHED: AtomicU64 = AtomicU64::new(0);

/// Serves `GET /metrics` on `inherited` (an upgrade's) or a new socket.
/// Returns the address and a copy of the socket, for the next upgrade.
pub(crate) fn serve(
    addr: SocketAddr,
    inherited: Option<OwnedFd>,
    all: AllMetrics,
    core_ids: Vec<usize>,
) -> io::Result<(SocketAddr, OwnedFd)> {
    let listener = match inherited {
        Some(fd) => TcpListener::from(fd),
        None => TcpListener::bind(addr)?,
    };
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let copy = OwnedFd::from(listener.try_clone()?);
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let mut server = Server {
                listener,
                conns: Vec::new(),
                answer: Box::new(move |head: &[u8]| answer(head, &all, &core_ids)),
            };
            loop {
                if let Err(e) = server.turn() {
                    tracing::warn!("metrics endpoint: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok((bound, copy))
}

/// The whole response to a request head.
fn answer(head: &[u8], all: &AllMetrics, core_ids: &[usize]) -> Vec<u8> {
    let (status, body) = if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?")
    {
        ("200 OK", render(all, core_ids))
    } else if head.len() >= HEAD_BYTES {
        (
            "431 Request Header Fields Too Large",
            "request head too large\n".to_owned(),
        )
    } else {
        ("404 Not Found", "try GET /metrics\n".to_owned())
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

struct Conn {
    stream: TcpStream,
    accepted: Instant,
    last_byte: Instant,
    head: Vec<u8>,
    /// The answer and how much of it is written; `None` while reading.
    out: Option<(Vec<u8>, usize, Instant)>,
}

impl Conn {
    fn deadline(&self) -> Instant {
        match &self.out {
            Some((_, _, since)) => *since + WRITE_TIME,
            None => (self.accepted + HEAD_TIME).min(self.last_byte + IDLE_TIME),
        }
    }

    /// Reads what has arrived; true once the head is complete (or too
    /// long to read further), or the peer closed.
    fn read(&mut self, now: Instant) -> io::Result<bool> {
        let mut buf = [0u8; 2048];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.last_byte = now;
                    let room = HEAD_BYTES - self.head.len();
                    self.head.extend_from_slice(&buf[..n.min(room)]);
                    if head_complete(&self.head) || self.head.len() >= HEAD_BYTES {
                        return Ok(true);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes what the socket takes; true when the answer is out.
    fn write(&mut self) -> io::Result<bool> {
        let Some((out, written, _)) = &mut self.out else {
            return Ok(false);
        };
        while *written < out.len() {
            match self.stream.write(&out[*written..]) {
                Ok(n) => *written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

fn head_complete(head: &[u8]) -> bool {
    head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n")
}

/// Turns a request head into the whole response.
type Answer = Box<dyn Fn(&[u8]) -> Vec<u8> + Send>;

struct Server {
    listener: TcpListener,
    conns: Vec<Conn>,
    answer: Answer,
}

impl Server {
    /// One wait and what it found.
    fn turn(&mut self) -> io::Result<()> {
        let now = Instant::now();
        self.conns.retain(|c| c.deadline() > now);
        let mut fds = Vec::with_capacity(self.conns.len() + 1);
        fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
        for c in &self.conns {
            let events = match c.out {
                Some(_) => libc::POLLOUT,
                None => libc::POLLIN,
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        let timeout = self
            .conns
            .iter()
            .map(|c| c.deadline().saturating_duration_since(now))
            .min()
            .map_or(-1, |d| d.as_millis().clamp(1, 60_000) as libc::c_int);
        if let Err(e) = crate::sys::poll(&mut fds, timeout) {
            return match e.kind() {
                io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        }
        let now = Instant::now();
        // Connections first (in `fds` order), new ones after.
        let mut revents = fds[1..].iter().map(|f| f.revents);
        let answer = &self.answer;
        self.conns.retain_mut(|c| {
            if revents.next().unwrap_or(0) == 0 {
                return true;
            }
            let done = match c.out {
                None => match c.read(now) {
                    Ok(true) => {
                        c.out = Some((answer(&c.head), 0, now));
                        c.write()
                    }
                    other => other.map(|_| false),
                },
                Some(_) => c.write(),
            };
            matches!(done, Ok(false))
        });
        if fds[0].revents != 0 {
            self.accept(now);
        }
        Ok(())
    }

    fn accept(&mut self, now: Instant) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or out of descriptors: the next turn tries again.
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                // The oldest one still sending its request makes room; a
                // full house of answers being written refuses the new one.
                let oldest = self
                    .conns
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.out.is_none())
                    .min_by_key(|(_, c)| c.accepted)
                    .map(|(i, _)| i);
                SHED.fetch_add(1, Relaxed);
                match oldest {
                    Some(i) => drop(self.conns.swap_remove(i)),
                    None => continue,
                }
            }
            self.conns.push(Conn {
                stream,
                accepted: now,
                last_byte: now,
                head: Vec::new(),
                out: None,
            });
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut server = Server {
                listener,
                conns: Vec::new(),
                answer: Box::new(|head: &[u8]| {
                    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
                    [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", line].concat()
                }),
            };
            while !stopped.load(Relaxed) {
                server.turn().unwrap();
            }
        });
        (addr, stop)
    }

    fn get(addr: SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_while_more_idle_connections_than_its_cap_stay_open() {
        let (addr, stop) = server();
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS * 2)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        for _ in 0..3 {
            assert!(get(addr).ends_with("GET /metrics HTTP/1.1"));
        }
        // A request split over several writes is read to its end.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HT").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(b"TP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.ends_with("GET /metrics HTTP/1.1"), "{out}");
        drop(idle);
        stop.store(true, Relaxed);
    }
}
