use std::fmt;

use super::{need, Codec, Decoded, ProtoError, TargetAddr, SOCKS_VERSION};

/// CMD field of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    Connect = 0x01,
    Bind = 0x02,
    UdpAssociate = 0x03,
}

impl Command {
    pub fn from_byte(b: u8) -> Option<Command> {
        match b {
            0x01 => Some(Command::Connect),
            0x02 => Some(Command::Bind),
            0x03 => Some(Command::UdpAssociate),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Bind => "bind",
            Command::UdpAssociate => "udp-associate",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub target: TargetAddr,
}

impl Codec for Request {
    /// Decodes a request. RSV is ignored, as RFC 1928 gives it no meaning.
    /// An unknown CMD is reported before the address is looked at, so a
    /// server can answer 0x07 as soon as it has three bytes.
    fn decode(buf: &[u8]) -> Result<Decoded<Request>, ProtoError> {
        need!(buf, 3);
        if buf[0] != SOCKS_VERSION {
            return Err(ProtoError::UnsupportedVersion(buf[0]));
        }
        let command = Command::from_byte(buf[1]).ok_or(ProtoError::UnsupportedCommand(buf[1]))?;
        Ok(match TargetAddr::decode(&buf[3..])? {
            Decoded::Complete(target, n) => Decoded::Complete(Request { command, target }, 3 + n),
            Decoded::Incomplete(more) => Decoded::Incomplete(more),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS_VERSION, self.command as u8, 0x00]);
        self.target.encode(out);
    }
}

/// REP field of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplyCode {
    Succeeded,
    GeneralFailure,
    NotAllowed,
    NetworkUnreachable,
    HostUnreachable,
    ConnectionRefused,
    TtlExpired,
    CommandNotSupported,
    AddressTypeNotSupported,
    /// A code RFC 1928 leaves unassigned (seen only by a client).
    Unassigned(u8),
}

impl ReplyCode {
    pub fn to_byte(self) -> u8 {
        match self {
            ReplyCode::Succeeded => 0x00,
            ReplyCode::GeneralFailure => 0x01,
            ReplyCode::NotAllowed => 0x02,
            ReplyCode::NetworkUnreachable => 0x03,
            ReplyCode::HostUnreachable => 0x04,
            ReplyCode::ConnectionRefused => 0x05,
            ReplyCode::TtlExpired => 0x06,
            ReplyCode::CommandNotSupported => 0x07,
            ReplyCode::AddressTypeNotSupported => 0x08,
            ReplyCode::Unassigned(b) => b,
        }
    }

    pub fn from_byte(b: u8) -> ReplyCode {
        match b {
            0x00 => ReplyCode::Succeeded,
            0x01 => ReplyCode::GeneralFailure,
            0x02 => ReplyCode::NotAllowed,
            0x03 => ReplyCode::NetworkUnreachable,
            0x04 => ReplyCode::HostUnreachable,
            0x05 => ReplyCode::ConnectionRefused,
            0x06 => ReplyCode::TtlExpired,
            0x07 => ReplyCode::CommandNotSupported,
            0x08 => ReplyCode::AddressTypeNotSupported,
            other => ReplyCode::Unassigned(other),
        }
    }

    /// Short name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReplyCode::Succeeded => "succeeded",
            ReplyCode::GeneralFailure => "general-failure",
            ReplyCode::NotAllowed => "not-allowed",
            ReplyCode::NetworkUnreachable => "network-unreachable",
            ReplyCode::HostUnreachable => "host-unreachable",
            ReplyCode::ConnectionRefused => "connection-refused",
            ReplyCode::TtlExpired => "ttl-expired",
            ReplyCode::CommandNotSupported => "command-not-supported",
            ReplyCode::AddressTypeNotSupported => "address-type-not-supported",
            ReplyCode::Unassigned(_) => "unassigned",
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.as_str(), self.to_byte())
    }
}

/// VER, REP, RSV, ATYP, BND.ADDR, BND.PORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: ReplyCode,
    pub bound: TargetAddr,
}

impl Reply {
    /// Longest reply on the wire (domain BND.ADDR of 255 bytes).
    pub const MAX_LEN: usize = 3 + 1 + 1 + 255 + 2;
}

impl Codec for Reply {
    fn decode(buf: &[u8]) -> Result<Decoded<Reply>, ProtoError> {
        need!(buf, 3);
        if buf[0] != SOCKS_VERSION {
            return Err(ProtoError::UnsupportedVersion(buf[0]));
        }
        let code = ReplyCode::from_byte(buf[1]);
        Ok(match TargetAddr::decode(&buf[3..])? {
            Decoded::Complete(bound, n) => Decoded::Complete(Reply { code, bound }, 3 + n),
            Decoded::Incomplete(more) => Decoded::Incomplete(more),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS_VERSION, self.code.to_byte(), 0x00]);
        self.bound.encode(out);
    }
}
