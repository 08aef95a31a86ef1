//! Open-loop latency: K persistent tunnels send S-byte requests to the echo
//! target at a fixed total rate R, and each request's latency runs from the
//! time it was *meant* to be sent, not the time it was sent.
//!
//! Every tunnel has a fixed schedule (tunnel j sends request n at
//! `start + j/R + n*K/R`), so the R requests per second are evenly spread
//! over all tunnels. The sender never waits for answers: when the path
//! stalls, requests keep their places in the schedule (sent late, or queued
//! in the socket), and every one of them reports the stall. A closed loop
//! that waits for each answer before the next request would send fewer
//! requests during a stall and hide it (coordinated omission).
//!
//! The echo answers bytes in order, so the receiver knows which request an
//! answer belongs to by counting bytes, and computes its intended send time
//! from the same schedule: sender and receiver share no queue.
//!
//! `--closed-loop` is the other classic measure, ping-pong: each tunnel has
//! one request in flight and sends the next when the answer is complete,
//! so the result is round trips per second at saturation (and service
//! times, which is all a closed loop can measure).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::cli::LatencyArgs;
use crate::error::{describe, Failure, FailureCounts, LoadgenError, Stage};
use crate::net;
use crate::result::{LatencyResult, Report, ScenarioResult};
use crate::runner::{self, CoreCtx, Live, LiveKind, Window};
use crate::scenario::{PathChoice, RunSetup};
use crate::stats::{self, Recorder};
use crate::stream::{sleep_until, split, ReadHalf, WriteHalf};
use crate::wire::MODE_ECHO;

/// When each request of one tunnel (or datagram of one UDP association) is
/// due: tunnel j of K sends its n-th at `start + j/R + n*K/R`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub start: Instant,
    phase_ns: f64,
    interval_ns: f64,
    /// Requests due before the end of the window.
    pub total: u64,
}

impl Schedule {
    pub fn new(w: &Window, tunnel: usize, tunnels: usize, rate: f64) -> Schedule {
        let phase_ns = tunnel as f64 * 1e9 / rate;
        let interval_ns = tunnels as f64 * 1e9 / rate;
        let end_ns = (w.t1 - w.start).as_nanos() as f64;
        let total = if end_ns > phase_ns {
            ((end_ns - phase_ns) / interval_ns).ceil() as u64
        } else {
            0
        };
        Schedule {
            start: w.start,
            phase_ns,
            interval_ns,
            total,
        }
    }

    /// When the n-th is due, in nanoseconds after `start`.
    pub fn offset_ns(&self, n: u64) -> u64 {
        (self.phase_ns + n as f64 * self.interval_ns) as u64
    }

    pub fn at(&self, n: u64) -> Instant {
        self.start + Duration::from_nanos(self.offset_ns(n))
    }

    /// The pacing step of every open-loop sender (TCP here, UDP in
    /// `scenario::udp`): waits until request `n` is due, then says how many
    /// requests from `n` on are due by the time it woke (at least one, at
    /// most `batch`), and how late it woke.
    pub async fn due_from(&self, n: u64, batch: u64) -> (u64, Duration) {
        let due = self.at(n);
        sleep_until(due).await;
        let now = Instant::now();
        let mut k = 1;
        while n + k < self.total && k < batch && self.at(n + k) <= now {
            k += 1;
        }
        (k, now.saturating_duration_since(due))
    }
}

struct CoreStats {
    latency: Recorder,
    requests_in_window: u64,
    responses_in_window: u64,
    lost: u64,
    max_lag: Duration,
    failures: FailureCounts,
}

pub fn run(path: &PathChoice, args: &LatencyArgs) -> Result<Report, LoadgenError> {
    let rate_ok = args.rate.is_finite() && args.rate > 0.0 && args.rate <= 1e8;
    if !args.closed_loop && !rate_ok {
        return Err(LoadgenError::Usage(format!(
            "--rate {} must be a number of requests per second between 0 and 1e8",
            args.rate
        )));
    }
    let setup = RunSetup::new(&args.run, path, LiveKind::Responses)?;
    let params = Arc::new(args.clone());
    let p = params.clone();
    let mut out = runner::run(&setup.plan, move |ctx| core(ctx, p.clone()))?;

    let mut failures = FailureCounts::default();
    let mut latency: Option<Recorder> = None;
    let (mut requests, mut responses, mut lost) = (0, 0, 0);
    let mut max_lag = Duration::ZERO;
    for s in std::mem::take(&mut out.per_core) {
        failures.merge(&s.failures);
        stats::merge_into(&mut latency, &s.latency);
        requests += s.requests_in_window;
        responses += s.responses_in_window;
        lost += s.lost;
        max_lag = max_lag.max(s.max_lag);
    }
    let window = args.run.duration.as_secs_f64();
    let result = LatencyResult {
        connections: args.connections,
        size: args.size,
        closed_loop: args.closed_loop,
        target_rate: if args.closed_loop { 0.0 } else { args.rate },
        requests_in_window: requests,
        responses_in_window: responses,
        achieved_rate: if window > 0.0 {
            responses as f64 / window
        } else {
            0.0
        },
        lost,
        latency: stats::percentiles(&latency),
        max_send_lag_us: max_lag.as_secs_f64() * 1e6,
    };
    let mut notes = Vec::new();
    if result.max_send_lag_us > 1000.0 {
        notes.push(format!(
            "a sender fell {:.1} ms behind its schedule: the latencies include that wait (they are measured from the intended send time)",
            result.max_send_lag_us / 1000.0
        ));
    }
    Ok(setup
        .report(
            "latency",
            serde_json::json!({
                "connections": args.connections,
                "rate": if args.closed_loop { None } else { Some(args.rate) },
                "closed_loop": args.closed_loop,
                "size": args.size,
            }),
            out,
            ScenarioResult::Latency(result),
            failures,
            notes,
        )
        .with_latencies([("latency", latency)]))
}

async fn core(ctx: CoreCtx, args: Arc<LatencyArgs>) -> Result<CoreStats, LoadgenError> {
    let tunnels = args.connections as usize;
    let mine = ctx.share(tunnels);
    let mut opened = Vec::with_capacity(mine.len());
    for &j in &mine {
        let stage = Cell::new(Stage::Connect);
        let setup = async {
            let mut s = net::open(&ctx.path, &stage, false).await?;
            s.write_all(&[MODE_ECHO])
                .await
                .map_err(|e| Failure::from_io(&e, Stage::Target))?;
            Ok(s)
        };
        match net::within(ctx.timeout, setup, || net::timeout_failure(stage.get())).await {
            Ok(s) => opened.push((j, s)),
            Err(f) => {
                return Err(LoadgenError::Setup(format!(
                    "tunnel {} of {tunnels} could not be opened: {}",
                    j + 1,
                    describe(f, stage.get(), ctx.path.proxy, ctx.path.target)
                )))
            }
        }
    }
    let window = ctx.ready().await?;
    let stats = Rc::new(RefCell::new(CoreStats {
        latency: Recorder::new(window.start),
        requests_in_window: 0,
        responses_in_window: 0,
        lost: 0,
        max_lag: Duration::ZERO,
        failures: FailureCounts::default(),
    }));
    let tasks: Vec<_> = opened
        .into_iter()
        .map(|(j, stream)| {
            if args.closed_loop {
                return coresocks_io::events::spawn(ping_pong(
                    stream,
                    window,
                    args.size,
                    ctx.timeout,
                    stats.clone(),
                    ctx.live(),
                ));
            }
            let schedule = Schedule::new(&window, j, tunnels, args.rate);
            let (rd, wr) = split(stream);
            coresocks_io::events::spawn(run_tunnel(
                rd,
                wr,
                schedule,
                window,
                args.size,
                ctx.timeout,
                stats.clone(),
                ctx.live(),
            ))
        })
        .collect();
    for t in tasks {
        t.await;
    }
    match Rc::try_unwrap(stats) {
        Ok(cell) => Ok(cell.into_inner()),
        Err(_) => Err(LoadgenError::Executor(
            "latency tunnels still running".into(),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_tunnel(
    rd: ReadHalf,
    wr: WriteHalf,
    schedule: Schedule,
    w: Window,
    size: usize,
    timeout: Duration,
    stats: Rc<RefCell<CoreStats>>,
    live: Live,
) {
    // Answers received so far; outlives the futures if the timeout wins.
    let answered = Cell::new(0u64);
    let work = async {
        let (sent, received) = futures_lite::future::zip(
            send(wr, schedule, size, &stats),
            receive(rd, schedule, w, size, &answered, &stats, &live),
        )
        .await;
        sent.and(received)
    };
    let deadline = w.t1 + timeout;
    let outcome = futures_lite::future::or(work, async {
        sleep_until(deadline).await;
        Err(Failure::Timeout)
    })
    .await;
    let mut s = stats.borrow_mut();
    // Counted after the load so the first request is not delayed by it.
    s.requests_in_window += (0..schedule.total)
        .filter(|&n| schedule.at(n) >= w.t0)
        .count() as u64;
    let unanswered = schedule.total - answered.get();
    if unanswered > 0 {
        // Requests never answered still waited at least until now: count
        // them so a stall cannot hide in "lost".
        let now = Instant::now();
        for n in answered.get()..schedule.total {
            let due = schedule.at(n);
            if due >= w.t0 {
                s.latency.record(now, now.saturating_duration_since(due));
            }
        }
        s.lost += unanswered;
        let cause = match outcome {
            Err(f) => f,
            Ok(()) => Failure::ClosedEarly,
        };
        s.failures.add_n(cause, unanswered);
        live.add_errors(unanswered);
    }
}

/// One tunnel of `--closed-loop`: a request, its whole answer, the next,
/// until the end of the window. Each round trip inside the window counts;
/// one still unanswered an I/O timeout after the window is lost.
async fn ping_pong(
    mut stream: coresocks_io::events::Stream,
    w: Window,
    size: usize,
    timeout: Duration,
    stats: Rc<RefCell<CoreStats>>,
    live: Live,
) {
    let request: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    let mut answer = vec![0u8; size];
    sleep_until(w.start).await;
    let in_flight = Cell::new(false);
    let work = async {
        while Instant::now() < w.t1 {
            let sent = Instant::now();
            in_flight.set(true);
            stream.write_all(&request).await?;
            stream.read_exact(&mut answer).await?;
            in_flight.set(false);
            let now = Instant::now();
            let mut s = stats.borrow_mut();
            if sent >= w.t0 {
                s.requests_in_window += 1;
                s.latency.record(now, now - sent);
            }
            if now >= w.t0 && now < w.t1 {
                s.responses_in_window += 1;
            }
            live.add_primary(1);
        }
        Ok::<(), std::io::Error>(())
    };
    let outcome = futures_lite::future::or(
        async { work.await.map_err(|e| Failure::from_io(&e, Stage::Target)) },
        async {
            sleep_until(w.t1 + timeout).await;
            Err(Failure::Timeout)
        },
    )
    .await;
    if let Err(f) = outcome {
        let mut s = stats.borrow_mut();
        if in_flight.get() {
            s.lost += 1;
        }
        s.failures.add(f);
        live.add_errors(1);
    }
}

async fn send(
    mut wr: WriteHalf,
    schedule: Schedule,
    size: usize,
    stats: &RefCell<CoreStats>,
) -> Result<(), Failure> {
    // Requests already due go out in one write, up to about 1 MiB.
    let batch = ((1 << 20) / size).clamp(1, 64);
    let payload: Vec<u8> = (0..batch * size).map(|i| (i % 253) as u8).collect();
    let mut n = 0u64;
    let mut max_lag = Duration::ZERO;
    while n < schedule.total {
        let (k, lag) = schedule.due_from(n, batch as u64).await;
        max_lag = max_lag.max(lag);
        wr.write_all(&payload[..k as usize * size])
            .await
            .map_err(|e| Failure::from_io(&e, Stage::Target))?;
        n += k;
    }
    let mut s = stats.borrow_mut();
    s.max_lag = s.max_lag.max(max_lag);
    Ok(())
}

async fn receive(
    mut rd: ReadHalf,
    schedule: Schedule,
    w: Window,
    size: usize,
    answered: &Cell<u64>,
    stats: &RefCell<CoreStats>,
    live: &Live,
) -> Result<(), Failure> {
    let mut buf = vec![0u8; size.max(64 * 1024)];
    let mut bytes = 0u64;
    while answered.get() < schedule.total {
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| Failure::from_io(&e, Stage::Target))?;
        if n == 0 {
            return Err(Failure::ClosedEarly);
        }
        let now = Instant::now();
        bytes += n as u64;
        let complete = (bytes / size as u64).min(schedule.total);
        let mut s = stats.borrow_mut();
        let in_window = now >= w.t0 && now < w.t1;
        for done in answered.get()..complete {
            let due = schedule.at(done);
            if due >= w.t0 {
                s.latency.record(now, now.saturating_duration_since(due));
            }
            if in_window {
                s.responses_in_window += 1;
            }
        }
        live.add_primary(complete - answered.get());
        answered.set(complete);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_spreads_tunnels_evenly() {
        let start = Instant::now();
        let w = Window {
            start,
            t0: start,
            t1: start + Duration::from_secs(1),
        };
        // 1000 req/s over 4 tunnels: each sends every 4 ms, 1 ms apart.
        let s: Vec<Schedule> = (0..4).map(|j| Schedule::new(&w, j, 4, 1000.0)).collect();
        assert_eq!(s.iter().map(|s| s.total).sum::<u64>(), 1000);
        assert_eq!(s[1].at(0) - start, Duration::from_millis(1));
        assert_eq!(s[1].at(2) - start, Duration::from_millis(9));
        assert!(s[3].at(s[3].total - 1) < w.t1);
        assert!(s[3].at(s[3].total) >= w.t1);
    }
}
