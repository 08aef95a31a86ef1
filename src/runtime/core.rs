//! What one core owns, and its accept loop.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};

use crate::config::Config;
use crate::metrics::{self, AllMetrics, CoreMetrics};
use crate::relay::Relay;
use crate::udp::UdpTable;

/// Everything a core's connections touch. Lives in an `Rc` on its core;
/// only `config` (read-only) and `all_metrics` (single-writer slots) are
/// shared with other threads.
pub struct Core {
    pub id: usize,
    index: usize,
    pub config: Arc<Config>,
    all_metrics: AllMetrics,
    pub relay: Relay,
    pub udp: UdpTable,
    live: Cell<usize>,
    /// Effective max-tunnels-per-core (see `runtime::max_tunnels_per_core`).
    max_live: usize,
    next_conn_id: Cell<u64>,
}

impl Core {
    pub fn new(
        id: usize,
        index: usize,
        config: Arc<Config>,
        all_metrics: AllMetrics,
        max_live: usize,
    ) -> Core {
        Core {
            id,
            index,
            relay: Relay::new(&config, max_live),
            udp: UdpTable::new(config.max_udp_associations_per_core, config.max_udp_targets),
            config,
            all_metrics,
            live: Cell::new(0),
            max_live,
            next_conn_id: Cell::new(0),
        }
    }

    pub fn metrics(&self) -> &CoreMetrics {
        &self.all_metrics[self.index]
    }

    /// Connections open on this core (handshaking or relaying).
    pub fn live(&self) -> usize {
        self.live.get()
    }
}

/// Counts a connection as live until dropped.
struct LiveGuard(Rc<Core>);

impl LiveGuard {
    fn new(core: Rc<Core>) -> LiveGuard {
        core.live.set(core.live.get() + 1);
        LiveGuard(core)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
        metrics::add(&self.0.metrics().closed, 1);
    }
}

/// Runs one core: accepts on its listeners until shutdown, then drains.
pub async fn run_core(core: Rc<Core>, listeners: Vec<OwnedFd>, shutdown: Arc<AtomicBool>) {
    // glommio's listener does not expose its fd; keep the numbers to stop
    // listening at shutdown (the listeners own the fds until dropped).
    let raw_fds: Vec<_> = listeners.iter().map(|fd| fd.as_raw_fd()).collect();
    let listeners: Vec<Rc<TcpListener>> = listeners
        .into_iter()
        // SAFETY: each fd is a listening TCP socket whose ownership moves
        // into glommio's listener here.
        .map(|fd| Rc::new(unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) }))
        .collect();
    let accepters: Vec<_> = listeners
        .iter()
        .map(|l| glommio::spawn_local(accept_loop(core.clone(), l.clone())))
        .collect();

    wait_for_shutdown(&shutdown).await;
    // Stop accepting: cancel the loops and close the listening sockets, so
    // new clients are refused by the kernel instead of queueing.
    for &fd in &raw_fds {
        crate::sys::stop_listening(fd);
    }
    for a in accepters {
        a.cancel().await;
    }
    drop(listeners);
    let grace = core.config.shutdown_grace;
    if core.live() > 0 {
        tracing::info!(
            core = core.id,
            open = core.live(),
            "draining for up to {grace:?}"
        );
        let drained = async {
            while core.live() > 0 {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            true
        };
        let expired = async {
            glommio::timer::sleep(grace).await;
            false
        };
        if !future::or(drained, expired).await {
            tracing::warn!(
                core = core.id,
                open = core.live(),
                "grace period over; closing remaining connections"
            );
        }
    }
}

/// Shutdown is a process-wide flag set by the signal thread; each core
/// checks it on a timer, which keeps the data path free of cross-core
/// wake-ups.
async fn wait_for_shutdown(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
}

async fn accept_loop(core: Rc<Core>, listener: Rc<TcpListener>) {
    let mut backoff = Duration::ZERO;
    let mut over_limit = false;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                let e: io::Error = e.into();
                metrics::add(&core.metrics().accept_errors, 1);
                // Out of descriptors (or kernel memory): back off instead of
                // spinning, and say so once per episode.
                if backoff.is_zero() {
                    tracing::warn!(
                        core = core.id,
                        "accept failed: {e}; backing off until it succeeds{}",
                        fd_hint(&e)
                    );
                    backoff = Duration::from_millis(10);
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                glommio::timer::sleep(backoff).await;
                continue;
            }
        };
        if !backoff.is_zero() {
            tracing::info!(core = core.id, "accepting again");
            backoff = Duration::ZERO;
        }
        metrics::add(&core.metrics().accepted, 1);
        if core.live() >= core.max_live {
            metrics::add(&core.metrics().rejected_over_limit, 1);
            if !over_limit {
                tracing::warn!(
                    core = core.id,
                    limit = core.max_live,
                    "core is at max-tunnels-per-core; closing new connections"
                );
                over_limit = true;
            }
            metrics::add(&core.metrics().closed, 1);
            drop(stream);
            continue;
        }
        over_limit = false;
        spawn_session(&core, stream);
    }
}

fn spawn_session(core: &Rc<Core>, stream: TcpStream) {
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        // The client already left.
        Err(_) => {
            metrics::add(&core.metrics().closed, 1);
            return;
        }
    };
    let id = core.next_conn_id.get();
    core.next_conn_id.set(id + 1);
    let guard = LiveGuard::new(core.clone());
    glommio::spawn_local(async move {
        crate::session::serve(guard.0.clone(), stream, peer, id).await;
        drop(guard);
    })
    .detach();
}

fn fd_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            " (out of file descriptors: raise LimitNOFILE / ulimit -n, or lower max-tunnels-per-core)"
        }
        _ => "",
    }
}

/// For logs: the addresses a core listens on.
pub fn describe(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
