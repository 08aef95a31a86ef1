//! What one core owns, and its accept loop.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;

use super::admission::{Admission, Refused, Stop, Ticket};
use super::Limits;
use crate::config::{Config, EventRingSetup};
use crate::events::{EventRing, Listener, Stream};
use crate::metrics::{self, AllMetrics, CoreMetrics};
use crate::relay::Relay;
use crate::udp::UdpTable;

/// Everything a core's connections touch. Lives in an `Rc` on its core;
/// only `config` (read-only) and `all_metrics` (single-writer slots) are
/// shared with other threads.
pub(crate) struct Core {
    pub id: usize,
    index: usize,
    /// This core's own copy of the configuration; SIGHUP swaps it. A
    /// session takes a snapshot at its start and keeps it to its end.
    config: RefCell<Arc<Config>>,
    all_metrics: AllMetrics,
    pub relay: Relay,
    pub udp: UdpTable,
    pub admission: Rc<Admission>,
    /// Per-user and per-client tunnel quotas, this core's share.
    pub quotas: Rc<crate::quota::Quotas>,
    /// Per-user and per-client bandwidth buckets, this core's share.
    pub bandwidth: crate::relay::Bandwidth,
    /// Wrong-password rates, logins waiting for a hash and verified
    /// logins, per client address.
    pub passwords: crate::session::PasswordGate,
    /// This core's own io_uring for readiness waits; `None` when turned
    /// off or the kernel refused it (connects then wait through glommio).
    pub events: Option<Rc<EventRing>>,
}

impl Core {
    pub(crate) fn new(
        id: usize,
        index: usize,
        config: Arc<Config>,
        all_metrics: AllMetrics,
        limits: &Limits,
    ) -> Core {
        let events = match EventRing::start(
            config.event_ring.into(),
            config.multishot_poll,
            [config.resolver_threads, config.hash_threads],
        ) {
            Ok(ring) => {
                if index == 0 {
                    tracing::info!("event ring: {}", ring.setup());
                }
                Some(ring)
            }
            Err(_) if config.event_ring == EventRingSetup::Off => {
                if index == 0 {
                    tracing::info!(
                        "event ring: off; connects, tunnels and UDP wait through glommio"
                    );
                }
                None
            }
            Err(e) => {
                if index == 0 {
                    tracing::warn!(
                        "event ring: none ({e}); connects, tunnels and UDP wait through glommio, where an \
                         ICMP error can take seconds to surface"
                    );
                }
                None
            }
        };
        let mut relay = Relay::new(
            &config,
            limits.pipes_per_core,
            crate::relay::LiveCounters::new(all_metrics.clone(), index),
        );
        if config.relay == crate::config::RelayMode::Sockmap {
            relay.kernel = kernel_relay(index, events.as_ref(), limits.budgets.connections);
            if let Some(kernel) = &relay.kernel {
                match kernel.counters() {
                    Ok(c) => drop(all_metrics[index].kernel_bytes.set(c)),
                    Err(e) => tracing::warn!("sockmap: its byte counters cannot be read: {e}"),
                }
            }
        }
        Core {
            id,
            index,
            relay,
            udp: UdpTable::new(config.max_udp_associations_per_core, config.max_udp_targets),
            admission: Admission::new(limits.budgets),
            quotas: crate::quota::Quotas::new(config.quotas, all_metrics.len()),
            bandwidth: crate::relay::Bandwidth::new(
                config.quotas.bandwidth_per_user,
                config.quotas.bandwidth_per_client,
                all_metrics.len(),
            ),
            passwords: crate::session::PasswordGate::new(all_metrics.len()),
            events,
            // A copy of its own: sessions clone this Arc at every accept,
            // and a count shared by all cores would bounce between them.
            config: RefCell::new(Arc::new(Config::clone(&config))),
            all_metrics,
        }
    }

    /// The configuration new sessions start with.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Takes a reloaded configuration (SIGHUP) for new sessions, and the
    /// limits that live in this core's tables. Settings that need a
    /// restart were checked unchanged before it got here.
    pub(crate) fn reconfigure(&self, config: Arc<Config>) {
        let cores = self.all_metrics.len();
        self.quotas.set_limits(config.quotas, cores);
        self.bandwidth.set_rates(
            config.quotas.bandwidth_per_user,
            config.quotas.bandwidth_per_client,
            cores,
        );
        self.relay.idle_timeout.set(config.idle_timeout);
        if let (true, Some(users)) = (config.reload_closes_removed_users, &config.users) {
            let cut = self
                .admission
                .stop_users(|u| users.contains(u), super::Stop::UserRemoved);
            if cut > 0 {
                tracing::info!(
                    core = self.id,
                    "reload: cut {cut} tunnel(s) of removed users"
                );
            }
        }
        *self.config.borrow_mut() = config;
    }

    pub(crate) fn metrics(&self) -> &CoreMetrics {
        &self.all_metrics[self.index]
    }

    /// Connections open on this core (handshaking or relaying).
    pub(crate) fn live(&self) -> usize {
        self.admission.live()
    }
}

/// How often a core gives spare copy buffers back.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Gives a finished burst's copy buffers back: the pool keeps up to 256
/// spare 64 KiB buffers (16 MiB) for the next burst, and each interval
/// frees the spares that the whole interval did not need (its low-water
/// mark), so a steady load keeps what it uses and a quiet core keeps none.
async fn return_spare_buffers(core: Rc<Core>) {
    loop {
        crate::events::sleep(TRIM_INTERVAL).await;
        core.relay.buffers.release_unused();
    }
}

/// What serves one accepted connection (`session::serve`, boxed): the
/// runtime accepts and admits, the service speaks the protocol. Passed in
/// by the caller, so the runtime does not depend on the session.
pub(crate) type Serve = fn(
    Rc<Core>,
    Stream,
    SocketAddr,
    Ticket,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Runs one core: accepts on its listeners until shutdown, then drains.
pub(super) async fn run_core(
    core: Rc<Core>,
    serve: Serve,
    listeners: Vec<OwnedFd>,
    shutdown: Arc<AtomicBool>,
    handed_over: Arc<AtomicBool>,
    slot: Arc<super::ConfigSlot>,
) {
    // glommio's listener does not expose its fd; keep the numbers to stop
    // listening at shutdown (the listeners own the fds until dropped).
    let raw_fds: Vec<_> = listeners.iter().map(|fd| fd.as_raw_fd()).collect();
    let trimmer = crate::events::spawn(return_spare_buffers(core.clone()));
    let accepters: Vec<_> = listeners
        .into_iter()
        .map(|fd| {
            let listener = Listener::new(fd, core.events.as_ref());
            crate::events::spawn(accept_loop(core.clone(), serve, listener))
        })
        .collect();

    let mut reloads = super::reload::Follower::new(slot, core.index);
    wait_for_shutdown(&shutdown, || {
        if let Some((generation, config)) = reloads.take() {
            core.reconfigure(Arc::new(config));
            metrics::set(&core.metrics().config_generation, generation);
            reloads.applied(generation);
        }
    })
    .await;
    // Stop accepting: cancel the loops and close the listening sockets, so
    // new clients are refused by the kernel instead of queueing. After an
    // upgrade the sockets are the new process's too: only let go of them.
    if !handed_over.load(Ordering::Relaxed) {
        for &fd in &raw_fds {
            // SAFETY: the accept loops own these listeners and are only
            // cancelled (closing them) below.
            unsafe { crate::sys::stop_listening_raw(fd) };
        }
    }
    // Each loop owns its listener: cancelling it closes the socket.
    for a in accepters {
        a.cancel().await;
    }
    trimmer.cancel().await;
    let grace = core.config().shutdown_grace;
    if core.live() > 0 {
        tracing::info!(
            core = core.id,
            open = core.live(),
            "draining for up to {grace:?}"
        );
        let drained = async {
            while core.live() > 0 {
                crate::events::sleep(Duration::from_millis(20)).await;
            }
            true
        };
        let expired = async {
            crate::events::sleep(grace).await;
            false
        };
        if !future::or(drained, expired).await {
            tracing::warn!(
                core = core.id,
                open = core.live(),
                "grace period over; cutting the remaining connections (reset both ways)"
            );
            core.admission.stop_all(Stop::ShutdownCut);
            // Each connection ends on its own task, which resets its sockets
            // and writes its access-log line; give them a moment to run.
            let deadline = Instant::now() + Duration::from_secs(2);
            while core.live() > 0 && Instant::now() < deadline {
                crate::events::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Shutdown is a process-wide flag set by the signal thread (and a reload
/// a generation number); each core
/// checks it on a timer, which keeps the data path free of cross-core
/// wake-ups.
async fn wait_for_shutdown(flag: &AtomicBool, mut each_tick: impl FnMut()) {
    while !flag.load(Ordering::Relaxed) {
        crate::events::sleep(Duration::from_millis(50)).await;
        each_tick();
    }
}

async fn accept_loop(core: Rc<Core>, serve: Serve, mut listener: Listener) {
    let mut backoff = Duration::ZERO;
    let mut accept_errors = RateLimitedLog::new(LOG_INTERVAL);
    let mut recoveries = RateLimitedLog::new(LOG_INTERVAL);
    let mut refusals = RateLimitedLog::new(LOG_INTERVAL);
    loop {
        let accepted = match listener.next().await {
            Ok(a) => a,
            Err(e) => {
                metrics::add(&core.metrics().accept_errors, 1);
                if let Some(repeats) = accept_errors.hit() {
                    tracing::warn!(
                        core = core.id,
                        "accept failed: {e}{}{}; backing off",
                        fd_hint(&e),
                        repeated(repeats)
                    );
                }
                // Out of descriptors (or kernel memory): back off instead of
                // spinning.
                backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                crate::events::sleep(backoff).await;
                continue;
            }
        };
        if !backoff.is_zero() {
            backoff = Duration::ZERO;
            if let Some(repeats) = recoveries.hit() {
                tracing::info!(core = core.id, "accepting again{}", repeated(repeats));
            }
        }
        metrics::add(&core.metrics().accepted, 1);
        let Some((stream, peer)) = accepted else {
            // The client already left.
            metrics::add(&core.metrics().closed, 1);
            continue;
        };
        match core.admission.admit(peer.ip().to_canonical()) {
            Ok(admitted) => {
                if let Some(reason) = admitted.shed {
                    metrics::add(&core.metrics().handshakes_shed[reason as usize], 1);
                }
                spawn_session(&core, serve, stream, peer, admitted.ticket);
            }
            Err(Refused) => {
                metrics::add(&core.metrics().rejected_over_limit, 1);
                metrics::add(&core.metrics().closed, 1);
                if let Some(repeats) = refusals.hit() {
                    tracing::warn!(
                        core = core.id,
                        limit = core.admission.budgets().connections,
                        "core is at max-tunnels-per-core with every connection established; closing new connections{}",
                        repeated(repeats)
                    );
                }
                drop(stream);
            }
        }
    }
}

fn spawn_session(core: &Rc<Core>, serve: Serve, stream: Stream, peer: SocketAddr, ticket: Ticket) {
    let core = core.clone();
    crate::events::spawn(async move {
        serve(core.clone(), stream, peer, ticket).await;
        metrics::add(&core.metrics().closed, 1);
    })
    .detach();
}

/// How often a repeated warning may be logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One log line per interval for a condition that can repeat thousands of
/// times a second (accept errors at EMFILE, refusals at the cap), with the
/// number of repeats that were not logged.
struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> RateLimitedLog {
        RateLimitedLog {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(repeats since the last line)` when a line is due now.
    fn hit(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

fn repeated(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" (and {n} more times since the last report)")
    }
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
pub(super) fn describe(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--relay sockmap`: this core's maps, or `None` (its tunnels run `auto`)
/// with the reason logged once, by the first core.
fn kernel_relay(
    index: usize,
    events: Option<&Rc<EventRing>>,
    tunnels: usize,
) -> Option<crate::relay::Kernel> {
    let made = match events {
        Some(ring) => crate::relay::Kernel::new(tunnels, ring.clone()),
        None => Err(std::io::Error::other(
            "it waits through the event ring, which is off",
        )),
    };
    match made {
        Ok(kernel) => {
            if index == 0 {
                tracing::info!(
                    "relay: sockmap, the kernel relays each tunnel (a BPF sk_skb program per core, maps for {tunnels} tunnels); tunnels with bandwidth limits or GSSAPI protection run auto"
                );
            }
            Some(kernel)
        }
        Err(e) => {
            if index == 0 {
                tracing::warn!(
                    "relay: sockmap is not available here ({e}); tunnels run auto. It needs Linux with CONFIG_BPF_STREAM_PARSER and CAP_BPF + CAP_NET_ADMIN (or root)"
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_log_says_one_line_per_interval_with_the_count() {
        let mut log = RateLimitedLog::new(Duration::from_millis(200));
        assert_eq!(log.hit(), Some(0), "the first is logged");
        for _ in 0..5 {
            assert_eq!(log.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(log.hit(), Some(5), "then one line counting the rest");
        assert_eq!(log.hit(), None);
    }
}
