//! Relay engines: what moves a tunnel's bytes once the SOCKS handshake is
//! done.
//!
//! Session code calls [`relay`] with the two connected streams and gets back
//! byte counts and how the tunnel ended; which engine runs is a per-core
//! choice behind this one function. Rules every engine keeps:
//! - a FIN from one side becomes shutdown(SHUT_WR) on the other, while the
//!   other direction keeps flowing until its own FIN;
//! - a reset (or any I/O error) on either side closes both, the other with a
//!   reset too;
//! - a tunnel that moves no byte either way for `idle_timeout` is closed;
//! - an idle tunnel holds no buffer.

mod copy;
mod pool;

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

pub use pool::BufferPool;

/// One side of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Target,
}

impl Side {
    pub fn as_str(&self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Target => "target",
        }
    }
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    /// Both directions finished with a FIN.
    Closed,
    /// One side reset the connection or failed; both were closed.
    Failed(Side, io::Error),
    /// No byte moved for the idle timeout.
    IdleTimeout,
}

impl fmt::Display for TunnelEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TunnelEnd::Closed => f.write_str("closed"),
            TunnelEnd::IdleTimeout => f.write_str("idle-timeout"),
            TunnelEnd::Failed(side, e) if e.kind() == io::ErrorKind::ConnectionReset => {
                write!(f, "{}-reset", side.as_str())
            }
            TunnelEnd::Failed(side, e) => write!(f, "{}-error ({e})", side.as_str()),
        }
    }
}

/// Which engine carried a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Copy,
}

impl Engine {
    pub fn as_str(&self) -> &'static str {
        match self {
            Engine::Copy => "copy",
        }
    }

    /// Index into [`crate::metrics::ENGINES`].
    pub fn metrics_index(&self) -> usize {
        match self {
            Engine::Copy => 0,
        }
    }
}

/// What a finished tunnel reports to the access log and the metrics.
#[derive(Debug)]
pub struct RelayReport {
    pub client_to_target: u64,
    pub target_to_client: u64,
    pub engine: Engine,
    pub end: TunnelEnd,
}

/// Per-core relay state: buffer pool and limits.
pub struct Relay {
    pub buffers: BufferPool,
    pub idle_timeout: Duration,
}

impl Relay {
    pub fn new(buffer_size: usize, idle_timeout: Duration) -> Relay {
        Relay {
            // Keep enough free buffers for a burst of busy tunnels; beyond
            // that, freed buffers go back to the allocator.
            buffers: BufferPool::new(buffer_size, 256),
            idle_timeout,
        }
    }

    /// Relays between `client` and `target` until both directions end, one
    /// side fails, or the tunnel idles out. `early` holds client bytes that
    /// arrived with the request; they go to the target first.
    pub async fn run(&self, client: TcpStream, target: TcpStream, early: &[u8]) -> RelayReport {
        crate::sys::set_nodelay(std::os::fd::AsRawFd::as_raw_fd(&target));
        copy::relay(self, client, target, early).await
    }
}

/// Tracks the last time a tunnel moved a byte, with a timer that fires at
/// most once per idle period rather than being re-armed on every byte.
pub(crate) struct IdleClock {
    timeout: Duration,
    last_activity: Instant,
    timer: glommio::timer::Timer,
}

impl IdleClock {
    pub(crate) fn new(timeout: Duration) -> IdleClock {
        IdleClock {
            timeout,
            last_activity: Instant::now(),
            timer: glommio::timer::Timer::new(timeout),
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
