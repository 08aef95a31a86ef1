//! Stream helpers both sides use (the client-side connections in `net` and
//! the targets): fairness, sleeping to a deadline, half-closes, and a
//! stream split into a read half and a write half.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use coresocks_io::events::Stream;
use futures_lite::io::{AsyncRead, AsyncWrite};

use crate::error::{Failure, Stage};

/// Lets the other futures of this task and the other tasks of this core
/// run. A loop whose reads or writes complete at once (glommio tries the
/// syscall before waiting) would otherwise never return to the executor and
/// starve the rest of the core, including the other half of a duplex tunnel.
pub async fn fair_share() {
    // The event ring's driver counts this task's next poll, so it does not
    // sleep while the task waits for its turn.
    futures_lite::future::yield_now().await;
}

/// Sleeps until `at` (returns at once when it has passed).
pub async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        coresocks_io::events::sleep(at - now).await;
    }
}

/// Whether the peer of a connected TCP socket has closed it (a FIN or a
/// RST is waiting), without reading any data. `None` while the connection
/// looks alive.
pub fn peer_closed(socket: impl AsFd) -> Option<Failure> {
    match coresocks_io::sys::peer_closed(socket.as_fd()) {
        Ok(true) => Some(Failure::ClosedEarly),
        Ok(false) => None,
        Err(e) => Some(Failure::from_io(&e, Stage::Target)),
    }
}

/// Splits a stream so one task (or two futures) can read while writing.
/// A stream keeps separate read and write waits (on the ring: a multishot
/// poll and a one-shot POLLOUT; in glommio: two sources), so both halves
/// can wait at once. The RefCell is only borrowed inside a poll, never
/// across an await: no lock on the data path.
pub fn split(stream: Stream) -> (ReadHalf, WriteHalf) {
    let shared = Rc::new(RefCell::new(stream));
    (ReadHalf(shared.clone()), WriteHalf(shared))
}

pub struct ReadHalf(Rc<RefCell<Stream>>);
pub struct WriteHalf(Rc<RefCell<Stream>>);

impl WriteHalf {
    /// Half-closes the write side (sends FIN) at once, whatever the read
    /// half is doing.
    pub fn shutdown_write(&self) {
        let _ = coresocks_io::sys::shutdown_write(self.0.borrow().as_fd());
    }
}

fn busy() -> io::Error {
    io::Error::other("stream half polled while the other half was being polled")
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_read(cx, buf),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_write(cx, buf),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_flush(cx),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.0.try_borrow_mut() {
            Ok(mut s) => Pin::new(&mut *s).poll_close(cx),
            Err(_) => Poll::Ready(Err(busy())),
        }
    }
}
