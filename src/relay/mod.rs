//! Relay engines: what moves a tunnel's bytes once the SOCKS handshake is
//! done.
//!
//! Session code hands [`Relay::run`] the two connected streams and awaits
//! the [`Tunnel`] it returns, which ends with byte counts and how the
//! tunnel ended; which engine runs is a per-core choice behind this one
//! function. Rules every engine keeps:
//! - a FIN from one side becomes shutdown(SHUT_WR) on the other, while the
//!   other direction keeps flowing until its own FIN;
//! - a reset (or any I/O error) on either side closes both, the other with a
//!   reset too;
//! - a tunnel that moves no byte either way for `idle_timeout` is closed;
//! - an idle tunnel holds no buffer.

mod copy;
mod kernel;
mod pipes;
mod pool;
mod sealed;
mod splice;
mod step;
pub(crate) mod throttle;
mod tunnel;

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use std::rc::Rc;

pub(crate) use pipes::PipePool;
pub(crate) use pool::BufferPool;
pub(crate) use throttle::{Bandwidth, Throttle};

use crate::config::{Config, RelayMode};
use crate::events::Stream;
use crate::stop::{Stop, StopSignal};
pub(crate) use kernel::Kernel;
use tunnel::{Direction, UserTunnel};

/// One side of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Client,
    Target,
}

impl Side {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Target => "target",
        }
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub(crate) enum TunnelEnd {
    /// Both directions finished with a FIN.
    Closed,
    /// One side reset the connection or failed; both were closed.
    Failed(Side, io::Error),
    /// No byte moved for the idle timeout.
    IdleTimeout,
    /// The proxy cut it (the end of the shutdown grace): both sides get a
    /// reset, so neither mistakes a truncated stream for a complete one.
    Stopped(Stop),
}

impl fmt::Display for TunnelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelEnd::Closed => f.write_str("closed"),
            TunnelEnd::IdleTimeout => f.write_str("idle-timeout"),
            TunnelEnd::Stopped(stop) => f.write_str(stop.as_str()),
            TunnelEnd::Failed(side, e) if e.kind() == io::ErrorKind::ConnectionReset => {
                write!(f, "{}-reset", side.as_str())
            }
            TunnelEnd::Failed(side, e) => write!(f, "{}-error ({e})", side.as_str()),
        }
    }
}

/// A relay engine: what a direction runs now (`tunnel.rs`), and which one
/// carried most of a tunnel's bytes (the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    Copy,
    Splice,
    /// Copied through GSS-API wrap/unwrap (RFC 1961 protection; `sealed.rs`);
    /// a direction keeps it for life.
    Sealed,
    /// Relayed in the kernel by the sockmap program (`kernel.rs`).
    Sockmap,
}

impl Engine {
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Engine::Copy => "copy",
            Engine::Splice => "splice",
            Engine::Sealed => "sealed",
            Engine::Sockmap => "sockmap",
        }
    }

    /// Index into [`crate::metrics::ENGINES`].
    pub(crate) fn metrics_index(&self) -> usize {
        match self {
            Engine::Copy => 0,
            Engine::Splice => 1,
            Engine::Sealed => 2,
            Engine::Sockmap => 3,
        }
    }
}

/// What a finished tunnel reports to the access log and the metrics.
#[derive(Debug)]
pub(crate) struct RelayReport {
    pub client_to_target: u64,
    pub target_to_client: u64,
    /// Bytes (both directions) moved by splice; the rest were copied.
    pub spliced: u64,
    pub engine: Engine,
    pub end: TunnelEnd,
    /// Times a direction waited for its bandwidth limit.
    pub throttled: u64,
}

/// Per-core relay state: pools, mode and limits.
pub(crate) struct Relay {
    pub mode: RelayMode,
    pub buffers: BufferPool,
    pub pipes: PipePool,
    /// `auto`: a copy read this large moves a direction to splice; a
    /// splice under a quarter of it moves it back. At most a copy buffer,
    /// since no read is larger.
    pub splice_threshold: u64,
    /// Read when a tunnel starts; a reload changes it for new tunnels.
    pub idle_timeout: std::cell::Cell<Duration>,
    /// The core's counters, moved as bytes flow.
    pub live: LiveCounters,
    /// `sockmap`: the core's maps, when the kernel allows them.
    pub kernel: Option<Kernel>,
}

/// This core's byte counters and engine gauge, which tunnels move as they
/// go (a scrape sees an hour-long download grow, not one spike at its
/// end). One writer per core: a plain load and store each.
pub(crate) struct LiveCounters {
    all: crate::metrics::AllMetrics,
    index: usize,
}

impl LiveCounters {
    pub(crate) fn new(all: crate::metrics::AllMetrics, index: usize) -> LiveCounters {
        LiveCounters { all, index }
    }

    fn metrics(&self) -> &crate::metrics::CoreMetrics {
        &self.all[self.index]
    }

    pub(crate) fn moved(&self, way: throttle::Way, n: usize) {
        let m = self.metrics();
        let counter = match way {
            throttle::Way::Up => &m.bytes_client_to_target,
            throttle::Way::Down => &m.bytes_target_to_client,
        };
        crate::metrics::add(counter, n as u64);
    }

    /// A direction left engine `from` and/or joined `to`.
    pub(crate) fn engine(&self, from: Option<usize>, to: Option<usize>) {
        let g = &self.metrics().directions_by_engine;
        if let Some(i) = from {
            crate::metrics::sub_one(&g[i]);
        }
        if let Some(i) = to {
            crate::metrics::add(&g[i], 1);
        }
    }
}

impl Relay {
    pub(crate) fn new(config: &Config, max_pipes: usize, live: LiveCounters) -> Relay {
        Relay {
            mode: config.relay,
            // Keep enough free buffers for a burst of busy tunnels; beyond
            // that, freed buffers go back to the allocator.
            buffers: BufferPool::new(config.buffer_size, 256),
            pipes: PipePool::new(config.pipe_size, max_pipes),
            splice_threshold: config.splice_threshold.min(config.buffer_size as u64),
            idle_timeout: std::cell::Cell::new(config.idle_timeout),
            live,
            kernel: None,
        }
    }

    /// The tunnel between `client` and `target`: a future that relays
    /// until both directions end, one side fails, or the tunnel idles out,
    /// and then reports. `early` holds client bytes that arrived with the
    /// request; they go to the target first. Each direction reads no
    /// faster than `throttle`'s buckets allow. With `sealed` (a GSSAPI
    /// tunnel that wraps its data) the client's bytes are unwrapped and
    /// the target's wrapped; its bytes are client bytes that came with the
    /// request, still wrapped.
    ///
    /// With `sockmap` the kernel relays the tunnel when it can: not with
    /// bandwidth limits or GSSAPI protection (both need each byte in user
    /// space), nor when the kernel refuses the pair; those run `auto`.
    pub(crate) fn run<'a>(
        &'a self,
        mut client: Stream,
        mut target: Stream,
        mut early: Vec<u8>,
        throttle: Throttle,
        sealed: Option<Sealed>,
        stop: &'a StopSignal,
    ) -> Tunnel<'a> {
        // Both sockets arrive non-blocking (accept4 and BIND's accept make
        // them so, connects start that way), which splice(2) needs: no
        // fcntl per tunnel here.
        crate::sys::set_nodelay(&target);
        let mut early_sent = 0;
        if let (Some(k), true) = (&self.kernel, throttle.is_empty() && sealed.is_none()) {
            let before = early.len();
            match kernel::start(k, &mut client, &mut target, &mut early) {
                Ok(started) => {
                    self.live.moved(throttle::Way::Up, before - early.len());
                    let relay = kernel::relay(self, k, client, target, started, stop);
                    return Tunnel::Kernel(Box::pin(relay));
                }
                Err(e) => {
                    early_sent = (before - early.len()) as u64;
                    tracing::debug!("sockmap: relaying this tunnel in user space: {e}");
                }
            }
        }
        let mut tunnel = UserTunnel {
            relay: self,
            up: Direction::new(Side::Client, Side::Target, self, throttle.clone()),
            down: Direction::new(Side::Target, Side::Client, self, throttle),
            client,
            target,
            early,
            idle: IdleClock::new(self.idle_timeout.get()),
            stop,
        };
        if let Some(Sealed {
            protection,
            pending,
        }) = sealed
        {
            let shared = Rc::new(std::cell::RefCell::new(protection));
            let state = |seal, pending| sealed::SealedState::new(seal, shared.clone(), pending);
            tunnel.up.seal(state(sealed::Seal::Unwrap, &pending), self);
            tunnel.down.seal(state(sealed::Seal::Wrap, &[]), self);
        }
        // Sent before the kernel declined (no throttle then to charge).
        if early_sent > 0 {
            tunnel.up.copied += early_sent;
            self.live.moved(throttle::Way::Up, early_sent as usize);
        }
        Tunnel::User(tunnel)
    }
}

/// One tunnel, as [`Relay::run`] makes it; ready with its report once it
/// has ended.
#[allow(clippy::large_enum_variant)] // in place in the task: a box would cost an allocation per tunnel
pub(crate) enum Tunnel<'a> {
    /// Relayed by the core (copy, splice, sealed). A named future rather
    /// than an async fn: an idle tunnel is this struct and nothing else
    /// (an async fn keeps room for every argument and local next to it,
    /// for the tunnel's whole life).
    User(UserTunnel<'a>),
    /// Relayed by the kernel (sockmap): its task only waits for the end.
    /// Boxed, so the user-space tunnels do not carry its room.
    Kernel(std::pin::Pin<Box<dyn std::future::Future<Output = RelayReport> + 'a>>),
}

impl std::future::Future for Tunnel<'_> {
    type Output = RelayReport;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<RelayReport> {
        match self.get_mut() {
            Tunnel::User(t) => std::pin::Pin::new(t).poll(cx),
            Tunnel::Kernel(t) => t.as_mut().poll(cx),
        }
    }
}

/// A GSSAPI tunnel's protection (integrity or confidentiality) and the
/// client bytes that arrived with the request, still wrapped.
pub(crate) struct Sealed {
    pub protection: crate::gss_binding::Protection,
    pub pending: Vec<u8>,
}

/// When one side failed, the other is closed with a reset (SO_LINGER 0) so it
/// learns that the tunnel broke rather than seeing a clean end of stream.
pub(super) fn close_after(end: &TunnelEnd, client: &Stream, target: &Stream) {
    match end {
        TunnelEnd::Failed(Side::Client, _) => crate::sys::set_linger_zero(target),
        TunnelEnd::Failed(Side::Target, _) => crate::sys::set_linger_zero(client),
        TunnelEnd::Stopped(_) => {
            crate::sys::set_linger_zero(client);
            crate::sys::set_linger_zero(target);
        }
        TunnelEnd::IdleTimeout | TunnelEnd::Closed => {}
    }
}

/// Tracks the last time a tunnel moved a byte, with a timer that fires at
/// most once per idle period rather than being re-armed on every byte.
pub(crate) struct IdleClock {
    timeout: Duration,
    last_activity: Instant,
    timer: crate::events::Timer,
}

impl IdleClock {
    pub(crate) fn new(timeout: Duration) -> IdleClock {
        IdleClock {
            timeout,
            last_activity: Instant::now(),
            timer: crate::events::Timer::new(timeout),
        }
    }

    pub(crate) fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Ready when the tunnel has been idle for the whole timeout.
    pub(crate) fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future;
        use std::task::Poll;
        loop {
            match std::pin::Pin::new(&mut self.timer).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => {
                    let idle = self.last_activity.elapsed();
                    if idle >= self.timeout {
                        return Poll::Ready(());
                    }
                    self.timer.reset(self.timeout - idle);
                }
            }
        }
    }
}
