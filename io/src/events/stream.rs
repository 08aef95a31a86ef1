//! A TCP connection as sessions and the relay see it, from accept (or
//! connect) to close.
//!
//! On the core's event ring (the default) a stream is its socket and a
//! [`Watch`]: reads and writes are plain non-blocking recv(2)/send(2), and
//! only after EAGAIN does it wait, on the ring's multishot POLLIN (armed at
//! the first wait and kept for the stream's life, handshake and relay
//! alike) or a one-shot POLLOUT. glommio never sees the socket: wrapping
//! one in glommio's stream arms a poll in glommio's ring at once, whose
//! completion (raised from the other CPU) may interrupt the core, and
//! allocates a source of about 500 bytes that an idle tunnel would carry
//! for its life. Without a ring (`--event-ring off`), and for BIND's
//! incoming connection, which glommio accepts, it is glommio's stream.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::{EventRing, Watch};
use crate::sys;

pub enum Stream {
    Ring(RingStream),
    /// Boxed: the ring's streams, which idle tunnels are made of, need
    /// under half the room of glommio's.
    Glommio(Box<TcpStream>),
}

/// A socket that waits on the core's ring. The watch is declared first, so
/// it removes its polls (which hold the socket open) before the socket
/// closes.
pub struct RingStream {
    watch: Watch,
    fd: OwnedFd,
    /// The last read was short or said EAGAIN (or, for a socket we
    /// connected, nothing was read yet), so the socket was empty then: the
    /// next read waits for the ring's next readiness report instead of
    /// first paying for a recv that would say EAGAIN (one syscall less per
    /// small message, and none for a task woken by its other direction).
    /// Data that arrives later always raises a report, and a poll armed
    /// on a socket that has data reports at once. Not once the peer's FIN
    /// was reported: it may already be queued behind the data that read
    /// took.
    drained: bool,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Stream {
    /// A connected, non-blocking socket: on `ring` when there is one,
    /// else wrapped in glommio's stream.
    pub fn new(fd: OwnedFd, ring: Option<&Rc<EventRing>>) -> Stream {
        Stream::with_state(fd, ring, false)
    }

    /// A socket we connected: its peer has sent nothing yet (and seldom
    /// has when the connect completes), so its first read waits for the
    /// ring's report rather than try a recv first.
    pub fn outgoing(fd: OwnedFd, ring: Option<&Rc<EventRing>>) -> Stream {
        Stream::with_state(fd, ring, true)
    }

    fn with_state(fd: OwnedFd, ring: Option<&Rc<EventRing>>, drained: bool) -> Stream {
        match ring {
            Some(ring) => Stream::Ring(RingStream {
                watch: Watch::new(ring.clone(), fd.as_raw_fd()),
                fd,
                drained,
            }),
            None => Stream::glommio(sys::glommio_tcp_stream(fd)),
        }
    }

    /// A stream glommio made (its accept, or `--event-ring off`).
    pub fn glommio(stream: TcpStream) -> Stream {
        Stream::Glommio(Box::new(stream))
    }

    /// Whether waits go through the core's ring (the splice engine needs
    /// that).
    pub fn has_ring(&self) -> bool {
        matches!(self, Stream::Ring(_))
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        sys::local_addr(self.as_fd())
    }

    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        sys::peer_addr(self.as_fd())
    }

    /// Reads what the socket has, or waits for it.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let s = match self {
            Stream::Glommio(g) => return Pin::new(&mut **g).poll_read(cx, buf),
            Stream::Ring(s) => s,
        };
        // Reports before this recv are covered by it; later ones count.
        if s.drained && !s.watch.take_reported() && !s.watch.hung_up() {
            std::task::ready!(s.watch.poll_readable(cx))?;
        }
        s.drained = false;
        loop {
            match sys::recv(&s.fd, buf) {
                Err(e) if would_block(&e) => {
                    s.drained = true;
                    std::task::ready!(s.watch.poll_readable(cx))?
                }
                Ok(n) => {
                    s.drained = n > 0 && n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes what the socket's send buffer takes, or waits for room.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let s = match self {
            Stream::Glommio(g) => return Pin::new(&mut **g).poll_write(cx, buf),
            Stream::Ring(s) => s,
        };
        loop {
            match sys::send(&s.fd, buf) {
                Err(e) if would_block(&e) => std::task::ready!(s.watch.poll_writable(cx))?,
                done => return Poll::Ready(done),
            }
        }
    }

    /// Ring only: after a splice from this socket found nothing, waits
    /// until it is readable.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Ring(s) => s.watch.poll_readable(cx),
            Stream::Glommio(_) => Poll::Ready(Err(io::Error::other("no event ring to wait on"))),
        }
    }

    /// Ring only: after a splice into this socket would block, waits until
    /// it is writable.
    pub fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Ring(s) => s.watch.poll_writable(cx),
            Stream::Glommio(_) => Poll::Ready(Err(io::Error::other("no event ring to wait on"))),
        }
    }

    /// The kernel relays this socket from now on (the sockmap engine):
    /// the ring stops watching it for data.
    pub fn stop_reading(&mut self) {
        if let Stream::Ring(s) = self {
            s.watch.stop_reading();
        }
    }

    /// Passes a FIN on: shutdown(SHUT_WR).
    pub fn poll_shutdown_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Glommio(g) => Pin::new(&mut **g).poll_close(cx),
            Stream::Ring(s) => Poll::Ready(sys::shutdown_write(s.fd.as_fd())),
        }
    }

    /// Waits until the socket has data or its end (a FIN, a reset), and
    /// copies what is waiting into `buf` without taking it.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let s = match self {
            Stream::Glommio(g) => return g.peek(buf).await.map_err(Into::into),
            Stream::Ring(s) => s,
        };
        loop {
            match sys::peek(s.fd.as_fd(), buf) {
                Err(e) if would_block(&e) => {
                    futures_lite::future::poll_fn(|cx| s.watch.poll_read_ready(cx)).await?
                }
                done => return done,
            }
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Ring(s) => s.fd.as_raw_fd(),
            Stream::Glommio(g) => g.as_raw_fd(),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Ring(s) => s.fd.as_fd(),
            Stream::Glommio(g) => sys::borrow(&**g),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_recv(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_send(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Glommio(g) => Pin::new(&mut **g).poll_flush(cx),
            Stream::Ring(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_shutdown_write(cx)
    }
}
