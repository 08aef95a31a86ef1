//! BIND (RFC 1928 section 4): listen, first reply, accept one connection,
//! second reply, relay.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use futures_lite::future;
use socket2::{Domain, Protocol, Socket, Type};

use super::{Established, Session, SessionError};
use crate::events::{EventRing, Listener, Stream};
use crate::proto::{Command, TargetAddr};
use crate::resolve;

impl Session<'_> {
    /// BIND: listen, first reply, one incoming connection, second reply,
    /// and the tunnel to relay.
    pub(super) async fn bind(
        mut self,
        target: TargetAddr,
        early: Vec<u8>,
    ) -> Result<Established, SessionError> {
        match self.accept_incoming(&target).await {
            Ok(incoming) => {
                self.record.outbound = incoming.local_addr().ok();
                Ok(self.established(incoming, early))
            }
            Err(e) => {
                self.reply_error(&e).await;
                Err(e)
            }
        }
    }

    /// Everything up to the second reply. On error, no second reply was
    /// sent.
    async fn accept_incoming(&mut self, target: &TargetAddr) -> Result<Stream, SessionError> {
        let control_local = self.client.local_addr().map_err(SessionError::ClientIo)?;
        // DST.ADDR names the host expected to connect (RFC 1928: the client
        // passes what it learned from the application protocol).
        // The egress policy judges that host as a destination (command bind).
        let expected: Option<IpAddr> = match target {
            TargetAddr::Ip(sa) if sa.ip().is_unspecified() => None,
            TargetAddr::Ip(sa) => {
                self.egress_filter(Command::Bind, target, vec![*sa])?;
                Some(sa.ip().to_canonical())
            }
            TargetAddr::Domain(name, port) => {
                let addrs = resolve::resolve(name, *port, self.config.resolve_timeout).await?;
                let (addrs, _) = self.egress_filter(Command::Bind, target, addrs)?;
                addrs.first().map(|a| a.ip().to_canonical())
            }
        };
        // Listen on the address of the interface that reaches that host.
        let local_ip = expected
            .and_then(|ip| crate::sys::local_addr_towards(SocketAddr::new(ip, 9)).ok())
            .unwrap_or(control_local.ip())
            .to_canonical();
        let (mut listener, listen_addr, _stop) =
            listen_once(SocketAddr::new(local_ip, 0), self.core.events.as_ref())
                .map_err(SessionError::BindFailed)?;
        self.reply_success(listen_addr).await?;

        let accepted = async {
            loop {
                // `None`: one that reset before it was taken; wait on.
                match listener.next().await {
                    Ok(Some((incoming, _))) => return Ok(incoming),
                    Ok(None) => continue,
                    Err(e) => return Err(SessionError::BindFailed(e)),
                }
            }
        };
        let timed_out = async {
            crate::events::sleep(self.config.bind_timeout).await;
            Err(SessionError::BindTimeout)
        };
        // A client that gives up closes its control connection; stop waiting.
        let abandoned = async {
            let mut b = [0u8; 1];
            match self.client.peek(&mut b).await {
                Ok(0) | Err(_) => Err(SessionError::ClientClosed),
                // Early data: keep waiting for the incoming connection.
                Ok(_) => future::pending().await,
            }
        };
        let incoming = future::or(accepted, future::or(timed_out, abandoned)).await?;
        let peer = incoming.peer_addr().map_err(SessionError::BindFailed)?;
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        self.record.resolved = Some(peer);
        let refuse = |e: SessionError| {
            crate::sys::set_linger_zero(&incoming);
            Err(e)
        };
        if let Some(ip) = expected {
            if peer.ip() != ip {
                return refuse(SessionError::BindWrongPeer(peer));
            }
        }
        // Whoever connects is a peer the policy must allow, named or not.
        if let Err(e) = self.egress_filter(Command::Bind, &TargetAddr::Ip(peer), vec![peer]) {
            return refuse(e);
        }
        self.reply_success(peer).await?;
        Ok(incoming)
    }
}

/// Stops the listening socket when dropped: closing alone would leave it
/// listening while an io_uring accept or poll still holds it.
struct StopListening(std::os::fd::RawFd);

impl Drop for StopListening {
    fn drop(&mut self) {
        // SAFETY: `listen_once` returns this guard beside the listener
        // that owns the fd, and the session drops the guard first.
        unsafe { crate::sys::stop_listening_raw(self.0) };
    }
}

/// A listening socket with a backlog of one, for the single connection BIND
/// waits for. Stopped (and its port freed) when the session is done with it.
fn listen_once(
    addr: SocketAddr,
    ring: Option<&Rc<EventRing>>,
) -> std::io::Result<(Listener, SocketAddr, StopListening)> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1)?;
    let owned = std::os::fd::OwnedFd::from(s);
    // The guard only calls shutdown(2) on the descriptor, before the
    // listener that owns it is dropped (locals drop in reverse order).
    let fd = owned.as_raw_fd();
    let local = crate::sys::local_addr(std::os::fd::AsFd::as_fd(&owned))?;
    Ok((Listener::new(owned, ring), local, StopListening(fd)))
}
