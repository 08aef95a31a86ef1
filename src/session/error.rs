use std::io;

use crate::proto::{ProtoError, ReplyCode};
use crate::resolve::ResolveError;

/// Everything that can end a session before its tunnel runs. Each variant
/// knows which reply (if any) the client gets, so no error reaches a client
/// without the right code.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("malformed message: {0}")]
    Proto(#[from] ProtoError),
    #[error("client closed the connection during the handshake")]
    ClientClosed,
    #[error("client I/O error: {0}")]
    ClientIo(io::Error),
    #[error("handshake not finished within the handshake timeout")]
    HandshakeTimeout,
    #[error("client offers no method we accept")]
    NoAcceptableMethod,
    #[error("authentication failed for user {0:?}")]
    AuthFailed(String),
    /// A SOCKS4 or HTTP CONNECT client without the credentials this proxy
    /// needs (or only GSSAPI configured, which those cannot carry).
    #[error("{0}: no credentials, and this proxy needs them")]
    CredentialsRequired(&'static str),
    /// The GSSAPI method (RFC 1961) failed; the client got the abort.
    #[error("GSSAPI: {0}")]
    GssapiFailed(String),
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
    #[error("connect to {0} timed out")]
    ConnectTimeout(std::net::SocketAddr),
    /// Refused by the egress policy; the message names the rule.
    #[error("{0}")]
    NotAllowed(String),
    #[error("{0}")]
    EgressSource(String),
    /// A per-user or per-client tunnel limit is reached.
    #[error("{0}")]
    OverLimit(String),
    /// A per-user or per-client new-tunnel rate is exceeded.
    #[error("{0}")]
    RateLimited(String),
    /// The client's share of the core's descriptors, or the core's whole
    /// budget, is spent.
    #[error("{0}")]
    Exhausted(crate::runtime::Exhausted),
    /// An RFC 1929 login refused without a check; the client got the
    /// failure status.
    #[error("login from {client} refused unchecked: {reason}")]
    AuthRefused {
        client: std::net::IpAddr,
        reason: super::password::Refusal,
    },
    #[error("BIND: cannot listen: {0}")]
    BindFailed(io::Error),
    #[error("BIND: no connection arrived within the bind timeout")]
    BindTimeout,
    #[error("BIND: connection from {0}, not from the host named in the request")]
    BindWrongPeer(std::net::SocketAddr),
    #[error("UDP ASSOCIATE: {0}")]
    UdpSetup(crate::udp::SetupError),
    #[error("stopped by the proxy: {}", .0.as_str())]
    Stopped(crate::runtime::Stop),
}

impl SessionError {
    /// The request reply this error warrants; `None` where the failure
    /// happened before a request could be answered (greeting, auth, I/O).
    pub(crate) fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            SessionError::Proto(e) => match e {
                ProtoError::UnsupportedVersion(_) => Some(ReplyCode::GeneralFailure),
                other => other.reply_code(),
            },
            SessionError::Resolve(_) => Some(ReplyCode::HostUnreachable),
            SessionError::Connect { source, .. } => Some(connect_reply_code(source)),
            // A target that does not answer in time is unreachable from
            // where we stand; 0x06 (TTL expired) is kept for what it says.
            SessionError::ConnectTimeout(_) => Some(ReplyCode::HostUnreachable),
            SessionError::NotAllowed(_)
            | SessionError::OverLimit(_)
            | SessionError::Exhausted(crate::runtime::Exhausted::ClientShare(_)) => {
                Some(ReplyCode::NotAllowed)
            }
            SessionError::Exhausted(crate::runtime::Exhausted::Core) => {
                Some(ReplyCode::GeneralFailure)
            }
            SessionError::BindFailed(_)
            | SessionError::BindTimeout
            | SessionError::UdpSetup(_)
            | SessionError::EgressSource(_)
            | SessionError::RateLimited(_) => Some(ReplyCode::GeneralFailure),
            // The connection came from a host the request did not allow.
            SessionError::BindWrongPeer(_) => Some(ReplyCode::NotAllowed),
            SessionError::ClientClosed
            | SessionError::ClientIo(_)
            | SessionError::HandshakeTimeout
            | SessionError::NoAcceptableMethod
            | SessionError::AuthFailed(_)
            | SessionError::CredentialsRequired(_)
            | SessionError::AuthRefused { .. }
            | SessionError::GssapiFailed(_)
            | SessionError::Stopped(_) => None,
        }
    }

    /// A short tag for the access log's `end=` field.
    pub(crate) fn tag(&self) -> &'static str {
        match self {
            SessionError::Proto(_) => "bad-request",
            SessionError::ClientClosed => "client-closed",
            SessionError::ClientIo(_) => "client-error",
            SessionError::HandshakeTimeout => "handshake-timeout",
            SessionError::NoAcceptableMethod => "no-acceptable-method",
            SessionError::AuthFailed(_) => "auth-failed",
            SessionError::CredentialsRequired(_) => "auth-required",
            SessionError::AuthRefused { reason, .. } => reason.tag(),
            SessionError::Exhausted(crate::runtime::Exhausted::ClientShare(_)) => "client-share",
            SessionError::Exhausted(crate::runtime::Exhausted::Core) => "descriptor-limit",
            SessionError::GssapiFailed(_) => "gssapi-failed",
            SessionError::Resolve(ResolveError::Timeout { .. }) => "resolve-timeout",
            SessionError::Resolve(_) => "resolve-failed",
            SessionError::Connect { .. } => "connect-failed",
            SessionError::ConnectTimeout(_) => "connect-timeout",
            SessionError::NotAllowed(_) => "not-allowed",
            SessionError::EgressSource(_) => "egress-source",
            SessionError::OverLimit(_) => "over-limit",
            SessionError::RateLimited(_) => "rate-limited",
            SessionError::BindFailed(_) => "bind-failed",
            SessionError::BindTimeout => "bind-timeout",
            SessionError::BindWrongPeer(_) => "bind-wrong-peer",
            SessionError::UdpSetup(crate::udp::SetupError::Full) => "udp-limit",
            SessionError::UdpSetup(_) => "udp-failed",
            SessionError::Stopped(stop) => stop.as_str(),
        }
    }
}

/// Maps connect(2)'s errno to the reply RFC 1928 means by it.
pub(crate) fn connect_reply_code(e: &io::Error) -> ReplyCode {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => ReplyCode::ConnectionRefused,
        Some(libc::ENETUNREACH) | Some(libc::ENETDOWN) => ReplyCode::NetworkUnreachable,
        Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) | Some(libc::ETIMEDOUT) => {
            ReplyCode::HostUnreachable
        }
        // A local firewall rule (netfilter REJECT, or a prohibited route).
        Some(libc::EACCES) | Some(libc::EPERM) => ReplyCode::NotAllowed,
        _ => ReplyCode::GeneralFailure,
    }
}

impl From<crate::quota::Refusal> for SessionError {
    fn from(r: crate::quota::Refusal) -> SessionError {
        let message = r.to_string();
        match r {
            crate::quota::Refusal::OverLimit(_) => SessionError::OverLimit(message),
            crate::quota::Refusal::RateLimited(_) => SessionError::RateLimited(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_connect_errnos_to_reply_codes() {
        let cases = [
            (libc::ECONNREFUSED, ReplyCode::ConnectionRefused),
            (libc::ENETUNREACH, ReplyCode::NetworkUnreachable),
            (libc::EHOSTUNREACH, ReplyCode::HostUnreachable),
            (libc::ETIMEDOUT, ReplyCode::HostUnreachable),
            (libc::EACCES, ReplyCode::NotAllowed),
            (libc::EADDRNOTAVAIL, ReplyCode::GeneralFailure),
        ];
        for (errno, want) in cases {
            assert_eq!(
                connect_reply_code(&io::Error::from_raw_os_error(errno)),
                want,
                "{errno}"
            );
        }
    }

    #[test]
    fn request_errors_carry_reply_codes_and_greeting_errors_do_not() {
        assert_eq!(
            SessionError::Proto(ProtoError::UnsupportedAddressType(9)).reply_code(),
            Some(ReplyCode::AddressTypeNotSupported)
        );
        assert_eq!(
            SessionError::Proto(ProtoError::UnsupportedCommand(9)).reply_code(),
            Some(ReplyCode::CommandNotSupported)
        );
        assert_eq!(SessionError::NoAcceptableMethod.reply_code(), None);
        assert_eq!(SessionError::HandshakeTimeout.reply_code(), None);
    }
}
