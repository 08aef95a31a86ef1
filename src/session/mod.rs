//! One client connection, from greeting to the end of its tunnel.
//!
//! The handshake is typed: [`negotiate`] is the only way to get an
//! [`Authenticated`] token, and reading the request or sending a reply takes
//! that token, so no request is served before authentication.
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
    Command, Greeting, Method, MethodSelection, Reply, ReplyCode, Request, TargetAddr,
    UserPassRequest, UserPassStatus,
};
use crate::runtime::{Core, Stop, StopSignal, Ticket};

/// Proof that method negotiation (and authentication, if required)
/// succeeded.
pub struct Authenticated {
    pub user: Option<String>,
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
        let request = reader.next(&mut client, Request::decode).await;
        Ok::<_, SessionError>((auth, request))
    };
    let deadline = async {
        glommio::timer::sleep(core.config.handshake_timeout).await;
        Err(SessionError::HandshakeTimeout)
    };
    let (auth, request) = future::or(handshake, deadline).await?;
    // What the client's pace decides is over; from here the proxy's own
    // timeouts bound the session.
    ticket.handshake_done();
    record.user = auth.user.clone();
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            // A malformed request gets the reply its error calls for.
            reply_error(core, &auth, &mut client, &e, record).await;
            return Err(e);
        }
    };
    record.command = Some(request.command);
    record.target = Some(request.target.clone());
    let client_ip = record.client.ip().to_canonical();
    let lease = match core.quotas.acquire(auth.user.as_deref(), client_ip) {
        Ok(lease) => lease,
        Err((e, reason)) => {
            metrics::add(&core.metrics().quota_refusals[reason], 1);
            reply_error(core, &auth, &mut client, &e, record).await;
            return Err(e);
        }
    };
    let with_quota = |mut t: Established| {
        t.quota = Some(lease);
        Some(t)
    };
    match request.command {
        Command::Connect => {
            let early = reader.leftover().to_vec();
            drop(reader);
            connect::serve_connect(core, &auth, client, request.target, early, record)
                .await
                .map(with_quota)
        }
        Command::Bind => {
            let early = reader.leftover().to_vec();
            drop(reader);
            bind::serve_bind(core, &auth, client, request.target, early, record)
                .await
                .map(with_quota)
        }
        Command::UdpAssociate => {
            drop(reader);
            let served =
                udp::serve_udp(core, &auth, client, request.target, record, &ticket.stop).await;
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

/// Who asks, for the egress policy.
fn requester(record: &AccessRecord, command: Command) -> Requester<'_> {
    Requester {
        client: record.client.ip().to_canonical(),
        user: record.user.as_deref(),
        command,
    }
}

/// Keeps the addresses of `target` that the egress policy allows, in
/// their order, with the source pool of the rule that allowed the first
/// (empty: the global one). With none left the request is refused (reply
/// 0x02), and the access log names the rule, or `private`, that refused it.
fn egress_filter<'c>(
    core: &'c Core,
    command: Command,
    target: &TargetAddr,
    mut addrs: Vec<SocketAddr>,
    record: &mut AccessRecord,
) -> Result<(Vec<SocketAddr>, &'c [std::net::IpAddr]), SessionError> {
    let domain = match target {
        TargetAddr::Domain(name, _) => Some(name.as_str()),
        TargetAddr::Ip(_) => None,
    };
    let policy = &core.config.policy;
    let who = requester(record, command);
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
        record.rule = rule.map(|r| r.name.clone());
        return Ok((addrs, rule.map_or(&[][..], |r| r.source.as_slice())));
    }
    let Some((addr, denial)) = refused else {
        return Err(SessionError::NotAllowed(format!(
            "target {target}: no address"
        )));
    };
    metrics::add(&core.metrics().denied[denial.metrics_index()], 1);
    let message = format!("target {target} ({addr}) {denial}");
    record.rule = Some(denial.name().to_owned());
    record.resolved = Some(addr);
    Err(SessionError::NotAllowed(message))
}

/// Sends the success reply (which needs authentication) and records it.
async fn reply_success(
    core: &Core,
    auth: &Authenticated,
    client: &mut TcpStream,
    bound: SocketAddr,
    record: &mut AccessRecord,
) -> Result<(), SessionError> {
    record.reply = Some(ReplyCode::Succeeded);
    core.metrics().reply(ReplyCode::Succeeded);
    let bound = SocketAddr::new(bound.ip().to_canonical(), bound.port());
    send_reply(auth, client, ReplyCode::Succeeded, &TargetAddr::Ip(bound)).await
}

/// Greeting, method selection and, when users are configured, RFC 1929.
async fn negotiate(
    core: &Core,
    client: &mut TcpStream,
    reader: &mut MessageReader,
) -> Result<Authenticated, SessionError> {
    let greeting = match reader.next(client, Greeting::decode).await {
        Err(SessionError::Proto(crate::proto::ProtoError::NoMethods)) => {
            send(client, &MethodSelection(Method::NO_ACCEPTABLE).encode()).await?;
            return Err(SessionError::NoAcceptableMethod);
        }
        other => other?,
    };
    let wanted = match &core.config.users {
        Some(_) => Method::USER_PASS,
        None => Method::NO_AUTH,
    };
    if !greeting.methods.contains(wanted) {
        send(client, &MethodSelection(Method::NO_ACCEPTABLE).encode()).await?;
        return Err(SessionError::NoAcceptableMethod);
    }
    send(client, &MethodSelection(wanted).encode()).await?;
    let Some(users) = &core.config.users else {
        return Ok(Authenticated { user: None });
    };
    let creds = match reader.next(client, UserPassRequest::decode).await {
        Ok(c) => c,
        Err(e @ SessionError::Proto(_)) => {
            send(client, &UserPassStatus::FAILURE.encode()).await?;
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
        send(client, &UserPassStatus::FAILURE.encode()).await?;
        return Err(SessionError::AuthFailed(user));
    }
    send(client, &UserPassStatus::SUCCESS.encode()).await?;
    Ok(Authenticated { user: Some(user) })
}

/// Sends the failure reply for `e`, if it has one.
async fn reply_error(
    core: &Core,
    auth: &Authenticated,
    client: &mut TcpStream,
    e: &SessionError,
    record: &mut AccessRecord,
) {
    if let Some(code) = e.reply_code() {
        record.reply = Some(code);
        core.metrics().reply(code);
        let _ = send_reply(auth, client, code, &unspecified()).await;
    }
}

/// BND.ADDR/BND.PORT of a failure reply.
fn unspecified() -> TargetAddr {
    TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))
}

async fn send_reply(
    _auth: &Authenticated,
    client: &mut TcpStream,
    code: ReplyCode,
    bound: &TargetAddr,
) -> Result<(), SessionError> {
    let mut out = Vec::with_capacity(Reply::MAX_LEN);
    Reply {
        code,
        bound: bound.clone(),
    }
    .encode(&mut out);
    send(client, &out).await
}

async fn send(client: &mut TcpStream, bytes: &[u8]) -> Result<(), SessionError> {
    client
        .write_all(bytes)
        .await
        .map_err(SessionError::ClientIo)
}
