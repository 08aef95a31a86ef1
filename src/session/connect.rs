//! CONNECT: resolve, connect to each address in turn, reply, relay.

use std::net::SocketAddr;

use glommio::net::TcpStream;

use super::{reply_error, reply_success, AccessRecord, Authenticated, Established, SessionError};
use crate::proto::TargetAddr;
use crate::resolve;
use crate::runtime::Core;

pub(super) async fn serve_connect(
    core: &Core,
    auth: &Authenticated,
    mut client: TcpStream,
    target: TargetAddr,
    early: Vec<u8>,
    record: &mut AccessRecord,
) -> Result<Established, SessionError> {
    let upstream = match connect(core, &target, record).await {
        Ok(s) => s,
        Err(e) => {
            reply_error(core, auth, &mut client, &e, record).await;
            return Err(e);
        }
    };
    let bound = upstream
        .local_addr()
        .map_err(|e| SessionError::ClientIo(e.into()))?;
    reply_success(core, auth, &mut client, bound, record).await?;
    Ok(Established {
        client,
        target: upstream,
        early,
    })
}

/// Resolves the target and tries each address until one connects. The
/// error returned is the last address's, which decides the reply.
async fn connect(
    core: &Core,
    target: &TargetAddr,
    record: &mut AccessRecord,
) -> Result<TcpStream, SessionError> {
    let addrs = match target {
        TargetAddr::Ip(sa) => vec![*sa],
        TargetAddr::Domain(name, port) => {
            resolve::resolve(name, *port, core.config.resolve_timeout).await?
        }
    };
    check_allowed(target, &addrs)?;
    let mut last = None;
    for addr in addrs {
        record.resolved = Some(addr);
        match TcpStream::connect_timeout(addr, core.config.connect_timeout).await {
            Ok(stream) => return Ok(stream),
            Err(e) => {
                let e: std::io::Error = e.into();
                let err = if e.kind() == std::io::ErrorKind::TimedOut && e.raw_os_error().is_none()
                {
                    SessionError::ConnectTimeout(addr)
                } else {
                    SessionError::Connect { addr, source: e }
                };
                tracing::debug!("{err}");
                last = Some(err);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        SessionError::Resolve(resolve::ResolveError::NoAddress {
            name: target.to_string(),
        })
    }))
}

/// The seam for access rules (allow/deny by target, user, port): every
/// target passes for now. A denial becomes reply 0x02.
fn check_allowed(_target: &TargetAddr, _addrs: &[SocketAddr]) -> Result<(), SessionError> {
    Ok(())
}
