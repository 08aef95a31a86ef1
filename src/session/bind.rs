//! BIND (RFC 1928 section 4): listen, first reply, accept one connection,
//! second reply, relay.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use futures_lite::future;
use socket2::{Domain, Protocol, Socket, Type};

use super::reply::{AwaitingPeer, AwaitingReply, Session};
use super::{Established, SessionError};
use crate::events::{EventRing, Listener, Stream};
use crate::proto::{Command, TargetAddr};
use crate::resolve;

/// BIND's listening socket between the two replies. Fields drop in
/// order: the guard stops the socket before the listener that owns it
/// closes it.
struct Listening {
    _stop: StopListening,
    listener: Listener,
    addr: SocketAddr,
    /// The host the request named, when it named one.
    expected: Option<IpAddr>,
}

impl<'a> Session<'a, AwaitingReply> {
    /// BIND: listen, first reply, one incoming connection, second reply,
    /// and the tunnel to relay.
    pub(super) async fn bind(
        mut self,
        target: TargetAddr,
        early: Vec<u8>,
    ) -> Result<Established, SessionError> {
        let listening = match self.listen(&target).await {
            Ok(l) => l,
            Err(e) => {
                self.refuse(&e).await;
                return Err(e);
            }
        };
        let mut waiting = self.reply_listening(listening.addr).await?;
        match waiting.accept_peer(listening).await {
            Ok((incoming, peer)) => {
                waiting.record.outbound = incoming.local_addr().ok();
                let replied = waiting.reply_success(peer).await?;
                Ok(replied.established(incoming, early))
            }
            Err(e) => {
                waiting.refuse(&e).await;
                Err(e)
            }
        }
    }

    /// Judges the host the request names and listens on the interface
    /// that reaches it.
    async fn listen(&mut self, target: &TargetAddr) -> Result<Listening, SessionError> {
        let control_local = self.client().local_addr().map_err(SessionError::ClientIo)?;
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
        let local_ip = expected
            .and_then(|ip| crate::sys::local_addr_towards(SocketAddr::new(ip, 9)).ok())
            .unwrap_or(control_local.ip())
            .to_canonical();
        let (listener, addr, stop) =
            listen_once(SocketAddr::new(local_ip, 0), self.core.events.as_ref())
                .map_err(SessionError::BindFailed)?;
        Ok(Listening {
            _stop: stop,
            listener,
            addr,
            expected,
        })
    }
}

impl Session<'_, AwaitingPeer> {
    /// The one incoming connection, from the host the request named and
    /// the policy allows; the listener is closed when this returns.
    async fn accept_peer(
        &mut self,
        mut listening: Listening,
    ) -> Result<(Stream, SocketAddr), SessionError> {
        let bind_timeout = self.config.bind_timeout;
        let accepted = async {
            loop {
                // `None`: one that reset before it was taken; wait on.
                match listening.listener.next().await {
                    Ok(Some((incoming, _))) => return Ok(incoming),
                    Ok(None) => continue,
                    Err(e) => return Err(SessionError::BindFailed(e)),
                }
            }
        };
        let timed_out = async {
            crate::events::sleep(bind_timeout).await;
            Err(SessionError::BindTimeout)
        };
        // A client that gives up closes its control connection; stop waiting.
        let abandoned = async {
            let mut b = [0u8; 1];
            match self.peek_client(&mut b).await {
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
        if let Some(ip) = listening.expected {
            if peer.ip() != ip {
                return refuse(SessionError::BindWrongPeer(peer));
            }
        }
        // Whoever connects is a peer the policy must allow, named or not.
        if let Err(e) = self.egress_filter(Command::Bind, &TargetAddr::Ip(peer), vec![peer]) {
            return refuse(e);
        }
        Ok((incoming, peer))
    }
}

/// Stops the listening socket when dropped: closing alone would leave it
/// listening while an io_uring accept or poll still holds it.
struct StopListening(std::os::fd::RawFd);

impl Drop for StopListening {
    fn drop(&mut self) {
        // SAFETY: the guard sits in `Listening` before the listener that
        // owns the fd, so it drops first, while the fd is still open.
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
    // listener that owns it is dropped (`Listening` orders them so).
    let fd = owned.as_raw_fd();
    let local = crate::sys::local_addr(std::os::fd::AsFd::as_fd(&owned))?;
    Ok((Listener::new(owned, ring), local, StopListening(fd)))
}
