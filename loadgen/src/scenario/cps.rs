//! Connection rate: each iteration connects to the proxy, negotiates,
//! CONNECTs, sends one small request to the echo target, reads the answer
//! and closes.
//!
//! The client closes with a plain close(2) (`--close fin`, a FIN), as the
//! issue's probe and most clients do; its sockets then wait in TIME_WAIT,
//! which Linux lets loopback connects reuse (`net.ipv4.tcp_tw_reuse` = 2,
//! the default). `--close rst` closes with SO_LINGER 0 instead: a RST, no
//! TIME_WAIT on loadgen's side.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{CpsArgs, CpsClose};
use crate::error::{Failure, FailureCounts, LoadgenError, Stage};
use crate::net::{self, PathSpec};
use crate::result::{CpsResult, Report, ScenarioResult};
use crate::runner::{self, CoreCtx, Live, LiveKind, Window};
use crate::scenario::{PathChoice, RunSetup};
use crate::stats::{self, Recorder};
use crate::wire::MODE_ECHO;

struct CoreStats {
    ok_window: u64,
    ok_total: u64,
    attempts: u64,
    failures: FailureCounts,
    handshake: Recorder,
    first_byte: Recorder,
    last_end: Option<Instant>,
}

struct CoreOut {
    stats: CoreStats,
    window: Window,
}

pub fn run(path: &PathChoice, args: &CpsArgs) -> Result<Report, LoadgenError> {
    let setup = RunSetup::new(&args.run, path, LiveKind::Connections)?;
    let params = Arc::new(args.clone());
    let p = params.clone();
    let mut out = runner::run(&setup.plan, move |ctx| core(ctx, p.clone()))?;

    let mut failures = FailureCounts::default();
    let mut handshake: Option<Recorder> = None;
    let mut first_byte: Option<Recorder> = None;
    let (mut ok_window, mut ok_total, mut attempts) = (0, 0, 0);
    let mut seconds = args.run.duration.as_secs_f64();
    for c in std::mem::take(&mut out.per_core) {
        let s = &c.stats;
        failures.merge(&s.failures);
        stats::merge_into(&mut handshake, &s.handshake);
        stats::merge_into(&mut first_byte, &s.first_byte);
        ok_window += s.ok_window;
        ok_total += s.ok_total;
        attempts += s.attempts;
        if let Some(end) = s.last_end {
            seconds = seconds.max(end.saturating_duration_since(c.window.t0).as_secs_f64());
        }
    }
    let result = CpsResult {
        concurrency_per_core: args.concurrency,
        size: args.size,
        connections: ok_window,
        seconds,
        connections_per_s: if seconds > 0.0 {
            ok_window as f64 / seconds
        } else {
            0.0
        },
        connections_ok_total: ok_total,
        attempts_total: attempts,
        handshake: stats::percentiles(&handshake),
        first_byte: stats::percentiles(&first_byte),
        close: args.close,
    };
    Ok(setup
        .report(
            "cps",
            serde_json::json!({ "concurrency": args.concurrency, "size": args.size }),
            out,
            ScenarioResult::Cps(result),
            failures,
            Vec::new(),
        )
        .with_latencies([("handshake", handshake), ("first_byte", first_byte)]))
}

async fn core(ctx: CoreCtx, args: Arc<CpsArgs>) -> Result<CoreOut, LoadgenError> {
    let window = ctx.ready().await?;
    // The mode byte and the request go out in one write.
    let mut request = vec![MODE_ECHO];
    request.extend((0..args.size).map(|i| (i % 251) as u8));
    let request: Rc<[u8]> = request.into();
    let path = Rc::new(ctx.path.clone());
    let stats = Rc::new(RefCell::new(CoreStats {
        ok_window: 0,
        ok_total: 0,
        attempts: 0,
        failures: FailureCounts::default(),
        handshake: Recorder::new(window.start),
        first_byte: Recorder::new(window.start),
        last_end: None,
    }));
    let loops: Vec<_> = (0..args.concurrency)
        .map(|_| {
            coresocks_io::events::spawn(connection_loop(
                path.clone(),
                window,
                ctx.timeout,
                request.clone(),
                stats.clone(),
                ctx.live(),
                args.close,
            ))
        })
        .collect();
    for l in loops {
        l.await;
    }
    let stats = match Rc::try_unwrap(stats) {
        Ok(cell) => cell.into_inner(),
        Err(_) => return Err(LoadgenError::Executor("cps loops still running".into())),
    };
    Ok(CoreOut { stats, window })
}

async fn connection_loop(
    path: Rc<PathSpec>,
    w: Window,
    timeout: Duration,
    request: Rc<[u8]>,
    stats: Rc<RefCell<CoreStats>>,
    live: Live,
    close: CpsClose,
) {
    let mut answer = vec![0u8; request.len() - 1];
    crate::stream::sleep_until(w.start).await;
    loop {
        let begin = Instant::now();
        if begin >= w.t1 {
            break;
        }
        let stage = Cell::new(Stage::Connect);
        let result = net::within(
            timeout,
            one_connection(&path, &stage, &request, &mut answer, begin, close),
            || net::timeout_failure(stage.get()),
        )
        .await;
        let end = Instant::now();
        let mut s = stats.borrow_mut();
        s.attempts += 1;
        s.last_end = Some(s.last_end.map_or(end, |e| e.max(end)));
        let counted = end >= w.t0;
        match result {
            Ok((handshake, first_byte)) => {
                s.ok_total += 1;
                if counted {
                    s.ok_window += 1;
                    let now = Instant::now();
                    s.handshake.record(now, handshake);
                    s.first_byte.record(now, first_byte);
                    live.add_primary(1);
                }
            }
            Err(f) => {
                if counted {
                    s.failures.add(f);
                    live.add_errors(1);
                }
            }
        }
    }
}

/// One iteration; returns (handshake time, time to first answer byte).
async fn one_connection(
    path: &PathSpec,
    stage: &Cell<Stage>,
    request: &[u8],
    answer: &mut [u8],
    begin: Instant,
    close: CpsClose,
) -> Result<(Duration, Duration), Failure> {
    // Dropping the stream closes it: with SO_LINGER 0 a RST, else a FIN.
    let mut s = net::open(path, stage, close == CpsClose::Rst).await?;
    let handshake = begin.elapsed();
    let io = |e: std::io::Error| Failure::from_io(&e, Stage::Target);
    s.write_all(request).await.map_err(io)?;
    let n = s.read(answer).await.map_err(io)?;
    if n == 0 {
        return Err(Failure::ClosedEarly);
    }
    let first_byte = begin.elapsed();
    s.read_exact(&mut answer[n..]).await.map_err(io)?;
    if answer != &request[1..] {
        return Err(Failure::TargetProtocol);
    }
    Ok((handshake, first_byte))
}
