//! The thread-per-core runtime: one pinned glommio executor per selected
//! CPU, each with its own SO_REUSEPORT listeners, plus the plain threads that
//! never touch the data path (signals, metrics).

mod core;
mod listener;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

pub use self::core::Core;
pub use listener::{open_listeners, ListenError};

use crate::config::Config;
use crate::metrics;

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK.
const MIN_MEMLOCK: u64 = 512 * 1024;
/// Locked memory per executor for io_uring's registered buffers. coresocks
/// does no storage I/O, so glommio's minimum (64 KiB) is all it needs.
const IO_MEMORY: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    Cores(String),
    #[error("RLIMIT_MEMLOCK is {have} KiB but each core's io_uring needs {need} KiB of locked memory; raise it with `ulimit -l {need}` (shell), LimitMEMLOCK={need}K (systemd) or memlock in /etc/security/limits.conf")]
    MemLock { have: u64, need: u64 },
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot start the metrics endpoint on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start core {cpu}: {message}")]
    CoreStart { cpu: usize, message: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Starts every core and blocks until they have all finished (after a
/// SIGINT/SIGTERM and the grace period).
pub fn run(config: Config) -> Result<(), RuntimeError> {
    let allowed = crate::sys::allowed_cpus().map_err(|e| RuntimeError::Cores(e.to_string()))?;
    let cpus = config.cores.select(&allowed).map_err(RuntimeError::Cores)?;

    let memlock = crate::sys::memlock_limit().unwrap_or(u64::MAX);
    if memlock < MIN_MEMLOCK {
        return Err(RuntimeError::MemLock {
            have: memlock / 1024,
            need: MIN_MEMLOCK / 1024,
        });
    }
    let max_tunnels = max_tunnels_per_core(&config, cpus.len());

    let bound = open_listeners(&config.listen, cpus.len(), config.backlog, config.ipv6_only)?;
    let addrs: Vec<SocketAddr> = bound.iter().map(|(a, _)| *a).collect();
    // One socket per address per core: regroup by core.
    let mut per_core: Vec<Vec<std::os::fd::OwnedFd>> =
        (0..cpus.len()).map(|_| Vec::new()).collect();
    for (_, fds) in bound {
        for (i, fd) in fds.into_iter().enumerate() {
            per_core[i].push(fd);
        }
    }

    let all_metrics = metrics::new(cpus.len());
    if let Some(addr) = config.metrics {
        let at = metrics::serve(addr, all_metrics.clone(), cpus.clone())
            .map_err(|source| RuntimeError::Metrics { addr, source })?;
        tracing::info!("metrics on http://{at}/metrics");
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    install_signal_thread(shutdown.clone())?;

    let config = Arc::new(config);
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(cpus.len());
    for (index, (&cpu, listeners)) in cpus.iter().zip(per_core).enumerate() {
        let config = config.clone();
        let all_metrics = all_metrics.clone();
        let shutdown = shutdown.clone();
        let started = started_tx.clone();
        let addrs = addrs.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("core-{cpu}"))
            .io_memory(IO_MEMORY)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(config.resolver_threads))
            .spawn(move || async move {
                let core = Rc::new(Core::new(cpu, index, config, all_metrics, max_tunnels));
                tracing::info!(
                    core = cpu,
                    "core {cpu} listening on {}",
                    self::core::describe(&addrs)
                );
                let _ = started.send(());
                self::core::run_core(core, listeners, shutdown).await;
            })
            .map_err(|e| RuntimeError::CoreStart {
                cpu,
                message: e.to_string(),
            })?;
        handles.push((cpu, handle));
    }
    drop(started_tx);
    // Every core that started says so; a core that failed drops its sender.
    let started = started_rx.iter().take(cpus.len()).count();
    if started < cpus.len() {
        // A core failed to start: stop the others, then report why.
        shutdown.store(true, Ordering::Relaxed);
    } else {
        tracing::info!(
            cores = cpus.len(),
            "coresocks ready on {} with {} core(s)",
            self::core::describe(&addrs),
            cpus.len()
        );
    }
    let mut first_error = None;
    for (cpu, handle) in handles {
        if let Err(e) = handle.join() {
            first_error.get_or_insert(RuntimeError::CoreStart {
                cpu,
                message: e.to_string(),
            });
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            tracing::info!("all cores stopped; exiting");
            Ok(())
        }
    }
}

/// A tunnel holds two sockets, and up to two pipes (four descriptors) while
/// splicing: the per-core limit must fit RLIMIT_NOFILE across all cores.
fn max_tunnels_per_core(config: &Config, cores: usize) -> usize {
    const DEFAULT: usize = 10_000;
    const FDS_PER_TUNNEL: u64 = 6;
    const RESERVED_FDS: u64 = 256;
    let nofile = match crate::sys::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("cannot read RLIMIT_NOFILE: {e}");
            return config.max_tunnels_per_core.unwrap_or(DEFAULT);
        }
    };
    let fits =
        (nofile.saturating_sub(RESERVED_FDS) / FDS_PER_TUNNEL / cores as u64).max(1) as usize;
    match config.max_tunnels_per_core {
        Some(n) if n > fits => {
            tracing::warn!(
                "max-tunnels-per-core {n} needs about {} file descriptors but RLIMIT_NOFILE is {nofile}; raise it (ulimit -n, LimitNOFILE=) or expect accept errors under load",
                n as u64 * FDS_PER_TUNNEL * cores as u64 + RESERVED_FDS
            );
            n
        }
        Some(n) => n,
        None => DEFAULT.min(fits),
    }
}

/// SIGINT/SIGTERM: the first starts a graceful shutdown, a second exits at
/// once.
fn install_signal_thread(shutdown: Arc<AtomicBool>) -> Result<(), RuntimeError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(RuntimeError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if shutdown.swap(true, Ordering::Relaxed) {
                    tracing::warn!("second signal {sig}: exiting without waiting for tunnels");
                    std::process::exit(1);
                }
                tracing::info!("signal {sig}: no longer accepting; draining open connections");
            }
        })
        .map_err(RuntimeError::Signals)?;
    Ok(())
}
