//! SOCKS4 and 4a: one message up, one reply down. The request carries the
//! command, the target (an IPv4 address, or 4a's domain name) and a USERID;
//! there is no method negotiation. Where users are configured the USERID
//! must be `user:password`, checked as an RFC 1929 login is; reply codes
//! are 90 (granted) and 91 (rejected or failed): 92 and 93 are about an
//! identd, which this server does not ask.

use std::net::IpAddr;

use super::handshake::{Auth, Connected, Dialect, Requested};
use super::{password, SessionError};
use crate::config::Config;
use crate::proto::{
    Codec, Command, Request, Socks4Command, Socks4Reply, Socks4ReplyCode, Socks4Request,
};
use crate::runtime::Core;

/// Reads the request and checks its USERID; a request that cannot be
/// served from here gets 91 before the error returns.
pub(super) async fn handshake(
    core: &Core,
    config: &Config,
    client_ip: IpAddr,
    connected: Connected,
) -> Result<(Requested, Request), SessionError> {
    let (asked, request) = connected.ask::<Socks4Request>().await;
    let request = match request {
        Ok(r) => r,
        Err(e @ SessionError::Proto(_)) => {
            asked.refuse(&rejected().to_bytes()).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let (command, target, user_id) = request.into_parts();
    // "user:password"; a USERID without the colon is a user with an empty
    // password, which no users-file entry has.
    let credentials = match user_id.iter().position(|&b| b == b':') {
        Some(at) => (&user_id[..at], &user_id[at + 1..]),
        None => (&user_id[..], &[][..]),
    };
    let user =
        match password::request_login(core, config, client_ip, "socks4", Some(credentials)).await {
            Ok(user) => user,
            Err(e) => {
                asked.refuse(&rejected().to_bytes()).await?;
                return Err(e);
            }
        };
    let auth = if user.is_some() {
        Auth::Socks4UserId
    } else {
        Auth::None
    };
    let command = match command {
        Socks4Command::Connect => Command::Connect,
        Socks4Command::Bind => Command::Bind,
    };
    let requested = asked.authenticated(user, auth, Dialect::Socks4);
    Ok((requested, Request { command, target }))
}

/// Reply 91 with no address.
pub(super) fn rejected() -> Socks4Reply {
    Socks4Reply {
        code: Socks4ReplyCode::Rejected,
        addr: std::net::SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0),
    }
}

/// Reply 90 with the bound address where it is IPv4 (BIND's listener);
/// SOCKS4 cannot name an IPv6 one, so that reply carries only the port.
pub(super) fn granted(bound: std::net::SocketAddr) -> Socks4Reply {
    let ip = match bound.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => std::net::Ipv4Addr::UNSPECIFIED,
    };
    Socks4Reply {
        code: Socks4ReplyCode::Granted,
        addr: std::net::SocketAddrV4::new(ip, bound.port()),
    }
}
