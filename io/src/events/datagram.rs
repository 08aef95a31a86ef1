//! How one task waits for a UDP socket to have a datagram, without taking
//! it and without holding a receive buffer: the UDP relay's sockets and
//! loadgen's.

use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use futures_lite::future;
use glommio::net::UdpSocket;

use super::{EventRing, Watch};

/// Through the core's event ring, a multishot poll armed at the first wait
/// and kept for the wait's life (callers drain the socket to EAGAIN
/// between waits); without a ring, glommio's 1-byte peek.
pub struct DatagramWait(Option<Watch>);

impl DatagramWait {
    pub fn new(ring: Option<&Rc<EventRing>>, sock: &UdpSocket) -> DatagramWait {
        DatagramWait(ring.map(|r| Watch::new(r.clone(), sock.as_raw_fd())))
    }

    /// Ready once `sock` (the socket this wait was made for) has a
    /// datagram, an error or a hangup.
    pub async fn readable(&mut self, sock: &UdpSocket) -> io::Result<()> {
        match &mut self.0 {
            Some(w) => future::poll_fn(|cx| w.poll_read_ready(cx)).await,
            None => {
                let mut b = [0u8; 1];
                sock.peek_from(&mut b).await.map(|_| ()).map_err(Into::into)
            }
        }
    }
}
