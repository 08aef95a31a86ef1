//! The copy engine: read into a pooled buffer, write it out.
//!
//! glommio's plain (non-buffered) read first tries recv(2) and, on EAGAIN,
//! arms an io_uring poll that holds no buffer; so a direction borrows a pool
//! buffer only for one read attempt and keeps it only while read bytes wait
//! to be written. An idle tunnel holds no buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use super::tunnel::{Fill, Flush};
use super::BufferPool;

/// Bytes read but not yet written: `buf[pos..len]`.
#[derive(Default)]
pub(super) struct CopyState {
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
}

impl CopyState {
    pub(super) fn is_empty(&self) -> bool {
        self.buf.is_none()
    }

    /// Writes pending bytes to `dst`.
    pub(super) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut TcpStream,
        pool: &BufferPool,
    ) -> io::Result<Flush> {
        let Some(buf) = &self.buf else {
            return Ok(Flush::Empty);
        };
        match Pin::new(dst).poll_write(cx, &buf[self.pos..self.len]) {
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
        src: &mut TcpStream,
        pool: &BufferPool,
        limit: usize,
    ) -> io::Result<Fill> {
        let mut buf = pool.take();
        let room = buf.len().min(limit);
        match Pin::new(src).poll_read(cx, &mut buf[..room]) {
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
                // The wait holds no buffer: glommio polls for readiness.
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
