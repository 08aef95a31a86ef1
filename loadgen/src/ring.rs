//! loadgen's sockets on an event ring of their own, as the proxy's cores
//! have (`coresocks_io::events`): glommio's rings have default flags, so
//! every completion raised from the proxy's CPU (loopback delivers in the
//! sender's softirq) interrupts loadgen's CPU with an IPI, and sending it
//! costs the proxy's CPU too. Direct pays none of that (loadgen and its
//! targets share a CPU), so without this the proxy path is measured with a
//! handicap of loadgen's making.
//!
//! Every TCP connection loadgen opens or its targets accept, and every
//! UDP wait, goes through here; `--glommio-io` turns the ring off (to
//! compare, or on a kernel without one).

use std::cell::OnceCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use coresocks_io::events::RingSetup;
use coresocks_io::events::{DatagramWait, EventRing, Listener, Stream};
use glommio::net::UdpSocket;

/// Off-core helper threads per ring (loadgen resolves no names on its
/// cores; one is the least a ring has).
const HELPERS: usize = 1;

/// Cleared by `--glommio-io`, before any executor starts.
static ENABLED: AtomicBool = AtomicBool::new(true);

thread_local! {
    /// This executor thread's ring; `None` when turned off or the kernel
    /// gave none.
    static RING: OnceCell<Option<Rc<EventRing>>> = const { OnceCell::new() };
}

/// Makes every executor wait through glommio instead (call before they
/// start).
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Whether this run's executors wait on their own rings.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn ring() -> Option<Rc<EventRing>> {
    RING.with(|r| {
        r.get_or_init(|| {
            enabled()
                .then(|| EventRing::start(RingSetup::Auto, true, [HELPERS, 0]).ok())
                .flatten()
        })
        .clone()
    })
}

/// Runs an executor's root future with this thread's ring started first,
/// so that every timer of the thread (open-loop pacing among them) wakes
/// the core through the ring, where it sleeps; counted like every task
/// (`coresocks_io::events::root`).
pub fn on_core<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    coresocks_io::events::root(async move {
        ring();
        f.await
    })
}

/// A TCP connection to `addr`, on this thread's ring when it has one.
pub async fn connect(addr: SocketAddr) -> io::Result<Stream> {
    let Some(ring) = ring() else {
        return Ok(Stream::glommio(
            glommio::net::TcpStream::connect(addr).await?,
        ));
    };
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            // POLLOUT once connected; POLLERR | POLLHUP once refused.
            ring.readiness(socket.as_fd(), libc::POLLOUT).await?;
            if let Some(e) = socket.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    Ok(Stream::outgoing(socket.into(), Some(&ring)))
}

/// A listening, non-blocking socket whose accepts wait on this thread's
/// ring (glommio's accept without one).
pub fn listener(fd: OwnedFd) -> Listener {
    Listener::new(fd, ring().as_ref())
}

/// A wait for a datagram on `sock`, on this thread's ring when it has one.
pub fn datagram_wait(sock: &UdpSocket) -> DatagramWait {
    DatagramWait::new(ring().as_ref(), sock)
}
