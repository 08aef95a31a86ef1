//! A listening TCP socket and how its accepts wait: each core's listeners,
//! and BIND's one-connection listener.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::rc::Rc;

use futures_lite::future;
use glommio::net::TcpListener;

use super::{EventRing, Stream, Watch};

pub enum Listener {
    /// On the core's event ring: a multishot poll reports new connections,
    /// then accept4(2) takes them (non-blocking and close-on-exec at once,
    /// with the peer's address) until EAGAIN, each a [`Stream`] on the
    /// ring. The watch is declared first, so it lets go of the socket
    /// before the socket closes.
    Ring {
        watch: Watch,
        fd: OwnedFd,
        ring: Rc<EventRing>,
    },
    /// Without a ring: glommio's accept.
    Glommio(TcpListener),
}

impl Listener {
    /// A listening, non-blocking socket: on `ring` when there is one.
    pub fn new(fd: OwnedFd, ring: Option<&Rc<EventRing>>) -> Listener {
        match ring {
            Some(ring) => Listener::Ring {
                watch: Watch::new(ring.clone(), fd.as_raw_fd()),
                fd,
                ring: ring.clone(),
            },
            None => Listener::Glommio(crate::sys::glommio_tcp_listener(fd)),
        }
    }

    /// The next connection and its peer; `None` when the client left
    /// before its address could be read.
    pub async fn next(&mut self) -> io::Result<Option<(Stream, SocketAddr)>> {
        match self {
            Listener::Glommio(l) => {
                let stream = l.accept().await?;
                // Non-blocking like every relayed socket (splice needs it);
                // one that cannot be is closed like a client that left.
                if crate::sys::set_nonblocking(crate::sys::borrow(&stream)).is_err() {
                    return Ok(None);
                }
                Ok(stream
                    .peer_addr()
                    .ok()
                    .map(|peer| (Stream::glommio(stream), peer)))
            }
            Listener::Ring { watch, fd, ring } => loop {
                match crate::sys::accept_nonblocking(fd.as_fd()) {
                    Ok((socket, peer)) => return Ok(Some((Stream::new(socket, Some(ring)), peer))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        future::poll_fn(|cx| watch.poll_read_ready(cx)).await?
                    }
                    // The client reset before we took it.
                    Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => return Ok(None),
                    Err(e) => return Err(e),
                }
            },
        }
    }
}
