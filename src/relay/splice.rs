//! The splice engine: socket -> pipe -> socket with splice(2), on the core
//! that owns the tunnel, so bytes never enter user space.
//!
//! Why not io_uring's IORING_OP_SPLICE: the kernel runs every io_uring
//! splice on an io-wq worker thread, which would put a thread pool behind a
//! thread-per-core design. Instead we call splice(2) non-blocking and wait
//! for readiness through glommio, which has no public "wait until readable"
//! API but does have one that costs nothing while waiting: its plain read
//! tries recv(2) and then arms a buffer-less io_uring poll. So:
//! - waiting to read: splice returns EAGAIN, then a 1-byte glommio read
//!   either arms the poll (the usual case) or, if data raced in, takes one
//!   byte, which is sent ahead of the next splice;
//! - waiting to write: splice returns EAGAIN with bytes in the pipe, so one
//!   byte is taken out of the pipe and written through glommio, which waits
//!   for POLLOUT; the rest of the pipe follows once it is written.
//! Either way the order of bytes is kept, and an idle tunnel holds no pipe.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::pipes::PipePool;
use super::ring::{ReadinessRing, Token};
use super::tunnel::{Fill, Flush};
use crate::sys::{self, Pipe};

/// How a direction waits when a socket would block.
#[derive(Clone, Copy)]
pub(super) enum Wake<'a> {
    /// glommio's read/write paths (1-byte read, or 1 byte out of the pipe).
    Glommio,
    /// POLL_ADD on the core's readiness ring.
    Ring(&'a ReadinessRing),
}

#[derive(Default)]
pub(super) struct SpliceState {
    /// Held only while it has bytes in flight.
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// One byte taken out of order to wait on a socket through glommio; it
    /// goes out before anything else.
    held: Option<u8>,
    /// A readiness-ring wait in flight: for the source (read) or the
    /// destination (write).
    wait: Option<(Token, Interest)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Interest {
    Read,
    Write,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl SpliceState {
    pub(super) fn is_empty(&self) -> bool {
        self.in_pipe == 0 && self.held.is_none() && self.wait.is_none()
    }

    fn return_pipe_if_empty(&mut self, pipes: &PipePool) {
        if self.in_pipe == 0 {
            if let Some(p) = self.pipe.take() {
                pipes.give(p);
            }
        }
    }

    /// With the ring: Pending while a wait of this kind is in flight.
    fn poll_wait(&mut self, wake: Wake<'_>, kind: Interest, cx: &Context<'_>) -> Poll<()> {
        if let (Wake::Ring(ring), Some((token, k))) = (wake, &self.wait) {
            if *k == kind {
                if ring.poll(token, cx).is_pending() {
                    return Poll::Pending;
                }
                self.wait = None;
            }
        }
        Poll::Ready(())
    }

    /// Writes the held byte, then the pipe's contents, to `dst`.
    pub(super) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut TcpStream,
        pipes: &PipePool,
        wake: Wake<'_>,
    ) -> io::Result<Flush> {
        if self.poll_wait(wake, Interest::Write, cx).is_pending() {
            return Ok(Flush::Blocked);
        }
        if let Some(b) = self.held {
            return match Pin::new(dst).poll_write(cx, &[b]) {
                Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(_)) => {
                    self.held = None;
                    Ok(Flush::Moved(1))
                }
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Ok(Flush::Blocked),
            };
        }
        let Some(pipe) = &self.pipe else {
            return Ok(Flush::Empty);
        };
        if self.in_pipe == 0 {
            return Ok(Flush::Empty);
        }
        match sys::splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), self.in_pipe) {
            Ok(n) => {
                self.in_pipe -= n;
                self.return_pipe_if_empty(pipes);
                Ok(Flush::Moved(n))
            }
            Err(e) if would_block(&e) => {
                if let Wake::Ring(ring) = wake {
                    let token = ring.arm(dst.as_raw_fd(), libc::POLLOUT, cx)?;
                    self.wait = Some((token, Interest::Write));
                    return Ok(Flush::Blocked);
                }
                // The socket's send buffer is full. Take one byte out of
                // the pipe and let glommio's write path wait for POLLOUT.
                match sys::read_one(pipe.read.as_raw_fd())? {
                    Some(b) => {
                        self.in_pipe -= 1;
                        self.held = Some(b);
                        self.return_pipe_if_empty(pipes);
                        self.poll_flush(cx, dst, pipes, wake)
                    }
                    None => Err(io::Error::other("pipe empty but bytes were counted in it")),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Moves what `src` has into a pipe. Only called when empty. Returns
    /// `Fill::NoPipe` when no pipe can be had or the socket cannot splice:
    /// the caller then copies instead.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        pipes: &PipePool,
        wake: Wake<'_>,
    ) -> io::Result<Fill> {
        if self.poll_wait(wake, Interest::Read, cx).is_pending() {
            return Ok(Fill::Blocked);
        }
        if self.pipe.is_none() {
            match pipes.take() {
                Some(p) => self.pipe = Some(p),
                None => return Ok(Fill::NoPipe),
            }
        }
        let Some(pipe) = &self.pipe else {
            return Ok(Fill::NoPipe);
        };
        match sys::splice(src.as_raw_fd(), pipe.write.as_raw_fd(), pipes.pipe_size()) {
            Ok(0) => {
                self.return_pipe_if_empty(pipes);
                Ok(Fill::Eof)
            }
            Ok(n) => {
                self.in_pipe += n;
                Ok(Fill::Data)
            }
            Err(e) if would_block(&e) => {
                // Nothing to read: give the pipe back and wait.
                self.return_pipe_if_empty(pipes);
                if let Wake::Ring(ring) = wake {
                    let token = ring.arm(src.as_raw_fd(), libc::POLLIN, cx)?;
                    self.wait = Some((token, Interest::Read));
                    return Ok(Fill::Blocked);
                }
                let mut b = [0u8; 1];
                match Pin::new(src).poll_read(cx, &mut b) {
                    Poll::Ready(Ok(0)) => Ok(Fill::Eof),
                    Poll::Ready(Ok(_)) => {
                        self.held = Some(b[0]);
                        Ok(Fill::Data)
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Ok(Fill::Blocked),
                }
            }
            // This socket cannot splice (e.g. a kernel or sandbox without
            // socket splice support): copy instead.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
                ) =>
            {
                self.return_pipe_if_empty(pipes);
                Ok(Fill::NoPipe)
            }
            Err(e) => Err(e),
        }
    }

    /// Gives the pipe back at the end of a tunnel; one with bytes left in it
    /// is closed rather than pooled. A ring wait is cancelled before the
    /// sockets close.
    pub(super) fn release(&mut self, pipes: &PipePool, wake: Wake<'_>) {
        if let (Wake::Ring(ring), Some((token, _))) = (wake, self.wait.take()) {
            ring.cancel(token);
        }
        if let Some(p) = self.pipe.take() {
            if self.in_pipe == 0 {
                pipes.give(p);
            } else {
                pipes.discard(p);
            }
        }
        self.in_pipe = 0;
    }
}
