//! Runs one scenario thread-per-core: one pinned glommio executor per CPU,
//! loadgen's own targets on their CPUs, a check of the path before any load,
//! a common start instant for every core, a live line and a per-second
//! series sampled from the main thread, and the per-core results handed back
//! for merging.
//!
//! The phases, all driven by flags in [`Control`] (the cores poll them
//! between phases only, never on the data path):
//! 1. executors start; those with targets begin accepting;
//! 2. the main thread checks the path (`net::preflight`) and says go;
//! 3. each core sets up (opens its tunnels) and says ready;
//! 4. the main thread sets the start instant; the load runs;
//! 5. each core says done; the main thread says stop once all are, so
//!    targets outlive every core's load (their connections may land on any
//!    core).

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coresocks_client::Credentials;
use glommio::{LocalExecutorBuilder, Placement};

use crate::error::LoadgenError;
use crate::net::{preflight, preflight_udp, PathSpec};
use crate::procstat::{self, ProcSample, SystemSample};
use crate::stats::{LiveCounters, Sample};
use crate::target::{bind_targets, TargetCore, TargetHooks, TargetStats};

/// glommio refuses to start an executor below this RLIMIT_MEMLOCK.
const MIN_MEMLOCK: u64 = 512 * 1024;
/// Locked memory per executor: loadgen does no storage I/O, so glommio's
/// minimum is enough (and keeps non-root users under their limit).
const IO_MEMORY: usize = 64 * 1024;

/// Where the targets are.
#[derive(Debug, Clone)]
pub enum Targets {
    /// A `loadgen serve` somewhere.
    External(SocketAddr),
    /// loadgen's own, on loopback, on these CPUs.
    Internal(Vec<usize>),
}

/// What the live line shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveKind {
    Throughput,
    Connections,
    Responses,
    Datagrams,
    Tunnels,
}

/// When `--proxy-pid` is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// At the start and the end of the measurement window.
    Window,
    /// Before the cores set up (open their tunnels), and `settle` after the
    /// load starts (every tunnel is open by then).
    Tunnels { settle: Duration },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub load_cpus: Vec<usize>,
    pub targets: Targets,
    pub proxy: Option<SocketAddr>,
    pub protocol: crate::net::ProxyProtocol,
    pub creds: Option<Credentials>,
    pub gssapi: Option<coresocks_client::GssapiOptions>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub live: LiveKind,
    /// The proxy's process, sampled as `sampling` says.
    pub proxy_pid: Option<u32>,
    pub sampling: Sampling,
    /// Also check, before the load, that a datagram gets through the path
    /// to the UDP echo and back.
    pub udp_check: bool,
    /// A progress line per second on stderr (rewritten in place on a
    /// terminal); off with --quiet.
    pub progress: bool,
}

/// The load's timeline, the same on every core.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Load starts (warmup begins).
    pub start: Instant,
    /// Measurement begins.
    pub t0: Instant,
    /// Measurement ends: no new work starts after it.
    pub t1: Instant,
}

/// Flags and counters shared by the main thread and the cores.
struct Control {
    base: Instant,
    running: AtomicUsize,
    go: AtomicBool,
    ready: AtomicUsize,
    /// Start instant as nanoseconds after `base`, plus one (0: not yet).
    start_ns: AtomicU64,
    done: AtomicUsize,
    abort: AtomicBool,
    stop: AtomicBool,
    live: Box<[LiveCounters]>,
}

impl Control {
    fn window(&self, warmup: Duration, duration: Duration) -> Option<Window> {
        match self.start_ns.load(Ordering::Acquire) {
            0 => None,
            ns => {
                let start = self.base + Duration::from_nanos(ns - 1);
                Some(Window {
                    start,
                    t0: start + warmup,
                    t1: start + warmup + duration,
                })
            }
        }
    }
}

/// What a core's load function gets.
pub struct CoreCtx {
    /// Position among the load cores (0..cores).
    pub index: usize,
    pub cores: usize,
    pub path: PathSpec,
    pub timeout: Duration,
    warmup: Duration,
    duration: Duration,
    control: Arc<Control>,
}

impl CoreCtx {
    /// This core's share of `total` items (tunnels, associations) dealt
    /// round-robin over the load cores: their indexes.
    pub fn share(&self, total: usize) -> Vec<usize> {
        (self.index..total).step_by(self.cores.max(1)).collect()
    }

    /// This core's live counters.
    pub fn live(&self) -> Live {
        Live {
            control: self.control.clone(),
            index: self.index,
        }
    }

    /// Says this core is set up, then waits until the common start is
    /// known (it lies a few milliseconds ahead).
    pub async fn ready(&self) -> Result<Window, LoadgenError> {
        self.control.ready.fetch_add(1, Ordering::AcqRel);
        loop {
            if self.control.abort.load(Ordering::Acquire) {
                return Err(LoadgenError::Aborted);
            }
            // Returns a little before the start, so the core can spawn its
            // tasks in time; each task waits for `start` (or its schedule).
            if let Some(w) = self.control.window(self.warmup, self.duration) {
                return Ok(w);
            }
            coresocks_io::events::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A handle on one core's live counters that tasks can keep.
#[derive(Clone)]
pub struct Live {
    control: Arc<Control>,
    index: usize,
}

impl std::ops::Deref for Live {
    type Target = LiveCounters;
    fn deref(&self) -> &LiveCounters {
        &self.control.live[self.index]
    }
}

/// Everything a run produced, before the scenario merges it.
pub struct RunOutput<R> {
    pub per_core: Vec<R>,
    pub samples: Vec<Sample>,
    pub target_stats: Option<TargetStats>,
    pub target_addr: SocketAddr,
    pub target_cpus: Vec<usize>,
    pub started_unix_s: f64,
    /// The two samples of `--proxy-pid`, or why they could not be taken.
    pub proxy_samples: Option<Result<(ProcSample, ProcSample), String>>,
    /// loadgen's own process and the system at the ends of the window.
    pub window_samples: Option<[(ProcSample, SystemSample); 2]>,
}

struct ExecOutput<R> {
    load: Option<Result<R, LoadgenError>>,
    target: Option<TargetStats>,
}

pub fn check_memlock() -> Result<(), LoadgenError> {
    let memlock = coresocks_io::sys::memlock_limit().unwrap_or(u64::MAX);
    if memlock < MIN_MEMLOCK {
        return Err(LoadgenError::MemLock {
            have: memlock / 1024,
            need: MIN_MEMLOCK / 1024,
        });
    }
    Ok(())
}

pub fn executor(cpu: usize, name: &str) -> LocalExecutorBuilder {
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name(name)
        .io_memory(IO_MEMORY)
}

async fn wait_for(flag: impl Fn() -> bool, every: Duration) {
    while !flag() {
        coresocks_io::events::sleep(every).await;
    }
}

/// Runs `core_fn` on every load core and returns what each produced.
pub fn run<R, F, Fut>(plan: &Plan, core_fn: F) -> Result<RunOutput<R>, LoadgenError>
where
    R: Send + 'static,
    F: Fn(CoreCtx) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, LoadgenError>> + 'static,
{
    check_memlock()?;
    // Many tunnels need many descriptors; failure just keeps the old limit.
    let _ = coresocks_io::sys::raise_nofile_limit();

    let (target_addr, target_cpus, mut listeners) = match &plan.targets {
        Targets::External(addr) => (*addr, Vec::new(), Vec::new()),
        Targets::Internal(cpus) => {
            let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
            let sockets =
                bind_targets(loopback, cpus.len()).map_err(|source| LoadgenError::Listen {
                    addr: loopback.to_string(),
                    source,
                })?;
            let fds: Vec<Option<(OwnedFd, OwnedFd)>> =
                sockets.tcp.into_iter().zip(sockets.udp).map(Some).collect();
            (sockets.addr, cpus.clone(), fds)
        }
    };
    let path = PathSpec {
        proxy: plan.proxy,
        protocol: plan.protocol,
        creds: plan.creds.clone(),
        gssapi: plan.gssapi.clone(),
        target: target_addr,
    };

    // Every CPU that runs load or targets gets one executor.
    let mut cpus = plan.load_cpus.clone();
    for cpu in &target_cpus {
        if !cpus.contains(cpu) {
            cpus.push(*cpu);
        }
    }
    let control = Arc::new(Control {
        base: Instant::now(),
        running: AtomicUsize::new(0),
        go: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        start_ns: AtomicU64::new(0),
        done: AtomicUsize::new(0),
        abort: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        live: (0..plan.load_cpus.len())
            .map(|_| LiveCounters::default())
            .collect(),
    });
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let core_fn = Arc::new(core_fn);
    let n_load = plan.load_cpus.len();

    let mut handles = Vec::with_capacity(cpus.len());
    let mut spawn_error = None;
    for &cpu in &cpus {
        let load_index = plan.load_cpus.iter().position(|&c| c == cpu);
        let listener = target_cpus
            .iter()
            .position(|&c| c == cpu)
            .and_then(|i| listeners[i].take());
        let control = control.clone();
        let core_fn = core_fn.clone();
        let path = path.clone();
        let (timeout, warmup, duration) = (plan.timeout, plan.warmup, plan.duration);
        let spawned = executor(cpu, &format!("loadgen-{cpu}")).spawn(move || {
            crate::ring::on_core(async move {
                let target = listener
                    .map(|(tcp, udp)| TargetCore::start(tcp, Some(udp), TargetHooks::default()));
                control.running.fetch_add(1, Ordering::AcqRel);
                let load = match load_index {
                    Some(index) => {
                        wait_for(
                            || {
                                control.go.load(Ordering::Acquire)
                                    || control.abort.load(Ordering::Acquire)
                            },
                            Duration::from_millis(1),
                        )
                        .await;
                        let result = if control.abort.load(Ordering::Acquire) {
                            Err(LoadgenError::Aborted)
                        } else {
                            let ctx = CoreCtx {
                                index,
                                cores: n_load,
                                path,
                                timeout,
                                warmup,
                                duration,
                                control: control.clone(),
                            };
                            (core_fn)(ctx).await
                        };
                        if result.is_err() {
                            control.abort.store(true, Ordering::Release);
                        }
                        control.done.fetch_add(1, Ordering::AcqRel);
                        Some(result)
                    }
                    None => None,
                };
                wait_for(
                    || control.stop.load(Ordering::Acquire),
                    Duration::from_millis(5),
                )
                .await;
                ExecOutput {
                    load,
                    target: target.map(TargetCore::finish),
                }
            })
        });
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(e) => {
                spawn_error = Some(LoadgenError::CoreStart {
                    cpu,
                    message: e.to_string(),
                });
                break;
            }
        }
    }

    let outcome = drive(plan, &control, &path, handles.len(), spawn_error);
    control.stop.store(true, Ordering::Release);
    let mut per_core = Vec::with_capacity(n_load);
    let mut target_stats: Option<TargetStats> = None;
    let (samples, proxy_samples, window_samples, mut first_error) = match outcome {
        Ok(driven) => (driven.samples, driven.proxy, driven.window, None),
        Err(e) => (Vec::new(), None, None, Some(e)),
    };
    for handle in handles {
        match handle.join() {
            Ok(out) => {
                if let Some(stats) = out.target {
                    target_stats
                        .get_or_insert_with(TargetStats::default)
                        .merge(&stats);
                }
                match out.load {
                    Some(Ok(r)) => per_core.push(r),
                    Some(Err(LoadgenError::Aborted)) | None => {}
                    Some(Err(e)) => {
                        // A core's own error explains more than "aborted".
                        if matches!(first_error, None | Some(LoadgenError::Aborted)) {
                            first_error = Some(e);
                        }
                    }
                }
            }
            Err(e) => {
                first_error.get_or_insert(LoadgenError::Executor(e.to_string()));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(RunOutput {
        per_core,
        samples,
        target_stats,
        target_addr,
        target_cpus,
        started_unix_s,
        proxy_samples,
        window_samples,
    })
}

/// What the main thread collected.
struct Driven {
    samples: Vec<Sample>,
    proxy: Option<Result<(ProcSample, ProcSample), String>>,
    window: Option<[(ProcSample, SystemSample); 2]>,
}

/// loadgen's own process and the system, read together.
fn sample_self() -> Option<(ProcSample, SystemSample)> {
    Some((
        procstat::sample(std::process::id()).ok()?,
        procstat::sample_system().ok()?,
    ))
}

/// The two samples of the proxy's process, taken as the load goes.
struct ProxySampler {
    pid: u32,
    first: Option<ProcSample>,
    second: Option<ProcSample>,
    error: Option<String>,
}

impl ProxySampler {
    fn take(&mut self, second: bool) {
        if self.error.is_some() {
            return;
        }
        match procstat::sample(self.pid) {
            Ok(s) if second => self.second = Some(s),
            Ok(s) => self.first = Some(s),
            Err(e) => {
                self.error = Some(format!(
                    "the proxy process {} could not be sampled: {e}",
                    self.pid
                ))
            }
        }
    }

    fn result(self) -> Result<(ProcSample, ProcSample), String> {
        match (self.first, self.second, self.error) {
            (_, _, Some(e)) => Err(e),
            (Some(a), Some(b), None) => Ok((a, b)),
            _ => Err(format!(
                "the proxy process {} was not sampled at both ends (the load ended early)",
                self.pid
            )),
        }
    }
}

/// The main thread's part: wait for the executors, check the path, start
/// the load, sample the counters each second until every core is done.
fn drive(
    plan: &Plan,
    control: &Control,
    path: &PathSpec,
    executors: usize,
    spawn_error: Option<LoadgenError>,
) -> Result<Driven, LoadgenError> {
    let fail = |e: LoadgenError| {
        control.abort.store(true, Ordering::Release);
        Err(e)
    };
    if let Some(e) = spawn_error {
        return fail(e);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while control.running.load(Ordering::Acquire) < executors {
        if Instant::now() > deadline {
            return fail(LoadgenError::Executor(
                "executors did not start within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Err(e) = preflight(path, plan.timeout) {
        return fail(e);
    }
    if plan.udp_check {
        if let Err(e) = preflight_udp(path, plan.timeout) {
            return fail(e);
        }
    }
    let mut sampler = plan.proxy_pid.map(|pid| ProxySampler {
        pid,
        first: None,
        second: None,
        error: None,
    });
    if let (Some(s), Sampling::Tunnels { .. }) = (sampler.as_mut(), plan.sampling) {
        s.take(false);
    }
    control.go.store(true, Ordering::Release);

    let n_load = plan.load_cpus.len();
    while control.ready.load(Ordering::Acquire) < n_load {
        if control.abort.load(Ordering::Acquire) {
            // The core that failed returns its own error.
            return Err(LoadgenError::Aborted);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // Time for every core to see the start and spawn its tasks.
    let start = Instant::now() + Duration::from_millis(20);
    let offset = (start - control.base).as_nanos() as u64;
    control.start_ns.store(offset + 1, Ordering::Release);
    // Pending samples of the proxy process: (when, which).
    let mut pending: Vec<(Instant, bool)> = match (&sampler, plan.sampling) {
        (None, _) => Vec::new(),
        (Some(_), Sampling::Window) => vec![
            (start + plan.warmup, false),
            (start + plan.warmup + plan.duration, true),
        ],
        (Some(_), Sampling::Tunnels { settle }) => vec![(start + settle, true)],
    };

    // loadgen and the system, at the two ends of the window.
    let window_at = [start + plan.warmup, start + plan.warmup + plan.duration];
    let mut window: Vec<Option<(ProcSample, SystemSample)>> = Vec::with_capacity(2);
    let progress = plan.progress;
    let live_line = progress && std::io::stderr().is_terminal();
    let mut samples = Vec::new();
    let mut last = [0u64; 3];
    let mut last_t = start;
    let mut next_tick = start + Duration::from_secs(1);
    let warmup_end = start + plan.warmup;
    loop {
        let finished =
            control.done.load(Ordering::Acquire) >= n_load || control.abort.load(Ordering::Acquire);
        if let Some(s) = sampler.as_mut() {
            while let Some(&(at, second)) = pending.first() {
                if Instant::now() < at {
                    break;
                }
                s.take(second);
                pending.remove(0);
            }
        }
        while window.len() < 2 && (Instant::now() >= window_at[window.len()] || finished) {
            window.push(sample_self());
        }
        let now = Instant::now();
        if now >= next_tick || finished {
            let totals = control
                .live
                .iter()
                .map(LiveCounters::snapshot)
                .fold([0u64; 3], |acc, s| {
                    [acc[0] + s[0], acc[1] + s[1], acc[2] + s[2]]
                });
            let dt = now.saturating_duration_since(last_t).as_secs_f64();
            // A last sliver of an interval says nothing per second.
            if !finished || dt > 0.05 {
                let sample = Sample {
                    t_s: now.saturating_duration_since(start).as_secs_f64(),
                    dt_s: dt,
                    // Any part of the interval in the warmup marks it.
                    warmup: last_t < warmup_end,
                    primary: totals[0] - last[0],
                    secondary: totals[1] - last[1],
                    errors: totals[2] - last[2],
                };
                if live_line {
                    eprint!("\r\x1b[2K{}", live_text(plan.live, &sample, totals[2]));
                    let _ = std::io::stderr().flush();
                } else if progress {
                    // Not a terminal (a log, CI, a pipe): one line each.
                    eprintln!("loadgen: {}", live_text(plan.live, &sample, totals[2]));
                }
                samples.push(sample);
                last = totals;
                last_t = now;
            }
            next_tick += Duration::from_secs(1);
        }
        if finished {
            break;
        }
        let mut wake = pending
            .first()
            .map_or(next_tick, |&(at, _)| at.min(next_tick));
        if let Some(at) = window_at.get(window.len()) {
            wake = wake.min(*at);
        }
        let wait = wake
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(20));
        std::thread::sleep(wait);
    }
    if live_line {
        eprint!("\r\x1b[2K");
        let _ = std::io::stderr().flush();
    }
    let window = match (window.first(), window.get(1)) {
        (Some(Some(a)), Some(Some(b))) => Some([a.clone(), b.clone()]),
        _ => None,
    };
    Ok(Driven {
        samples,
        proxy: sampler.map(ProxySampler::result),
        window,
    })
}

fn live_text(kind: LiveKind, s: &Sample, errors_total: u64) -> String {
    let per_s = |n: u64| if s.dt_s > 0.0 { n as f64 / s.dt_s } else { 0.0 };
    let rate = match kind {
        LiveKind::Throughput => {
            format!("{:8.2} Gbit/s", per_s(s.primary + s.secondary) * 8.0 / 1e9)
        }
        LiveKind::Connections => format!("{:10.0} conn/s", per_s(s.primary)),
        LiveKind::Responses => format!("{:10.0} resp/s", per_s(s.primary)),
        LiveKind::Datagrams => format!("{:10.0} datagrams/s", per_s(s.primary)),
        LiveKind::Tunnels => String::from("holding tunnels"),
    };
    let phase = if s.warmup { " warmup" } else { "" };
    format!("[{:5.1}s{phase}] {rate}  errors {errors_total}", s.t_s)
}
