//! Sans-io codec for SOCKS5 (RFC 1928), username/password auth (RFC 1929),
//! the GSS-API method's framing (RFC 1961), SOCKS4 with its 4a extension,
//! and HTTP CONNECT (RFC 9110 section 9.3.6, RFC 9112 syntax).
//!
//! Every decoder is a pure function over a byte slice that returns
//! [`Decoded::Complete`] with the number of bytes consumed, or
//! [`Decoded::Incomplete`] with how many more bytes it needs at least. A
//! malformed message is a typed [`ProtoError`]. Nothing here panics on input,
//! touches a socket or allocates more than its length field or limit allows
//! (255 bytes; 65,535 for an RFC 1961 token; 255 for each NUL-terminated
//! SOCKS4 field; [`MAX_HEAD`] for an HTTP head).
//! Every message implements [`Codec`]; the server and loadgen's client
//! share it.

#![forbid(unsafe_code)]

mod addr;
mod auth;
mod error;
mod gssapi;
mod handshake;
mod http_connect;
mod request;
mod socks4;
mod udp;

#[cfg(test)]
mod tests;

pub use addr::TargetAddr;
pub use auth::{UserPassRequest, UserPassStatus, AUTH_VERSION};
pub use error::ProtoError;
pub use gssapi::{GssMessage, GssMessageType, ProtectionLevel, GSSAPI_VERSION, MAX_TOKEN};
pub use handshake::{Greeting, Method, MethodSelection, MethodSet};
pub use http_connect::{
    encode_response, BasicCredentials, ConnectRequest, ConnectResponseHead, HttpStatus,
    HttpVersion, MAX_HEAD, MAX_HEADER_LINES,
};
pub use request::{Command, Reply, ReplyCode, Request};
pub use socks4::{
    Socks4Command, Socks4Reply, Socks4ReplyCode, Socks4Request, SOCKS4_REPLY_VERSION,
    SOCKS4_VERSION,
};
pub use udp::UdpHeader;

/// VER field of every RFC 1928 message.
pub const SOCKS_VERSION: u8 = 0x05;

/// The one interface of every message (SOCKS and HTTP CONNECT): the server's reader, the
/// client, loadgen, the fuzz targets and the property tests all go through
/// it, so each message has exactly one decoder and one encoder.
pub trait Codec: Sized {
    /// Decodes one message from the front of `buf`: `Complete` with the
    /// bytes it took, `Incomplete` with at least how many more it needs, or
    /// the typed reason the bytes can never be this message.
    fn decode(buf: &[u8]) -> Result<Decoded<Self>, ProtoError>;

    /// Appends the message's wire form to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// The wire form on its own.
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Result of decoding a message from the front of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<T> {
    /// A whole message, and how many bytes of the buffer it took.
    Complete(T, usize),
    /// The buffer holds a valid prefix; at least this many more bytes are
    /// needed before the message can be decoded.
    Incomplete(usize),
}

impl<T> Decoded<T> {
    /// The value, if complete (handy in tests and in the client).
    pub fn complete(self) -> Option<(T, usize)> {
        match self {
            Decoded::Complete(v, n) => Some((v, n)),
            Decoded::Incomplete(_) => None,
        }
    }
}

/// Returns `Incomplete` from the enclosing decoder unless `buf` holds at
/// least `need` bytes. Keeps every later index in bounds.
macro_rules! need {
    ($buf:expr, $need:expr) => {
        if $buf.len() < $need {
            return Ok($crate::Decoded::Incomplete($need - $buf.len()));
        }
    };
}
pub(crate) use need;
