//! One client connection, from greeting to the end of its tunnel.
//!
//! The handshake is typed: [`negotiate`] is the only way to get an
//! [`Authenticated`] proof; reading the request uses it up and yields the
//! [`Requested`] state that a [`Session`] needs to send any reply. So no
//! request is read, and no reply sent, before authentication. The three
//! commands are methods of [`Session`] (`connect.rs`, `bind.rs`,
//! `udp.rs`).
//!
//! greeting -> method selection -> (RFC 1929 auth) -> request -> command
//! (CONNECT: resolve, connect, reply, relay) -> access log line.

mod access;
mod bind;
mod connect;
mod error;
pub mod quota;
mod reader;
mod udp;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use futures_lite::future;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;

pub use access::AccessRecord;
pub use error::{connect_reply_code, SessionError};
use reader::MessageReader;

use crate::config::Verification;
use crate::metrics;
use crate::policy::Requester;
use crate::proto::{
    Codec, Command, Greeting, Method, MethodSelection, Reply, ReplyCode, Request, TargetAddr,
    UserPassRequest, UserPassStatus,
};
use crate::runtime::{Core, Stop, StopSignal, Ticket};

/// Proof that method negotiation (and authentication, if required)
/// succeeded. Only [`negotiate`] makes one (the field is private to this
/// module), and [`Authenticated::read_request`] uses it up.
pub struct Authenticated {
    user: Option<String>,
}

impl Authenticated {
    /// Reads the request; the proof becomes the [`Requested`] state that
    /// replies need, whether the request decoded or not (a malformed one
    /// gets the reply its error calls for).
    async fn read_request(
        self,
        reader: &mut MessageReader,
        client: &mut TcpStream,
    ) -> (Requested, Result<Request, SessionError>) {
        let request = reader.next::<Request>(client).await;
        (Requested { user: self.user }, request)
    }
}

/// An authenticated client whose request has been read: the only state in
/// which the proxy may reply. Made only from an [`Authenticated`].
struct Requested {
    user: Option<String>,
}

/// One client past its request: what every command needs to reply, judge
/// destinations against the egress policy, and record what happened.
struct Session<'a> {
    core: &'a Core,
    client: TcpStream,
    requested: Requested,
    record: &'a mut AccessRecord,
}

/// A session that is ready to relay a TCP tunnel (CONNECT, BIND).
pub struct Established {
    client: TcpStream,
    target: TcpStream,
    /// Client bytes that arrived with the request, for the target.
    early: Vec<u8>,
    /// The tunnel's place in the per-user and per-client quotas, held
    /// until the relay ends.
    quota: Option<quota::QuotaLease>,
}

/// Serves one accepted client to the end and writes its access-log line.
///
/// Everything before the relay runs in a boxed future that is freed when
/// it returns: a task's allocation is the size of its largest state, and a
/// tunnel that lives for hours should carry only the relay's.
pub async fn serve(core: Rc<Core>, client: TcpStream, peer: SocketAddr, ticket: Ticket) {
    let mut record = AccessRecord::new(core.id, ticket.id(), peer);
    let client_fd = client.as_raw_fd();
    let work = Box::pin(establish(&core, client, &ticket, &mut record));
    // Shed (a stalled handshake) or cut (the end of the shutdown grace)
    // while still setting up. `or` prefers `work` when both are ready, so a
    // UDP association, which watches the same signal, ends with its counts.
    let stopped = async {
        let stop = ticket.stop.wait().await;
        // A reset, not a FIN: the client must not take this for an answer.
        crate::sys::set_linger_zero(client_fd);
        Err(SessionError::Stopped(stop))
    };
    let result = match future::or(work, stopped).await {
        Ok(Some(t)) => {
            relay_tunnel(&core, t, &mut record, &ticket.stop).await;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        record.end = Some(e.tag().to_owned());
        match &e {
            SessionError::HandshakeTimeout => metrics::add(&core.metrics().handshake_timeouts, 1),
            SessionError::AuthFailed(user) => {
                record.user = Some(user.clone());
                metrics::add(&core.metrics().auth_failures, 1)
            }
            _ => {}
        }
        tracing::debug!(conn = ticket.id(), client = %peer, "session ended: {e}");
    }
    if let Some(Stop::ShutdownCut) = ticket.stop.stopped() {
        metrics::add(&core.metrics().shutdown_cuts, 1);
    }
    if core.config.access_log != crate::config::AccessLog::Off {
        tracing::info!(target: "access", "{}", record.line());
    }
}

/// Handshake and command, up to the point where a TCP tunnel is ready to
/// relay (returned) or the session is over (UDP ASSOCIATE, errors).
async fn establish(
    core: &Core,
    mut client: TcpStream,
    ticket: &Ticket,
    record: &mut AccessRecord,
) -> Result<Option<Established>, SessionError> {
    let mut reader = MessageReader::new();
    let handshake = async {
        let auth = negotiate(core, &mut client, &mut reader).await?;
        Ok::<_, SessionError>(auth.read_request(&mut reader, &mut client).await)
    };
    let deadline = async {
        glommio::timer::sleep(core.config.handshake_timeout).await;
        Err(SessionError::HandshakeTimeout)
    };
    let (requested, request) = future::or(handshake, deadline).await?;
    // What the client's pace decides is over; from here the proxy's own
    // timeouts bound the session.
    ticket.handshake_done();
    record.user = requested.user.clone();
    let mut session = Session {
        core,
        client,
        requested,
        record,
    };
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            // A malformed request gets the reply its error calls for.
            session.reply_error(&e).await;
            return Err(e);
        }
    };
    session.record.command = Some(request.command);
    session.record.target = Some(request.target.clone());
    let client_ip = session.record.client.ip().to_canonical();
    let lease = match core.quotas.acquire(session.user(), client_ip) {
        Ok(lease) => lease,
        Err((e, reason)) => {
            metrics::add(&core.metrics().quota_refusals[reason], 1);
            session.reply_error(&e).await;
            return Err(e);
        }
    };
    let with_quota = |mut t: Established| {
        t.quota = Some(lease);
        Some(t)
    };
    // Client bytes that came with the request go on to the target.
    let early = reader.leftover().to_vec();
    drop(reader);
    match request.command {
        Command::Connect => session.connect(request.target, early).await.map(with_quota),
        Command::Bind => session.bind(request.target, early).await.map(with_quota),
        Command::UdpAssociate => {
            let served = session.udp_associate(request.target, &ticket.stop).await;
            drop(with_quota);
            served.map(|()| None)
        }
    }
}

/// Relays a TCP tunnel (CONNECT, BIND) and records how it went.
async fn relay_tunnel(core: &Core, t: Established, record: &mut AccessRecord, stop: &StopSignal) {
    crate::sys::set_nodelay(t.client.as_raw_fd());
    let throttle = core
        .bandwidth
        .throttle(record.user.as_deref(), record.client.ip().to_canonical());
    let r = core
        .relay
        .run(t.client, t.target, &t.early, throttle, stop)
        .await;
    let m = core.metrics();
    metrics::add(&m.bandwidth_waits, r.throttled);
    metrics::add(&m.bytes_client_to_target, r.client_to_target);
    metrics::add(&m.bytes_target_to_client, r.target_to_client);
    metrics::add(&m.tunnels_by_engine[r.engine.metrics_index()], 1);
    metrics::add(&m.bytes_spliced, r.spliced);
    metrics::set(&m.pipes, core.relay.pipes.live() as u64);
    metrics::set(&m.pipe_misses, core.relay.pipes.misses.get());
    record.up = r.client_to_target;
    record.down = r.target_to_client;
    record.engine = Some(r.engine.as_str());
    record.end = Some(r.end.to_string());
}

impl<'a> Session<'a> {
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
        let policy = &core.config.policy;
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

    /// Sends the success reply and records it.
    async fn reply_success(&mut self, bound: SocketAddr) -> Result<(), SessionError> {
        self.record.reply = Some(ReplyCode::Succeeded);
        self.core.metrics().reply(ReplyCode::Succeeded);
        let bound = SocketAddr::new(bound.ip().to_canonical(), bound.port());
        self.send_reply(ReplyCode::Succeeded, &TargetAddr::Ip(bound))
            .await
    }

    /// Sends the failure reply for `e`, if it has one, and records it.
    async fn reply_error(&mut self, e: &SessionError) {
        if let Some(code) = e.reply_code() {
            self.record.reply = Some(code);
            self.core.metrics().reply(code);
            let _ = self.send_reply(code, &unspecified()).await;
        }
    }

    async fn send_reply(
        &mut self,
        code: ReplyCode,
        bound: &TargetAddr,
    ) -> Result<(), SessionError> {
        let reply = Reply {
            code,
            bound: bound.clone(),
        };
        send(&mut self.client, &reply.to_bytes()).await
    }

    /// The tunnel to relay once a command has its other stream.
    fn established(self, target: TcpStream, early: Vec<u8>) -> Established {
        Established {
            client: self.client,
            target,
            early,
            quota: None,
        }
    }
}

/// Greeting, method selection and, when users are configured, RFC 1929.
async fn negotiate(
    core: &Core,
    client: &mut TcpStream,
    reader: &mut MessageReader,
) -> Result<Authenticated, SessionError> {
    let greeting = match reader.next::<Greeting>(client).await {
        Err(SessionError::Proto(crate::proto::ProtoError::NoMethods)) => {
            send(client, &MethodSelection(Method::NO_ACCEPTABLE).to_bytes()).await?;
            return Err(SessionError::NoAcceptableMethod);
        }
        other => other?,
    };
    let wanted = match &core.config.users {
        Some(_) => Method::USER_PASS,
        None => Method::NO_AUTH,
    };
    if !greeting.methods.contains(wanted) {
        send(client, &MethodSelection(Method::NO_ACCEPTABLE).to_bytes()).await?;
        return Err(SessionError::NoAcceptableMethod);
    }
    send(client, &MethodSelection(wanted).to_bytes()).await?;
    let Some(users) = &core.config.users else {
        return Ok(Authenticated { user: None });
    };
    let creds = match reader.next::<UserPassRequest>(client).await {
        Ok(c) => c,
        Err(e @ SessionError::Proto(_)) => {
            send(client, &UserPassStatus::FAILURE.to_bytes()).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let user = String::from_utf8_lossy(&creds.username).into_owned();
    let ok = match users.verify(&creds.username, &creds.password) {
        Verification::Decided(ok) => ok,
        // An Argon2 hash takes tens of milliseconds: off the core.
        Verification::Slow(check) => {
            glommio::executor()
                .spawn_blocking(move || check.run())
                .await
        }
    };
    if !ok {
        send(client, &UserPassStatus::FAILURE.to_bytes()).await?;
        return Err(SessionError::AuthFailed(user));
    }
    send(client, &UserPassStatus::SUCCESS.to_bytes()).await?;
    Ok(Authenticated { user: Some(user) })
}

/// BND.ADDR/BND.PORT of a failure reply.
fn unspecified() -> TargetAddr {
    TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
}

async fn send(client: &mut TcpStream, bytes: &[u8]) -> Result<(), SessionError> {
    client
        .write_all(bytes)
        .await
        .map_err(SessionError::ClientIo)
}
