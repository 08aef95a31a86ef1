//! One side of a tunnel as the engines see it: the stream, and how to wait
//! on it.
//!
//! With the core's event ring (the default) a side has a [`Watch`]: reads
//! and writes are plain non-blocking recv(2)/send(2) on the socket, and
//! only after EAGAIN does the side wait, through the ring's multishot
//! POLLIN (armed once for the tunnel's life) or a one-shot POLLOUT. Without
//! a ring (`--event-ring off`) the engines wait through glommio's stream,
//! whose completions may interrupt the core once per wait.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::events::Watch;
use crate::sys;

pub(super) struct Endpoint<'a> {
    pub(super) stream: &'a mut TcpStream,
    /// `None`: wait through glommio.
    pub(super) watch: Option<Watch>,
    /// The last read was short, so the socket was empty then: the next
    /// read waits for the ring's next readiness report instead of first
    /// paying for a recv that would say EAGAIN (one syscall less per
    /// small message). Data that arrives later always raises a report.
    /// Not once the peer's FIN was reported: it may already be queued
    /// behind the data that read took.
    pub(super) drained: bool,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Endpoint<'_> {
    pub(super) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub(super) fn has_ring(&self) -> bool {
        self.watch.is_some()
    }

    /// Reads what the socket has, or waits for it.
    pub(super) fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let fd = self.fd();
        let Some(watch) = &mut self.watch else {
            return Pin::new(&mut *self.stream).poll_read(cx, buf);
        };
        // Reports before this recv are covered by it; later ones count.
        if !watch.take_fired() && self.drained && !watch.hung_up() {
            std::task::ready!(watch.poll_readable(cx))?;
        }
        self.drained = false;
        loop {
            match sys::recv(fd, buf) {
                Err(e) if would_block(&e) => std::task::ready!(watch.poll_readable(cx))?,
                Ok(n) => {
                    self.drained = n > 0 && n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes what the socket's send buffer takes, or waits for room.
    pub(super) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let fd = self.fd();
        let Some(watch) = &mut self.watch else {
            return Pin::new(&mut *self.stream).poll_write(cx, buf);
        };
        loop {
            match sys::send(fd, buf) {
                Err(e) if would_block(&e) => std::task::ready!(watch.poll_writable(cx))?,
                done => return Poll::Ready(done),
            }
        }
    }

    /// Ring only: after a splice from this socket found nothing, waits
    /// until it is readable.
    pub(super) fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.watch {
            Some(watch) => watch.poll_readable(cx),
            None => Poll::Ready(Err(io::Error::other("no event ring to wait on"))),
        }
    }

    /// Ring only: after a splice into this socket would block, waits until
    /// it is writable.
    pub(super) fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.watch {
            Some(watch) => watch.poll_writable(cx),
            None => Poll::Ready(Err(io::Error::other("no event ring to wait on"))),
        }
    }

    /// Passes a FIN on: shutdown(SHUT_WR).
    pub(super) fn poll_shutdown_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_close(cx)
    }
}
