//! The copy engine: one recv into a pooled buffer, one send out, per
//! readiness; no pipe, so it is the cheap engine for small messages.
//!
//! Reads try recv(2) first and wait only after EAGAIN (through the core's
//! event ring, or glommio's buffer-less poll without one), so a direction
//! borrows a pool buffer only for one read attempt and keeps it only while
//! read bytes wait to be written. An idle tunnel holds no buffer.

use std::io;
use std::task::{Context, Poll};

use super::step::{Fill, Flush};
use super::BufferPool;
use crate::events::Stream;

/// Bytes read but not yet written: `buf[pos..len]`.
#[derive(Default)]
pub(super) struct CopyState {
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
}

impl CopyState {
    /// Writes pending bytes to `dst`.
    pub(super) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Stream,
        pool: &BufferPool,
    ) -> io::Result<Flush> {
        let Some(buf) = &self.buf else {
            return Ok(Flush::Empty);
        };
        match dst.poll_send(cx, &buf[self.pos..self.len]) {
            Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                self.pos += n;
                if self.pos == self.len {
                    if let Some(buf) = self.buf.take() {
                        pool.give(buf);
                    }
                }
                Ok(Flush::Moved(n))
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(Flush::Blocked),
        }
    }

    /// Reads at most `limit` bytes from `src` into a pool buffer. Only
    /// called when empty.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        pool: &BufferPool,
        limit: usize,
    ) -> io::Result<Fill> {
        let mut buf = pool.take();
        let room = buf.len().min(limit);
        match src.poll_recv(cx, &mut buf[..room]) {
            Poll::Ready(Ok(0)) => {
                pool.give(buf);
                Ok(Fill::Eof)
            }
            Poll::Ready(Ok(n)) => {
                self.buf = Some(buf);
                self.pos = 0;
                self.len = n;
                Ok(Fill::Data(n))
            }
            Poll::Ready(Err(e)) => {
                pool.give(buf);
                Err(e)
            }
            Poll::Pending => {
                // The wait holds no buffer: only a poll for readiness.
                pool.give(buf);
                Ok(Fill::Blocked)
            }
        }
    }

    pub(super) fn release(&mut self, pool: &BufferPool) {
        if let Some(buf) = self.buf.take() {
            pool.give(buf);
        }
    }
}
