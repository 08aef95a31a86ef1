//! CONNECT: resolve, connect (Happy Eyeballs across the addresses, one
//! deadline for the whole request), reply, relay.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::events::Stream;
use crate::events::Timer;
use futures_lite::future;

use super::reply::{AwaitingReply, Session};
use super::{Established, SessionError};
use crate::config::SocketTuning;
use crate::events::EventRing;
use crate::proto::{Command, TargetAddr};
use crate::resolve;

impl Session<'_, AwaitingReply> {
    /// CONNECT: the upstream connection, the reply, and the tunnel to relay.
    pub(super) async fn connect(
        mut self,
        target: TargetAddr,
        early: Vec<u8>,
    ) -> Result<Established, SessionError> {
        let started = std::time::Instant::now();
        let upstream = match self.open_upstream(&target).await {
            Ok(s) => {
                let took = started.elapsed();
                let h = &self.core.metrics().connect_seconds;
                h.observe(took, &crate::metrics::LATENCY_BUCKETS);
                s
            }
            Err(e) => {
                self.refuse(&e).await;
                return Err(e);
            }
        };
        let bound = upstream.local_addr().map_err(SessionError::ClientIo)?;
        self.record.outbound = Some(bound);
        let replied = self.reply_success(bound).await?;
        Ok(replied.established(upstream, early))
    }

    /// Resolves the target and races connection attempts to its addresses
    /// (RFC 8305), all within one `--connect-timeout` for the request.
    async fn open_upstream(&mut self, target: &TargetAddr) -> Result<Stream, SessionError> {
        let (core, config) = (self.core, self.config);
        let addrs = match target {
            TargetAddr::Ip(sa) => vec![*sa],
            TargetAddr::Domain(name, port) => {
                resolve::resolve(name, *port, config.resolve_timeout).await?
            }
        };
        let (addrs, rule_sources) = self.egress_filter(Command::Connect, target, addrs)?;
        // Each address with its source; one of a family the pool lacks is
        // dropped, and with none left the request fails (0x01).
        let outbound = &config.outbound;
        let record = &mut *self.record;
        let sticky_key = record.user.as_deref().ok_or(record.client.ip());
        let mut attempts = Vec::with_capacity(addrs.len());
        let mut no_source = None;
        for addr in resolve::interleave_families(addrs) {
            match outbound.source_for(rule_sources, addr, sticky_key) {
                Ok(source) => attempts.push((addr, source)),
                Err(e) => no_source = no_source.or(Some(e)),
            }
        }
        let Some(&(first, _)) = attempts.first() else {
            let e = no_source.map_or_else(|| "no address".to_owned(), |e| e.to_string());
            return Err(SessionError::EgressSource(e));
        };
        let race = Race::new(
            attempts,
            config.connect_attempt_delay,
            core.events.clone(),
            outbound.interface.clone(),
            config.sockets,
        );
        let deadline = async {
            crate::events::sleep(config.connect_timeout).await;
            Err((first, SessionError::ConnectTimeout(first)))
        };
        match future::or(race, deadline).await {
            Ok((addr, stream)) => {
                record.resolved = Some(addr);
                Ok(stream)
            }
            Err((addr, e)) => {
                record.resolved = Some(addr);
                tracing::debug!("{e}");
                Err(e)
            }
        }
    }
}

type Attempt = Pin<Box<dyn Future<Output = io::Result<Stream>>>>;

/// One connection attempt on a socket of our own making, so that
/// IP_RECVERR can be set before the SYN leaves: without it Linux keeps an
/// ICMP error that answers a SYN (host, network or port unreachable) as a
/// "soft" error and retransmits the SYN for seconds before giving up, where
/// the error is the answer. It is cleared once connected (which also purges
/// the error queue), so a transient ICMP error cannot break a live tunnel.
async fn connect_one(
    events: Option<Rc<EventRing>>,
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    interface: Option<Rc<str>>,
    tuning: SocketTuning,
) -> io::Result<Stream> {
    let socket = crate::sys::connecting_socket(addr, source, interface.as_deref(), |fd| {
        tuning.apply_to_target(fd)
    })?;
    // POLLOUT without POLLERR or POLLHUP means established: a failed
    // connect is always POLLERR | POLLHUP (TCP_CLOSE with an error), and a
    // queued ICMP error is POLLERR. Then the checks below have nothing to
    // find, and a connect saves their three syscalls.
    let clean = match &events {
        Some(ring) => {
            let revents = wait_connect_resolved(ring, &socket).await?;
            revents & (libc::POLLERR | libc::POLLHUP) == 0
        }
        None => false,
    };
    let mut stream = Stream::outgoing(socket.into(), events.as_ref());
    if events.is_none() {
        // Without the event ring, a zero-length send waits through
        // glommio's write path: EAGAIN while the handshake is in flight, 0
        // once connected, the error once it failed. An ICMP error that
        // arrives while that send holds the socket stays "soft" there, and
        // the send only returns when the SYN retries give up.
        if let Err(e) = futures_lite::io::AsyncWriteExt::write(&mut stream, &[]).await {
            let queued = crate::sys::take_queued_error(stream.as_fd())?;
            return Err(queued.unwrap_or(e));
        }
    }
    if !clean {
        connected(&stream)?;
    }
    crate::sys::set_recverr(stream.as_fd(), addr, false)?;
    Ok(stream)
}

/// Waits on the core's event ring until the connect has an outcome:
/// POLLOUT once connected, POLLERR once it failed or an ICMP error was
/// queued (IP_RECVERR queues it and wakes pollers even when the kernel
/// keeps the error itself "soft" because the socket was busy). Returns the
/// revents.
async fn wait_connect_resolved(ring: &EventRing, socket: &socket2::Socket) -> io::Result<i16> {
    let done = libc::POLLOUT | libc::POLLERR | libc::POLLHUP;
    loop {
        let revents = ring.readiness(socket.as_fd(), libc::POLLOUT).await?;
        if revents & done != 0 {
            return Ok(revents);
        }
    }
}

/// Happy Eyeballs (RFC 8305 section 5): attempts start one
/// `attempt_delay` apart, or at once when the previous one fails; earlier
/// attempts keep running, and the first to connect wins (the others are
/// dropped, which cancels them). When every attempt fails, the most telling
/// error decides the reply.
struct Race {
    /// Each address with the source address to bind (`None`: the kernel's).
    addrs: Vec<(SocketAddr, Option<std::net::IpAddr>)>,
    next: usize,
    running: Vec<(SocketAddr, Attempt)>,
    attempt_delay: Duration,
    timer: Timer,
    failed: Option<(SocketAddr, SessionError)>,
    events: Option<Rc<EventRing>>,
    interface: Option<Rc<str>>,
    tuning: SocketTuning,
}

impl Race {
    fn new(
        addrs: Vec<(SocketAddr, Option<std::net::IpAddr>)>,
        attempt_delay: Duration,
        events: Option<Rc<EventRing>>,
        interface: Option<String>,
        tuning: SocketTuning,
    ) -> Race {
        Race {
            tuning,
            interface: interface.map(Rc::from),
            addrs,
            next: 0,
            running: Vec::with_capacity(2),
            attempt_delay,
            timer: Timer::new(attempt_delay),
            failed: None,
            events,
        }
    }

    fn start_next(&mut self) {
        let (addr, source) = self.addrs[self.next];
        self.next += 1;
        let attempt = connect_one(
            self.events.clone(),
            addr,
            source,
            self.interface.clone(),
            self.tuning,
        );
        self.running.push((addr, Box::pin(attempt)));
        self.timer.reset(self.attempt_delay);
    }

    fn record_failure(&mut self, addr: SocketAddr, source: io::Error) {
        let e = SessionError::Connect { addr, source };
        tracing::debug!("{e}");
        let better = match &self.failed {
            None => true,
            Some((_, old)) => failure_rank(&e) > failure_rank(old),
        };
        if better {
            self.failed = Some((addr, e));
        }
    }
}

impl Future for Race {
    type Output = Result<(SocketAddr, Stream), (SocketAddr, SessionError)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if this.running.is_empty() && this.next < this.addrs.len() {
                this.start_next();
            }
            let mut i = 0;
            let mut any_failed = false;
            while i < this.running.len() {
                let addr = this.running[i].0;
                match this.running[i].1.as_mut().poll(cx) {
                    Poll::Pending => i += 1,
                    Poll::Ready(result) => {
                        drop(this.running.swap_remove(i));
                        match result {
                            Ok(stream) => return Poll::Ready(Ok((addr, stream))),
                            Err(e) => {
                                this.record_failure(addr, e);
                                any_failed = true;
                            }
                        }
                    }
                }
            }
            if this.next < this.addrs.len() {
                if any_failed || Pin::new(&mut this.timer).poll(cx).is_ready() {
                    this.start_next();
                    continue;
                }
            } else if this.running.is_empty() {
                let failed = this.failed.take().unwrap_or_else(|| {
                    let (addr, _) = this.addrs[0];
                    (addr, SessionError::ConnectTimeout(addr))
                });
                return Poll::Ready(Err(failed));
            }
            return Poll::Pending;
        }
    }
}

/// A connect that looks finished counts only with a peer and no pending
/// error: an ICMP error or a reset can race the completion (glommio's own
/// io_uring connect reported such sockets as connected). A queued ICMP
/// error is read first: it says what answered (a firewall's "prohibited"
/// among them); then SO_ERROR.
fn connected(stream: &Stream) -> io::Result<()> {
    if let Some(e) = crate::sys::take_queued_error(stream.as_fd())? {
        return Err(e);
    }
    if let Some(e) = crate::sys::take_socket_error(stream.as_fd())? {
        return Err(e);
    }
    match crate::sys::peer_addr(stream.as_fd()) {
        Ok(_) => Ok(()),
        // The error was consumed before we looked: the target is not there.
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            Err(io::Error::from_raw_os_error(libc::ECONNREFUSED))
        }
        Err(e) => Err(e),
    }
}

/// Which failure of several says most about the target: an answer from the
/// host itself (refused) over a firewall's over an unreachable host over an
/// unreachable network over anything else.
fn failure_rank(e: &SessionError) -> u8 {
    use crate::proto::ReplyCode::*;
    match e.reply_code() {
        Some(ConnectionRefused) => 5,
        Some(NotAllowed) => 4,
        Some(HostUnreachable) => 3,
        Some(NetworkUnreachable) => 2,
        _ => 1,
    }
}
