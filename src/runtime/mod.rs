//! The thread-per-core runtime: one pinned glommio executor per selected
//! CPU, each with its own SO_REUSEPORT listeners, plus the plain threads that
//! never touch the data path (signals, metrics).

mod admission;
mod core;

mod listen_sockets;
pub(crate) mod notify;
pub(crate) mod reload;
pub(crate) mod upgrade;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

pub(crate) use self::core::{Core, Serve};
pub(crate) use admission::{Budgets, Exhausted, Stop, StopSignal, Ticket};
pub(crate) use listen_sockets::{open_listeners, ListenError, ListenSetup};
pub(crate) use reload::ConfigSlot;
pub use reload::Reloader;

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
    #[error(transparent)]
    Congestion(#[from] crate::config::CongestionError),
    #[error("cannot start the metrics endpoint on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start core {cpu}: {message}")]
    CoreStart { cpu: usize, message: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("upgrade socket {path}: {source}")]
    Upgrade {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Starts every core and blocks until they have all finished (after a
/// SIGINT/SIGTERM and the grace period). SIGHUP runs `reloader`.
pub(crate) fn run(config: Config, reloader: Reloader, serve: Serve) -> Result<(), RuntimeError> {
    let allowed = crate::sys::allowed_cpus().map_err(|e| RuntimeError::Cores(e.to_string()))?;
    let cpus = config.cores.select(&allowed).map_err(RuntimeError::Cores)?;

    let memlock = crate::sys::memlock_limit().unwrap_or(u64::MAX);
    if memlock < MIN_MEMLOCK {
        return Err(RuntimeError::MemLock {
            have: memlock / 1024,
            need: MIN_MEMLOCK / 1024,
        });
    }
    let nofile = crate::sys::raise_nofile_limit()
        .map_err(|e| tracing::warn!("cannot read RLIMIT_NOFILE: {e}"))
        .ok();
    let limits = Limits::plan(&config, cpus.len(), nofile);

    let upgrade_error = |source| RuntimeError::Upgrade {
        path: config.upgrade_socket.clone().unwrap_or_default(),
        source,
    };
    let mut inherited = match &config.upgrade_socket {
        Some(path) => upgrade::take_over(path).map_err(upgrade_error)?,
        None => None,
    };
    if let (Some(path), Some(_)) = (&config.upgrade_socket, &inherited) {
        tracing::info!(
            "upgrade: taking over the listening sockets of the process at {}",
            path.display()
        );
    }
    config.sockets.check_congestion()?;
    let setup = ListenSetup {
        backlog: config.backlog,
        ipv6_only: config.ipv6_only,
        cpus: &cpus,
        tuning: &config.sockets,
    };
    let bound = open_listeners(&config.listen, &setup, inherited.as_mut())?;
    let tuned = config.sockets.describe();
    if !tuned.is_empty() {
        tracing::info!("sockets: {tuned}");
    }
    if let Some(i) = &inherited {
        for (addr, _) in &i.listeners {
            tracing::warn!("upgrade: the old process listened on {addr}, which this configuration does not: its queued connections will be refused");
        }
    }
    // Copies for the next upgrade (the cores own the originals).
    let offered: Vec<(SocketAddr, Vec<std::os::fd::OwnedFd>)> = match &config.upgrade_socket {
        Some(_) => bound
            .iter()
            .map(|(a, fds)| {
                let copies = fds
                    .iter()
                    .map(|fd| fd.try_clone())
                    .collect::<Result<_, _>>();
                copies.map(|c| (*a, c))
            })
            .collect::<Result<_, _>>()
            .map_err(upgrade_error)?,
        None => Vec::new(),
    };
    tracing::info!("{}", limits.summary);
    if let Some(w) = &limits.warning {
        tracing::warn!("{w}");
    }
    let addrs: Vec<SocketAddr> = bound.iter().map(|(a, _)| *a).collect();
    // One socket per address per core: regroup by core.
    let mut per_core: Vec<Vec<std::os::fd::OwnedFd>> =
        (0..cpus.len()).map(|_| Vec::new()).collect();
    for (_, fds) in bound {
        for (i, fd) in fds.into_iter().enumerate() {
            per_core[i % cpus.len()].push(fd);
        }
    }

    let all_metrics = metrics::new(cpus.len());
    let mut metrics_offer = None;
    if let Some(addr) = config.metrics {
        let inherited_fd = inherited.as_mut().and_then(|i| i.take_metrics(addr));
        let (at, listener) = metrics::serve(addr, inherited_fd, all_metrics.clone(), cpus.clone())
            .map_err(|source| RuntimeError::Metrics { addr, source })?;
        tracing::info!("metrics on http://{at}/metrics");
        metrics_offer = Some((at, listener));
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    let handed_over = Arc::new(AtomicBool::new(false));
    let config = Arc::new(config);
    let slot = Arc::new(ConfigSlot::new(config.clone(), cpus.len()));
    // From here threads run that may be inside GSS-API.
    crate::gss_binding::freeze_environment();
    install_signal_thread(shutdown.clone(), slot.clone(), reloader)?;

    let (started_tx, started_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(cpus.len());
    for (index, (&cpu, listeners)) in cpus.iter().zip(per_core).enumerate() {
        let config = config.clone();
        let all_metrics = all_metrics.clone();
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        let handed_over = handed_over.clone();
        let slot = slot.clone();
        let started = started_tx.clone();
        let addrs = addrs.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("core-{cpu}"))
            .io_memory(IO_MEMORY)
            .blocking_thread_pool_placement(PoolPlacement::Unbound(config.resolver_threads))
            // The root task is a task like the others for the event ring's
            // driver, which stops when it ends (`events::root`).
            .spawn(move || {
                crate::events::root(async move {
                    let core = Rc::new(Core::new(cpu, index, config, all_metrics, &limits));
                    tracing::info!(
                        core = cpu,
                        "core {cpu} listening on {}",
                        self::core::describe(&addrs)
                    );
                    let _ = started.send(());
                    self::core::run_core(core, serve, listeners, shutdown, handed_over, slot).await;
                })
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
        if let Some(old) = inherited.take() {
            match old.ready() {
                Ok(()) => tracing::info!("upgrade: the old process stopped accepting and drains"),
                Err(e) => tracing::warn!("upgrade: the old process did not confirm ({e}); both may accept until it exits"),
            }
        }
        if let Some(path) = &config.upgrade_socket {
            let offer = upgrade::Offer {
                path: path.clone(),
                listeners: offered,
                metrics: metrics_offer,
            };
            if let Err(e) = offer.serve(handed_over.clone(), shutdown.clone()) {
                tracing::warn!(
                    "upgrade socket {}: {e}; upgrades will not find this process",
                    path.display()
                );
            }
        }
        tracing::info!(
            cores = cpus.len(),
            "coresocks ready on {} with {} core(s)",
            self::core::describe(&addrs),
            cpus.len()
        );
        notify::notify(&format!(
            "READY=1\nMAINPID={}\nSTATUS=serving on {}",
            std::process::id(),
            self::core::describe(&addrs)
        ));
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

/// What one core may hold, sized from RLIMIT_NOFILE.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub budgets: Budgets,
    pub pipes_per_core: usize,
    /// One line for the log at start: what the limits allow, and why.
    pub summary: String,
    /// Set when the descriptor limit leaves room for too little.
    pub warning: Option<String>,
}

impl Limits {
    /// Below this many connections per core, the start-up log warns.
    const FEW: usize = 256;

    /// A connection holds two sockets (client and target); a UDP
    /// association three (control, relay, one dual-stack outbound socket;
    /// four with an egress source pool of both families); a BIND, while it
    /// waits, its listener beside them. Each is charged what it opens
    /// against its core's descriptor budget ([`Admission`]). A pipe, held
    /// only while a direction has bytes in flight, is two descriptors; the
    /// pipe pool is capped on its own. Listeners, log files, rings, helper
    /// eventfds and the metrics endpoint's connections come out of a
    /// reserve.
    ///
    /// RLIMIT_NOFILE is per process while budgets are per core: each core
    /// gets an equal part, so the cores together never take more than the
    /// limit holds and the process does not meet EMFILE through sessions it
    /// admitted. One client address may hold `--client-share` of its core's
    /// budget.
    ///
    /// [`Admission`]: admission::Admission
    pub(crate) fn plan(config: &Config, cores: usize, nofile: Option<u64>) -> Limits {
        const DEFAULT_CONNECTIONS: usize = 10_000;
        const DEFAULT_HANDSHAKES: usize = 2048;
        const DEFAULT_HANDSHAKES_PER_CLIENT: usize = 256;
        const MAX_DEFAULT_PIPES: usize = 256;
        let cores = cores.max(1);
        let (descriptors, pipes, reserved) = match nofile {
            Some(nofile) => {
                let nofile = usize::try_from(nofile).unwrap_or(usize::MAX);
                let reserved = (nofile / 8).min(256);
                let per_core = (nofile - reserved) / cores;
                // At most a fifth of a core's descriptors go to pipes.
                let pipes = config
                    .max_pipes_per_core
                    .unwrap_or((per_core / 10).clamp(1, MAX_DEFAULT_PIPES));
                let descriptors = per_core.saturating_sub(2 * pipes).max(2);
                (Some(descriptors), pipes, reserved)
            }
            None => (
                None,
                config.max_pipes_per_core.unwrap_or(MAX_DEFAULT_PIPES),
                0,
            ),
        };
        let fits = descriptors.map(|d| d / 2);
        let connections = match (config.max_tunnels_per_core, fits) {
            (Some(n), _) => n,
            (None, Some(fits)) => fits.min(DEFAULT_CONNECTIONS),
            (None, None) => DEFAULT_CONNECTIONS,
        };
        let handshakes = config
            .max_handshakes_per_core
            .unwrap_or(DEFAULT_HANDSHAKES)
            .min(connections);
        let per_client = config
            .max_handshakes_per_client
            .unwrap_or(DEFAULT_HANDSHAKES_PER_CLIENT)
            .min(handshakes);
        // Without a known limit, descriptors bound nothing the connection
        // cap does not (a UDP association's extra two counted).
        let descriptors = descriptors.unwrap_or(connections.saturating_mul(4));
        let descriptors_per_client =
            ((descriptors as f64 * config.client_share).ceil() as usize).clamp(8, descriptors);
        let nofile_text = nofile.map_or("unknown".to_owned(), |n| n.to_string());
        let summary = format!(
            "limits per core: {connections} connections (at most {handshakes} in their handshake, {per_client} per client address), {descriptors} descriptors for sessions ({descriptors_per_client} per client address, --client-share {}), {pipes} splice pipes; RLIMIT_NOFILE {nofile_text} on {cores} core(s): a tunnel holds 2 descriptors, a UDP association 3, a waiting BIND 3, a pipe 2; {reserved} reserved",
            config.client_share
        );
        let warning = match (fits, config.max_tunnels_per_core) {
            (Some(fits), Some(n)) if n > fits => Some(format!(
                "max-tunnels-per-core {n} is more than RLIMIT_NOFILE {nofile_text} fits ({fits} per core): connections past that are refused; raise the limit (ulimit -n, LimitNOFILE=) or lower max-tunnels-per-core"
            )),
            (Some(fits), None) if fits < Self::FEW => Some(format!(
                "RLIMIT_NOFILE {nofile_text} leaves room for only {fits} connections per core: raise it (ulimit -n 65536, LimitNOFILE=65536 in systemd)"
            )),
            _ => None,
        };
        Limits {
            budgets: Budgets {
                connections,
                handshakes,
                handshakes_per_client: per_client,
                descriptors,
                descriptors_per_client,
            },
            pipes_per_core: pipes,
            summary,
            warning,
        }
    }
}

/// SIGINT/SIGTERM: the first starts a graceful shutdown, a second exits at
/// once. SIGHUP reloads the configuration (and reopens the access log);
/// SIGUSR1 only reopens the access log.
fn install_signal_thread(
    shutdown: Arc<AtomicBool>,
    slot: Arc<ConfigSlot>,
    reloader: Reloader,
) -> Result<(), RuntimeError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1])
        .map_err(RuntimeError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    notify::reloading();
                    reloader.reload(&slot);
                    notify::notify("READY=1");
                    continue;
                }
                if sig == SIGUSR1 {
                    if let Some(Err(e)) = reloader.log.as_ref().map(|l| l.reopen_access_log()) {
                        tracing::warn!("SIGUSR1: cannot reopen the access log: {e}");
                    } else {
                        tracing::info!("SIGUSR1: access log reopened");
                    }
                    continue;
                }
                notify::notify("STOPPING=1");
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

/// Whether `--relay sockmap` can run here: the maps and program a core
/// makes, made once and dropped (`check-config`).
pub fn probe_sockmap() -> std::io::Result<()> {
    crate::relay::Kernel::probe()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};

    fn config(extra: impl FnOnce(&mut Settings)) -> Config {
        let mut s = Settings::default();
        extra(&mut s);
        Config::from_settings(s).unwrap()
    }

    #[test]
    fn an_idle_connection_costs_two_descriptors_and_pipes_are_capped_apart() {
        let l = Limits::plan(&config(|_| {}), 1, Some(20_000));
        assert_eq!(l.pipes_per_core, 256);
        // (20000 - 256 reserved - 2 * 256 pipes) / 2
        assert_eq!(l.budgets.connections, 9_616);
        assert!(l.warning.is_none());
        assert!(l.summary.contains("9616 connections"), "{}", l.summary);
    }

    #[test]
    fn the_cores_together_never_budget_more_than_the_limit() {
        // Both plans leave 1920 descriptors per core: 192 pipes and
        // 1920 - 384 = 1536 descriptors for sessions, 768 tunnels.
        let one = Limits::plan(&config(|_| {}), 1, Some(2_176));
        let two = Limits::plan(&config(|_| {}), 2, Some(4_096));
        assert_eq!((one.pipes_per_core, two.pipes_per_core), (192, 192));
        assert_eq!(one.budgets.connections, 768);
        assert_eq!(two.budgets.connections, 768);
        assert_eq!(two.budgets.descriptors, 1536);
        assert!(2 * (two.budgets.descriptors + 2 * two.pipes_per_core) <= 4_096 - 256);
        assert_eq!(two.budgets.descriptors_per_client, 384, "a quarter");
        let shared = Limits::plan(&config(|s| s.client_share = Some(1.0)), 2, Some(4_096));
        assert_eq!(shared.budgets.descriptors_per_client, 1536);
    }

    #[test]
    fn a_tiny_descriptor_limit_is_said_out_loud() {
        let l = Limits::plan(&config(|_| {}), 2, Some(256));
        assert!(l.budgets.connections >= 1);
        assert!(l.budgets.connections < 100, "{:?}", l.budgets);
        let w = l.warning.expect("warning");
        assert!(
            w.contains("RLIMIT_NOFILE 256") && w.contains("ulimit -n"),
            "{w}"
        );
    }

    #[test]
    fn an_explicit_cap_above_the_limit_is_kept_with_a_warning() {
        let l = Limits::plan(
            &config(|s| s.max_tunnels_per_core = Some(50_000)),
            1,
            Some(1024),
        );
        assert_eq!(l.budgets.connections, 50_000);
        assert!(l.warning.unwrap().contains("max-tunnels-per-core 50000"));
    }

    #[test]
    fn handshake_budgets_never_exceed_the_connection_cap() {
        let l = Limits::plan(
            &config(|s| s.max_tunnels_per_core = Some(10)),
            1,
            Some(20_000),
        );
        assert_eq!(l.budgets.handshakes, 10);
        assert_eq!(l.budgets.handshakes_per_client, 10);
    }
}
