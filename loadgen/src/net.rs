//! Connecting: a tunnel through the proxy (with coresocks' own client) or a
//! direct connection, the check made before any load, and the small socket
//! helpers the scenarios share.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use coresocks_client::gss::Protection;
use coresocks_client::{self as client, Credentials, GssapiOptions};
use coresocks_io::events::Stream;
use coresocks_proto::{Command, Socks4Command, TargetAddr};
use futures_lite::io::{AsyncRead, AsyncWrite};

use crate::error::{describe, Failure, LoadgenError, Stage};
use crate::wire::{HELLO_REPLY, MODE_HELLO};

/// The protocol loadgen speaks to a proxy, from the scheme its address is
/// given with (`socks4a://HOST:PORT`, `http://HOST:PORT`; none: SOCKS5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyProtocol {
    #[default]
    Socks5,
    /// SOCKS4 with the 4a extension (loadgen's targets are IPv4 addresses,
    /// so the requests are plain SOCKS4 on the wire).
    Socks4a,
    HttpConnect,
}

impl ProxyProtocol {
    /// Takes the scheme off a proxy address: the protocol and the rest.
    pub fn split(text: &str) -> Result<(ProxyProtocol, &str), String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Ok((ProxyProtocol::Socks5, text));
        };
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" => ProxyProtocol::Socks5,
            "socks4" | "socks4a" => ProxyProtocol::Socks4a,
            "http" | "http-connect" => ProxyProtocol::HttpConnect,
            other => {
                return Err(format!(
                    "{other}:// is not a proxy protocol loadgen speaks (socks5://, socks4a://, http://)"
                ))
            }
        };
        Ok((protocol, rest))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Socks5 => "socks5",
            ProxyProtocol::Socks4a => "socks4a",
            ProxyProtocol::HttpConnect => "http-connect",
        }
    }
}

/// How to reach the target: through a proxy or directly.
#[derive(Debug, Clone)]
pub struct PathSpec {
    pub proxy: Option<SocketAddr>,
    pub protocol: ProxyProtocol,
    pub creds: Option<Credentials>,
    /// GSSAPI (RFC 1961) instead of RFC 1929.
    pub gssapi: Option<GssapiOptions>,
    pub target: SocketAddr,
}

impl PathSpec {
    /// Where the TCP connection goes first.
    pub fn first_hop(&self) -> SocketAddr {
        self.proxy.unwrap_or(self.target)
    }
}

/// The SOCKS5 negotiation and one request, with RFC 1929 or GSSAPI as the
/// path says: the BND address, and the protection the data must go
/// through (GSSAPI at integrity or confidentiality). The first GSSAPI
/// step may ask the KDC for a ticket: it blocks the core, which only
/// delays setup, never the measurement window.
pub async fn negotiate<S>(
    s: &mut S,
    command: Command,
    target: &TargetAddr,
    path: &PathSpec,
) -> Result<(TargetAddr, Option<Protection>), client::ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match (path.protocol, &path.gssapi) {
        (ProxyProtocol::Socks5, Some(opts)) => {
            client::handshake_gssapi(s, command, target, opts).await
        }
        (ProxyProtocol::Socks5, None) => client::handshake(s, command, target, path.creds.as_ref())
            .await
            .map(|bound| (bound, None)),
        (ProxyProtocol::Socks4a, _) => {
            let command = match command {
                Command::Connect => Socks4Command::Connect,
                Command::Bind => Socks4Command::Bind,
                Command::UdpAssociate => return Err(unsupported(command)),
            };
            // SOCKS4's USERID; "user:password" where the proxy has users.
            let user_id = path
                .creds
                .as_ref()
                .map(|c| format!("{}:{}", c.username, c.password))
                .unwrap_or_default();
            let bound = client::handshake_socks4(s, command, target, user_id.as_bytes()).await?;
            Ok((TargetAddr::Ip(SocketAddr::V4(bound)), None))
        }
        (ProxyProtocol::HttpConnect, _) if command != Command::Connect => Err(unsupported(command)),
        (ProxyProtocol::HttpConnect, _) => {
            let early = client::handshake_http_connect(s, target, path.creds.as_ref()).await?;
            // loadgen's targets speak only when spoken to.
            if !early.is_empty() {
                return Err(client::ClientError::Proto(
                    coresocks_proto::ProtoError::MalformedStatusLine,
                ));
            }
            // HTTP names no bound address; the target stands for it.
            Ok((target.clone(), None))
        }
    }
}

/// A command the path's protocol cannot carry (UDP over SOCKS4 or HTTP).
fn unsupported(command: Command) -> client::ClientError {
    client::ClientError::Proto(coresocks_proto::ProtoError::UnsupportedCommand(
        command as u8,
    ))
}

/// [`negotiate`] on a blocking std stream.
pub fn negotiate_blocking<S>(
    s: &mut S,
    command: Command,
    target: &TargetAddr,
    path: &PathSpec,
) -> Result<(TargetAddr, Option<Protection>), client::ClientError>
where
    S: Read + Write,
{
    let mut s = futures_lite::io::AssertAsync::new(s);
    futures_lite::future::block_on(negotiate(&mut s, command, target, path))
}

/// Resolves HOST:PORT once, at start-up (never on a core).
pub fn resolve(what: &'static str, text: &str) -> Result<SocketAddr, LoadgenError> {
    let err = |reason: String| LoadgenError::Resolve {
        what,
        addr: text.to_owned(),
        reason,
    };
    let mut addrs = text.to_socket_addrs().map_err(|e| err(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| err("no address found".to_owned()))
}

/// Opens a tunnel to the path's target: TCP to the first hop, then, through
/// a proxy, the SOCKS5 negotiation and CONNECT. `stage` tells the caller
/// how far it got when it fails (for the timeout that wraps it).
/// `linger_zero` makes every close of this socket a RST, failures included.
pub async fn open(
    path: &PathSpec,
    stage: &std::cell::Cell<Stage>,
    linger_zero: bool,
) -> Result<Stream, Failure> {
    match open_protected(path, stage, linger_zero).await? {
        (s, None) => Ok(s),
        // Only throughput relays protected data; the CLI refuses the rest.
        (_, Some(_)) => Err(Failure::ProxyProtocol),
    }
}

/// [`open`], keeping the GSSAPI protection the tunnel's data needs.
pub async fn open_protected(
    path: &PathSpec,
    stage: &std::cell::Cell<Stage>,
    linger_zero: bool,
) -> Result<(Stream, Option<Protection>), Failure> {
    stage.set(Stage::Connect);
    let mut stream = crate::ring::connect(path.first_hop())
        .await
        .map_err(|e| Failure::from_io(&e, Stage::Connect))?;
    if linger_zero {
        coresocks_io::sys::set_linger_zero(&stream);
    }
    coresocks_io::sys::set_nodelay(&stream);
    let mut protection = None;
    if path.proxy.is_some() {
        stage.set(Stage::Handshake);
        protection = negotiate(
            &mut stream,
            Command::Connect,
            &TargetAddr::Ip(path.target),
            path,
        )
        .await
        .map_err(|e| Failure::from_client(&e))?
        .1;
    }
    stage.set(Stage::Target);
    Ok((stream, protection))
}

/// Runs `fut`, or gives `Failure::Timeout`-like results when `limit` passes
/// first; `on_timeout` picks the failure from the stage reached.
pub async fn within<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, Failure>>,
    on_timeout: impl FnOnce() -> Failure,
) -> Result<T, Failure> {
    futures_lite::future::or(fut, async move {
        coresocks_io::events::sleep(limit).await;
        Err(on_timeout())
    })
    .await
}

/// The failure a timeout means at this stage.
pub fn timeout_failure(stage: Stage) -> Failure {
    match stage {
        Stage::Connect => Failure::ConnectTimeout,
        Stage::Handshake | Stage::Target => Failure::Timeout,
    }
}

/// Checks the path before any load: the proxy (if any) accepts us and
/// CONNECTs to the target, and the target speaks loadgen's protocol. Runs on
/// the main thread with blocking sockets, so every cause gets its own
/// message.
pub fn preflight(path: &PathSpec, timeout: Duration) -> Result<(), LoadgenError> {
    let fail = |failure: Failure, stage: Stage| {
        LoadgenError::Unreachable(describe(failure, stage, path.proxy, path.target))
    };
    let io_fail = |e: io::Error, stage: Stage| {
        let failure = Failure::from_io(&e, stage);
        match failure {
            Failure::Io => LoadgenError::Unreachable(format!(
                "{} ({e})",
                describe(failure, stage, path.proxy, path.target)
            )),
            _ => fail(failure, stage),
        }
    };
    let mut stream = std::net::TcpStream::connect_timeout(&path.first_hop(), timeout)
        .map_err(|e| io_fail(e, Stage::Connect))?;
    let setup = |s: &std::net::TcpStream| -> io::Result<()> {
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)
    };
    setup(&stream).map_err(|e| io_fail(e, Stage::Connect))?;
    let mut protection = None;
    if path.proxy.is_some() {
        protection = negotiate_blocking(
            &mut stream,
            Command::Connect,
            &TargetAddr::Ip(path.target),
            path,
        )
        .map_err(|e| match e {
            client::ClientError::Io(io) => io_fail(io, Stage::Handshake),
            other => fail(Failure::from_client(&other), Stage::Handshake),
        })?
        .1;
    }
    let mut stream: Box<dyn ReadWrite> = match protection {
        Some(p) => Box::new(client::SealedStream::new(stream, p)),
        None => Box::new(stream),
    };
    stream
        .write_all(&[MODE_HELLO])
        .map_err(|e| io_fail(e, Stage::Target))?;
    let mut answer = [0u8; 4];
    match stream.read_exact(&mut answer) {
        Ok(()) if &answer == HELLO_REPLY => Ok(()),
        Ok(()) => Err(fail(Failure::TargetProtocol, Stage::Target)),
        // A proxy that connected, then closed: the target hung up on us.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(fail(Failure::TargetProtocol, Stage::Target))
        }
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
            Err(LoadgenError::Unreachable(format!(
                "the target at {} did not answer loadgen's hello within {:?} (is it a `loadgen serve`?)",
                path.target, timeout
            )))
        }
        Err(e) => Err(io_fail(e, Stage::Target)),
    }
}

/// A blocking stream, plain or sealed.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The payload of the UDP check datagram (the echo sends it back).
const UDP_PROBE: &[u8] = b"loadgen udp check";

/// Words for a failure of UDP ASSOCIATE or of the UDP path: as
/// [`describe`], but a refusal names the command.
pub fn describe_udp(failure: Failure, stage: Stage, path: &PathSpec) -> String {
    match (failure, path.proxy) {
        (Failure::Reply(code), Some(proxy)) => {
            let code = coresocks_proto::ReplyCode::from_byte(code);
            let hint = match code {
                coresocks_proto::ReplyCode::CommandNotSupported => {
                    " (the proxy does not support UDP ASSOCIATE)"
                }
                coresocks_proto::ReplyCode::NotAllowed => {
                    " (its rules forbid UDP, or this client or target; coresocks needs --allow 127.0.0.0/8 for loopback targets)"
                }
                _ => "",
            };
            format!("the proxy at {proxy} refused UDP ASSOCIATE: {code}{hint}")
        }
        _ => describe(failure, stage, path.proxy, path.target),
    }
}

/// The relay's address from the UDP ASSOCIATE reply. An unspecified
/// address (0.0.0.0, as some proxies answer) means the proxy's own.
pub fn relay_addr(bound: &TargetAddr, proxy: SocketAddr) -> Result<SocketAddr, String> {
    match bound {
        TargetAddr::Ip(a) if a.ip().is_unspecified() => Ok(SocketAddr::new(proxy.ip(), a.port())),
        TargetAddr::Ip(a) => Ok(*a),
        other => Err(format!(
            "the proxy at {proxy} named its UDP relay {other:?}; loadgen needs an IP address"
        )),
    }
}

/// The UDP part of the check: through the proxy, a UDP ASSOCIATE on its
/// own control connection; then a datagram to the UDP echo (on the
/// target's port number) must come back within `timeout` (sent again
/// every 200 ms, as UDP may drop it).
pub fn preflight_udp(path: &PathSpec, timeout: Duration) -> Result<(), LoadgenError> {
    let unreachable =
        |f: Failure, stage: Stage| LoadgenError::Unreachable(describe_udp(f, stage, path));
    let io_fail = |e: io::Error, stage: Stage| {
        let f = Failure::from_io(&e, stage);
        match f {
            Failure::Io => {
                LoadgenError::Unreachable(format!("{} ({e})", describe_udp(f, stage, path)))
            }
            _ => unreachable(f, stage),
        }
    };
    // Kept open for the check: the association lives as long as it.
    let mut _control = None;
    let (sock, dest) = match path.proxy {
        Some(proxy) => {
            let mut control = std::net::TcpStream::connect_timeout(&proxy, timeout)
                .map_err(|e| io_fail(e, Stage::Connect))?;
            control
                .set_read_timeout(Some(timeout))
                .and_then(|()| control.set_write_timeout(Some(timeout)))
                .map_err(|e| io_fail(e, Stage::Connect))?;
            let local = control
                .local_addr()
                .map_err(|e| io_fail(e, Stage::Connect))?;
            let sock = std::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0))
                .map_err(|e| io_fail(e, Stage::Connect))?;
            let me = sock.local_addr().map_err(|e| io_fail(e, Stage::Connect))?;
            let (bound, _) = negotiate_blocking(
                &mut control,
                Command::UdpAssociate,
                &TargetAddr::Ip(me),
                path,
            )
            .map_err(|e| match e {
                client::ClientError::Io(io) => io_fail(io, Stage::Handshake),
                other => unreachable(Failure::from_client(&other), Stage::Handshake),
            })?;
            let relay = relay_addr(&bound, proxy).map_err(LoadgenError::Unreachable)?;
            _control = Some(control);
            (sock, relay)
        }
        None => {
            let any = match path.target {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
                SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
            };
            let sock = std::net::UdpSocket::bind(any).map_err(|e| io_fail(e, Stage::Connect))?;
            (sock, path.target)
        }
    };
    let mut datagram = Vec::new();
    if path.proxy.is_some() {
        client::udp_datagram(&TargetAddr::Ip(path.target), UDP_PROBE, &mut datagram);
    } else {
        datagram.extend_from_slice(UDP_PROBE);
    }
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 2048];
    let mut last_error = None;
    while Instant::now() < deadline {
        if let Err(e) = sock.send_to(&datagram, dest) {
            last_error = Some(e);
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_millis(1), Duration::from_millis(200));
        sock.set_read_timeout(Some(wait))
            .map_err(|e| io_fail(e, Stage::Target))?;
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let payload = if path.proxy.is_some() {
                        client::udp_payload(&buf[..n]).ok().map(|(_, p)| p)
                    } else {
                        Some(&buf[..n])
                    };
                    if payload == Some(UDP_PROBE) {
                        return Ok(());
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => {
                    last_error = Some(e);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    let via = match path.proxy {
        Some(proxy) => format!(" through the UDP relay {dest} of the proxy at {proxy}"),
        None => String::new(),
    };
    let cause = last_error
        .map(|e| format!(" (last error: {e})"))
        .unwrap_or_default();
    Err(LoadgenError::Unreachable(format!(
        "no UDP echo from {}{via} within {timeout:?}{cause} (loadgen serve echoes UDP on its TCP port number; is UDP allowed on the way?)",
        path.target
    )))
}
