//! A SOCKS5 client over the same sans-io codec the server uses: for tests,
//! for loadgen, and for anyone scripting against a proxy.
//!
//! [`handshake`] works on any futures `AsyncRead + AsyncWrite` stream
//! (glommio's included); [`handshake_blocking`] runs the same code on a std
//! stream. Replies are read exactly, never past their end, so bytes that
//! follow belong to the tunnel.

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{
    Codec, Command, Decoded, Greeting, Method, MethodSelection, ProtoError, Reply, ReplyCode,
    Request, TargetAddr, UserPassRequest, UserPassStatus,
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

/// Builds a datagram for a UDP relay: the RFC 1928 header for `target`,
/// then `payload`.
pub fn udp_datagram(target: &TargetAddr, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    crate::proto::UdpHeader {
        frag: 0,
        target: target.clone(),
    }
    .encode(out);
    out.extend_from_slice(payload);
}

/// Splits a datagram from a UDP relay into the address it came from and
/// its payload. A truncated header is an error.
pub fn udp_payload(datagram: &[u8]) -> Result<(TargetAddr, &[u8]), ProtoError> {
    match crate::proto::UdpHeader::decode(datagram)? {
        Decoded::Complete(h, n) => Ok((h.target, &datagram[n..])),
        Decoded::Incomplete(_) => Err(ProtoError::UnsupportedAddressType(0)),
    }
}
