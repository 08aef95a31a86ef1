//! Bulk throughput through N tunnels.
//!
//! Up: the client writes large buffers; the sink acknowledges its running
//! total, and the bytes counted are the totals acknowledged from the start
//! of the window to the final acknowledgement after the client's FIN: bytes
//! the target received, not bytes handed to a socket buffer. Down: the
//! client counts what it reads inside the window. Both: both at once on each
//! tunnel, the acknowledgements riding in the headers of the data units.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use coresocks_client::gss::{Protection, MAX_PLAIN_PER_MESSAGE};
use coresocks_io::events::Stream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::cli::{Direction, ThroughputArgs};
use crate::error::{describe, Failure, FailureCounts, LoadgenError, Stage};
use crate::net;
use crate::result::{StreamResult, ThroughputResult};
use crate::runner::{self, CoreCtx, Live, LiveKind, Window};
use crate::scenario::{PathChoice, RunSetup};
use crate::stream::{self, sleep_until, split, ReadHalf, WriteHalf};
use crate::wire::{ACK_FINAL, MODE_DUPLEX, MODE_SINK, MODE_SOURCE, UNIT};

struct CoreOut {
    streams: Vec<StreamOutcome>,
    failures: FailureCounts,
}

struct StreamOutcome {
    index: usize,
    core: usize,
    bytes_up: u64,
    seconds_up: f64,
    bytes_down: u64,
    final_ack: bool,
    start_late_s: f64,
    failure: Option<Failure>,
    /// Segments loadgen's end of the tunnel retransmitted (TCP_INFO).
    retransmits: Option<u32>,
}

pub fn run(
    path: &PathChoice,
    args: &ThroughputArgs,
) -> Result<crate::result::Report, LoadgenError> {
    let setup = RunSetup::new(&args.run, path, LiveKind::Throughput)?;
    let params = Arc::new(args.clone());
    let p = params.clone();
    let mut out = runner::run(&setup.plan, move |ctx| core(ctx, p.clone()))?;

    let duration = args.run.duration.as_secs_f64();
    let mut failures = FailureCounts::default();
    let mut streams: Vec<StreamOutcome> = Vec::new();
    for c in std::mem::take(&mut out.per_core) {
        failures.merge(&c.failures);
        streams.extend(c.streams);
    }
    streams.sort_by_key(|s| s.index);
    let bytes_up: u64 = streams.iter().map(|s| s.bytes_up).sum();
    let bytes_down: u64 = streams.iter().map(|s| s.bytes_down).sum();
    let seconds_up = streams.iter().map(|s| s.seconds_up).fold(0.0, f64::max);
    let start_late_s = streams.iter().map(|s| s.start_late_s).fold(0.0, f64::max);
    let gbit = |bytes: u64, secs: f64| {
        if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e9
        } else {
            0.0
        }
    };
    let uses_up = args.direction != Direction::Down;
    let uses_down = args.direction != Direction::Up;
    let per_stream: Vec<StreamResult> = streams
        .iter()
        .map(|s| StreamResult {
            stream: s.index,
            core: s.core,
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            gbit_s: gbit(s.bytes_up, s.seconds_up) + gbit(s.bytes_down, duration),
            retransmits: s.retransmits,
            failure: s.failure.map(|f| f.name()),
        })
        .collect();
    let rates: Vec<f64> = per_stream.iter().map(|s| s.gbit_s).collect();
    let gbit_s_up = if uses_up {
        gbit(bytes_up, seconds_up)
    } else {
        0.0
    };
    let gbit_s_down = if uses_down {
        gbit(bytes_down, duration)
    } else {
        0.0
    };
    let without_final = streams
        .iter()
        .filter(|s| uses_up && !s.final_ack && s.failure.is_none())
        .count() as u64;
    let result = ThroughputResult {
        direction: args.direction,
        streams: args.streams,
        bytes_up,
        bytes_down,
        seconds_up: if uses_up { seconds_up } else { 0.0 },
        seconds_down: if uses_down { duration } else { 0.0 },
        gbit_s_up,
        gbit_s_down,
        gbit_s_total: gbit_s_up + gbit_s_down,
        gbit_s_per_stream_mean: rates.iter().sum::<f64>() / rates.len().max(1) as f64,
        gbit_s_per_stream_min: rates.iter().copied().reduce(f64::min).unwrap_or(0.0),
        gbit_s_per_stream_max: rates.iter().copied().fold(0.0, f64::max),
        streams_without_final_ack: without_final,
        retransmits: streams
            .iter()
            .filter_map(|s| s.retransmits)
            .map(u64::from)
            .sum(),
        rate_bits_s: args.rate,
        start_late_s,
        per_stream,
    };
    let mut notes = Vec::new();
    if start_late_s > duration / 10.0 {
        notes.push(format!(
            "loadgen began {start_late_s:.3} s after the common start of a {duration} s window: this machine is too loaded to judge the path"
        ));
    }
    if without_final > 0 {
        notes.push(format!(
            "{without_final} tunnel(s) closed before the target's final count arrived: the proxy may not relay half-closed tunnels; their up bytes stop at the last acknowledgement"
        ));
    }
    let mut report = setup.report(
        "throughput",
        serde_json::json!({
            "streams": args.streams,
            "direction": args.direction,
            "write_size": args.write_size,
            "rate_bits_s": args.rate,
        }),
        out,
        crate::result::ScenarioResult::Throughput(result),
        failures,
        notes,
    );
    if let Some(p) = report.proxy_process.as_mut() {
        p.per_gib(bytes_up + bytes_down);
    }
    if let Some(s) = report.system.as_mut() {
        s.per_gib(bytes_up + bytes_down);
    }
    Ok(report)
}

async fn core(ctx: CoreCtx, args: Arc<ThroughputArgs>) -> Result<CoreOut, LoadgenError> {
    let streams = args.streams as usize;
    let mine = ctx.share(streams);
    let mut tunnels = Vec::with_capacity(mine.len());
    for &i in &mine {
        let stage = Cell::new(Stage::Connect);
        let opened = net::within(
            ctx.timeout,
            net::open_protected(&ctx.path, &stage, false),
            || net::timeout_failure(stage.get()),
        )
        .await;
        match opened {
            Ok((s, protection)) => tunnels.push((i, s, protection)),
            Err(f) => {
                return Err(LoadgenError::Setup(format!(
                    "tunnel {} of {streams} could not be opened: {}",
                    i + 1,
                    describe(f, stage.get(), ctx.path.proxy, ctx.path.target)
                )))
            }
        }
    }
    let window = ctx.ready().await?;
    // Each stream's share of --rate, in bytes per second each way used.
    let ways = if args.direction == Direction::Both {
        2.0
    } else {
        1.0
    };
    let pace = args.rate.map(|bits| bits / 8.0 / streams as f64 / ways);
    // One write buffer per core, shared by its tunnels.
    let buf: Rc<[u8]> = vec![0xa5_u8; args.write_size].into();
    let tasks: Vec<_> = tunnels
        .into_iter()
        .map(|(i, s, protection)| {
            coresocks_io::events::spawn(run_stream(
                i,
                ctx.index,
                s,
                protection.map(RefCell::new),
                window,
                args.direction,
                buf.clone(),
                ctx.live(),
                ctx.timeout,
                pace,
            ))
        })
        .collect();
    let mut out = CoreOut {
        streams: Vec::with_capacity(tasks.len()),
        failures: FailureCounts::default(),
    };
    for t in tasks {
        let s = t.await;
        if let Some(f) = s.failure {
            out.failures.add(f);
        }
        out.streams.push(s);
    }
    Ok(out)
}

/// What the reading side learned; kept outside the futures so a timeout
/// that drops them still leaves the counts.
#[derive(Default)]
struct Seen {
    /// Last acknowledged total before the window (subtracted).
    base: Cell<u64>,
    acked: Cell<u64>,
    last_ack_at: Cell<Option<Instant>>,
    final_ack: Cell<bool>,
    down: Cell<u64>,
}

#[allow(clippy::too_many_arguments)]
async fn run_stream(
    index: usize,
    core: usize,
    stream: Stream,
    seal: Option<RefCell<Protection>>,
    w: Window,
    direction: Direction,
    buf: Rc<[u8]>,
    live: Live,
    timeout: std::time::Duration,
    pace: Option<f64>,
) -> StreamOutcome {
    // A second descriptor of the socket, to read its TCP_INFO after the
    // halves (which own the stream) are gone.
    let info_fd = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
    let (rd, wr) = split(stream);
    let seen = Seen::default();
    sleep_until(w.start).await;
    let start_late_s = Instant::now()
        .saturating_duration_since(w.start)
        .as_secs_f64();
    let work = async {
        let (sent, read) = futures_lite::future::zip(
            write_side(
                wr,
                direction,
                &buf,
                w,
                seal.as_ref(),
                pace.map(|r| Pacer::new(w.start, r)),
            ),
            read_side(
                rd,
                direction,
                w,
                &seen,
                &live,
                seal.as_ref(),
                pace.map(|r| Pacer::new(w.start, r)),
            ),
        )
        .await;
        sent.and(read)
    };
    let failure = futures_lite::future::or(work, async {
        sleep_until(w.t1 + timeout).await;
        Err(Failure::Timeout)
    })
    .await
    .err();
    if failure.is_some() {
        live.add_errors(1);
    }
    let retransmits = info_fd.and_then(|fd| coresocks_io::sys::tcp_total_retransmits(&fd).ok());
    let seconds_up = seen
        .last_ack_at
        .get()
        .map(|at| at.saturating_duration_since(w.t0).as_secs_f64())
        .unwrap_or(0.0);
    StreamOutcome {
        index,
        core,
        bytes_up: seen.acked.get() - seen.base.get(),
        seconds_up,
        bytes_down: seen.down.get(),
        final_ack: seen.final_ack.get(),
        start_late_s,
        failure,
        retransmits,
    }
}

async fn write_side(
    mut wr: WriteHalf,
    direction: Direction,
    buf: &[u8],
    w: Window,
    seal: Option<&RefCell<Protection>>,
    mut pacer: Option<Pacer>,
) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure::from_io(&e, Stage::Target);
    let mode = match direction {
        Direction::Up => MODE_SINK,
        Direction::Down => MODE_SOURCE,
        Direction::Both => MODE_DUPLEX,
    };
    // Under GSSAPI protection every write is whole encapsulated messages.
    let mut sealed = Vec::new();
    match seal {
        Some(p) => {
            wrap(&[mode], p, &mut sealed)?;
            wr.write_all(&sealed).await.map_err(io)?;
        }
        None => wr.write_all(&[mode]).await.map_err(io)?,
    }
    if direction == Direction::Down {
        sleep_until(w.t1).await;
    } else {
        // At least one write, however late this task runs: a run that
        // moved nothing up measures nothing.
        loop {
            let written = match seal {
                Some(p) => {
                    wrap(buf, p, &mut sealed)?;
                    wr.write_all(&sealed).await.map_err(io)?;
                    buf.len()
                }
                None => wr.write(buf).await.map_err(io)?,
            };
            match pacer.as_mut() {
                Some(p) => p.pace(written).await,
                None => stream::fair_share().await,
            }
            if Instant::now() >= w.t1 {
                break;
            }
        }
    }
    // FIN: the target sends its final count (up) or stops sending (down).
    wr.shutdown_write();
    Ok(())
}

/// `plain` as encapsulated messages in `out` (GSSAPI protection).
fn wrap(plain: &[u8], p: &RefCell<Protection>, out: &mut Vec<u8>) -> Result<(), Failure> {
    out.clear();
    for chunk in plain.chunks(MAX_PLAIN_PER_MESSAGE) {
        p.borrow_mut()
            .seal(chunk, out)
            .map_err(|_| Failure::ProxyProtocol)?;
    }
    Ok(())
}

async fn read_side(
    mut rd: ReadHalf,
    direction: Direction,
    w: Window,
    seen: &Seen,
    live: &Live,
    seal: Option<&RefCell<Protection>>,
    mut pacer: Option<Pacer>,
) -> Result<(), Failure> {
    // Up: the reads are acknowledgements, never paced.
    if direction == Direction::Up {
        pacer = None;
    }
    let size = if direction == Direction::Up {
        4096
    } else {
        256 * 1024
    };
    let mut buf = vec![0u8; size];
    let mut acks = AckParser::default();
    let mut units = UnitParser::default();
    // Under GSSAPI protection: bytes of messages not yet whole.
    let mut pending = Vec::new();
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| Failure::from_io(&e, Stage::Target))?;
        if n == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut plain = Vec::new();
        let data: &[u8] = match seal {
            None => &buf[..n],
            Some(p) => {
                pending.extend_from_slice(&buf[..n]);
                let mut at = 0;
                while let Some((opened, used)) = p
                    .borrow_mut()
                    .open_message(&pending[at..])
                    .map_err(|_| Failure::ProxyProtocol)?
                {
                    plain.extend_from_slice(&opened);
                    at += used;
                }
                pending.drain(..at);
                &plain
            }
        };
        let n = data.len();
        let on_ack = |value: u64| {
            let total = value & !ACK_FINAL;
            live.add_primary(total.saturating_sub(seen.acked.get()));
            seen.acked.set(total);
            seen.last_ack_at.set(Some(now));
            if now < w.t0 {
                seen.base.set(total);
            }
            if value & ACK_FINAL != 0 {
                seen.final_ack.set(true);
            }
        };
        match direction {
            Direction::Up => acks.feed(data, on_ack),
            Direction::Down | Direction::Both => {
                if now >= w.t0 && now < w.t1 {
                    seen.down.set(seen.down.get() + n as u64);
                    live.add_secondary(n as u64);
                }
                if direction == Direction::Both {
                    units.feed(data, on_ack);
                }
            }
        }
        match pacer.as_mut() {
            Some(p) => p.pace(n).await,
            None => stream::fair_share().await,
        }
    }
}

/// `--rate`: holds a stream to its share. After n bytes in all, the next
/// write (or read) waits until n / rate seconds after the load started,
/// so a stream that fell behind catches up at full speed and never runs
/// ahead.
struct Pacer {
    start: Instant,
    bytes_per_s: f64,
    done: u64,
}

impl Pacer {
    fn new(start: Instant, bytes_per_s: f64) -> Pacer {
        Pacer {
            start,
            bytes_per_s,
            done: 0,
        }
    }

    fn due(&self) -> Instant {
        self.start + std::time::Duration::from_secs_f64(self.done as f64 / self.bytes_per_s)
    }

    async fn pace(&mut self, n: usize) {
        self.done += n as u64;
        let due = self.due();
        if due > Instant::now() {
            sleep_until(due).await;
        } else {
            stream::fair_share().await;
        }
    }
}

/// Splits the sink's stream of 8-byte totals, which may arrive cut anywhere.
#[derive(Default)]
struct AckParser {
    partial: [u8; 8],
    have: usize,
}

impl AckParser {
    fn feed(&mut self, data: &[u8], mut on_ack: impl FnMut(u64)) {
        for &b in data {
            self.partial[self.have] = b;
            self.have += 1;
            if self.have == 8 {
                on_ack(u64::from_le_bytes(self.partial));
                self.have = 0;
            }
        }
    }
}

/// Finds the 8-byte header at the start of every duplex unit.
#[derive(Default)]
struct UnitParser {
    /// Position inside the current unit.
    pos: usize,
    header: [u8; 8],
}

impl UnitParser {
    fn feed(&mut self, mut data: &[u8], mut on_header: impl FnMut(u64)) {
        while !data.is_empty() {
            if self.pos < 8 {
                let take = (8 - self.pos).min(data.len());
                self.header[self.pos..self.pos + take].copy_from_slice(&data[..take]);
                self.pos += take;
                data = &data[take..];
                if self.pos == 8 {
                    on_header(u64::from_le_bytes(self.header));
                }
            } else {
                let take = (UNIT - self.pos).min(data.len());
                self.pos += take;
                data = &data[take..];
            }
            if self.pos == UNIT {
                self.pos = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_cut_anywhere() {
        let mut stream = Vec::new();
        for v in [1u64, 70_000, 5 | ACK_FINAL] {
            stream.extend_from_slice(&v.to_le_bytes());
        }
        for cut in 1..stream.len() {
            let mut p = AckParser::default();
            let mut seen = Vec::new();
            p.feed(&stream[..cut], |v| seen.push(v));
            p.feed(&stream[cut..], |v| seen.push(v));
            assert_eq!(seen, vec![1, 70_000, 5 | ACK_FINAL]);
        }
    }

    #[test]
    fn unit_headers_found_across_reads() {
        let mut data = Vec::new();
        for total in [0u64, 100, 200] {
            let mut unit = vec![0xee_u8; UNIT];
            unit[..8].copy_from_slice(&total.to_le_bytes());
            data.extend_from_slice(&unit);
        }
        data.extend_from_slice(&(300 | ACK_FINAL).to_le_bytes());
        for chunk in [1usize, 7, 8, 1000, UNIT, UNIT + 3] {
            let mut p = UnitParser::default();
            let mut seen = Vec::new();
            for piece in data.chunks(chunk) {
                p.feed(piece, |v| seen.push(v));
            }
            assert_eq!(seen, vec![0, 100, 200, 300 | ACK_FINAL], "chunk {chunk}");
        }
    }
}
