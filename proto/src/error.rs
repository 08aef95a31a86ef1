use std::net::Ipv4Addr;

use super::{HttpStatus, ReplyCode, MAX_HEAD, MAX_HEADER_LINES};

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

    // SOCKS4 and SOCKS4a.
    #[error("unsupported SOCKS4 version {0:#04x} (a request says 0x04, a reply 0x00)")]
    UnsupportedSocks4Version(u8),
    #[error("unsupported SOCKS4 command {0:#04x} (0x01 is CONNECT, 0x02 BIND)")]
    UnsupportedSocks4Command(u8),
    #[error("unknown SOCKS4 reply code {0} (90 to 93 are defined)")]
    UnknownSocks4ReplyCode(u8),
    #[error("SOCKS4 USERID is longer than 255 bytes")]
    Socks4UserIdTooLong,
    #[error("SOCKS4 USERID contains a NUL byte, which would end it early")]
    Socks4UserIdContainsNul,
    #[error("SOCKS4a domain name is longer than 255 bytes")]
    Socks4DomainTooLong,
    #[error("SOCKS4 cannot carry an IPv6 address")]
    Socks4Ipv6Target,
    #[error("{0} cannot be a SOCKS4 target: 0.0.0.x (x != 0) announces a SOCKS4a domain name")]
    Socks4aMarkerAddress(Ipv4Addr),

    // HTTP CONNECT.
    #[error("HTTP head is longer than {} bytes", MAX_HEAD)]
    HeadTooLarge,
    #[error("HTTP head has more than {} header field lines", MAX_HEADER_LINES)]
    TooManyHttpHeaders,
    #[error("malformed HTTP request line (expected `CONNECT host:port HTTP/1.1`)")]
    MalformedRequestLine,
    #[error("HTTP method {0:?} is not allowed (only CONNECT)")]
    HttpMethodNotAllowed(String),
    #[error("HTTP/{major}.{minor} is not supported (only HTTP/1.0 and HTTP/1.1)")]
    HttpVersionNotSupported { major: u8, minor: u8 },
    #[error("CONNECT target is not in authority form (host:port)")]
    HttpTargetNotAuthorityForm,
    #[error("CONNECT target has no port")]
    HttpTargetMissingPort,
    #[error("CONNECT target port is not a number from 1 to 65535")]
    InvalidHttpPort,
    #[error("CONNECT target host is not a DNS name, an IPv4 address or a bracketed IPv6 address")]
    InvalidHttpHost,
    #[error("malformed HTTP header field line")]
    MalformedHttpHeader,
    #[error("HTTP header field line starts with whitespace (obsolete line folding)")]
    HttpObsoleteLineFolding,
    #[error("more than one Proxy-Authorization header field")]
    DuplicateProxyAuthorization,
    #[error("Proxy-Authorization Basic credentials are not valid base64")]
    InvalidBasicBase64,
    #[error("Proxy-Authorization Basic credentials are not valid UTF-8")]
    BasicCredentialsNotUtf8,
    #[error("Proxy-Authorization Basic credentials have no colon between user and password")]
    BasicCredentialsMissingColon,
    #[error("Proxy-Authorization Basic user-id or password is longer than 255 bytes")]
    BasicCredentialsTooLong,
    #[error("Basic user-id contains a colon, which would end it early")]
    BasicUserContainsColon,
    #[error("malformed HTTP status line (expected `HTTP/1.1 200 reason`)")]
    MalformedStatusLine,
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
            // SOCKS4 answers every refusal with 91; HTTP has `http_status`.
            ProtoError::UnsupportedSocks4Version(_)
            | ProtoError::UnsupportedSocks4Command(_)
            | ProtoError::UnknownSocks4ReplyCode(_)
            | ProtoError::Socks4UserIdTooLong
            | ProtoError::Socks4UserIdContainsNul
            | ProtoError::Socks4DomainTooLong
            | ProtoError::Socks4Ipv6Target
            | ProtoError::Socks4aMarkerAddress(_)
            | ProtoError::HeadTooLarge
            | ProtoError::TooManyHttpHeaders
            | ProtoError::MalformedRequestLine
            | ProtoError::HttpMethodNotAllowed(_)
            | ProtoError::HttpVersionNotSupported { .. }
            | ProtoError::HttpTargetNotAuthorityForm
            | ProtoError::HttpTargetMissingPort
            | ProtoError::InvalidHttpPort
            | ProtoError::InvalidHttpHost
            | ProtoError::MalformedHttpHeader
            | ProtoError::HttpObsoleteLineFolding
            | ProtoError::DuplicateProxyAuthorization
            | ProtoError::InvalidBasicBase64
            | ProtoError::BasicCredentialsNotUtf8
            | ProtoError::BasicCredentialsMissingColon
            | ProtoError::BasicCredentialsTooLong
            | ProtoError::BasicUserContainsColon
            | ProtoError::MalformedStatusLine => None,
        }
    }

    /// The status a proxy answers an HTTP CONNECT request error with; `None`
    /// for errors of other protocols and of a response head.
    pub fn http_status(&self) -> Option<HttpStatus> {
        match self {
            ProtoError::HttpMethodNotAllowed(_) => Some(HttpStatus::MethodNotAllowed),
            ProtoError::HttpVersionNotSupported { .. } => Some(HttpStatus::HttpVersionNotSupported),
            ProtoError::HeadTooLarge | ProtoError::TooManyHttpHeaders => {
                Some(HttpStatus::RequestHeaderFieldsTooLarge)
            }
            ProtoError::MalformedRequestLine
            | ProtoError::HttpTargetNotAuthorityForm
            | ProtoError::HttpTargetMissingPort
            | ProtoError::InvalidHttpPort
            | ProtoError::InvalidHttpHost
            | ProtoError::MalformedHttpHeader
            | ProtoError::HttpObsoleteLineFolding
            | ProtoError::DuplicateProxyAuthorization
            | ProtoError::InvalidBasicBase64
            | ProtoError::BasicCredentialsNotUtf8
            | ProtoError::BasicCredentialsMissingColon
            | ProtoError::BasicCredentialsTooLong => Some(HttpStatus::BadRequest),
            // Made by a constructor or a client's decoder, never by a
            // request the server reads; or not HTTP at all.
            ProtoError::BasicUserContainsColon
            | ProtoError::MalformedStatusLine
            | ProtoError::UnsupportedVersion(_)
            | ProtoError::NoMethods
            | ProtoError::UnsupportedCommand(_)
            | ProtoError::UnsupportedAddressType(_)
            | ProtoError::EmptyDomain
            | ProtoError::InvalidDomain
            | ProtoError::UnsupportedAuthVersion(_)
            | ProtoError::EmptyUsername
            | ProtoError::NonZeroReserved(_)
            | ProtoError::UnsupportedGssVersion(_)
            | ProtoError::UnknownGssMessageType(_)
            | ProtoError::UnknownProtectionLevel(_)
            | ProtoError::UnsupportedSocks4Version(_)
            | ProtoError::UnsupportedSocks4Command(_)
            | ProtoError::UnknownSocks4ReplyCode(_)
            | ProtoError::Socks4UserIdTooLong
            | ProtoError::Socks4UserIdContainsNul
            | ProtoError::Socks4DomainTooLong
            | ProtoError::Socks4Ipv6Target
            | ProtoError::Socks4aMarkerAddress(_) => None,
        }
    }
}
