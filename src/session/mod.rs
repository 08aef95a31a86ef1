//! One client connection, from greeting to the end of its tunnel.
//!
//! The handshake is typed: [`negotiate`] is the only way to get an
//! [`Authenticated`] proof; reading the request uses it up and yields the
//! [`Requested`] state that a [`Session`] needs to send any reply. So no
//! request is read, and no reply sent, before authentication. A session is
//! typed by where it stands in its replies (`reply.rs`): each reply
//! consumes it, so a second reply, or one after a refusal, does not
//! compile, and only `reply.rs` can write to the client. The three
//! commands are methods of [`Session`] (`connect.rs`, `bind.rs`,
//! `udp.rs`).
//!
//! greeting -> method selection -> (RFC 1929 auth, or RFC 1961 GSSAPI
//! with its protection level) -> request -> command (CONNECT: resolve,
//! connect, reply, relay) -> access log line. Under GSSAPI protection the
//! request, the replies and the data are encapsulated (`gssapi_method.rs`).
//!
//! Where `--protocols` says so, the client's first byte may instead open
//! a SOCKS4/4a (`socks4.rs`) or HTTP CONNECT (`http_connect.rs`)
//! handshake: one request carrying its own credentials, then the same
//! policy, quotas, commands and relay, with replies in that protocol.

mod access;
mod bind;
mod connect;
mod error;
mod gssapi_method;
mod http_connect;
mod password;
mod reader;
mod reply;
mod socks4;
mod udp;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use crate::events::Stream;
use futures_lite::future;
use futures_lite::io::AsyncWriteExt;

pub use access::AccessRecord;
pub use error::{connect_reply_code, SessionError};
pub use password::PasswordGate;
use reader::MessageReader;
use reply::Session;

use crate::config::{Config, Protocol};
use crate::gss_binding::{Protection, ProtectionLevel};
use crate::metrics;
use crate::policy::Requester;
use crate::proto::{Codec, Command, Greeting, Method, MethodSelection, Request, TargetAddr};
use crate::relay::Sealed;
use crate::runtime::{Core, Stop, StopSignal, Ticket};

/// Proof that authentication, where required, succeeded. Made only by
/// [`Authenticated::new`], which the check that passed calls (SOCKS5's
/// negotiation, RFC 1929 in `password.rs`, or the SOCKS4 and HTTP CONNECT
/// handshakes, whose requests carry their credentials); used up by
/// [`Authenticated::requested`], the only way to a [`Requested`].
pub struct Authenticated {
    user: Option<String>,
    auth: Auth,
    /// GSSAPI at integrity or confidentiality: every later message is
    /// encapsulated.
    protection: Option<Protection>,
}

impl Authenticated {
    fn new(user: Option<String>, auth: Auth, protection: Option<Protection>) -> Self {
        Authenticated {
            user,
            auth,
            protection,
        }
    }

    /// The proof with its request read: the state replies need, in the
    /// protocol the client spoke.
    fn requested(self, dialect: Dialect) -> Requested {
        Requested {
            user: self.user,
            auth: self.auth,
            protection: self.protection,
            dialect,
        }
    }

    /// Reads the request; the proof becomes the [`Requested`] state that
    /// replies need, whether the request decoded or not (a malformed one
    /// gets the reply its error calls for). Under protection the request
    /// comes encapsulated, and plaintext after it is early data.
    async fn read_request(
        mut self,
        reader: &mut MessageReader,
        client: &mut Stream,
    ) -> (Requested, Result<(Request, Vec<u8>), SessionError>) {
        let request = match &mut self.protection {
            Some(p) => gssapi_method::read_request(p, client, reader).await,
            None => reader
                .next::<Request>(client)
                .await
                .map(|r| (r, Vec::new())),
        };
        (self.requested(Dialect::Socks5), request)
    }
}

/// An authenticated client whose request has been read: the only state in
/// which the proxy may reply. Made only from an [`Authenticated`].
struct Requested {
    user: Option<String>,
    auth: Auth,
    protection: Option<Protection>,
    dialect: Dialect,
}

/// How the client proved who it is.
#[derive(Debug, Clone, Copy)]
enum Auth {
    None,
    /// RFC 1929.
    UserPass,
    /// SOCKS4's USERID as `user:password`.
    Socks4UserId,
    /// HTTP's `Proxy-Authorization: Basic`.
    Basic,
    /// RFC 1961, at the protection level agreed.
    Gssapi(ProtectionLevel),
}

impl Auth {
    /// For the access log's `auth=`.
    fn as_str(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::UserPass => "userpass",
            Auth::Socks4UserId => "socks4-userid",
            Auth::Basic => "basic",
            Auth::Gssapi(ProtectionLevel::Clear) => "gssapi-clear",
            Auth::Gssapi(ProtectionLevel::Integrity) => "gssapi-integrity",
            Auth::Gssapi(_) => "gssapi-confidentiality",
        }
    }

    /// A login checked against the users file, whose user a reload may
    /// remove (`--reload-closes-removed-users`).
    fn checks_users_file(self) -> bool {
        matches!(self, Auth::UserPass | Auth::Socks4UserId | Auth::Basic)
    }
}

/// The protocol replies are written in.
#[derive(Debug, Clone, Copy)]
enum Dialect {
    Socks5,
    Socks4,
    Http(crate::proto::HttpVersion),
}

impl Protocol {
    /// The protocol a client's first byte opens: SOCKS's version byte, or
    /// the first letter of an HTTP method (uppercase, as methods are).
    fn of_first_byte(b: u8) -> Option<Protocol> {
        match b {
            0x05 => Some(Protocol::Socks5),
            0x04 => Some(Protocol::Socks4),
            b'A'..=b'Z' => Some(Protocol::HttpConnect),
            _ => None,
        }
    }
}

/// A session that is ready to relay a TCP tunnel (CONNECT, BIND).
pub struct Established {
    client: Stream,
    target: Stream,
    /// Client bytes that arrived with the request, for the target.
    early: Vec<u8>,
    /// The tunnel's place in the per-user and per-client quotas, held
    /// until the relay ends.
    quota: Option<crate::quota::QuotaLease>,
    /// GSSAPI protection, for the sealed engine.
    sealed: Option<Sealed>,
}

/// Serves one accepted client to the end and writes its access-log line.
///
/// Everything before the relay runs in a boxed future that is freed when
/// it returns: a task's allocation is the size of its largest state, and a
/// tunnel that lives for hours should carry only the relay's.
/// [`serve`] as the runtime takes it ([`crate::runtime::Serve`]).
pub fn serve_boxed(
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
pub fn serve(
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
    mut client: Stream,
    ticket: &Ticket,
    record: &mut AccessRecord,
) -> Result<Option<Established>, SessionError> {
    let mut reader = MessageReader::new();
    let client_ip = record.client.ip().to_canonical();
    // Known once the first byte is in, for the record whatever happens next.
    let spoken = std::cell::Cell::new(None);
    let handshake = async {
        // A byte that opens no protocol served here goes the SOCKS5 way,
        // whose decoder says what is wrong with it.
        let first = reader.peek_byte(&mut client).await?;
        let protocol = Protocol::of_first_byte(first)
            .filter(|p| config.protocols[p.index()])
            .unwrap_or(Protocol::Socks5);
        spoken.set(Some(protocol));
        // SOCKS4 and HTTP CONNECT requests that fail to decode were
        // answered inside their handshakes; SOCKS5 answers them below.
        let whole = |(requested, request)| (requested, Ok((request, Vec::new())));
        match protocol {
            Protocol::Socks5 => {
                let auth = negotiate(core, config, client_ip, &mut client, &mut reader).await?;
                Ok(auth.read_request(&mut reader, &mut client).await)
            }
            Protocol::Socks4 => {
                socks4::handshake(core, config, client_ip, &mut client, &mut reader)
                    .await
                    .map(whole)
            }
            Protocol::HttpConnect => {
                http_connect::handshake(core, config, client_ip, &mut client, &mut reader)
                    .await
                    .map(whole)
            }
        }
    };
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
    record.user = requested.user.clone();
    record.auth = Some(requested.auth.as_str());
    if let (true, Some(user)) = (requested.auth.checks_users_file(), &requested.user) {
        ticket.set_user(user.as_bytes());
    }
    let mut session = Session::new(core, config, client, requested, record);
    let (request, early_plain) = match request {
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
    let with_quota = |mut t: Established| {
        t.quota = Some(lease);
        Some(t)
    };
    // Client bytes that came with the request go on to the target; under
    // protection they are still wrapped, and only what the request's own
    // message carried past it is plaintext.
    let early = match session.requested.protection {
        Some(_) => {
            session.pending_sealed = reader.leftover().to_vec();
            early_plain
        }
        None => reader.leftover().to_vec(),
    };
    drop(reader);
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

/// One open tunnel or association in `coresocks_tunnels_open`, for as
/// long as it lives.
pub(crate) struct OpenGauge<'a> {
    gauge: Option<&'a std::sync::atomic::AtomicU64>,
}

impl<'a> OpenGauge<'a> {
    pub(crate) fn new(core: &'a Core, command: Option<Command>) -> OpenGauge<'a> {
        let gauge = command.map(|c| {
            let i = match c {
                Command::Connect => 0,
                Command::Bind => 1,
                Command::UdpAssociate => 2,
            };
            &core.metrics().open_by_command[i]
        });
        if let Some(g) = gauge {
            metrics::add(g, 1);
        }
        OpenGauge { gauge }
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.gauge {
            metrics::sub_one(g);
        }
    }
}

/// A TCP tunnel (CONNECT, BIND) that relays, with what it holds until it
/// ends: its place in the quotas and in the open-tunnel gauge. A future
/// of its own (ready with the report and the tunnel's lifetime) so that an
/// idle tunnel's task holds this and the access record, nothing more.
struct Relaying<'a> {
    tunnel: crate::relay::Tunnel<'a>,
    started: std::time::Instant,
    _open: OpenGauge<'a>,
    _quota: Option<crate::quota::QuotaLease>,
}

/// After the handshake: a tunnel to relay, or the session's end.
#[allow(clippy::large_enum_variant)] // in place in the task: a box would cost an allocation per tunnel
enum Next<'a> {
    Relay(Relaying<'a>),
    Done(Result<(), SessionError>),
}

impl Next<'_> {
    fn into_result(self) -> Result<(), SessionError> {
        match self {
            Next::Relay(_) => Ok(()),
            Next::Done(result) => result,
        }
    }
}

impl<'a> Relaying<'a> {
    fn after(
        core: &'a Core,
        outcome: Result<Option<Established>, SessionError>,
        record: &AccessRecord,
        stop: &'a StopSignal,
    ) -> Next<'a> {
        match outcome {
            Ok(Some(t)) => Next::Relay(Relaying::start(core, t, record, stop)),
            Ok(None) => Next::Done(Ok(())),
            Err(e) => Next::Done(Err(e)),
        }
    }

    fn start(core: &'a Core, t: Established, record: &AccessRecord, stop: &'a StopSignal) -> Self {
        crate::sys::set_nodelay(&t.client);
        let throttle = core
            .bandwidth
            .throttle(record.user.as_deref(), record.client.ip().to_canonical());
        let tunnel = core
            .relay
            .run(t.client, t.target, t.early, throttle, t.sealed, stop);
        Relaying {
            tunnel,
            started: std::time::Instant::now(),
            _open: OpenGauge::new(core, record.command),
            _quota: t.quota,
        }
    }
}

impl std::future::Future for Relaying<'_> {
    type Output = (crate::relay::RelayReport, std::time::Duration);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let report = std::task::ready!(std::pin::Pin::new(&mut self.tunnel).poll(cx));
        std::task::Poll::Ready((report, self.started.elapsed()))
    }
}

/// Records how a tunnel went, in the metrics and its access record.
fn tunnel_ended(
    core: &Core,
    (r, lifetime): (crate::relay::RelayReport, std::time::Duration),
    record: &mut AccessRecord,
) {
    let m = core.metrics();
    m.tunnel_seconds
        .observe(lifetime, &metrics::LIFETIME_BUCKETS);
    // Bytes were counted as they moved (`relay::LiveCounters`).
    metrics::add(&m.bandwidth_waits, r.throttled);
    metrics::add(&m.tunnels_by_engine[r.engine.metrics_index()], 1);
    metrics::add(&m.bytes_spliced, r.spliced);
    metrics::set(&m.pipes, core.relay.pipes.live() as u64);
    metrics::set(&m.pipe_misses, core.relay.pipes.misses.get());
    record.up = r.client_to_target;
    record.down = r.target_to_client;
    record.engine = Some(r.engine.as_str());
    record.end = Some(r.end.to_string());
}

impl<'a, S> Session<'a, S> {
    /// The authenticated user, if users are configured.
    fn user(&self) -> Option<&str> {
        self.requested.user.as_deref()
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

/// The methods this server accepts: GSSAPI and RFC 1929 where configured,
/// else none at all.
fn acceptable_methods(config: &Config) -> Vec<Method> {
    let mut methods = Vec::with_capacity(2);
    if config.gssapi.is_some() {
        methods.push(Method::GSSAPI);
    }
    if config.users.is_some() {
        methods.push(Method::USER_PASS);
    }
    if methods.is_empty() {
        methods.push(Method::NO_AUTH);
    }
    methods
}

/// Greeting, method selection (the first acceptable method in the
/// client's order) and that method's sub-negotiation.
async fn negotiate(
    core: &Core,
    config: &Config,
    client_ip: std::net::IpAddr,
    client: &mut Stream,
    reader: &mut MessageReader,
) -> Result<Authenticated, SessionError> {
    let greeting = match reader.next::<Greeting>(client).await {
        Err(SessionError::Proto(crate::proto::ProtoError::NoMethods)) => {
            send(client, &MethodSelection(Method::NO_ACCEPTABLE).to_bytes()).await?;
            return Err(SessionError::NoAcceptableMethod);
        }
        other => other?,
    };
    let Some(chosen) = greeting.first_of(&acceptable_methods(config)) else {
        send(client, &MethodSelection(Method::NO_ACCEPTABLE).to_bytes()).await?;
        return Err(SessionError::NoAcceptableMethod);
    };
    send(client, &MethodSelection(chosen).to_bytes()).await?;
    match (chosen, &config.gssapi, &config.users) {
        (Method::GSSAPI, Some(acceptor), _) => {
            let (principal, level, protection) =
                gssapi_method::authenticate(acceptor, client, reader).await?;
            Ok(Authenticated::new(
                Some(principal),
                Auth::Gssapi(level),
                protection,
            ))
        }
        (Method::USER_PASS, _, Some(users)) => {
            password::user_pass(core, config, users, client_ip, client, reader).await
        }
        _ => Ok(Authenticated::new(None, Auth::None, None)),
    }
}

/// BND.ADDR/BND.PORT of a failure reply.
fn unspecified() -> TargetAddr {
    TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
}

async fn send(client: &mut Stream, bytes: &[u8]) -> Result<(), SessionError> {
    client
        .write_all(bytes)
        .await
        .map_err(SessionError::ClientIo)
}
