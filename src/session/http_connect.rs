//! HTTP CONNECT (RFC 9110, section 9.3.6): `CONNECT host:port HTTP/1.1`,
//! answered `200 Connection established` and then relayed like a SOCKS
//! CONNECT. Where users are configured the request must carry
//! `Proxy-Authorization: Basic`, checked as an RFC 1929 login is; without
//! it the answer is 407 with `Proxy-Authenticate`. Other methods get 405
//! (this is a tunnel, not a forwarding HTTP proxy); errors get the status
//! that says what happened, with a one-line body.

use std::net::IpAddr;

use super::handshake::{Auth, Connected, Dialect, Requested};
use super::{password, SessionError};
use crate::config::Config;
use crate::proto::{encode_response, Command, ConnectRequest, HttpStatus, HttpVersion, Request};
use crate::resolve::ResolveError;
use crate::runtime::{Core, Exhausted};

/// The realm a client is asked for credentials in.
const CHALLENGE: &str = "Basic realm=\"coresocks\", charset=\"UTF-8\"";

/// Reads the request head and checks its credentials; a request that
/// cannot be served from here gets its status before the error returns.
pub(super) async fn handshake(
    core: &Core,
    config: &Config,
    client_ip: IpAddr,
    connected: Connected,
) -> Result<(Requested, Request), SessionError> {
    let (asked, request) = connected.ask::<ConnectRequest>().await;
    let request = match request {
        Ok(r) => r,
        Err(SessionError::Proto(e)) => {
            let status = e.http_status().unwrap_or(HttpStatus::BadRequest);
            let answer = response(status, HttpVersion::Http11, &e.to_string());
            asked.refuse(&answer).await?;
            return Err(SessionError::Proto(e));
        }
        Err(e) => return Err(e),
    };
    let (target, version, credentials) = request.into_parts();
    let basic = credentials
        .as_ref()
        .map(|c| (c.user.as_bytes(), c.password.as_bytes()));
    let user = match password::request_login(core, config, client_ip, "http-connect", basic).await {
        Ok(user) => user,
        Err(e) => {
            let (status, body) = match e {
                SessionError::AuthRefused { .. } => (
                    HttpStatus::TooManyRequests,
                    "the proxy refused these credentials",
                ),
                SessionError::CredentialsRequired(_) => (
                    HttpStatus::ProxyAuthenticationRequired,
                    "this proxy needs Proxy-Authorization: Basic",
                ),
                _ => (
                    HttpStatus::ProxyAuthenticationRequired,
                    "the proxy refused these credentials",
                ),
            };
            asked.refuse(&response(status, version, body)).await?;
            return Err(e);
        }
    };
    let auth = if user.is_some() {
        Auth::Basic
    } else {
        Auth::None
    };
    let requested = asked.authenticated(user, auth, Dialect::Http(version));
    let request = Request {
        command: Command::Connect,
        target,
    };
    Ok((requested, request))
}

/// A response with a one-line body; 407 carries the challenge, 405 the
/// one method served. Every error response closes the connection.
pub(super) fn response(status: HttpStatus, version: HttpVersion, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if status.is_success() {
        encode_response(status, version, &[], "", &mut out);
        return out;
    }
    let mut headers = vec![("Connection", "close")];
    match status {
        HttpStatus::ProxyAuthenticationRequired => headers.push(("Proxy-Authenticate", CHALLENGE)),
        HttpStatus::MethodNotAllowed => headers.push(("Allow", "CONNECT")),
        _ => {}
    }
    encode_response(status, version, &headers, &format!("{body}\n"), &mut out);
    out
}

/// The status for an error after the request was read, from the same
/// outcomes as the SOCKS reply codes; `None` where nothing is answered.
pub(super) fn status_of(e: &SessionError) -> Option<HttpStatus> {
    use SessionError as E;
    Some(match e {
        E::Proto(p) => p.http_status().unwrap_or(HttpStatus::BadRequest),
        E::Resolve(ResolveError::Timeout { .. }) | E::ConnectTimeout(_) => {
            HttpStatus::GatewayTimeout
        }
        E::Resolve(_) | E::Connect { .. } => HttpStatus::BadGateway,
        E::NotAllowed(_) => HttpStatus::Forbidden,
        E::OverLimit(_) | E::RateLimited(_) | E::Exhausted(Exhausted::ClientShare(_)) => {
            HttpStatus::TooManyRequests
        }
        E::Exhausted(Exhausted::Core) => HttpStatus::ServiceUnavailable,
        E::EgressSource(_)
        | E::BindFailed(_)
        | E::BindTimeout
        | E::BindWrongPeer(_)
        | E::UdpSetup(_) => HttpStatus::InternalServerError,
        _ => return e.reply_code().map(|_| HttpStatus::BadGateway),
    })
}

/// The body of an error response: what happened, without the policy's
/// rule names.
pub(super) fn body_of(e: &SessionError) -> String {
    match e {
        SessionError::NotAllowed(_) => {
            "the proxy's egress policy does not allow this destination".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ProtoError;

    #[test]
    fn errors_map_to_the_status_that_says_what_happened() {
        let refused = SessionError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        let cases = [
            (refused, Some(HttpStatus::BadGateway)),
            (
                SessionError::ConnectTimeout("127.0.0.1:1".parse().unwrap()),
                Some(HttpStatus::GatewayTimeout),
            ),
            (
                SessionError::NotAllowed("x".into()),
                Some(HttpStatus::Forbidden),
            ),
            (
                SessionError::OverLimit("x".into()),
                Some(HttpStatus::TooManyRequests),
            ),
            (
                SessionError::Exhausted(Exhausted::Core),
                Some(HttpStatus::ServiceUnavailable),
            ),
            (
                SessionError::Proto(ProtoError::HttpMethodNotAllowed("GET".into())),
                Some(HttpStatus::MethodNotAllowed),
            ),
            (SessionError::ClientClosed, None),
            (SessionError::HandshakeTimeout, None),
        ];
        for (e, want) in cases {
            assert_eq!(status_of(&e), want, "{e}");
        }
    }
}
