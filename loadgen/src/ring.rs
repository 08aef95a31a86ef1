//! loadgen's sockets on an event ring of their own, as the proxy's cores
//! have (`coresocks::events`): glommio's rings have default flags, so
//! every completion raised from the proxy's CPU (loopback delivers in the
//! sender's softirq) interrupts loadgen's CPU with an IPI, and sending it
//! costs the proxy's CPU too. Direct pays none of that (loadgen and its
//! targets share a CPU), so without this the proxy path is measured with a
//! handicap of loadgen's making.

use std::cell::OnceCell;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;

use coresocks::config::EventRingSetup;
use coresocks::events::{EventRing, Stream};

thread_local! {
    /// This executor thread's ring; `None` when the kernel gave none.
    static RING: OnceCell<Option<Rc<EventRing>>> = const { OnceCell::new() };
}

fn ring() -> Option<Rc<EventRing>> {
    RING.with(|r| {
        r.get_or_init(|| EventRing::start(EventRingSetup::Auto, true).ok())
            .clone()
    })
}

/// `stream` moved onto this thread's ring (a stream of glommio's if there
/// is none, or its descriptor cannot be taken over).
pub fn on_ring(stream: glommio::net::TcpStream) -> Stream {
    let Some(ring) = ring() else {
        return Stream::glommio(stream);
    };
    // glommio's stream does not give its descriptor up: take a duplicate
    // and let glommio close its own.
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the stream keeps open; the
    // new descriptor is ours alone.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Stream::glommio(stream);
    }
    drop(stream);
    // SAFETY: `fd` was just created and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if coresocks::sys::set_nonblocking(&fd).is_err() {
        return Stream::new(fd, None);
    }
    Stream::new(fd, Some(&ring))
}
