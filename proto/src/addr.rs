use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{need, Codec, Decoded, ProtoError};

pub(crate) const ATYP_IPV4: u8 = 0x01;
pub(crate) const ATYP_DOMAIN: u8 = 0x03;
pub(crate) const ATYP_IPV6: u8 = 0x04;

/// DST.ADDR/DST.PORT or BND.ADDR/BND.PORT: an IP socket address or a
/// domain name with a port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetAddr {
    Ip(SocketAddr),
    /// A domain name (1 to 255 bytes, UTF-8, no NUL) and a port.
    Domain(String, u16),
}

impl TargetAddr {
    pub fn port(&self) -> u16 {
        match self {
            TargetAddr::Ip(sa) => sa.port(),
            TargetAddr::Domain(_, port) => *port,
        }
    }

    /// Bytes this address takes on the wire (ATYP through PORT).
    pub fn encoded_len(&self) -> usize {
        match self {
            TargetAddr::Ip(SocketAddr::V4(_)) => 1 + 4 + 2,
            TargetAddr::Ip(SocketAddr::V6(_)) => 1 + 16 + 2,
            // Matches `encode`, which cuts a name to 255 bytes.
            TargetAddr::Domain(name, _) => 1 + 1 + name.len().min(255) + 2,
        }
    }

    /// A domain target, checked the way the decoder checks it.
    pub fn domain(name: &str, port: u16) -> Result<TargetAddr, ProtoError> {
        validate_domain(name.as_bytes())?;
        Ok(TargetAddr::Domain(name.to_owned(), port))
    }
}

impl Codec for TargetAddr {
    /// Appends ATYP, ADDR and PORT. A domain longer than 255 bytes cannot be
    /// encoded; it is cut to 255 (callers build domains from decoded input or
    /// check the length first, see [`TargetAddr::domain`]).
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            TargetAddr::Ip(SocketAddr::V4(sa)) => {
                out.push(ATYP_IPV4);
                out.extend_from_slice(&sa.ip().octets());
            }
            TargetAddr::Ip(SocketAddr::V6(sa)) => {
                out.push(ATYP_IPV6);
                out.extend_from_slice(&sa.ip().octets());
            }
            TargetAddr::Domain(name, _) => {
                let bytes = &name.as_bytes()[..name.len().min(255)];
                out.push(ATYP_DOMAIN);
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
        }
        out.extend_from_slice(&self.port().to_be_bytes());
    }

    /// Decodes ATYP, ADDR and PORT from the front of `buf`.
    fn decode(buf: &[u8]) -> Result<Decoded<TargetAddr>, ProtoError> {
        need!(buf, 1);
        match buf[0] {
            ATYP_IPV4 => {
                need!(buf, 1 + 4 + 2);
                let ip = Ipv4Addr::new(buf[1], buf[2], buf[3], buf[4]);
                let port = u16::from_be_bytes([buf[5], buf[6]]);
                Ok(Decoded::Complete(
                    TargetAddr::Ip(SocketAddr::new(IpAddr::V4(ip), port)),
                    7,
                ))
            }
            ATYP_IPV6 => {
                need!(buf, 1 + 16 + 2);
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&buf[1..17]);
                let port = u16::from_be_bytes([buf[17], buf[18]]);
                Ok(Decoded::Complete(
                    TargetAddr::Ip(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)),
                    19,
                ))
            }
            ATYP_DOMAIN => {
                need!(buf, 2);
                let len = buf[1] as usize;
                if len == 0 {
                    return Err(ProtoError::EmptyDomain);
                }
                // The length byte bounds the read: at most 255 bytes.
                need!(buf, 2 + len + 2);
                let name = validate_domain(&buf[2..2 + len])?;
                let port = u16::from_be_bytes([buf[2 + len], buf[3 + len]]);
                Ok(Decoded::Complete(
                    TargetAddr::Domain(name.to_owned(), port),
                    2 + len + 2,
                ))
            }
            other => Err(ProtoError::UnsupportedAddressType(other)),
        }
    }
}

/// The one check of a domain name, shared by every protocol that carries one:
/// 1 to 255 bytes of UTF-8 without NUL.
pub(crate) fn validate_domain(bytes: &[u8]) -> Result<&str, ProtoError> {
    if bytes.is_empty() {
        return Err(ProtoError::EmptyDomain);
    }
    if bytes.len() > 255 || bytes.contains(&0) {
        return Err(ProtoError::InvalidDomain);
    }
    std::str::from_utf8(bytes).map_err(|_| ProtoError::InvalidDomain)
}

impl From<SocketAddr> for TargetAddr {
    fn from(sa: SocketAddr) -> Self {
        TargetAddr::Ip(sa)
    }
}

impl fmt::Display for TargetAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetAddr::Ip(sa) => write!(f, "{sa}"),
            TargetAddr::Domain(name, port) => write!(f, "{name}:{port}"),
        }
    }
}
