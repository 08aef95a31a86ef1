//! The tunnel future: both directions of one tunnel, polled together.
//!
//! One hand-written future owns both streams, so no stream is split, shared
//! or locked. Each direction runs one engine at a time (copy or splice) and
//! may change engine between reads, once what it holds is written: `auto`
//! starts with copy, moves to splice when a read fills the splice
//! threshold (bulk data is waiting: HAProxy's rule that a pipe is not worth
//! it for a few KiB), and back to copy after a few splices in a row that
//! each moved less than a quarter of it (the traffic turned small; one
//! short read in a bulk stream only means the proxy caught up). Splice
//! falls back to copy when no pipe can be had.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use super::copy::CopyState;
use super::sealed::SealedState;
use super::splice::SpliceState;
use super::step::{Fill, Flush};
use super::throttle::{Throttle, Way};
use super::{Engine, IdleClock, Relay, RelayReport, Side, TunnelEnd};
use crate::config::RelayMode;
use crate::events::Stream;
use crate::stop::StopSignal;

/// Read/write rounds one direction may do per poll before yielding, so one
/// busy tunnel cannot starve the others on its core.
const ROUNDS_PER_POLL: usize = 16;

enum Step {
    Progress,
    Blocked,
    Done,
}

pub(super) struct Direction {
    from: Side,
    to: Side,
    engine: Engine,
    /// `auto`'s state; the engine it asks for is taken at the next read.
    auto: Option<Auto>,
    /// After a pipe miss, splice is not tried again before `copied`
    /// reaches this.
    no_splice_until: u64,
    copy: CopyState,
    splice: SpliceState,
    /// Set, with `engine` Sealed, for a GSSAPI tunnel that wraps its data
    /// (boxed: the other tunnels carry one word for it, not its buffers).
    sealed: Option<Box<SealedState>>,
    eof: bool,
    done: bool,
    /// Bandwidth buckets this direction reads against (often none), and
    /// the timer it waits on when they are empty.
    way: Way,
    throttle: Throttle,
    refill: Option<crate::events::Timer>,
    pub(super) copied: u64,
    pub(super) spliced: u64,
    /// Times this direction waited for its bandwidth buckets.
    pub(super) throttled: u64,
}

impl Direction {
    pub(super) fn new(from: Side, to: Side, relay: &Relay, throttle: Throttle) -> Direction {
        let (engine, auto) = match relay.mode {
            RelayMode::Copy => (Engine::Copy, None),
            RelayMode::Splice => (Engine::Splice, None),
            // A tunnel the kernel could not take runs `auto`.
            RelayMode::Auto | RelayMode::Sockmap => (Engine::Copy, Some(Auto::default())),
        };
        relay.live.engine(None, Some(engine.metrics_index()));
        Direction {
            from,
            to,
            engine,
            auto,
            no_splice_until: 0,
            copy: CopyState::default(),
            splice: SpliceState::default(),
            sealed: None,
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

    /// This direction wraps or unwraps every message (a GSSAPI tunnel at
    /// integrity or confidentiality) instead of relaying bytes as they are.
    pub(super) fn seal(&mut self, sealed: SealedState, relay: &Relay) {
        self.switch(Engine::Sealed, relay);
        self.auto = None;
        self.sealed = Some(Box::new(sealed));
    }

    /// Moves bytes from `src` to `dst` until blocked or finished. Errors are
    /// tagged with the side they came from.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        dst: &mut Stream,
        relay: &Relay,
    ) -> Result<Step, (Side, io::Error)> {
        let mut moved = false;
        let idle = |moved: bool| Ok(if moved { Step::Progress } else { Step::Blocked });
        for _ in 0..ROUNDS_PER_POLL {
            if self.done {
                return Ok(Step::Done);
            }
            // Bytes already read go out first, so a FIN never overtakes data.
            let flushed = match (self.engine, &mut self.sealed) {
                (Engine::Sealed, Some(sealed)) => sealed.poll_flush(cx, dst),
                (Engine::Splice, _) => self.splice.poll_flush(cx, dst, &relay.pipes),
                _ => self.copy.poll_flush(cx, dst, &relay.buffers),
            };
            match flushed.map_err(|e| (self.to, e))? {
                Flush::Moved(n) => {
                    moved = true;
                    relay.live.moved(self.way, n);
                    match self.engine {
                        Engine::Copy | Engine::Sealed | Engine::Sockmap => self.copied += n as u64,
                        Engine::Splice => self.spliced += n as u64,
                    }
                    continue;
                }
                Flush::Blocked => return idle(moved),
                Flush::Empty => {}
            }
            if self.eof {
                // Pass the FIN on; the other direction keeps flowing.
                if let Poll::Ready(Err(e)) = dst.poll_shutdown_write(cx) {
                    if e.raw_os_error() != Some(libc::ENOTCONN) {
                        return Err((self.to, e));
                    }
                }
                self.done = true;
                return Ok(Step::Done);
            }
            // Nothing is held (the flush found nothing): the engine may
            // change here.
            if let Some(auto) = self.auto {
                self.switch(auto.next, relay);
            }
            let limit = match self.poll_allowance(cx) {
                Poll::Ready(limit) => limit,
                Poll::Pending => return idle(moved),
            };
            let filled = match (self.engine, &mut self.sealed) {
                (Engine::Sealed, Some(sealed)) => sealed.poll_fill(cx, src, limit),
                (Engine::Splice, _) => self.splice.poll_fill(cx, src, &relay.pipes, limit),
                _ => self.copy.poll_fill(cx, src, &relay.buffers, limit),
            };
            match filled.map_err(|e| (self.from, e))? {
                Fill::Data(n) => {
                    moved = true;
                    self.throttle.spend(self.way, n);
                    if let Some(auto) = &mut self.auto {
                        let may_splice = self.copied >= self.no_splice_until;
                        auto.after_read(self.engine, n, relay.splice_threshold, may_splice);
                    }
                }
                Fill::Eof => self.eof = true,
                Fill::Blocked => return idle(moved),
                Fill::NoPipe => {
                    debug_assert!(self.splice.is_empty());
                    self.switch(Engine::Copy, relay);
                    if let Some(auto) = &mut self.auto {
                        auto.next = Engine::Copy;
                    }
                    // Try splicing again only after another MiB or more.
                    self.no_splice_until = self.copied + relay.splice_threshold.max(1 << 20);
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
                    self.refill = Some(crate::events::Timer::new(wait));
                }
            }
        }
    }

    pub(super) fn release(&mut self, relay: &Relay) {
        self.copy.release(&relay.buffers);
        self.splice.release(&relay.pipes);
        relay.live.engine(Some(self.engine.metrics_index()), None);
    }

    /// Changes engine, keeping the per-engine gauge true.
    fn switch(&mut self, engine: Engine, relay: &Relay) {
        if engine != self.engine {
            let (from, to) = (self.engine.metrics_index(), engine.metrics_index());
            relay.live.engine(Some(from), Some(to));
            self.engine = engine;
        }
    }
}

/// `auto`: the engine the last reads ask for, and how many splices in a
/// row moved little.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Auto {
    next: Engine,
    small_splices: u8,
}

impl Default for Auto {
    fn default() -> Auto {
        Auto {
            next: Engine::Copy,
            small_splices: 0,
        }
    }
}

impl Auto {
    /// Small splices in a row before a direction goes back to copy.
    const SMALL_IN_A_ROW: u8 = 4;

    /// After a read of `n` bytes with `engine`: a copy read that filled
    /// the threshold means bulk data is waiting (splice, unless a recent
    /// pipe miss says not yet); splices that each moved under a quarter of
    /// it, several in a row, mean the traffic is small again (copy).
    fn after_read(&mut self, engine: Engine, n: usize, threshold: u64, may_splice: bool) {
        let n = n as u64;
        match engine {
            Engine::Copy if may_splice && n >= threshold => self.next = Engine::Splice,
            Engine::Copy | Engine::Sealed | Engine::Sockmap => {}
            Engine::Splice if n < threshold / 4 => {
                self.small_splices += 1;
                if self.small_splices >= Auto::SMALL_IN_A_ROW {
                    *self = Auto::default();
                }
            }
            Engine::Splice => self.small_splices = 0,
        }
    }
}

/// One tunnel, as [`Relay::run`] makes it: both streams, both
/// directions, and the client bytes that came with the request. Ready with
/// the tunnel's report once it has ended.
pub(crate) struct UserTunnel<'a> {
    pub(super) relay: &'a Relay,
    pub(super) client: Stream,
    pub(super) target: Stream,
    /// Client bytes that arrived with the request, not yet sent to the
    /// target; nothing else moves before they are gone.
    pub(super) early: Vec<u8>,
    pub(super) up: Direction,
    pub(super) down: Direction,
    pub(super) idle: IdleClock,
    pub(super) stop: &'a StopSignal,
}

impl UserTunnel<'_> {
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<TunnelEnd> {
        if let Poll::Ready(stop) = self.stop.poll_stop(cx) {
            return Poll::Ready(TunnelEnd::Stopped(stop));
        }
        while !self.early.is_empty() {
            match self.target.poll_send(cx, &self.early) {
                Poll::Ready(Ok(0)) => {
                    let e = io::ErrorKind::WriteZero.into();
                    return Poll::Ready(TunnelEnd::Failed(Side::Target, e));
                }
                Poll::Ready(Ok(n)) => {
                    self.early.drain(..n);
                    self.up.copied += n as u64;
                    self.up.throttle.spend(Way::Up, n);
                    self.relay.live.moved(Way::Up, n);
                    self.idle.touch();
                }
                Poll::Ready(Err(e)) => return Poll::Ready(TunnelEnd::Failed(Side::Target, e)),
                Poll::Pending => {
                    return self.idle.poll_expired(cx).map(|()| TunnelEnd::IdleTimeout)
                }
            }
        }
        self.early = Vec::new();
        let up = self
            .up
            .poll_move(cx, &mut self.client, &mut self.target, self.relay);
        let down = self
            .down
            .poll_move(cx, &mut self.target, &mut self.client, self.relay);
        let (up, down) = match (up, down) {
            (Err((side, e)), _) | (_, Err((side, e))) => {
                return Poll::Ready(TunnelEnd::Failed(side, e))
            }
            (Ok(up), Ok(down)) => (up, down),
        };
        match (up, down) {
            (Step::Done, Step::Done) => return Poll::Ready(TunnelEnd::Closed),
            (Step::Progress, _) | (_, Step::Progress) => self.idle.touch(),
            _ => {}
        }
        self.idle.poll_expired(cx).map(|()| TunnelEnd::IdleTimeout)
    }

    /// The report of a tunnel that ended; a side is reset when the other
    /// failed.
    fn finish(&mut self, end: TunnelEnd) -> RelayReport {
        let (up, down) = (&self.up, &self.down);
        let client_to_target = up.copied + up.spliced;
        let target_to_client = down.copied + down.spliced;
        let spliced = up.spliced + down.spliced;
        let engine = if up.engine == Engine::Sealed {
            Engine::Sealed
        } else if spliced * 2 > client_to_target + target_to_client {
            Engine::Splice
        } else {
            Engine::Copy
        };
        super::close_after(&end, &self.client, &self.target);
        RelayReport {
            client_to_target,
            target_to_client,
            spliced,
            engine,
            end,
            throttled: up.throttled + down.throttled,
        }
    }
}

/// Buffers and pipes go back to their pools however the tunnel ends
/// (finished, or dropped with its task); then the sockets close, each
/// after its watch.
impl Drop for UserTunnel<'_> {
    fn drop(&mut self) {
        self.up.release(self.relay);
        self.down.release(self.relay);
    }
}

impl Future for UserTunnel<'_> {
    type Output = RelayReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<RelayReport> {
        let this = self.get_mut();
        let end = std::task::ready!(this.poll_end(cx));
        Poll::Ready(this.finish(end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 64 * 1024;

    #[test]
    fn auto_splices_after_a_full_read_and_copies_after_small_splices_in_a_row() {
        let mut a = Auto::default();
        a.after_read(Engine::Copy, 64, T, true);
        assert_eq!(a.next, Engine::Copy, "small messages stay in copy");
        a.after_read(Engine::Copy, T as usize, T, false);
        assert_eq!(a.next, Engine::Copy, "not after a pipe miss");
        a.after_read(Engine::Copy, T as usize, T, true);
        assert_eq!(a.next, Engine::Splice, "a full buffer: bulk is waiting");
        for _ in 0..3 {
            a.after_read(Engine::Splice, 100, T, true);
        }
        assert_eq!(a.next, Engine::Splice, "three short reads in bulk");
        a.after_read(Engine::Splice, 200_000, T, true);
        for _ in 0..3 {
            a.after_read(Engine::Splice, 100, T, true);
        }
        assert_eq!(a.next, Engine::Splice, "a big splice resets the count");
        a.after_read(Engine::Splice, 100, T, true);
        assert_eq!(a, Auto::default(), "four small splices in a row: copy");
    }
}
