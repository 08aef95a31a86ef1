//! Idle tunnels: open N tunnels (connect, negotiate, CONNECT to the echo
//! target, one small echo to prove each works), hold them all open and
//! silent for --duration, then close them. With --proxy-pid, the proxy's RSS
//! is read before the first tunnel opens and 1 s after the last one did:
//! the growth divided by the tunnels opened is the proxy's memory per idle
//! tunnel.
//!
//! Each core opens its share of the tunnels with --open-concurrency
//! openers. A tunnel that fails to open is counted by cause and the others
//! go on (how many a proxy can hold is a result). At the end, a
//! non-blocking 1-byte peek finds the tunnels the proxy closed during the
//! hold; all are then closed with SO_LINGER 0 (RST), so loadgen leaves no
//! TIME_WAIT behind for the next run.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coresocks_io::events::Stream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::cli::IdleArgs;
use crate::error::{Failure, FailureCounts, LoadgenError, Stage};
use crate::net::{self, PathSpec};
use crate::result::{IdleResult, Report, ScenarioResult};
use crate::runner::{self, CoreCtx, Live, LiveKind, Sampling, Targets};
use crate::scenario::{PathChoice, RunSetup};
use crate::stream::{self, sleep_until};
use crate::wire::MODE_ECHO;

/// How long after the last tunnel opened the proxy's RSS is read.
pub const SETTLE: Duration = Duration::from_secs(1);
/// Descriptors loadgen needs besides the tunnels (executors, io_uring,
/// listeners, UDP sockets, stdio).
const SPARE_FDS: u64 = 256;

struct CoreOut {
    opened: u64,
    failed: u64,
    open_seconds: f64,
    closed_by_peer: u64,
    failures: FailureCounts,
}

pub fn run(path: &PathChoice, args: &IdleArgs) -> Result<Report, LoadgenError> {
    let mut setup = RunSetup::new(&args.run, path, LiveKind::Tunnels)?;
    setup.plan.warmup = Duration::ZERO;
    setup.plan.sampling = Sampling::Tunnels { settle: SETTLE };
    if setup.plan.proxy_pid.is_some() && args.run.duration < SETTLE + Duration::from_millis(500) {
        return Err(LoadgenError::Usage(format!(
            "idle --duration must be at least 1.5s with --proxy-pid (the proxy's RSS is read {SETTLE:?} after the last tunnel opens, while they are held)"
        )));
    }
    let nofile_limit = check_room(args.tunnels as u64, &setup)?;

    let params = Arc::new(args.clone());
    let p = params.clone();
    let mut out = runner::run(&setup.plan, move |ctx| core(ctx, p.clone()))?;
    let mut failures = FailureCounts::default();
    let (mut opened, mut failed, mut closed, mut open_seconds) = (0, 0, 0, 0.0f64);
    for c in std::mem::take(&mut out.per_core) {
        failures.merge(&c.failures);
        opened += c.opened;
        failed += c.failed;
        closed += c.closed_by_peer;
        open_seconds = open_seconds.max(c.open_seconds);
    }
    let result = IdleResult {
        tunnels: args.tunnels,
        opened,
        failed,
        open_seconds,
        held_seconds: args.run.duration.as_secs_f64(),
        closed_by_peer: closed,
        nofile_limit,
    };
    let mut notes = Vec::new();
    if closed > 0 {
        notes.push(format!(
            "{closed} tunnel(s) were closed by the other end while held (an idle timeout?)"
        ));
    }
    if failed > 0 {
        notes.push(format!(
            "{failed} of {} tunnels could not be opened (see errors)",
            args.tunnels
        ));
    }
    let mut report = setup.report(
        "idle",
        serde_json::json!({
            "tunnels": args.tunnels,
            "open_concurrency": args.open_concurrency,
            "size": args.size,
        }),
        out,
        ScenarioResult::Idle(result),
        failures,
        notes,
    );
    if let Some(p) = report.proxy_process.as_mut() {
        p.per_tunnel(opened);
    }
    Ok(report)
}

/// Checks that N tunnels fit in loadgen's descriptors and in the ephemeral
/// ports towards one address; returns RLIMIT_NOFILE.
fn check_room(tunnels: u64, setup: &RunSetup) -> Result<u64, LoadgenError> {
    let limit = coresocks_io::sys::raise_nofile_limit()
        .map_err(|e| LoadgenError::Setup(format!("cannot read RLIMIT_NOFILE: {e}")))?;
    // With loadgen's own targets, the target end of each tunnel is in this
    // process too.
    let own_targets = matches!(setup.plan.targets, Targets::Internal(_));
    let per_tunnel = if own_targets { 2 } else { 1 };
    let needed = tunnels * per_tunnel + SPARE_FDS;
    if needed > limit {
        let why = if own_targets {
            " (2 per tunnel: loadgen's own targets hold the other end; a `loadgen serve` elsewhere with --target halves that)"
        } else {
            ""
        };
        return Err(LoadgenError::Setup(format!(
            "{tunnels} tunnels need about {needed} file descriptors{why}, but RLIMIT_NOFILE allows {limit}: raise the hard limit (ulimit -Hn, limits.conf, or systemd LimitNOFILE) or ask for fewer tunnels"
        )));
    }
    if let Some((lo, hi)) = ephemeral_ports() {
        let ports = u64::from(hi.saturating_sub(lo)) + 1;
        if tunnels > ports {
            return Err(LoadgenError::Setup(format!(
                "{tunnels} tunnels to one address need as many local ports, but the ephemeral range {lo}-{hi} holds {ports} (net.ipv4.ip_local_port_range)"
            )));
        }
    }
    Ok(limit)
}

fn ephemeral_ports() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>());
    match (parts.next()?, parts.next()?) {
        (Ok(lo), Ok(hi)) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

struct Opener {
    path: PathSpec,
    timeout: Duration,
    request: Vec<u8>,
    /// Tunnels this core still has to open.
    left: Cell<u64>,
    open: RefCell<Vec<Stream>>,
    failures: RefCell<FailureCounts>,
    live: Live,
}

async fn core(ctx: CoreCtx, args: Arc<IdleArgs>) -> Result<CoreOut, LoadgenError> {
    let mine = ctx.share(args.tunnels as usize).len() as u64;
    // The mode byte and the request go out in one write.
    let mut request = vec![MODE_ECHO];
    request.extend((0..args.size).map(|i| (i % 251) as u8));
    let opener = Rc::new(Opener {
        path: ctx.path.clone(),
        timeout: ctx.timeout,
        request,
        left: Cell::new(mine),
        open: RefCell::new(Vec::with_capacity(mine as usize)),
        failures: RefCell::new(FailureCounts::default()),
        live: ctx.live(),
    });
    let begin = Instant::now();
    let workers: Vec<_> = (0..args.open_concurrency.min(mine.max(1) as u32))
        .map(|_| coresocks_io::events::spawn(open_loop(opener.clone())))
        .collect();
    for w in workers {
        w.await;
    }
    let open_seconds = begin.elapsed().as_secs_f64();
    let window = ctx.ready().await?;
    // Held open and silent: nothing runs on these tunnels until the end.
    sleep_until(window.t1).await;
    let Ok(opener) = Rc::try_unwrap(opener) else {
        return Err(LoadgenError::Executor("idle openers still running".into()));
    };
    let open = opener.open.into_inner();
    let closed_by_peer = open
        .iter()
        .filter(|s| stream::peer_closed(s).is_some())
        .count() as u64;
    let opened = open.len() as u64;
    drop(open);
    opener.live.add_secondary(opened);
    Ok(CoreOut {
        opened,
        failed: mine - opened,
        open_seconds,
        closed_by_peer,
        failures: opener.failures.into_inner(),
    })
}

async fn open_loop(o: Rc<Opener>) {
    let mut answer = vec![0u8; o.request.len() - 1];
    while o.left.get() > 0 {
        o.left.set(o.left.get() - 1);
        let stage = Cell::new(Stage::Connect);
        let result = net::within(
            o.timeout,
            open_one(&o.path, &stage, &o.request, &mut answer),
            || net::timeout_failure(stage.get()),
        )
        .await;
        match result {
            Ok(s) => {
                o.open.borrow_mut().push(s);
                o.live.add_primary(1);
            }
            Err(f) => {
                o.failures.borrow_mut().add(f);
                o.live.add_errors(1);
                if f == Failure::LocalResources {
                    // Out of descriptors or ports: give the others a moment.
                    coresocks_io::events::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    }
}

async fn open_one(
    path: &PathSpec,
    stage: &Cell<Stage>,
    request: &[u8],
    answer: &mut [u8],
) -> Result<Stream, Failure> {
    // SO_LINGER 0: closing at the end sends RST, no TIME_WAIT here.
    let mut s = net::open(path, stage, true).await?;
    let io = |e: std::io::Error| Failure::from_io(&e, Stage::Target);
    s.write_all(request).await.map_err(io)?;
    s.read_exact(answer).await.map_err(io)?;
    if answer != &request[1..] {
        return Err(Failure::TargetProtocol);
    }
    Ok(s)
}
