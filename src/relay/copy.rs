//! The copy engine: read into a pooled buffer, write it out.
//!
//! Both directions are polled by one hand-written future that owns both
//! streams, so no stream is split, shared or locked. glommio's plain
//! (non-buffered) read first tries recv(2) and, on EAGAIN, arms an io_uring
//! poll that holds no buffer; so a direction borrows a pool buffer only for
//! the duration of one read attempt and keeps it only while read bytes wait
//! to be written.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use super::{Engine, IdleClock, Relay, RelayReport, Side, TunnelEnd};

/// Read/write rounds one direction may do per poll before yielding, so one
/// busy tunnel cannot starve the others on its core.
const ROUNDS_PER_POLL: usize = 16;

#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written: `buf[pos..len]`.
    buf: Option<Box<[u8]>>,
    pos: usize,
    len: usize,
    eof: bool,
    done: bool,
    bytes: u64,
}

enum Step {
    Progress,
    Blocked,
    Done,
}

impl Direction {
    /// Moves bytes from `src` to `dst` until blocked or finished. Errors are
    /// tagged with the side they came from.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        src_side: Side,
        dst: &mut TcpStream,
        dst_side: Side,
        relay: &Relay,
    ) -> Result<Step, (Side, io::Error)> {
        let mut moved = false;
        for _ in 0..ROUNDS_PER_POLL {
            if self.done {
                return Ok(Step::Done);
            }
            if let Some(buf) = &self.buf {
                match Pin::new(&mut *dst).poll_write(cx, &buf[self.pos..self.len]) {
                    Poll::Ready(Ok(0)) => return Err((dst_side, io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.bytes += n as u64;
                        moved = true;
                        if self.pos == self.len {
                            relay.buffers.give(self.buf.take().expect("checked above"));
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Err((dst_side, e)),
                    Poll::Pending => return Ok(if moved { Step::Progress } else { Step::Blocked }),
                }
            }
            if self.eof {
                // Pass the FIN on; the other direction keeps flowing.
                match Pin::new(&mut *dst).poll_close(cx) {
                    Poll::Ready(Err(e)) if e.raw_os_error() != Some(libc::ENOTCONN) => {
                        return Err((dst_side, e))
                    }
                    _ => {}
                }
                self.done = true;
                return Ok(Step::Done);
            }
            let mut buf = relay.buffers.take();
            match Pin::new(&mut *src).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(0)) => {
                    relay.buffers.give(buf);
                    self.eof = true;
                }
                Poll::Ready(Ok(n)) => {
                    self.buf = Some(buf);
                    self.pos = 0;
                    self.len = n;
                    moved = true;
                }
                Poll::Ready(Err(e)) => {
                    relay.buffers.give(buf);
                    return Err((src_side, e));
                }
                Poll::Pending => {
                    // The wait holds no buffer: glommio polls for readiness.
                    relay.buffers.give(buf);
                    return Ok(if moved { Step::Progress } else { Step::Blocked });
                }
            }
        }
        // Out of rounds with work left: come back after the others ran.
        cx.waker().wake_by_ref();
        Ok(Step::Progress)
    }
}

struct CopyTunnel<'a> {
    relay: &'a Relay,
    client: &'a mut TcpStream,
    target: &'a mut TcpStream,
    up: Direction,
    down: Direction,
    idle: IdleClock,
}

impl Future for CopyTunnel<'_> {
    type Output = TunnelEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelEnd> {
        let this = self.get_mut();
        let up = this.up.poll_move(
            cx,
            this.client,
            Side::Client,
            this.target,
            Side::Target,
            this.relay,
        );
        let down = this.down.poll_move(
            cx,
            this.target,
            Side::Target,
            this.client,
            Side::Client,
            this.relay,
        );
        let (up, down) = match (up, down) {
            (Err((side, e)), _) | (_, Err((side, e))) => {
                return Poll::Ready(TunnelEnd::Failed(side, e))
            }
            (Ok(up), Ok(down)) => (up, down),
        };
        match (up, down) {
            (Step::Done, Step::Done) => return Poll::Ready(TunnelEnd::Closed),
            (Step::Progress, _) | (_, Step::Progress) => this.idle.touch(),
            _ => {}
        }
        match this.idle.poll_expired(cx) {
            Poll::Ready(()) => Poll::Ready(TunnelEnd::IdleTimeout),
            Poll::Pending => Poll::Pending,
        }
    }
}

pub(super) async fn relay(
    relay: &Relay,
    mut client: TcpStream,
    mut target: TcpStream,
    early: &[u8],
) -> RelayReport {
    let mut report = RelayReport {
        client_to_target: 0,
        target_to_client: 0,
        engine: Engine::Copy,
        end: TunnelEnd::Closed,
    };
    if !early.is_empty() {
        if let Err(e) = target.write_all(early).await {
            report.end = TunnelEnd::Failed(Side::Target, e);
            close_after(&report.end, &client, &target);
            return report;
        }
        report.client_to_target = early.len() as u64;
    }
    let mut tunnel = CopyTunnel {
        relay,
        client: &mut client,
        target: &mut target,
        up: Direction::default(),
        down: Direction::default(),
        idle: IdleClock::new(relay.idle_timeout),
    };
    report.end = (&mut tunnel).await;
    report.client_to_target += tunnel.up.bytes;
    report.target_to_client += tunnel.down.bytes;
    for buf in [tunnel.up.buf.take(), tunnel.down.buf.take()]
        .into_iter()
        .flatten()
    {
        relay.buffers.give(buf);
    }
    close_after(&report.end, &client, &target);
    report
}

/// When one side failed, the other is closed with a reset (SO_LINGER 0) so it
/// learns that the tunnel broke rather than seeing a clean end of stream.
pub(super) fn close_after(end: &TunnelEnd, client: &TcpStream, target: &TcpStream) {
    match end {
        TunnelEnd::Failed(Side::Client, _) => crate::sys::set_linger_zero(target.as_raw_fd()),
        TunnelEnd::Failed(Side::Target, _) => crate::sys::set_linger_zero(client.as_raw_fd()),
        TunnelEnd::IdleTimeout | TunnelEnd::Closed => {}
    }
}
