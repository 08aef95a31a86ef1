//! The tunnel future: both directions of one tunnel, polled together.
//!
//! One hand-written future owns both streams, so no stream is split, shared
//! or locked. Each direction runs one engine at a time (copy or splice) and
//! may change engine between bursts: `auto` starts with copy and moves to
//! splice once a direction has carried bulk data; splice falls back to copy
//! when no pipe can be had.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use glommio::net::TcpStream;

use super::copy::CopyState;
use super::splice::SpliceState;
use super::throttle::{Throttle, Way};
use super::{IdleClock, Relay, Side, TunnelEnd};
use crate::config::RelayMode;
use crate::runtime::StopSignal;

/// Read/write rounds one direction may do per poll before yielding, so one
/// busy tunnel cannot starve the others on its core.
const ROUNDS_PER_POLL: usize = 16;

/// Outcome of writing out what a direction holds.
pub(super) enum Flush {
    Moved(usize),
    Empty,
    Blocked,
}

/// Outcome of reading from the source.
pub(super) enum Fill {
    /// This many bytes were read.
    Data(usize),
    Eof,
    Blocked,
    /// The splice engine cannot run here; copy instead.
    NoPipe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Copy,
    Splice,
}

enum Step {
    Progress,
    Blocked,
    Done,
}

pub(super) struct Direction {
    from: Side,
    to: Side,
    engine: Engine,
    /// `auto`: move to splice once this many bytes were copied.
    splice_after: Option<u64>,
    copy: CopyState,
    splice: SpliceState,
    eof: bool,
    done: bool,
    /// Bandwidth buckets this direction reads against (often none), and
    /// the timer it waits on when they are empty.
    way: Way,
    throttle: Throttle,
    refill: Option<glommio::timer::Timer>,
    pub(super) copied: u64,
    pub(super) spliced: u64,
    /// Times this direction waited for its bandwidth buckets.
    pub(super) throttled: u64,
}

impl Direction {
    pub(super) fn new(from: Side, to: Side, relay: &Relay, throttle: Throttle) -> Direction {
        let (engine, splice_after) = match relay.mode {
            RelayMode::Copy => (Engine::Copy, None),
            RelayMode::Splice => (Engine::Splice, None),
            RelayMode::Auto => (Engine::Copy, Some(relay.splice_threshold)),
        };
        Direction {
            from,
            to,
            engine,
            splice_after,
            copy: CopyState::default(),
            splice: SpliceState::default(),
            eof: false,
            done: false,
            way: if from == Side::Client {
                Way::Up
            } else {
                Way::Down
            },
            throttle,
            refill: None,
            copied: 0,
            spliced: 0,
            throttled: 0,
        }
    }

    /// Moves bytes from `src` to `dst` until blocked or finished. Errors are
    /// tagged with the side they came from.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut TcpStream,
        dst: &mut TcpStream,
        relay: &Relay,
    ) -> Result<Step, (Side, io::Error)> {
        let mut moved = false;
        let idle = |moved: bool| Ok(if moved { Step::Progress } else { Step::Blocked });
        for _ in 0..ROUNDS_PER_POLL {
            if self.done {
                return Ok(Step::Done);
            }
            // Bytes already read go out first, so a FIN never overtakes data.
            let flushed = match self.engine {
                Engine::Copy => self.copy.poll_flush(cx, dst, &relay.buffers),
                Engine::Splice => self.splice.poll_flush(cx, dst, &relay.pipes),
            };
            match flushed.map_err(|e| (self.to, e))? {
                Flush::Moved(n) => {
                    moved = true;
                    match self.engine {
                        Engine::Copy => self.copied += n as u64,
                        Engine::Splice => self.spliced += n as u64,
                    }
                    continue;
                }
                Flush::Blocked => return idle(moved),
                Flush::Empty => {}
            }
            if self.eof {
                // Pass the FIN on; the other direction keeps flowing.
                if let Poll::Ready(Err(e)) =
                    futures_lite::io::AsyncWrite::poll_close(Pin::new(&mut *dst), cx)
                {
                    if e.raw_os_error() != Some(libc::ENOTCONN) {
                        return Err((self.to, e));
                    }
                }
                self.done = true;
                return Ok(Step::Done);
            }
            if let Some(after) = self.splice_after {
                if self.copied >= after && self.copy.is_empty() {
                    self.engine = Engine::Splice;
                    self.splice_after = None;
                }
            }
            let limit = match self.poll_allowance(cx) {
                Poll::Ready(limit) => limit,
                Poll::Pending => return idle(moved),
            };
            let filled = match self.engine {
                Engine::Copy => self.copy.poll_fill(cx, src, &relay.buffers, limit),
                Engine::Splice => self.splice.poll_fill(cx, src, &relay.pipes, limit),
            };
            match filled.map_err(|e| (self.from, e))? {
                Fill::Data(n) => {
                    moved = true;
                    self.throttle.spend(self.way, n);
                }
                Fill::Eof => self.eof = true,
                Fill::Blocked => return idle(moved),
                Fill::NoPipe => {
                    debug_assert!(self.splice.is_empty());
                    self.engine = Engine::Copy;
                    // Try splicing again after another threshold's worth.
                    self.splice_after = Some(self.copied + relay.splice_threshold.max(1 << 20));
                }
            }
        }
        // Out of rounds with work left: come back after the others ran.
        cx.waker().wake_by_ref();
        Ok(Step::Progress)
    }

    /// How many bytes the next read may take: unlimited without buckets,
    /// else what they hold, once they hold a quantum (waiting on a timer
    /// until then).
    fn poll_allowance(&mut self, cx: &mut Context<'_>) -> Poll<usize> {
        if self.throttle.is_empty() {
            return Poll::Ready(usize::MAX);
        }
        loop {
            if let Some(timer) = &mut self.refill {
                std::task::ready!(Pin::new(timer).poll(cx));
                self.refill = None;
            }
            match self.throttle.allowance(self.way, Instant::now()) {
                Ok(limit) => return Poll::Ready(limit),
                Err(wait) => {
                    self.throttled += 1;
                    self.refill = Some(glommio::timer::Timer::new(wait));
                }
            }
        }
    }

    pub(super) fn release(&mut self, relay: &Relay) {
        self.copy.release(&relay.buffers);
        self.splice.release(&relay.pipes);
    }
}

pub(super) struct Tunnel<'a> {
    pub(super) relay: &'a Relay,
    pub(super) client: &'a mut TcpStream,
    pub(super) target: &'a mut TcpStream,
    pub(super) up: Direction,
    pub(super) down: Direction,
    pub(super) idle: IdleClock,
    pub(super) stop: &'a StopSignal,
}

impl Future for Tunnel<'_> {
    type Output = TunnelEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TunnelEnd> {
        let this = self.get_mut();
        if let Poll::Ready(stop) = this.stop.poll_stop(cx) {
            return Poll::Ready(TunnelEnd::Stopped(stop));
        }
        let up = this.up.poll_move(cx, this.client, this.target, this.relay);
        let down = this
            .down
            .poll_move(cx, this.target, this.client, this.relay);
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
