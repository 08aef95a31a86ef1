//! The few raw system calls coresocks needs beyond glommio and socket2,
//! each wrapped once here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::SockRef;

/// CPUs in this process's affinity mask (what `taskset` allows).
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it and we pass
    // its exact size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// RLIMIT_MEMLOCK's soft limit in bytes (`u64::MAX` when unlimited).
pub fn memlock_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct that we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim.rlim_cur)
}

/// Raises RLIMIT_NOFILE's soft limit to its hard limit: a proxy holds two
/// descriptors per tunnel, and the usual soft limit of 1024 is far too low.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(lim.rlim_cur)
}

/// glommio's sockets, which implement `AsRawFd` but not `AsFd`, and own
/// their descriptor for as long as they live (sealed: a bare descriptor
/// number, which is also `AsRawFd`, is not one).
pub trait GlommioSocket: std::os::fd::AsRawFd + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
    impl Sealed for glommio::net::TcpStream {}
    impl Sealed for glommio::net::UdpSocket {}
}

impl GlommioSocket for glommio::net::TcpStream {}
impl GlommioSocket for glommio::net::UdpSocket {}

/// Borrows the descriptor of a glommio socket for the `AsFd`-typed calls
/// below.
pub fn borrow<T: GlommioSocket>(owner: &T) -> BorrowedFd<'_> {
    // SAFETY: a glommio socket owns its descriptor and keeps it open at
    // least as long as this borrow of it.
    unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) }
}

/// Takes (and clears) a socket's pending error, SO_ERROR.
pub fn take_socket_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    SockRef::from(&fd).take_error()
}

/// The peer of a connected socket; ENOTCONN when it has none.
pub fn peer_addr(fd: BorrowedFd<'_>) -> io::Result<std::net::SocketAddr> {
    SockRef::from(&fd)
        .peer_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("peer is not an IP address"))
}

/// The local address of a bound socket.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<std::net::SocketAddr> {
    SockRef::from(&fd)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("socket is not bound to an IP address"))
}

/// shutdown(SHUT_WR): sends the FIN once the queued bytes are out.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
}

/// recv(2) with MSG_PEEK, without blocking: what is waiting stays queued.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    recv_with(fd.as_raw_fd(), buf, libc::MSG_PEEK | libc::MSG_DONTWAIT)
}

/// A non-blocking TCP socket with IP_RECVERR (IPV6_RECVERR) set, whose
/// connect to `addr` has started (or failed at once, e.g. with no route).
pub fn connecting_socket(
    addr: std::net::SocketAddr,
    source: Option<std::net::IpAddr>,
    interface: Option<&str>,
    before_connect: impl FnOnce(BorrowedFd<'_>) -> io::Result<()>,
) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    set_recverr(std::os::fd::AsFd::as_fd(&socket), addr, true)?;
    // Before the SYN (socket options: the window scale follows the
    // receive buffer).
    before_connect(std::os::fd::AsFd::as_fd(&socket))?;
    bind_device(&socket, interface)?;
    if let Some(ip) = source {
        // An IPv4 source for an IPv6 socket: a mapped destination.
        let ip = match (ip, addr.is_ipv6()) {
            (std::net::IpAddr::V4(v4), true) => std::net::IpAddr::V6(v4.to_ipv6_mapped()),
            _ => ip,
        };
        bind_source(&socket, std::net::SocketAddr::new(ip, 0), true)?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => Ok(socket),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(socket),
        Err(e) => Err(e),
    }
}

/// SO_BINDTODEVICE for an outbound socket (`--egress-interface`).
pub fn bind_device(socket: &socket2::Socket, interface: Option<&str>) -> io::Result<()> {
    let Some(name) = interface else {
        return Ok(());
    };
    socket
        .bind_device(Some(name.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind to interface {name}: {e}")))
}

/// Binds an outbound socket to its source address. With `no_port` (TCP)
/// the port is left to connect(2) (IP_BIND_ADDRESS_NO_PORT), so binding the
/// address reserves no port per socket and a pool of sources does not run
/// out of ports before the kernel's (address, port) tuples do.
pub fn bind_source(
    socket: &socket2::Socket,
    source: std::net::SocketAddr,
    no_port: bool,
) -> io::Result<()> {
    if no_port {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads one c_int from a live local.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    let ip = source.ip();
    socket
        .bind(&source.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind the egress source {ip}: {e}")))
}

/// Types for which memory of all zero bytes is a valid value, with an
/// alignment a page satisfies.
///
/// # Safety
/// Implement only for such types.
pub unsafe trait ZeroIsValid: Sized {}

// SAFETY: an Argon2 block is `[u64; 128]` aligned to 64 bytes.
unsafe impl ZeroIsValid for argon2::Block {}

/// Anonymous zeroed pages mapped for one use and unmapped on drop: the
/// memory goes back to the kernel at once, whatever the allocator would
/// have kept (an Argon2 check's 19 MiB, per check).
pub struct ZeroedPages {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl ZeroedPages {
    pub fn new(len: usize) -> io::Result<ZeroedPages> {
        let len = len.max(1);
        // SAFETY: a new private anonymous mapping; no existing memory is
        // touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                // Populated at once: one call instead of a fault per page.
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            std::ptr::NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(ZeroedPages { ptr, len })
    }

    /// The pages as a slice of as many `T` as fit.
    pub fn as_mut_slice<T: ZeroIsValid>(&mut self) -> &mut [T] {
        let n = self.len / std::mem::size_of::<T>();
        // SAFETY: the mapping is `len` bytes, page-aligned (at least T's
        // alignment), zero-filled (a valid T by ZeroIsValid), and borrowed
        // mutably for the slice's life.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().cast::<T>(), n) }
    }
}

impl Drop for ZeroedPages {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made, which no borrow
        // outlives.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// poll(2) on `fds` for at most `timeout_ms` (-1: no limit); how many have
/// events. The descriptors are numbers the kernel only looks at: a closed
/// one reports POLLNVAL, nothing unsafe.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Fills `buf` from the kernel's random pool (getrandom(2)); never blocks
/// once the pool is initialised at boot.
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe `rest`, which the call
        // may write.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

/// A non-blocking eventfd, for a ring to signal its completions through.
pub fn eventfd() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: eventfd takes no pointers and returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// Sets a non-blocking eventfd's counter back to zero (a read of it).
pub fn eventfd_reset(fd: BorrowedFd<'_>) {
    let mut count = 0u64;
    // SAFETY: eventfd_read writes one u64 into a local; EAGAIN (already
    // zero) is the expected failure and changes nothing.
    unsafe { libc::eventfd_read(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut count) };
}

/// Adds one to an eventfd's counter, waking whoever reads it.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: eventfd_write takes the descriptor and a value, no pointers.
    let rc = unsafe { libc::eventfd_write(std::os::fd::AsRawFd::as_raw_fd(&fd), 1) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes the oldest entry of a socket's error queue (filled while
/// IP_RECVERR / IPV6_RECVERR is on) as the error a connect should fail
/// with; `None` when the queue is empty. An ICMP "administratively
/// prohibited" answer becomes EACCES, whatever errno the kernel gave it
/// (IPv4's is EHOSTUNREACH), because it means a firewall said no.
pub fn take_queued_error(fd: BorrowedFd<'_>) -> io::Result<Option<io::Error>> {
    // Room for one sock_extended_err and its offender address, aligned.
    let mut control = [0u64; 16];
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: msg points at `control`, which outlives the call; no iovec, so
    // the queued packet's payload is discarded (MSG_TRUNC).
    let rc = unsafe {
        libc::recvmsg(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel filled `msg`'s control buffer; the CMSG macros
    // walk it within msg_controllen, and each header's data is read
    // unaligned as the type its level and type name.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let h = &*cmsg;
            if (h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_RECVERR)
                || (h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_RECVERR)
            {
                let ee: libc::sock_extended_err =
                    std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                return Ok(Some(queued_error_errno(&ee)));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(None)
}

/// The errno for an error-queue entry; see [`take_queued_error`].
fn queued_error_errno(ee: &libc::sock_extended_err) -> io::Error {
    const ICMP_DEST_UNREACH: u8 = 3;
    // Network / host administratively prohibited, communication filtered.
    const ICMP_PROHIBITED: [u8; 3] = [9, 10, 13];
    const ICMP6_DST_UNREACH: u8 = 1;
    // Administratively prohibited, source address failed policy, reject route.
    const ICMP6_PROHIBITED: [u8; 3] = [1, 5, 6];
    let prohibited = match ee.ee_origin {
        libc::SO_EE_ORIGIN_ICMP => {
            ee.ee_type == ICMP_DEST_UNREACH && ICMP_PROHIBITED.contains(&ee.ee_code)
        }
        libc::SO_EE_ORIGIN_ICMP6 => {
            ee.ee_type == ICMP6_DST_UNREACH && ICMP6_PROHIBITED.contains(&ee.ee_code)
        }
        _ => false,
    };
    if prohibited {
        io::Error::from_raw_os_error(libc::EACCES)
    } else if ee.ee_errno != 0 {
        io::Error::from_raw_os_error(ee.ee_errno as i32)
    } else {
        io::Error::from_raw_os_error(libc::EHOSTUNREACH)
    }
}

/// IP_RECVERR / IPV6_RECVERR: report ICMP errors to the socket at once
/// rather than as "soft" errors. Turning it off purges the error queue.
pub fn set_recverr(fd: BorrowedFd<'_>, addr: std::net::SocketAddr, on: bool) -> io::Result<()> {
    let (level, name) = if addr.is_ipv6() {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    setsockopt_int(fd, level, name, libc::c_int::from(on))
}

/// Runs `f` with a raw socket borrowed for socket2's option setters.
fn with_sock<T>(fd: impl AsFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
    f(SockRef::from(&fd))
}

/// For a socket known only by its number.
///
/// # Safety
/// `fd` must stay open for the duration of the call.
unsafe fn with_raw_sock<T>(fd: RawFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
    // SAFETY: the caller keeps `fd` open for the duration of the call;
    // SockRef never closes it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    f(SockRef::from(&borrowed))
}

/// accept4(2) of one pending connection as a non-blocking, close-on-exec
/// socket, with the peer's address (no getpeername, no fcntl).
pub fn accept_nonblocking(listener: BorrowedFd<'_>) -> io::Result<(OwnedFd, std::net::SocketAddr)> {
    let (socket, peer) =
        SockRef::from(&listener).accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)?;
    let peer = peer
        .as_socket()
        .ok_or_else(|| io::Error::other("a connection from a non-IP address"))?;
    Ok((socket.into(), peer))
}

/// Makes the next close() send RST instead of FIN, so that a reset on one
/// side of a tunnel reaches the other side as a reset.
pub fn set_linger_zero(fd: impl AsFd) {
    let _ = with_sock(fd, |s| s.set_linger(Some(Duration::ZERO)));
}

/// [`set_linger_zero`] on a socket known only by its number, because its
/// owner was moved into a future that is still running (a client inside
/// its handshake).
///
/// # Safety
/// `fd` must be an open socket for the whole call, kept open by its owner;
/// this never closes it.
pub unsafe fn set_linger_zero_raw(fd: RawFd) {
    // SAFETY: the caller keeps `fd` open across the call.
    let _ = unsafe { with_raw_sock(fd, |s| s.set_linger(Some(Duration::ZERO))) };
}

/// The kernel's count of segments this TCP socket retransmitted in its
/// life (`tcpi_total_retrans` of TCP_INFO).
pub fn tcp_total_retransmits(socket: impl AsFd) -> io::Result<u32> {
    Ok(tcp_info(socket.as_fd())?.tcpi_total_retrans)
}

fn tcp_info(socket: BorrowedFd<'_>) -> io::Result<libc::tcp_info> {
    // SAFETY: tcp_info is plain old data, so all-zero bytes are a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the fd is borrowed for the call, and the kernel writes at most
    // `len` bytes into `info`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info)
}

/// A TCP socket's counts (TCP_INFO), for a relay that does not see the
/// bytes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpCounts {
    /// Bytes received in order in the socket's life: rcv_nxt, so the
    /// peer's FIN, once it came, counts as one.
    pub received: u64,
    /// Bytes the peer acknowledged (snd_una).
    pub acked: u64,
    /// Milliseconds since data last arrived.
    pub idle_ms: u32,
}

pub fn tcp_counts(socket: BorrowedFd<'_>) -> io::Result<TcpCounts> {
    let info = tcp_info(socket)?;
    Ok(TcpCounts {
        received: info.tcpi_bytes_received,
        acked: info.tcpi_bytes_acked,
        idle_ms: info.tcpi_last_data_recv,
    })
}

/// Whether the peer's FIN (or a reset) has arrived: POLLRDHUP now.
pub fn peer_finished(socket: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    }];
    poll(&mut fds, 0)?;
    Ok(fds[0].revents & (libc::POLLRDHUP | libc::POLLHUP) != 0)
}

fn ioctl_int(socket: BorrowedFd<'_>, request: libc::Ioctl) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ and SIOCOUTQ write one int through the pointer, to a
    // live local.
    if unsafe { libc::ioctl(socket.as_raw_fd(), request, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}

/// Bytes queued in a TCP socket's receive queue, the FIN left out
/// (SIOCINQ).
pub fn unread_bytes(socket: BorrowedFd<'_>) -> io::Result<u64> {
    ioctl_int(socket, libc::FIONREAD)
}

/// Data bytes of this socket's stream that its owner (or the kernel, for
/// it) has taken: TCP's copied_seq. Read from four calls, retried until no
/// byte arrived between them, so exact while nothing else reads the
/// socket.
pub fn consumed_bytes(socket: BorrowedFd<'_>) -> io::Result<u64> {
    loop {
        let before = tcp_counts(socket)?.received;
        let fin = u64::from(peer_finished(socket)?);
        let unread = unread_bytes(socket)?;
        if tcp_counts(socket)?.received == before {
            return Ok(before.saturating_sub(fin + unread));
        }
    }
}

/// Data bytes written into this socket in its life, sent or still queued
/// (TCP's write_seq): acknowledged plus SIOCOUTQ, retried until no
/// acknowledgement came between the calls. Exact before this side's FIN.
pub fn written_bytes(socket: BorrowedFd<'_>) -> io::Result<u64> {
    loop {
        let before = tcp_counts(socket)?.acked;
        let queued = ioctl_int(socket, libc::TIOCOUTQ)?;
        if tcp_counts(socket)?.acked == before {
            return Ok(before + queued);
        }
    }
}

/// The socket's cookie: a number the kernel gives each socket, never
/// reused until reboot (SO_COOKIE), which BPF programs see too.
pub fn socket_cookie(socket: BorrowedFd<'_>) -> io::Result<u64> {
    const SO_COOKIE: libc::c_int = 57;
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` (8) bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Signals "data ready" on a TCP socket that has data queued, as the
/// arrival of a segment would: setting SO_RCVLOWAT (to its default, 1)
/// runs `tcp_data_ready`, which calls the socket's data-ready callback
/// when the queue holds at least that much.
pub fn signal_if_readable(socket: BorrowedFd<'_>) -> io::Result<()> {
    setsockopt_int(socket, libc::SOL_SOCKET, libc::SO_RCVLOWAT, 1)
}

/// SO_ATTACH_REUSEPORT_CBPF and SO_PREFER_BUSY_POLL (asm-generic values;
/// the libc crate lacks them for Linux).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;

fn setsockopt_int(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a local int and its size; the fd is
    // borrowed for the call.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// TCP_DEFER_ACCEPT: accept only once data arrived, waiting at most `secs`.
pub fn set_defer_accept(socket: BorrowedFd<'_>, secs: u64) -> io::Result<()> {
    let secs = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    setsockopt_int(socket, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, secs)
}

/// TCP_FASTOPEN on a listener (before listen(2)): the queue of pending
/// fast-open requests.
pub fn set_fastopen_queue(socket: BorrowedFd<'_>, queue: u32) -> io::Result<()> {
    let queue = libc::c_int::try_from(queue).unwrap_or(libc::c_int::MAX);
    setsockopt_int(socket, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, queue)
}

/// SO_BUSY_POLL, and SO_PREFER_BUSY_POLL when `prefer`.
pub fn set_busy_poll(socket: BorrowedFd<'_>, usecs: u32, prefer: bool) -> io::Result<()> {
    SockRef::from(&socket).set_busy_poll(usecs)?;
    if prefer {
        setsockopt_int(socket, libc::SOL_SOCKET, SO_PREFER_BUSY_POLL, 1)?;
    }
    Ok(())
}

/// TCP_CONGESTION: the socket's congestion control, by the kernel's name.
pub fn set_congestion(socket: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    SockRef::from(&socket).set_tcp_congestion(name.as_bytes())
}

/// A TCP/IPv4 socket that is never connected, for start-up probes of
/// socket options.
pub fn tcp_socket_v4() -> io::Result<OwnedFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    Ok(Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?.into())
}

/// SO_RCVBUF and SO_SNDBUF, each when given.
pub fn set_buffer_sizes(
    socket: BorrowedFd<'_>,
    receive: Option<usize>,
    send: Option<usize>,
) -> io::Result<()> {
    let s = SockRef::from(&socket);
    if let Some(n) = receive {
        s.set_recv_buffer_size(n)?;
    }
    if let Some(n) = send {
        s.set_send_buffer_size(n)?;
    }
    Ok(())
}

/// SO_INCOMING_CPU: this listener of a SO_REUSEPORT group is the one for
/// connections whose packets CPU `cpu` processes (Linux 6.2 and later
/// honour it in the group's choice).
pub fn set_incoming_cpu(socket: BorrowedFd<'_>, cpu: usize) -> io::Result<()> {
    SockRef::from(&socket).set_cpu_affinity(cpu)
}

/// The classic BPF program that picks a listener of a SO_REUSEPORT group by
/// the CPU that processed the packet: the listener at position i (in the
/// order they called listen(2)) for CPU `cpus[i]`, and `cpu % n` for CPUs
/// not in the list.
pub fn reuseport_cpu_program(cpus: &[usize]) -> Vec<libc::sock_filter> {
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut prog = vec![op(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        0,
        0,
        (libc::SKF_AD_OFF + libc::SKF_AD_CPU) as u32,
    )];
    for (i, &cpu) in cpus.iter().enumerate() {
        // A == cpu: return i; else skip that return.
        prog.push(op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            cpu as u32,
        ));
        prog.push(op(libc::BPF_RET | libc::BPF_K, 0, 0, i as u32));
    }
    prog.push(op(
        libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
        0,
        0,
        cpus.len().max(1) as u32,
    ));
    prog.push(op(libc::BPF_RET | libc::BPF_A, 0, 0, 0));
    prog
}

/// Attaches `program` to the SO_REUSEPORT group of `socket`.
pub fn attach_reuseport_program(
    socket: BorrowedFd<'_>,
    program: &[libc::sock_filter],
) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| io::Error::other("BPF program too long"))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at `program`, which outlives the call; the
    // kernel copies the instructions.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// glommio's socket types take a raw descriptor; these move an owned one
/// of the right kind into them (the only place that vouches for it).
pub fn glommio_tcp_stream(fd: OwnedFd) -> glommio::net::TcpStream {
    // SAFETY: `fd` is an owned, connected TCP socket (callers get it from
    // accept or a connect they made); ownership moves into the stream.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) }
}

pub fn glommio_tcp_listener(fd: OwnedFd) -> glommio::net::TcpListener {
    // SAFETY: `fd` is an owned, listening TCP socket; ownership moves.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) }
}

pub fn glommio_udp_socket(fd: OwnedFd) -> glommio::net::UdpSocket {
    // SAFETY: `fd` is an owned, bound UDP socket; ownership moves.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd)) }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`: the unit of
/// /proc/PID/stat's CPU times).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// The page size (`sysconf(_SC_PAGESIZE)`: the unit of /proc/PID/stat's RSS).
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// Online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf reads a system value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(0)
}

/// CLOCK_MONOTONIC in microseconds (what systemd's MONOTONIC_USEC is).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// SO_RCVBUF and SO_SNDBUF of `size`, past `net.core.[rw]mem_max` where
/// the process may (SO_*BUFFORCE needs CAP_NET_ADMIN), else up to it.
pub fn force_buffers(socket: BorrowedFd<'_>, size: libc::c_int) {
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        if setsockopt_int(socket, libc::SOL_SOCKET, force, size).is_err() {
            let _ = setsockopt_int(socket, libc::SOL_SOCKET, plain, size);
        }
    }
}

/// Whether the peer of a connected TCP socket has closed it (a FIN or a
/// RST is waiting), without reading any data: a 1-byte MSG_PEEK that does
/// not block. `Ok(false)` while the connection looks alive; an error is the
/// reset (or other failure) waiting on the socket.
pub fn peer_closed(socket: BorrowedFd<'_>) -> io::Result<bool> {
    match peek(socket, &mut [0u8]) {
        Ok(0) => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
            _ => Err(e),
        },
    }
}

/// TCP_NODELAY: a relay must not add Nagle delay to small messages.
pub fn set_nodelay(fd: impl AsFd) {
    let _ = with_sock(fd, |s| s.set_tcp_nodelay(true));
}

/// Stops a socket at once. Closing is not enough while io_uring still holds
/// a request on it (the kernel keeps the file open until the request is
/// cancelled); shutdown() moves a listener out of LISTEN, so new connection
/// attempts are refused right away, and ends pending accepts and receives.
pub fn stop_listening(fd: impl AsFd) {
    let _ = with_sock(fd, |s| s.shutdown(std::net::Shutdown::Both));
}

/// [`stop_listening`] on a listener known only by its number, because its
/// owner (an accept loop, BIND's wait) was moved into a task that is still
/// running.
///
/// # Safety
/// `fd` must be an open socket for the whole call, kept open by its owner;
/// this never closes it.
pub unsafe fn stop_listening_raw(fd: RawFd) {
    // SAFETY: the caller keeps `fd` open across the call.
    let _ = unsafe { with_raw_sock(fd, |s| s.shutdown(std::net::Shutdown::Both)) };
}

/// Puts a descriptor in O_NONBLOCK mode. splice(2) on a socket blocks
/// unless the socket itself is non-blocking (SPLICE_F_NONBLOCK only covers
/// the pipe end), and glommio's accept leaves its sockets blocking (it uses
/// MSG_DONTWAIT per call).
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    with_sock(fd, |s| s.set_nonblocking(true))
}

/// A pipe used as splice(2)'s in-kernel buffer between two sockets.
pub struct Pipe {
    pub read: std::os::fd::OwnedFd,
    pub write: std::os::fd::OwnedFd,
}

impl Pipe {
    /// A non-blocking pipe of (about) `size` bytes. F_SETPIPE_SZ can fail
    /// with EPERM once the user's pipe-user-pages-soft is spent; the pipe
    /// then keeps the kernel default (64 KiB), which still works.
    pub fn new(size: usize) -> io::Result<Pipe> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let pipe = unsafe {
            Pipe {
                read: std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                write: std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            }
        };
        // SAFETY: fcntl on a descriptor we own.
        unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, size as libc::c_int) };
        Ok(pipe)
    }
}

/// splice(2) with SPLICE_F_NONBLOCK | SPLICE_F_MOVE between two
/// descriptors, one of which is a pipe. Ok(0) means end of stream on a
/// socket source.
pub fn splice(from: impl AsFd, to: impl AsFd, len: usize) -> io::Result<usize> {
    let (from, to) = (from.as_fd().as_raw_fd(), to.as_fd().as_raw_fd());
    // SAFETY: plain syscall on descriptors the caller owns; null offsets
    // mean "current position", as required for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// recv(2) without blocking (MSG_DONTWAIT: glommio leaves its sockets
/// blocking). Ok(0) is end of stream.
pub fn recv(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    recv_with(fd.as_fd().as_raw_fd(), buf, libc::MSG_DONTWAIT)
}

fn recv_with(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: writes at most buf.len() bytes into buf, which we own.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// send(2) without blocking, and without SIGPIPE on a closed peer (EPIPE
/// instead).
pub fn send(fd: impl AsFd, buf: &[u8]) -> io::Result<usize> {
    let fd = fd.as_fd().as_raw_fd();
    // SAFETY: reads at most buf.len() bytes from buf.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads one byte from a non-blocking descriptor.
pub fn read_one(fd: impl AsFd) -> io::Result<Option<u8>> {
    let fd = fd.as_fd().as_raw_fd();
    let mut b = 0u8;
    // SAFETY: reads at most one byte into a local.
    let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
    match n {
        1 => Ok(Some(b)),
        0 => Ok(None),
        _ => Err(io::Error::last_os_error()),
    }
}

/// The largest pipe an unprivileged process may ask for
/// (/proc/sys/fs/pipe-max-size). Read once at start, off the cores.
pub fn pipe_max_size() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// recvfrom(2) without blocking into `buf`; a datagram longer than `buf`
/// is truncated (callers pass a buffer of the largest UDP payload).
pub fn udp_recv_from(fd: impl AsFd, buf: &mut [u8]) -> io::Result<(usize, std::net::SocketAddr)> {
    with_sock(fd, |s| {
        // SAFETY: MaybeUninit<u8> has the layout of u8, and recv only
        // writes initialised bytes into the slice.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [std::mem::MaybeUninit<u8>]) };
        let (n, from) = s.recv_from(uninit)?;
        let from = from
            .as_socket()
            .ok_or_else(|| io::Error::other("datagram from a non-IP address"))?;
        Ok((n, from))
    })
}

/// Datagrams taken with one recvmmsg(2): up to [`DatagramBatch::SLOTS`] of
/// them, each into a slot of its own that holds the largest datagram, so
/// none is ever truncated. The slots' memory is allocated zeroed and
/// untouched: only the bytes datagrams bring in count in RSS.
pub struct DatagramBatch {
    buf: Box<[u8]>,
    slot_len: usize,
    lens: [usize; DatagramBatch::SLOTS],
    from: [Option<std::net::SocketAddr>; DatagramBatch::SLOTS],
}

impl DatagramBatch {
    pub const SLOTS: usize = 16;

    pub fn new(slot_len: usize) -> DatagramBatch {
        DatagramBatch {
            buf: vec![0u8; slot_len * Self::SLOTS].into_boxed_slice(),
            slot_len,
            lens: [0; Self::SLOTS],
            from: [None; Self::SLOTS],
        }
    }

    /// Takes what the socket has queued, up to `SLOTS` datagrams, without
    /// blocking; each lands at `offset` in its slot (room before it for a
    /// header). Returns how many; WouldBlock when none was queued. Fewer
    /// than `SLOTS` means the socket was empty at the time.
    pub fn recv(&mut self, fd: impl AsFd, offset: usize) -> io::Result<usize> {
        let fd = fd.as_fd().as_raw_fd();
        const N: usize = DatagramBatch::SLOTS;
        // SAFETY: all-zero is a valid sockaddr_storage (plain integers).
        let mut names: [libc::sockaddr_storage; N] = unsafe { std::mem::zeroed() };
        // SAFETY: all-zero is a valid iovec (a null pointer of length 0).
        let mut iovs: [libc::iovec; N] = unsafe { std::mem::zeroed() };
        // SAFETY: all-zero is a valid mmsghdr (null pointers, zero lengths).
        let mut msgs: [libc::mmsghdr; N] = unsafe { std::mem::zeroed() };
        for (i, slot) in self.buf.chunks_exact_mut(self.slot_len).enumerate() {
            let room = &mut slot[offset..];
            iovs[i] = libc::iovec {
                iov_base: room.as_mut_ptr().cast(),
                iov_len: room.len(),
            };
            let hdr = &mut msgs[i].msg_hdr;
            hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            hdr.msg_iov = &mut iovs[i];
            hdr.msg_iovlen = 1;
        }
        // SAFETY: every message points at its own slot of `buf` (at most
        // the slot's room) and its own name, all alive for the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                N as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            self.lens[i] = msgs[i].msg_len as usize;
            self.from[i] = socket_addr(&names[i]);
        }
        Ok(n)
    }

    /// Datagram `i` of the last `recv` (at `offset`, as received) and its
    /// source; `None` for a source that is not an IP address.
    pub fn datagram(&self, i: usize, offset: usize) -> Option<(&[u8], std::net::SocketAddr)> {
        let start = i * self.slot_len + offset;
        Some((&self.buf[start..start + self.lens[i]], self.from[i]?))
    }

    /// Slot `i` whole, header room included, and its datagram's length and
    /// source.
    pub fn slot_mut(&mut self, i: usize) -> (&mut [u8], usize, Option<std::net::SocketAddr>) {
        let start = i * self.slot_len;
        (
            &mut self.buf[start..start + self.slot_len],
            self.lens[i],
            self.from[i],
        )
    }
}

/// A socket address the kernel wrote, if it is an IP one.
fn socket_addr(name: &libc::sockaddr_storage) -> Option<std::net::SocketAddr> {
    use std::net::{Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match name.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET, which the
            // storage is large and aligned enough to hold.
            let sin =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6 for AF_INET6.
            let sin6 =
                unsafe { &*(name as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(SocketAddrV6::new(ip, port, sin6.sin6_flowinfo, sin6.sin6_scope_id).into())
        }
        _ => None,
    }
}

/// sendto(2) without blocking. A full send buffer is WouldBlock, which UDP
/// callers treat as a dropped datagram.
pub fn udp_send_to(fd: impl AsFd, buf: &[u8], to: std::net::SocketAddr) -> io::Result<usize> {
    with_sock(fd, |s| s.send_to(buf, &to.into()))
}

/// The local address the kernel would use to reach `dest` (a UDP connect
/// sends no packet; it only picks a route and a source address).
pub fn local_addr_towards(dest: std::net::SocketAddr) -> io::Result<std::net::IpAddr> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(dest),
        socket2::Type::DGRAM,
        None,
    )?;
    s.connect(&dest.into())?;
    s.local_addr()?
        .as_socket()
        .map(|a| a.ip())
        .ok_or_else(|| io::Error::other("no local address"))
}

/// Reads one line from stdin without its line ending. On a terminal the
/// prompt goes to stderr and echo is off while typing.
pub fn read_password_line() -> io::Result<String> {
    use std::io::{BufRead, Write};
    // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a zeroed termios that
    // tcgetattr fills before it is read.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::isatty(0) == 1 && libc::tcgetattr(0, &mut t) == 0 {
            let mut quiet = t;
            quiet.c_lflag &= !libc::ECHO;
            libc::tcsetattr(0, libc::TCSANOW, &quiet);
            eprint!("password: ");
            let _ = io::stderr().flush();
            Some(t)
        } else {
            None
        }
    };
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// The most descriptors one SCM_RIGHTS message carries (the kernel's
/// SCM_MAX_FD).
pub const MAX_FDS: usize = 253;

/// Sends `data` with `fds` attached (SCM_RIGHTS) on a Unix stream socket.
pub fn send_fds(sock: impl AsFd, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let sock = sock.as_fd().as_raw_fd();
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} sockets are more than one message carries ({MAX_FDS})",
            fds.len()
        )));
    }
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space.max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; every pointer set below outlives the
    // sendmsg call, and the control buffer is CMSG_SPACE bytes as the
    // CMSG_* macros require.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr() as *const u8,
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one message and the descriptors attached to it (at most
/// `max_fds`), each close-on-exec.
pub fn recv_fds(
    sock: impl AsFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    let sock = sock.as_fd().as_raw_fd();
    use std::os::fd::FromRawFd;
    let fd_bytes = max_fds * std::mem::size_of::<RawFd>();
    // SAFETY: arithmetic.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut fds = Vec::new();
    // SAFETY: as in send_fds; the kernel writes at most msg_controllen
    // bytes of control data, which the CMSG_* walk stays within.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("more sockets than expected were sent"));
        }
        n as usize
    };
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch takes at most SLOTS datagrams per call, each whole at the
    /// offset asked for with its source, the rest on the next call; an
    /// empty socket is WouldBlock.
    #[test]
    fn a_datagram_batch_takes_sixteen_at_a_time_whole_and_with_their_sources() {
        for (bind, from) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let rx = std::net::UdpSocket::bind(bind).unwrap();
            rx.set_nonblocking(true).unwrap();
            let tx = std::net::UdpSocket::bind(from).unwrap();
            let to = rx.local_addr().unwrap();
            let sizes: Vec<usize> = (0..20)
                .map(|i| if i == 3 { 65_000 } else { i + 1 })
                .collect();
            for (i, &n) in sizes.iter().enumerate() {
                tx.send_to(&vec![i as u8; n], to).unwrap();
            }
            let mut batch = DatagramBatch::new(8 + 65_527);
            let mut got = Vec::new();
            let first = batch.recv(&rx, 8).unwrap();
            assert_eq!(first, DatagramBatch::SLOTS, "{bind}");
            for i in 0..first {
                let (data, source) = batch.datagram(i, 8).unwrap();
                assert_eq!(source, tx.local_addr().unwrap());
                got.push(data.to_vec());
            }
            let rest = batch.recv(&rx, 8).unwrap();
            assert_eq!(rest, 4, "{bind}");
            for i in 0..rest {
                let (slot, len, source) = batch.slot_mut(i);
                assert_eq!(source, Some(tx.local_addr().unwrap()));
                got.push(slot[8..8 + len].to_vec());
            }
            for (i, data) in got.iter().enumerate() {
                assert_eq!(data, &vec![i as u8; sizes[i]], "{bind}: datagram {i}");
            }
            let e = batch.recv(&rx, 8).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        }
    }

    /// Pins the calling thread to one CPU.
    fn pin_to(cpu: usize) {
        // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                0
            );
        }
    }

    /// On loopback the SYN is processed by the CPU that sent it, so a
    /// client pinned to CPU c must land on the listener steered to c: with
    /// SO_INCOMING_CPU and with the reuseport BPF program, for every CPU,
    /// listed in reverse so that a program that ignores the CPU fails.
    #[test]
    fn steering_puts_each_connection_on_the_listener_of_its_cpu() {
        use std::net::{SocketAddr, TcpStream};
        let cpus = allowed_cpus().unwrap();
        if cpus.len() < 2 {
            eprintln!("skipped: steering needs two CPUs");
            return;
        }
        let steered: Vec<usize> = cpus.iter().rev().copied().collect();
        for mode in ["incoming-cpu", "cpu-bpf"] {
            let mut listeners = Vec::new();
            let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
            for &cpu in &steered {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    .unwrap();
                s.set_reuse_port(true).unwrap();
                s.bind(&addr.into()).unwrap();
                s.listen(16).unwrap();
                addr = s.local_addr().unwrap().as_socket().unwrap();
                if mode == "incoming-cpu" {
                    set_incoming_cpu(std::os::fd::AsFd::as_fd(&s), cpu).unwrap();
                }
                s.set_nonblocking(true).unwrap();
                listeners.push(s);
            }
            if mode == "cpu-bpf" {
                let program = reuseport_cpu_program(&steered);
                attach_reuseport_program(std::os::fd::AsFd::as_fd(&listeners[0]), &program)
                    .unwrap();
            }
            for (want, &cpu) in steered.iter().enumerate() {
                let client = std::thread::spawn(move || {
                    pin_to(cpu);
                    TcpStream::connect(addr).unwrap()
                })
                .join()
                .unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
                let got: Vec<usize> = listeners
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.accept().is_ok())
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(got, [want], "{mode}: a client on CPU {cpu}");
                drop(client);
            }
        }
    }

    #[test]
    fn the_cpu_program_maps_listed_cpus_then_falls_back_to_the_cpu_number() {
        let p = reuseport_cpu_program(&[4, 7]);
        // LD cpu; (JEQ c, RET i) per CPU; MOD n; RET A.
        assert_eq!(p.len(), 1 + 2 * 2 + 2);
        assert_eq!(p[1].k, 4);
        assert_eq!(p[2].k, 0);
        assert_eq!(p[3].k, 7);
        assert_eq!(p[4].k, 1);
        assert_eq!(p[5].k, 2);
    }

    fn entry(origin: u8, kind: u8, code: u8, errno: i32) -> libc::sock_extended_err {
        libc::sock_extended_err {
            ee_errno: errno as u32,
            ee_origin: origin,
            ee_type: kind,
            ee_code: code,
            ee_pad: 0,
            ee_info: 0,
            ee_data: 0,
        }
    }

    /// Each ICMP answer to a SYN, as the kernel queues it, and the errno a
    /// connect fails with (which decides the SOCKS reply).
    #[test]
    fn queued_icmp_errors_map_to_the_errno_that_decides_the_reply() {
        use libc::{SO_EE_ORIGIN_ICMP as V4, SO_EE_ORIGIN_ICMP6 as V6};
        let table = [
            // (origin, type, code, kernel's errno) -> errno
            ((V4, 3, 0, libc::ENETUNREACH), libc::ENETUNREACH),
            ((V4, 3, 1, libc::EHOSTUNREACH), libc::EHOSTUNREACH),
            ((V4, 3, 3, libc::ECONNREFUSED), libc::ECONNREFUSED),
            ((V4, 3, 9, libc::ENETUNREACH), libc::EACCES),
            ((V4, 3, 10, libc::EHOSTUNREACH), libc::EACCES),
            ((V4, 3, 13, libc::EHOSTUNREACH), libc::EACCES),
            ((V4, 11, 0, libc::EHOSTUNREACH), libc::EHOSTUNREACH),
            ((V6, 1, 0, libc::ENETUNREACH), libc::ENETUNREACH),
            ((V6, 1, 1, libc::EACCES), libc::EACCES),
            ((V6, 1, 3, libc::EHOSTUNREACH), libc::EHOSTUNREACH),
            ((V6, 1, 4, libc::ECONNREFUSED), libc::ECONNREFUSED),
            ((V6, 1, 5, libc::EACCES), libc::EACCES),
            ((V6, 1, 6, libc::EACCES), libc::EACCES),
            // Not ICMP at all (a local error): the kernel's errno.
            (
                (libc::SO_EE_ORIGIN_LOCAL, 0, 0, libc::EMSGSIZE),
                libc::EMSGSIZE,
            ),
            // No errno given: the target cannot be reached.
            ((V4, 3, 1, 0), libc::EHOSTUNREACH),
        ];
        for ((origin, kind, code, errno), want) in table {
            let got = queued_error_errno(&entry(origin, kind, code, errno));
            assert_eq!(
                got.raw_os_error(),
                Some(want),
                "origin {origin} type {kind} code {code} errno {errno}: {got}"
            );
        }
    }

    #[test]
    fn an_empty_error_queue_is_none() {
        let socket = connecting_socket("127.0.0.1:9".parse().unwrap(), None, None, |_| Ok(()));
        // Port 9 on loopback: refused by RST or still in progress; neither
        // queues an ICMP error.
        if let Ok(socket) = socket {
            assert!(take_queued_error(std::os::fd::AsFd::as_fd(&socket))
                .unwrap()
                .is_none());
        }
    }
}
