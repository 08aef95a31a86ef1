//! A SOCKS5 client over the same sans-io codec the server uses: for tests,
//! for loadgen, and for anyone scripting against a proxy. SOCKS4/4a
//! ([`handshake_socks4`]) and HTTP CONNECT ([`handshake_http_connect`])
//! too, for the proxies and listeners that speak them.
//!
//! [`handshake`] works on any futures `AsyncRead + AsyncWrite` stream
//! (glommio's included); [`handshake_blocking`] runs the same code on a std
//! stream. Replies are read exactly, never past their end, so bytes that
//! follow belong to the tunnel.

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub mod gss;

use crate::gss::{self as gssapi, LevelEncoding, Protection, ProtectionLevel};
use coresocks_proto::{
    BasicCredentials, ConnectRequest, ConnectResponseHead, HttpVersion, Socks4Command, Socks4Reply,
    Socks4ReplyCode, Socks4Request,
};
use coresocks_proto::{
    Codec, Command, Decoded, Greeting, GssMessage, GssMessageType, Method, MethodSelection,
    ProtoError, Reply, ReplyCode, Request, TargetAddr, UserPassRequest, UserPassStatus,
};

/// Username and password for RFC 1929.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("I/O error talking to the proxy: {0}")]
    Io(#[from] std::io::Error),
    #[error("proxy sent a malformed message: {0}")]
    Proto(#[from] ProtoError),
    #[error("proxy accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    #[error("proxy chose method {0:#04x}, which was not offered")]
    UnexpectedMethod(u8),
    #[error("proxy rejected the username or password")]
    AuthRejected,
    #[error("proxy replied {0}")]
    Rejected(ReplyCode),
    #[error("GSSAPI: {0}")]
    Gssapi(String),
    #[error("proxy refused the GSSAPI authentication (RFC 1961 abort)")]
    GssapiAborted,
    #[error("proxy replied SOCKS4 {0}")]
    Socks4Rejected(Socks4ReplyCode),
    #[error("proxy answered HTTP {0}")]
    HttpStatus(u16),
}

impl From<gssapi::GssError> for ClientError {
    fn from(e: gssapi::GssError) -> ClientError {
        ClientError::Gssapi(e.to_string())
    }
}

/// Reads exactly one message, asking the decoder how many bytes it still
/// needs so nothing past the message is consumed.
async fn read_message<T: Codec, S: AsyncRead + Unpin>(s: &mut S) -> Result<T, ClientError> {
    let mut buf = Vec::with_capacity(Reply::MAX_LEN);
    loop {
        match T::decode(&buf)? {
            Decoded::Complete(v, _) => return Ok(v),
            Decoded::Incomplete(more) => {
                let at = buf.len();
                buf.resize(at + more, 0);
                s.read_exact(&mut buf[at..]).await?;
            }
        }
    }
}

/// Negotiates a method (no auth, or RFC 1929 when `creds` is given) and
/// sends one request; returns the successful reply's BND address.
pub async fn handshake<S>(
    s: &mut S,
    command: Command,
    target: &TargetAddr,
    creds: Option<&Credentials>,
) -> Result<TargetAddr, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let method = if creds.is_some() {
        Method::USER_PASS
    } else {
        Method::NO_AUTH
    };
    let mut out = Vec::with_capacity(600);
    Greeting::new(&[method]).encode(&mut out);
    s.write_all(&out).await?;
    let MethodSelection(chosen) = read_message::<MethodSelection, _>(s).await?;
    if chosen == Method::NO_ACCEPTABLE {
        return Err(ClientError::NoAcceptableMethod);
    }
    if chosen != method {
        return Err(ClientError::UnexpectedMethod(chosen.0));
    }
    if let Some(c) = creds {
        out.clear();
        UserPassRequest {
            username: c.username.as_bytes().to_vec(),
            password: c.password.as_bytes().to_vec(),
        }
        .encode(&mut out);
        s.write_all(&out).await?;
        if !read_message::<UserPassStatus, _>(s).await?.is_success() {
            return Err(ClientError::AuthRejected);
        }
    }
    out.clear();
    Request {
        command,
        target: target.clone(),
    }
    .encode(&mut out);
    s.write_all(&out).await?;
    read_reply(s).await
}

/// Reads one reply; a failure code becomes [`ClientError::Rejected`]. BIND
/// sends two replies, so it calls this twice.
pub async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> Result<TargetAddr, ClientError> {
    let reply = read_message::<Reply, _>(s).await?;
    match reply.code {
        ReplyCode::Succeeded => Ok(reply.bound),
        code => Err(ClientError::Rejected(code)),
    }
}

/// Sends one SOCKS4 request (4a's form for a domain target; SOCKS4 has no
/// IPv6) with `user_id`, and reads the reply; returns its address on 90.
/// BIND's second reply is another [`read_socks4_reply`].
pub async fn handshake_socks4<S>(
    s: &mut S,
    command: Socks4Command,
    target: &TargetAddr,
    user_id: &[u8],
) -> Result<std::net::SocketAddrV4, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = Socks4Request::new(command, target.clone(), user_id.to_vec())?;
    s.write_all(&request.to_bytes()).await?;
    read_socks4_reply(s).await
}

/// Reads one SOCKS4 reply; anything but 90 is [`ClientError::Socks4Rejected`].
pub async fn read_socks4_reply<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<std::net::SocketAddrV4, ClientError> {
    let reply = read_message::<Socks4Reply, _>(s).await?;
    match reply.code {
        Socks4ReplyCode::Granted => Ok(reply.addr),
        code => Err(ClientError::Socks4Rejected(code)),
    }
}

/// Sends `CONNECT target HTTP/1.1` (with `Proxy-Authorization: Basic` when
/// `creds` is given) and reads the response head; a status other than 2xx
/// is [`ClientError::HttpStatus`]. Returns the bytes read past the head:
/// the head's length is not known before its end, so the reads may take
/// the tunnel's first bytes with it (none when the target waits for the
/// client to speak first).
pub async fn handshake_http_connect<S>(
    s: &mut S,
    target: &TargetAddr,
    creds: Option<&Credentials>,
) -> Result<Vec<u8>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let basic = creds.map(|c| BasicCredentials {
        user: c.username.clone(),
        password: c.password.clone(),
    });
    let request = ConnectRequest::new(target.clone(), HttpVersion::Http11, basic)?;
    s.write_all(&request.to_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Decoded::Complete(head, used) = ConnectResponseHead::decode(&buf)? {
            if !(200..300).contains(&head.status) {
                return Err(ClientError::HttpStatus(head.status));
            }
            return Ok(buf.split_off(used));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// [`handshake`] on a blocking std stream.
pub fn handshake_blocking<S>(
    s: &mut S,
    command: Command,
    target: &TargetAddr,
    creds: Option<&Credentials>,
) -> Result<TargetAddr, ClientError>
where
    S: std::io::Read + std::io::Write,
{
    let mut s = futures_lite::io::AssertAsync::new(s);
    futures_lite::future::block_on(handshake(&mut s, command, target, creds))
}

/// [`handshake_socks4`] on a blocking std stream.
pub fn handshake_socks4_blocking<S>(
    s: &mut S,
    command: Socks4Command,
    target: &TargetAddr,
    user_id: &[u8],
) -> Result<std::net::SocketAddrV4, ClientError>
where
    S: std::io::Read + std::io::Write,
{
    let mut s = futures_lite::io::AssertAsync::new(s);
    futures_lite::future::block_on(handshake_socks4(&mut s, command, target, user_id))
}

/// [`handshake_http_connect`] on a blocking std stream.
pub fn handshake_http_connect_blocking<S>(
    s: &mut S,
    target: &TargetAddr,
    creds: Option<&Credentials>,
) -> Result<Vec<u8>, ClientError>
where
    S: std::io::Read + std::io::Write,
{
    let mut s = futures_lite::io::AssertAsync::new(s);
    futures_lite::future::block_on(handshake_http_connect(&mut s, target, creds))
}

/// Builds a datagram for a UDP relay: the RFC 1928 header for `target`,
/// then `payload`.
pub fn udp_datagram(target: &TargetAddr, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    coresocks_proto::UdpHeader {
        frag: 0,
        target: target.clone(),
    }
    .encode(out);
    out.extend_from_slice(payload);
}

/// Splits a datagram from a UDP relay into the address it came from and
/// its payload. A truncated header is an error.
pub fn udp_payload(datagram: &[u8]) -> Result<(TargetAddr, &[u8]), ProtoError> {
    match coresocks_proto::UdpHeader::decode(datagram)? {
        Decoded::Complete(h, n) => Ok((h.target, &datagram[n..])),
        Decoded::Incomplete(_) => Err(ProtoError::UnsupportedAddressType(0)),
    }
}

/// What the client asks for under GSSAPI (RFC 1961).
#[derive(Debug, Clone)]
pub struct GssapiOptions {
    /// The service part of the proxy's principal: `rcmd`, as curl uses.
    pub service: String,
    /// The proxy's host name as its principal spells it (the `host` in
    /// `rcmd/host@REALM`).
    pub host: String,
    /// The protection to ask for; the proxy may answer with more.
    pub level: ProtectionLevel,
    /// Wrapped (RFC 1961) or bare (NEC, curl's `--socks5-gssapi-nec`).
    pub encoding: LevelEncoding,
    /// Whose ticket to use, e.g. `alice@EXAMPLE.COM` [default: the cache's
    /// default principal].
    pub principal: Option<String>,
}

impl GssapiOptions {
    /// Service `rcmd` on `host`, integrity, wrapped, the default principal.
    pub fn new(host: &str) -> GssapiOptions {
        GssapiOptions {
            service: "rcmd".into(),
            host: host.into(),
            level: ProtectionLevel::Integrity,
            encoding: LevelEncoding::Wrapped,
            principal: None,
        }
    }
}

/// The next RFC 1961 message, which must be of `kind` (an abort is the
/// proxy's refusal).
async fn read_gss<S: AsyncRead + Unpin>(
    s: &mut S,
    kind: GssMessageType,
) -> Result<Vec<u8>, ClientError> {
    let m = read_message::<GssMessage, _>(s).await?;
    match m.kind {
        k if k == kind => Ok(m.token),
        GssMessageType::Abort => Err(ClientError::GssapiAborted),
        other => Err(ClientError::Gssapi(format!(
            "message type {:#04x} where {:#04x} belongs",
            other.octet(),
            kind.octet()
        ))),
    }
}

/// Negotiates GSSAPI (method 0x01) with the credentials of the default
/// cache (KRB5CCNAME), agrees a protection level, and sends one request
/// (encapsulated unless the level is `clear`). Returns the BND address and
/// the protection every later byte must go through (`None` at `clear`).
/// The first context step may ask the KDC for a ticket: run it where
/// blocking is allowed.
pub async fn handshake_gssapi<S>(
    s: &mut S,
    command: Command,
    target: &TargetAddr,
    opts: &GssapiOptions,
) -> Result<(TargetAddr, Option<Protection>), ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    s.write_all(&Greeting::new(&[Method::GSSAPI]).to_bytes())
        .await?;
    match read_message::<MethodSelection, _>(s).await? {
        MethodSelection(Method::GSSAPI) => {}
        MethodSelection(Method::NO_ACCEPTABLE) => return Err(ClientError::NoAcceptableMethod),
        MethodSelection(other) => return Err(ClientError::UnexpectedMethod(other.0)),
    }
    let stream = command != Command::UdpAssociate;
    let mut ctx = gssapi::initiator(&opts.service, &opts.host, opts.principal.as_deref(), stream)?;
    let mut token = ctx.step(None, None).map_err(gssapi::GssError::from)?;
    loop {
        if let Some(t) = token.take() {
            let m = GssMessage::new(GssMessageType::Context, t.to_vec());
            s.write_all(&m.to_bytes()).await?;
        }
        if libgssapi::context::SecurityContext::is_complete(&ctx) {
            break;
        }
        let from_proxy = read_gss(s, GssMessageType::Context).await?;
        token = ctx
            .step(Some(&from_proxy), None)
            .map_err(gssapi::GssError::from)?;
    }
    let ask = gssapi::encode_level(&mut ctx, opts.level, opts.encoding)?;
    s.write_all(&GssMessage::new(GssMessageType::Protection, ask).to_bytes())
        .await?;
    let answer = read_gss(s, GssMessageType::Protection).await?;
    let (agreed, _) = gssapi::decode_level(&mut ctx, &answer)?;
    if agreed < opts.level.min(ProtectionLevel::Confidentiality) {
        return Err(ClientError::Gssapi(format!(
            "proxy offers {} protection, less than the {} asked for",
            agreed.as_str(),
            opts.level.as_str()
        )));
    }
    let mut protection = match agreed {
        ProtectionLevel::Clear => None,
        level => Some(Protection::new(Box::new(ctx), level)),
    };
    let request = Request {
        command,
        target: target.clone(),
    }
    .to_bytes();
    match &mut protection {
        Some(p) => {
            let mut out = Vec::new();
            p.seal(&request, &mut out)?;
            s.write_all(&out).await?;
        }
        None => s.write_all(&request).await?,
    }
    let bound = read_reply_protected(s, protection.as_mut()).await?;
    Ok((bound, protection))
}

/// [`read_reply`], for a reply that may come encapsulated (BIND's second).
pub async fn read_reply_protected<S: AsyncRead + Unpin>(
    s: &mut S,
    protection: Option<&mut Protection>,
) -> Result<TargetAddr, ClientError> {
    let Some(p) = protection else {
        return read_reply(s).await;
    };
    let plain = p.open(&read_gss(s, GssMessageType::Encapsulated).await?)?;
    let reply = match Reply::decode(&plain)? {
        Decoded::Complete(r, _) => r,
        Decoded::Incomplete(_) => {
            return Err(ClientError::Gssapi("a reply cut short".into()));
        }
    };
    match reply.code {
        ReplyCode::Succeeded => Ok(reply.bound),
        code => Err(ClientError::Rejected(code)),
    }
}

/// [`handshake_gssapi`] on a blocking std stream.
pub fn handshake_gssapi_blocking<S>(
    s: &mut S,
    command: Command,
    target: &TargetAddr,
    opts: &GssapiOptions,
) -> Result<(TargetAddr, Option<Protection>), ClientError>
where
    S: std::io::Read + std::io::Write,
{
    let mut s = futures_lite::io::AssertAsync::new(s);
    futures_lite::future::block_on(handshake_gssapi(&mut s, command, target, opts))
}

/// A tunnel under GSSAPI protection on a blocking stream: writes go out
/// as encapsulated messages (at most [`gssapi::MAX_PLAIN_PER_MESSAGE`]
/// octets of plaintext each), reads return unwrapped plaintext.
pub struct SealedStream<S> {
    inner: S,
    protection: Protection,
    /// Unwrapped bytes not yet read: `plain[pos..]`.
    plain: Vec<u8>,
    pos: usize,
}

impl<S: std::io::Read + std::io::Write> SealedStream<S> {
    pub fn new(inner: S, protection: Protection) -> SealedStream<S> {
        SealedStream {
            inner,
            protection,
            plain: Vec::new(),
            pos: 0,
        }
    }
}

fn invalid_data(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}

impl<S: std::io::Read + std::io::Write> std::io::Read for SealedStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.plain.len() {
            let mut header = [0u8; 4];
            // End of stream at a message boundary is a clean end.
            match self.inner.read(&mut header[..1])? {
                0 => return Ok(0),
                _ => self.inner.read_exact(&mut header[1..])?,
            }
            let len = u16::from_be_bytes([header[2], header[3]]) as usize;
            let mut message = header.to_vec();
            message.resize(4 + len, 0);
            self.inner.read_exact(&mut message[4..])?;
            match self
                .protection
                .open_message(&message)
                .map_err(invalid_data)?
            {
                Some((plain, _)) => {
                    self.plain = plain;
                    self.pos = 0;
                }
                None => return Err(invalid_data("a message cut short")),
            }
        }
        let n = buf.len().min(self.plain.len() - self.pos);
        buf[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl<S: std::io::Read + std::io::Write> std::io::Write for SealedStream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min(gssapi::MAX_PLAIN_PER_MESSAGE);
        let mut out = Vec::with_capacity(n + 96);
        self.protection
            .seal(&buf[..n], &mut out)
            .map_err(invalid_data)?;
        self.inner.write_all(&out)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A UDP datagram for the relay under GSSAPI protection: the RFC 1928
/// header and payload, encapsulated as one message.
pub fn udp_datagram_sealed(
    protection: &mut Protection,
    target: &TargetAddr,
    payload: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let mut plain = Vec::new();
    udp_datagram(target, payload, &mut plain);
    let mut out = Vec::new();
    protection.seal(&plain, &mut out)?;
    Ok(out)
}

/// Opens a datagram from the relay under GSSAPI protection: the source
/// address and payload.
pub fn udp_payload_sealed(
    protection: &mut Protection,
    datagram: &[u8],
) -> Result<(TargetAddr, Vec<u8>), ClientError> {
    let (plain, _) = protection
        .open_message(datagram)?
        .ok_or_else(|| ClientError::Gssapi("a datagram cut short".into()))?;
    let (from, payload) = udp_payload(&plain)?;
    Ok((from, payload.to_vec()))
}
