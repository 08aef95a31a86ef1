//! The sockmap engine: the kernel relays the tunnel. Both sockets join the
//! core's maps (`coresocks_io::sockmap`), whose BPF program sends every
//! segment one socket receives out of the other, in the softirq that
//! received it; the tunnel's task only waits for the end.
//!
//! What the task still does, since the kernel does not:
//! - **FINs.** The program never sees a FIN. The task waits for each
//!   socket's POLLRDHUP, then until every byte that socket received has
//!   been written into its peer (TCP's counts: what one received since the
//!   join, what the other had written into it since, acknowledged or still
//!   queued), and only then shuts the peer's write side, so the FIN never
//!   overtakes data: it queues behind them.
//! - **Counts.** The live counters are the program's own (a per-CPU map the
//!   metrics endpoint reads when scraped); the access log's are what TCP
//!   says each socket received since the join (TCP_INFO), read at the end.
//! - **Idle timeout.** TCP_INFO also says how long since each socket last
//!   received data: one look when the timeout would be due, so an idle
//!   tunnel costs its core nothing in between.
//! - **Errors after a half-close.** io_uring always reports POLLRDHUP, so a
//!   socket that sent its FIN is not polled again; its errors (a reset
//!   after its FIN) are read by a look every second from then on.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use coresocks_io::events::{EventRing, Readiness, Timer};
use coresocks_io::sockmap::{Joined, SockMap};

use super::{Engine, Relay, RelayReport, Side, TunnelEnd};
use crate::events::Stream;
use crate::stop::StopSignal;

/// How often a socket past its FIN is looked at for errors.
const HALF_CLOSED_LOOK: Duration = Duration::from_secs(1);

/// First wait for a direction's bytes to leave after its FIN; doubles up
/// to [`DRAIN_MAX`].
const DRAIN_FIRST: Duration = Duration::from_micros(200);
const DRAIN_MAX: Duration = Duration::from_millis(50);

/// A core's sockmap and the ring its tunnels wait on.
pub(crate) struct Kernel {
    map: SockMap,
    ring: Rc<EventRing>,
}

impl Kernel {
    /// The maps for `tunnels` tunnels at once; fails where the kernel or
    /// the process's privileges do not allow it.
    pub(crate) fn new(tunnels: usize, ring: Rc<EventRing>) -> io::Result<Kernel> {
        let tunnels = u32::try_from(tunnels).unwrap_or(u32::MAX);
        Ok(Kernel {
            map: SockMap::new(tunnels)?,
            ring,
        })
    }

    /// Whether the kernel can relay: the same maps and program a core makes,
    /// made once and dropped (`check-config`).
    pub(crate) fn probe() -> io::Result<()> {
        SockMap::new(1).map(drop)
    }

    /// The byte counters of this core's program, for the metrics.
    pub(crate) fn counters(&self) -> io::Result<coresocks_io::sockmap::Counters> {
        self.map.counters()
    }
}

/// A tunnel the kernel took: its pair and what was read from each socket
/// (and sent ahead) before it did.
pub(super) struct Started {
    joined: Joined,
    /// Bytes of each socket's stream the proxy read itself (the handshake),
    /// which the kernel's counts include and the tunnel's do not.
    consumed: [u64; 2],
    /// Bytes the proxy wrote into each socket itself (its replies, the
    /// early bytes).
    written: [u64; 2],
    /// Client bytes that came with the request, sent before the join.
    early: u64,
}

/// Hands the tunnel to the kernel: the client's early bytes go to the
/// target first (they must precede whatever the kernel moves), then both
/// sockets join the map. Err with the early bytes not yet sent and the
/// reason when the kernel cannot take it; the caller relays in user space.
pub(super) fn start(
    kernel: &Kernel,
    client: &mut Stream,
    target: &mut Stream,
    early: &mut Vec<u8>,
) -> Result<Started, io::Error> {
    let mut sent = 0;
    while sent < early.len() {
        match crate::sys::send(&*target, &early[sent..]) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    early.drain(..sent);
    if !early.is_empty() {
        return Err(io::Error::other(format!(
            "{} early client bytes wait for room at the target",
            early.len()
        )));
    }
    let consumed = [
        crate::sys::consumed_bytes(client.as_fd())?,
        crate::sys::consumed_bytes(target.as_fd())?,
    ];
    let written = [
        crate::sys::written_bytes(client.as_fd())?,
        crate::sys::written_bytes(target.as_fd())?,
    ];
    let joined = kernel.map.join(client.as_fd(), target.as_fd())?;
    // The kernel reads both sockets now: stop the ring's POLLIN, which
    // would complete for every segment.
    client.stop_reading();
    target.stop_reading();
    Ok(Started {
        joined,
        consumed,
        written,
        early: sent as u64,
    })
}

/// Where a direction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Its source sent a FIN; bytes may still be on their way out.
    Draining,
    /// The FIN was passed on.
    Done,
}

/// One direction's counts, from its source socket's TCP_INFO.
struct Direction {
    from: Side,
    to: Side,
    state: State,
    /// Bytes of the source's stream received before the join.
    consumed: u64,
    /// Bytes written into the destination before the join.
    written: u64,
    /// Bytes sent ahead of the join (the client's early bytes).
    early: u64,
}

impl Direction {
    fn new(from: Side, to: Side, started: &Started) -> Direction {
        let (i, o) = if from == Side::Client { (0, 1) } else { (1, 0) };
        Direction {
            from,
            to,
            state: State::Open,
            consumed: started.consumed[i],
            written: started.written[o],
            early: if from == Side::Client {
                started.early
            } else {
                0
            },
        }
    }

    /// Data bytes the source received since the join: TCP's count, less
    /// the FIN once it was seen (before that, a FIN that just came counts
    /// as a byte until the next look).
    fn received(&self, counts: &crate::sys::TcpCounts) -> u64 {
        let fin = u64::from(self.state != State::Open);
        counts.received.saturating_sub(fin + self.consumed)
    }

    /// Bytes this direction moved, the early ones included (0 when the
    /// socket no longer answers, after a failure).
    fn moved(&self, from: BorrowedFd<'_>) -> u64 {
        let received = crate::sys::tcp_counts(from).map_or(0, |c| self.received(&c));
        self.early + received
    }

    /// After the source's FIN: whether every byte it received has been
    /// written into the destination.
    fn drained(&self, from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<bool> {
        let received = self.received(&crate::sys::tcp_counts(from)?);
        let written = crate::sys::written_bytes(to)?.saturating_sub(self.written);
        Ok(written >= received)
    }
}

/// What woke the tunnel.
enum Event {
    Stop(crate::stop::Stop),
    Readiness(Side, io::Result<i16>),
    Tick,
    Drain,
}

/// Takes the pair out of the maps and the directions out of the engine
/// gauge however the tunnel ends (finished, or dropped with its task),
/// before the sockets close.
struct Parted<'a> {
    relay: &'a Relay,
    map: &'a SockMap,
    joined: Joined,
}

impl Drop for Parted<'_> {
    fn drop(&mut self) {
        self.map.part(&self.joined);
        let i = Engine::Sockmap.metrics_index();
        self.relay.live.engine(Some(i), None);
        self.relay.live.engine(Some(i), None);
    }
}

/// The tunnel, once [`start`] handed it to the kernel: waits for its end,
/// passing each FIN on once the bytes before it have left, and reports.
pub(super) async fn relay(
    relay: &Relay,
    kernel: &Kernel,
    client: Stream,
    target: Stream,
    started: Started,
    stop: &StopSignal,
) -> RelayReport {
    let i = Engine::Sockmap.metrics_index();
    relay.live.engine(None, Some(i));
    relay.live.engine(None, Some(i));
    let mut up = Direction::new(Side::Client, Side::Target, &started);
    let mut down = Direction::new(Side::Target, Side::Client, &started);
    let parted = Parted {
        relay,
        map: &kernel.map,
        joined: started.joined,
    };
    let end = until_end(
        relay,
        &kernel.ring,
        &client,
        &target,
        &mut up,
        &mut down,
        stop,
    )
    .await;
    let (client_to_target, target_to_client) =
        (up.moved(client.as_fd()), down.moved(target.as_fd()));
    drop(parted);
    super::close_after(&end, &client, &target);
    RelayReport {
        client_to_target,
        target_to_client,
        spliced: 0,
        engine: Engine::Sockmap,
        end,
        throttled: 0,
    }
}

async fn until_end(
    relay: &Relay,
    ring: &EventRing,
    client: &Stream,
    target: &Stream,
    up: &mut Direction,
    down: &mut Direction,
    stop: &StopSignal,
) -> TunnelEnd {
    let fd = |side: Side| match side {
        Side::Client => client.as_fd(),
        Side::Target => target.as_fd(),
    };
    let idle_timeout = relay.idle_timeout.get();
    let mut tick = Timer::new(idle_timeout);
    let mut drain_wait = DRAIN_FIRST;
    let mut drain: Option<Timer> = None;
    let mut waits: [Option<Readiness<'_>>; 2] = [None, None];
    loop {
        // Directions whose FIN came: pass it on once their bytes are out.
        for d in [&mut *up, &mut *down] {
            if d.state != State::Draining {
                continue;
            }
            match d.drained(fd(d.from), fd(d.to)) {
                Ok(false) => {}
                Ok(true) => {
                    if let Err(e) = crate::sys::shutdown_write(fd(d.to)) {
                        if e.raw_os_error() != Some(libc::ENOTCONN) {
                            return TunnelEnd::Failed(d.to, e);
                        }
                    }
                    d.state = State::Done;
                }
                Err(e) => return TunnelEnd::Failed(d.from, e),
            }
        }
        if up.state == State::Done && down.state == State::Done {
            return TunnelEnd::Closed;
        }
        let draining = up.state == State::Draining || down.state == State::Draining;
        match (&mut drain, draining) {
            (None, true) => drain = Some(Timer::new(drain_wait)),
            (Some(_), false) => drain = None,
            _ => {}
        }
        // An open direction waits for its source's FIN (or error); a
        // source past its FIN is looked at by the ticks.
        for (slot, d) in waits.iter_mut().zip([&*up, &*down]) {
            if slot.is_none() && d.state == State::Open {
                *slot = Some(ring.readiness(fd(d.from), libc::POLLRDHUP));
            }
        }
        let event = futures_lite::future::poll_fn(|cx| {
            if let Poll::Ready(s) = stop.poll_stop(cx) {
                return Poll::Ready(Event::Stop(s));
            }
            for (slot, side) in waits.iter_mut().zip([Side::Client, Side::Target]) {
                if let Some(wait) = slot {
                    if let Poll::Ready(r) = Pin::new(wait).poll(cx) {
                        *slot = None;
                        return Poll::Ready(Event::Readiness(side, r));
                    }
                }
            }
            if let Poll::Ready(()) = Pin::new(&mut tick).poll(cx) {
                return Poll::Ready(Event::Tick);
            }
            if let Some(Poll::Ready(())) = drain.as_mut().map(|t| Pin::new(t).poll(cx)) {
                return Poll::Ready(Event::Drain);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Stop(s) => return TunnelEnd::Stopped(s),
            Event::Readiness(side, Err(e)) => return TunnelEnd::Failed(side, e),
            Event::Readiness(side, Ok(revents)) => {
                if let Some(e) = failure(fd(side), revents) {
                    return TunnelEnd::Failed(side, e);
                }
                let d = if side == Side::Client {
                    &mut *up
                } else {
                    &mut *down
                };
                d.state = State::Draining;
                drain_wait = DRAIN_FIRST;
                // From now on its socket is looked at for errors.
                tick.reset(HALF_CLOSED_LOOK);
            }
            Event::Drain => {
                drain_wait = (drain_wait * 2).min(DRAIN_MAX);
                drain = None;
            }
            Event::Tick => {
                let idle = match (idle_for(fd(Side::Client)), idle_for(fd(Side::Target))) {
                    (Ok(a), Ok(b)) => a.min(b),
                    (Err(e), _) => return TunnelEnd::Failed(Side::Client, e),
                    (_, Err(e)) => return TunnelEnd::Failed(Side::Target, e),
                };
                // A socket past its FIN is not polled: its errors show here.
                for d in [&*up, &*down] {
                    if d.state != State::Open {
                        if let Some(e) = failure(fd(d.from), 0) {
                            return TunnelEnd::Failed(d.from, e);
                        }
                    }
                }
                if idle >= idle_timeout {
                    return TunnelEnd::IdleTimeout;
                }
                let due = idle_timeout - idle;
                let half_closed = up.state != State::Open || down.state != State::Open;
                tick.reset(if half_closed {
                    due.min(HALF_CLOSED_LOOK)
                } else {
                    due
                });
            }
        }
    }
}

/// How long since the socket last received data.
fn idle_for(fd: BorrowedFd<'_>) -> io::Result<Duration> {
    Ok(Duration::from_millis(
        crate::sys::tcp_counts(fd)?.idle_ms.into(),
    ))
}

/// The error a readiness report carries, if any: the socket's pending
/// error, or a reset when POLLERR came without one.
fn failure(fd: BorrowedFd<'_>, revents: i16) -> Option<io::Error> {
    let pending = crate::sys::take_socket_error(fd).ok().flatten();
    match (pending, revents & libc::POLLERR != 0) {
        (Some(e), _) => Some(e),
        (None, true) => Some(io::ErrorKind::ConnectionReset.into()),
        (None, false) => None,
    }
}
