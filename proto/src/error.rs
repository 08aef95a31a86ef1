use super::ReplyCode;

/// A message that can never become valid, whatever bytes follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unsupported SOCKS version {0:#04x} (only SOCKS5 is spoken)")]
    UnsupportedVersion(u8),
    #[error("greeting offers no authentication method (NMETHODS = 0)")]
    NoMethods,
    #[error("unsupported command {0:#04x}")]
    UnsupportedCommand(u8),
    #[error("unsupported address type {0:#04x}")]
    UnsupportedAddressType(u8),
    #[error("zero-length domain name")]
    EmptyDomain,
    #[error("domain name is not valid UTF-8 or contains a NUL byte")]
    InvalidDomain,
    #[error("unsupported username/password sub-negotiation version {0:#04x}")]
    UnsupportedAuthVersion(u8),
    #[error("empty username")]
    EmptyUsername,
    #[error("UDP header RSV is {0:#06x}, not 0x0000")]
    NonZeroReserved(u16),
    #[error("unsupported GSS-API sub-negotiation version {0:#04x} (RFC 1961 is version 1)")]
    UnsupportedGssVersion(u8),
    #[error("unknown GSS-API message type {0:#04x}")]
    UnknownGssMessageType(u8),
    #[error("unknown GSS-API protection level {0:#04x}")]
    UnknownProtectionLevel(u8),
}

impl ProtoError {
    /// The reply a server sends for this error, where RFC 1928 defines one
    /// (request errors). Greeting and auth errors get no request reply.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            ProtoError::UnsupportedCommand(_) => Some(ReplyCode::CommandNotSupported),
            ProtoError::UnsupportedAddressType(_) => Some(ReplyCode::AddressTypeNotSupported),
            // A name that cannot exist in DNS cannot be reached.
            ProtoError::EmptyDomain | ProtoError::InvalidDomain => Some(ReplyCode::HostUnreachable),
            ProtoError::UnsupportedVersion(_)
            | ProtoError::NoMethods
            | ProtoError::UnsupportedAuthVersion(_)
            | ProtoError::EmptyUsername
            | ProtoError::NonZeroReserved(_)
            | ProtoError::UnsupportedGssVersion(_)
            | ProtoError::UnknownGssMessageType(_)
            | ProtoError::UnknownProtectionLevel(_) => None,
        }
    }
}
