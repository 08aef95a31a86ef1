//! SOCKS4 (Ying-Da Lee, "SOCKS: A protocol for TCP proxy across firewalls")
//! and its 4a extension ("SOCKS 4A: A Simple Extension to SOCKS 4
//! Protocol").
//!
//! A request is VN (4), CD, DSTPORT, DSTIP, USERID and a NUL. In 4a, a
//! DSTIP of 0.0.0.x with x != 0 says that a NUL-terminated domain name
//! follows the USERID's NUL. A reply is VN (0), CD, DSTPORT, DSTIP: eight
//! bytes.
//!
//! The USERID, like an RFC 1929 username, is opaque bytes (anything but
//! NUL): identd user names need not be UTF-8, and the server only compares
//! and logs them.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::addr::validate_domain;
use super::{need, Codec, Decoded, ProtoError, TargetAddr};

/// VN of a request.
pub const SOCKS4_VERSION: u8 = 0x04;

/// VN of a reply: the protocol says 0 (the reply code's version).
pub const SOCKS4_REPLY_VERSION: u8 = 0x00;

/// DSTIP of a 4a request that carries a domain name: 0.0.0.1 is the
/// conventional choice among the 0.0.0.x the extension reserves.
const SOCKS4A_MARKER: Ipv4Addr = Ipv4Addr::new(0, 0, 0, 1);

/// CD of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Socks4Command {
    Connect = 0x01,
    Bind = 0x02,
}

impl Socks4Command {
    pub fn from_byte(b: u8) -> Option<Socks4Command> {
        match b {
            0x01 => Some(Socks4Command::Connect),
            0x02 => Some(Socks4Command::Bind),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Socks4Command::Connect => "connect",
            Socks4Command::Bind => "bind",
        }
    }
}

impl fmt::Display for Socks4Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// VN, CD, DSTPORT, DSTIP, USERID, NUL (and, for 4a, the domain name and a
/// NUL).
///
/// The fields are private so that every value can be encoded: SOCKS4 has
/// no IPv6, a USERID cannot hold a NUL, and an IP of 0.0.0.x (x != 0) would
/// read back as 4a. [`Socks4Request::new`] refuses those; the decoder never
/// makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks4Request {
    command: Socks4Command,
    target: TargetAddr,
    user_id: Vec<u8>,
}

impl Socks4Request {
    /// Longest USERID, and longest 4a domain name. Neither field has a
    /// length byte, so without a limit a client could keep the server
    /// reading for a NUL forever.
    pub const MAX_FIELD_LEN: usize = 255;

    /// Longest request on the wire: the fixed eight bytes, then both
    /// fields at their longest with their NULs.
    pub const MAX_LEN: usize = 8 + 2 * (Self::MAX_FIELD_LEN + 1);

    /// A request that [`Codec::encode`] can write and the decoder reads back
    /// as the same value. A domain target is sent in the 4a form.
    pub fn new(
        command: Socks4Command,
        target: TargetAddr,
        user_id: Vec<u8>,
    ) -> Result<Socks4Request, ProtoError> {
        if user_id.len() > Self::MAX_FIELD_LEN {
            return Err(ProtoError::Socks4UserIdTooLong);
        }
        if user_id.contains(&0) {
            return Err(ProtoError::Socks4UserIdContainsNul);
        }
        match &target {
            TargetAddr::Ip(SocketAddr::V6(_)) => return Err(ProtoError::Socks4Ipv6Target),
            TargetAddr::Ip(SocketAddr::V4(sa)) if is_socks4a_marker(*sa.ip()) => {
                return Err(ProtoError::Socks4aMarkerAddress(*sa.ip()))
            }
            TargetAddr::Ip(_) => {}
            TargetAddr::Domain(name, _) => {
                if name.len() > Self::MAX_FIELD_LEN {
                    return Err(ProtoError::Socks4DomainTooLong);
                }
                validate_domain(name.as_bytes())?;
            }
        }
        Ok(Socks4Request {
            command,
            target,
            user_id,
        })
    }

    pub fn command(&self) -> Socks4Command {
        self.command
    }

    /// An IPv4 address or, from a 4a request, a domain name.
    pub fn target(&self) -> &TargetAddr {
        &self.target
    }

    pub fn user_id(&self) -> &[u8] {
        &self.user_id
    }

    pub fn into_parts(self) -> (Socks4Command, TargetAddr, Vec<u8>) {
        (self.command, self.target, self.user_id)
    }
}

/// 0.0.0.x with x != 0: "the client cannot resolve the name, a domain name
/// follows".
fn is_socks4a_marker(ip: Ipv4Addr) -> bool {
    let [a, b, c, d] = ip.octets();
    [a, b, c] == [0, 0, 0] && d != 0
}

/// The bytes of `buf` before its first NUL. `None` while no NUL has come
/// and the field can still fit; `too_long` once more than
/// [`Socks4Request::MAX_FIELD_LEN`] bytes came without one.
fn nul_terminated(buf: &[u8], too_long: ProtoError) -> Result<Option<&[u8]>, ProtoError> {
    let window = &buf[..buf.len().min(Socks4Request::MAX_FIELD_LEN + 1)];
    match window.iter().position(|&b| b == 0) {
        Some(nul) => Ok(Some(&buf[..nul])),
        None if buf.len() > Socks4Request::MAX_FIELD_LEN => Err(too_long),
        None => Ok(None),
    }
}

impl Codec for Socks4Request {
    /// Decodes a request. VN and CD are checked as soon as they arrive, so
    /// a server can reject a stranger after two bytes. Until a field's NUL
    /// arrives the decoder can only ask for one more byte.
    fn decode(buf: &[u8]) -> Result<Decoded<Socks4Request>, ProtoError> {
        need!(buf, 2);
        if buf[0] != SOCKS4_VERSION {
            return Err(ProtoError::UnsupportedSocks4Version(buf[0]));
        }
        let command =
            Socks4Command::from_byte(buf[1]).ok_or(ProtoError::UnsupportedSocks4Command(buf[1]))?;
        need!(buf, 8);
        let port = u16::from_be_bytes([buf[2], buf[3]]);
        let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);

        let Some(user_id) = nul_terminated(&buf[8..], ProtoError::Socks4UserIdTooLong)? else {
            return Ok(Decoded::Incomplete(1));
        };
        let mut len = 8 + user_id.len() + 1;
        let target = if is_socks4a_marker(ip) {
            let Some(name) = nul_terminated(&buf[len..], ProtoError::Socks4DomainTooLong)? else {
                return Ok(Decoded::Incomplete(1));
            };
            len += name.len() + 1;
            TargetAddr::Domain(validate_domain(name)?.to_owned(), port)
        } else {
            TargetAddr::Ip(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        };
        Ok(Decoded::Complete(
            Socks4Request {
                command,
                target,
                user_id: user_id.to_vec(),
            },
            len,
        ))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS4_VERSION, self.command as u8]);
        out.extend_from_slice(&self.target.port().to_be_bytes());
        let ip = match &self.target {
            TargetAddr::Ip(SocketAddr::V4(sa)) => *sa.ip(),
            // `new` lets no IPv6 target in; a domain goes in the 4a form.
            TargetAddr::Ip(SocketAddr::V6(_)) | TargetAddr::Domain(..) => SOCKS4A_MARKER,
        };
        out.extend_from_slice(&ip.octets());
        out.extend_from_slice(&self.user_id);
        out.push(0);
        if let TargetAddr::Domain(name, _) = &self.target {
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
    }
}

/// CD of a reply (the protocol numbers them in decimal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Socks4ReplyCode {
    /// 90: request granted.
    Granted = 90,
    /// 91: request rejected or failed.
    Rejected = 91,
    /// 92: rejected because the server cannot reach identd on the client.
    IdentdUnreachable = 92,
    /// 93: rejected because identd and the client report different
    /// user-ids.
    IdentdMismatch = 93,
}

impl Socks4ReplyCode {
    pub fn from_byte(b: u8) -> Option<Socks4ReplyCode> {
        match b {
            90 => Some(Socks4ReplyCode::Granted),
            91 => Some(Socks4ReplyCode::Rejected),
            92 => Some(Socks4ReplyCode::IdentdUnreachable),
            93 => Some(Socks4ReplyCode::IdentdMismatch),
            _ => None,
        }
    }

    /// Short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Socks4ReplyCode::Granted => "granted",
            Socks4ReplyCode::Rejected => "rejected",
            Socks4ReplyCode::IdentdUnreachable => "identd-unreachable",
            Socks4ReplyCode::IdentdMismatch => "identd-mismatch",
        }
    }
}

impl fmt::Display for Socks4ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), *self as u8)
    }
}

/// VN, CD, DSTPORT, DSTIP. After CONNECT the address means nothing; after
/// BIND it is where the server listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socks4Reply {
    pub code: Socks4ReplyCode,
    pub addr: SocketAddrV4,
}

impl Socks4Reply {
    pub const LEN: usize = 8;
}

impl Codec for Socks4Reply {
    /// Decodes a reply. VN should be 0; 4 is accepted too, as some servers
    /// echo the request's version there and the reply is otherwise sound.
    /// Encoding always writes 0.
    fn decode(buf: &[u8]) -> Result<Decoded<Socks4Reply>, ProtoError> {
        need!(buf, 2);
        if buf[0] != SOCKS4_REPLY_VERSION && buf[0] != SOCKS4_VERSION {
            return Err(ProtoError::UnsupportedSocks4Version(buf[0]));
        }
        let code =
            Socks4ReplyCode::from_byte(buf[1]).ok_or(ProtoError::UnknownSocks4ReplyCode(buf[1]))?;
        need!(buf, Self::LEN);
        let port = u16::from_be_bytes([buf[2], buf[3]]);
        let ip = Ipv4Addr::new(buf[4], buf[5], buf[6], buf[7]);
        Ok(Decoded::Complete(
            Socks4Reply {
                code,
                addr: SocketAddrV4::new(ip, port),
            },
            Self::LEN,
        ))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS4_REPLY_VERSION, self.code as u8]);
        out.extend_from_slice(&self.addr.port().to_be_bytes());
        out.extend_from_slice(&self.addr.ip().octets());
    }
}
