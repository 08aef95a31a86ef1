//! The splice engine: socket -> pipe -> socket with splice(2), on the core
//! that owns the tunnel, so bytes never enter user space.
//!
//! Why not io_uring's IORING_OP_SPLICE: the kernel runs every io_uring
//! splice on an io-wq worker thread, which would put a thread pool behind a
//! thread-per-core design. Instead we call splice(2) non-blocking and, on
//! EAGAIN, wait for readiness through the core's event ring (the socket's
//! multishot POLLIN, or a one-shot POLLOUT).
//!
//! Without a ring (`--event-ring off`) readiness comes from glommio, which
//! has no public "wait until readable" API but does have one that costs
//! nothing while waiting: its plain read tries recv(2) and then arms a
//! buffer-less io_uring poll. So:
//! - waiting to read: splice returns EAGAIN, then a 1-byte glommio read
//!   either arms the poll (the usual case) or, if data raced in, takes one
//!   byte, which is sent ahead of the next splice;
//! - waiting to write: splice returns EAGAIN with bytes in the pipe, so one
//!   byte is taken out of the pipe and written through glommio, which waits
//!   for POLLOUT; the rest of the pipe follows once it is written.
//!
//! Either way the order of bytes is kept, and an idle tunnel holds no pipe.

use std::io;
use std::task::{Context, Poll};

use super::pipes::PipePool;
use super::step::{Fill, Flush};
use crate::events::Stream;
use crate::sys::{self, Pipe};

#[derive(Default)]
pub(super) struct SpliceState {
    /// Held only while it has bytes in flight.
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// One byte taken out of order to wait on a socket through glommio; it
    /// goes out before anything else.
    held: Option<u8>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl SpliceState {
    pub(super) fn is_empty(&self) -> bool {
        self.in_pipe == 0 && self.held.is_none()
    }

    fn return_pipe_if_empty(&mut self, pipes: &PipePool) {
        if self.in_pipe == 0 {
            if let Some(p) = self.pipe.take() {
                pipes.give(p);
            }
        }
    }

    /// Writes the held byte, then the pipe's contents, to `dst`.
    pub(super) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Stream,
        pipes: &PipePool,
    ) -> io::Result<Flush> {
        if let Some(b) = self.held {
            return match dst.poll_send(cx, &[b]) {
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
        match sys::splice(&pipe.read, &*dst, self.in_pipe) {
            Ok(n) => {
                self.in_pipe -= n;
                self.return_pipe_if_empty(pipes);
                Ok(Flush::Moved(n))
            }
            Err(e) if would_block(&e) && dst.has_ring() => match dst.poll_writable(cx) {
                // Writable again (a wait that completed earlier): splice
                // again; the next EAGAIN arms a fresh wait.
                Poll::Ready(Ok(())) => self.poll_flush(cx, dst, pipes),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Ok(Flush::Blocked),
            },
            Err(e) if would_block(&e) => {
                // The socket's send buffer is full. Take one byte out of
                // the pipe and let glommio's write path wait for POLLOUT.
                match sys::read_one(&pipe.read)? {
                    Some(b) => {
                        self.in_pipe -= 1;
                        self.held = Some(b);
                        self.return_pipe_if_empty(pipes);
                        self.poll_flush(cx, dst, pipes)
                    }
                    None => Err(io::Error::other("pipe empty but bytes were counted in it")),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Moves what `src` has, at most `limit` bytes, into a pipe. Only called
    /// when empty. Returns
    /// `Fill::NoPipe` when no pipe can be had or the socket cannot splice:
    /// the caller then copies instead.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        pipes: &PipePool,
        limit: usize,
    ) -> io::Result<Fill> {
        if self.pipe.is_none() {
            match pipes.take() {
                Some(p) => self.pipe = Some(p),
                None => return Ok(Fill::NoPipe),
            }
        }
        let Some(pipe) = &self.pipe else {
            return Ok(Fill::NoPipe);
        };
        let len = pipes.pipe_size().min(limit);
        match sys::splice(&*src, &pipe.write, len) {
            Ok(0) => {
                self.return_pipe_if_empty(pipes);
                Ok(Fill::Eof)
            }
            Ok(n) => {
                self.in_pipe += n;
                Ok(Fill::Data(n))
            }
            Err(e) if would_block(&e) && src.has_ring() => {
                // Nothing to read: give the pipe back and wait.
                self.return_pipe_if_empty(pipes);
                match src.poll_readable(cx) {
                    Poll::Ready(Err(e)) => Err(e),
                    // (Never: a multishot wait ends with a completion.)
                    Poll::Ready(Ok(())) => Ok(Fill::Data(0)),
                    Poll::Pending => Ok(Fill::Blocked),
                }
            }
            Err(e) if would_block(&e) => {
                // Nothing to read: give the pipe back and wait.
                self.return_pipe_if_empty(pipes);
                let mut b = [0u8; 1];
                match src.poll_recv(cx, &mut b) {
                    Poll::Ready(Ok(0)) => Ok(Fill::Eof),
                    Poll::Ready(Ok(_)) => {
                        self.held = Some(b[0]);
                        Ok(Fill::Data(1))
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
    /// is closed rather than pooled.
    pub(super) fn release(&mut self, pipes: &PipePool) {
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
