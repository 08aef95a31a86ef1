//! One client connection, from its first byte to its access-log line.
//!
//! - `handshake.rs`: the typed states up to the request (each owns the
//!   client's stream, each made in one place), in the protocol the first
//!   byte opens: SOCKS5 (`password.rs` for RFC 1929, `gssapi_method.rs`
//!   for RFC 1961), SOCKS4/4a (`socks4.rs`), HTTP CONNECT
//!   (`http_connect.rs`). `wire.rs` reads their messages.
//! - `reply.rs`: a [`Session`], typed by where it stands in its replies;
//!   each reply consumes it, so a second reply, or one after a refusal,
//!   does not compile. The commands are its methods: `connect.rs`,
//!   `bind.rs`, `udp.rs`.
//! - `tunnel.rs`: the tunnel's lifetime once a command has both streams.
//!
//! This file is the path itself, top to bottom: [`serve`] runs
//! `establish` (handshake, quotas, the command) under the handshake
//! timeout and the stop signal, then relays, then writes the record.
//! Under GSSAPI protection the request, the replies and the data are
//! encapsulated.

mod access;
mod bind;
mod connect;
mod error;
mod gssapi_method;
mod handshake;
mod http_connect;
mod password;
mod reply;
mod socks4;
mod tunnel;
mod udp;
mod wire;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use crate::events::Stream;
use futures_lite::future;

pub(crate) use access::AccessRecord;
pub(crate) use error::SessionError;
pub(crate) use password::PasswordGate;
use reply::Session;
use tunnel::{tunnel_ended, Established, Next, Relaying};

use crate::config::Config;
use crate::metrics;
use crate::policy::Requester;
use crate::proto::{Command, TargetAddr};
use crate::runtime::{Core, Stop, Ticket};

/// Serves one accepted client to the end and writes its access-log line.
///
/// Everything before the relay runs in a boxed future that is freed when
/// it returns: a task's allocation is the size of its largest state, and a
/// tunnel that lives for hours should carry only the relay's.
/// [`serve`] as the runtime takes it ([`crate::runtime::Serve`]).
pub(crate) fn serve_boxed(
    core: Rc<Core>,
    client: Stream,
    peer: SocketAddr,
    ticket: Ticket,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    Box::pin(serve(core, client, peer, ticket))
}

/// What an idle tunnel's task holds is this future's state while it relays:
/// the access record, the [`Relaying`] tunnel and the arguments, under a
/// KiB. Written so that the compiler keeps nothing else beside them: an
/// async block (an async fn's arguments take room twice), the handshake's
/// outcome handed on whole (a value taken apart in a `match` keeps its
/// room across the arm's await), and the tunnel awaited where it lies.
#[allow(clippy::manual_async_fn)] // see above: an async fn would be larger
pub(crate) fn serve(
    core: Rc<Core>,
    client: Stream,
    peer: SocketAddr,
    ticket: Ticket,
) -> impl std::future::Future<Output = ()> {
    async move {
        let mut record = AccessRecord::new(core.id, ticket.id(), peer);
        let config = core.config();
        let client_fd = client.as_raw_fd();
        let work = Box::pin(establish(&core, &config, client, &ticket, &mut record));
        // Shed (a stalled handshake) or cut (the end of the shutdown grace)
        // while still setting up. `or` prefers `work` when both are ready, so a
        // UDP association, which watches the same signal, ends with its counts.
        let stopped = async {
            let stop = ticket.stop.wait().await;
            // A reset, not a FIN: the client must not take this for an answer.
            // SAFETY: `work` owns the client socket and is alive until
            // `or` returns, after this.
            unsafe { crate::sys::set_linger_zero_raw(client_fd) };
            Err(SessionError::Stopped(stop))
        };
        let outcome = future::or(work, stopped).await;
        let mut next = Relaying::after(&core, outcome, &record, &ticket.stop);
        if let Next::Relay(tunnel) = &mut next {
            let ended = tunnel.await;
            // The tunnel closes and lets go of its leases before it is
            // accounted for.
            next = Next::Done(Ok(()));
            tunnel_ended(&core, ended, &mut record);
        }
        finish(
            &core,
            &config,
            &ticket,
            peer,
            next.into_result(),
            &mut record,
        );
    }
}

/// The end of every session: its error, if any, in the metrics and the
/// record, and the record in the access log.
fn finish(
    core: &Core,
    config: &Config,
    ticket: &Ticket,
    peer: SocketAddr,
    result: Result<(), SessionError>,
    record: &mut AccessRecord,
) {
    if let Err(e) = result {
        record.end = Some(e.tag().to_owned());
        match &e {
            SessionError::HandshakeTimeout => metrics::add(&core.metrics().handshake_timeouts, 1),
            SessionError::AuthFailed(user) => {
                record.user = Some(user.clone());
                metrics::add(&core.metrics().auth_failures, 1)
            }
            SessionError::GssapiFailed(_) | SessionError::AuthRefused { .. } => {
                metrics::add(&core.metrics().auth_failures, 1)
            }
            _ => {}
        }
        tracing::debug!(conn = ticket.id(), client = %peer, "session ended: {e}");
    }
    if let Some(Stop::ShutdownCut) = ticket.stop.stopped() {
        metrics::add(&core.metrics().shutdown_cuts, 1);
    }
    if config.access_log != crate::config::AccessLog::Off {
        tracing::info!(target: "access", "{}", record.render(config.access_log_format));
    }
}

/// Handshake and command, up to the point where a TCP tunnel is ready to
/// relay (returned) or the session is over (UDP ASSOCIATE, errors).
async fn establish<'a>(
    core: &'a Core,
    config: &'a Config,
    client: Stream,
    ticket: &Ticket,
    record: &mut AccessRecord,
) -> Result<Option<Established>, SessionError> {
    let client_ip = record.client.ip().to_canonical();
    // Known once the first byte is in, for the record whatever happens next.
    let spoken = std::cell::Cell::new(None);
    let handshake = handshake::run(core, config, client_ip, client, &spoken);
    let deadline = async {
        crate::events::sleep(config.handshake_timeout).await;
        Err(SessionError::HandshakeTimeout)
    };
    let outcome = future::or(handshake, deadline).await;
    if let Some(protocol) = spoken.get() {
        record.protocol = Some(protocol.as_str());
        metrics::add(&core.metrics().sessions_by_protocol[protocol.index()], 1);
    }
    let (requested, request) = outcome?;
    // What the client's pace decides is over; from here the proxy's own
    // timeouts bound the session.
    ticket.handshake_done();
    core.metrics()
        .handshake_seconds
        .observe(record.started.elapsed(), &metrics::LATENCY_BUCKETS);
    let login = requested.login();
    record.user = login.user().map(str::to_owned);
    record.auth = Some(login.auth().as_str());
    if let (true, Some(user)) = (login.auth().checks_users_file(), login.user()) {
        ticket.set_user(user.as_bytes());
    }
    let (session, early) = Session::new(core, config, requested, record);
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            // A malformed request gets the reply its error calls for.
            session.refuse(&e).await;
            return Err(e);
        }
    };
    session.record.command = Some(request.command);
    session.record.target = Some(request.target.clone());
    let lease = match core.quotas.acquire(session.user(), client_ip) {
        Ok(lease) => lease,
        Err((refusal, reason)) => {
            metrics::add(&core.metrics().quota_refusals[reason], 1);
            let e = SessionError::from(refusal);
            session.refuse(&e).await;
            return Err(e);
        }
    };
    // What the command opens beyond the client's and target's sockets: a
    // UDP association's relay socket (its outbound socket takes the
    // target's place) and a second outbound one where the families need
    // two; a BIND's listener while it waits.
    let extra = match request.command {
        Command::Connect => 0,
        Command::Bind => 1,
        Command::UdpAssociate => 2,
    };
    if let Err(short) = ticket.over_share().and_then(|()| ticket.charge(extra)) {
        let e = exhausted(core, short);
        session.refuse(&e).await;
        return Err(e);
    }
    let with_quota = |t: Established| Some(t.with_quota(lease));
    match request.command {
        Command::Connect => session.connect(request.target, early).await.map(with_quota),
        Command::Bind => {
            let bound = session.bind(request.target, early).await;
            // The listener is closed by now.
            ticket.refund(extra);
            bound.map(with_quota)
        }
        Command::UdpAssociate => {
            let served = session.udp_associate(request.target, ticket).await;
            drop(with_quota);
            served.map(|()| None)
        }
    }
}

/// A request refused for descriptors: counted, and logged once per
/// episode where one address reached its share.
fn exhausted(core: &Core, short: crate::runtime::Exhausted) -> SessionError {
    use crate::runtime::Exhausted;
    let m = core.metrics();
    match short {
        Exhausted::ClientShare(ip) => {
            metrics::add(&m.quota_refusals[crate::quota::CLIENT_SHARE], 1);
            if core.admission.first_time_at_share(ip) {
                tracing::warn!(
                    core = core.id,
                    "client address {ip} holds its share of this core's descriptors ({} of {}); its new requests are refused (0x02) until it closes some. Many users behind one address (NAT, a load balancer)? Raise --client-share",
                    core.admission.held_by(ip),
                    core.admission.budgets().descriptors_per_client
                );
            }
        }
        Exhausted::Core => metrics::add(&m.quota_refusals[crate::quota::DESCRIPTORS], 1),
    }
    SessionError::Exhausted(short)
}

impl<'a, S> Session<'a, S> {
    /// The authenticated user, if users are configured.
    fn user(&self) -> Option<&str> {
        self.login.user()
    }

    /// Who asks, for the egress policy.
    fn requester(&self, command: Command) -> Requester<'_> {
        Requester {
            client: self.record.client.ip().to_canonical(),
            user: self.user(),
            command,
        }
    }

    /// Keeps the addresses of `target` that the egress policy allows, in
    /// their order, with the source pool of the rule that allowed the first
    /// (empty: the global one). With none left the request is refused
    /// (reply 0x02), and the access log names the rule, or `private`, that
    /// refused it.
    fn egress_filter(
        &mut self,
        command: Command,
        target: &TargetAddr,
        mut addrs: Vec<SocketAddr>,
    ) -> Result<(Vec<SocketAddr>, &'a [std::net::IpAddr]), SessionError> {
        let domain = match target {
            TargetAddr::Domain(name, _) => Some(name.as_str()),
            TargetAddr::Ip(_) => None,
        };
        let core = self.core;
        let policy = &self.config.policy;
        let who = self.requester(command);
        // The decision for the first allowed address (and its rule, if one
        // decided), and the first denial.
        let mut allowed_by = None;
        let mut refused = None;
        addrs.retain(|&addr| match policy.check(&who, domain, addr) {
            Ok(rule) => {
                allowed_by.get_or_insert(rule);
                true
            }
            Err(denial) => {
                refused.get_or_insert((addr, denial));
                false
            }
        });
        if let Some(rule) = allowed_by {
            self.record.rule = rule.map(|r| r.name.clone());
            return Ok((addrs, rule.map_or(&[][..], |r| r.source.as_slice())));
        }
        let Some((addr, denial)) = refused else {
            return Err(SessionError::NotAllowed(format!(
                "target {target}: no address"
            )));
        };
        metrics::add(&core.metrics().denied[denial.metrics_index()], 1);
        let message = format!("target {target} ({addr}) {denial}");
        self.record.rule = Some(denial.name().to_owned());
        self.record.resolved = Some(addr);
        Err(SessionError::NotAllowed(message))
    }
}

/// BND.ADDR/BND.PORT of a failure reply.
fn unspecified() -> TargetAddr {
    TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
}
