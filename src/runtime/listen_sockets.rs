//! Per-core listening sockets.
//!
//! Every core gets its own socket per listen address, all bound to the same
//! port with SO_REUSEPORT, so the kernel spreads incoming connections across
//! cores and no core ever hands a connection to another. The sockets are
//! made on the main thread before any executor starts, so that "address in
//! use" is one clear error at start.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{SocketTuning, Steering};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: the address is already in use (is another proxy running? pick another port with --listen)")]
    InUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}{hint}")]
    Other {
        addr: SocketAddr,
        source: io::Error,
        hint: &'static str,
    },
}

fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) => " (ports below 1024 need root or CAP_NET_BIND_SERVICE)",
        Some(libc::EADDRNOTAVAIL) => " (no interface of this machine has that address)",
        _ => "",
    }
}

fn listen_error(addr: SocketAddr, source: io::Error) -> ListenError {
    if source.raw_os_error() == Some(libc::EADDRINUSE) {
        ListenError::InUse { addr }
    } else {
        ListenError::Other {
            addr,
            hint: hint(&source),
            source,
        }
    }
}

/// How the listening sockets are made.
pub(crate) struct ListenSetup<'a> {
    pub backlog: u32,
    pub ipv6_only: bool,
    /// The cores' CPUs, in core order (for steering).
    pub cpus: &'a [usize],
    pub tuning: &'a SocketTuning,
}

fn new_socket(addr: SocketAddr, setup: &ListenSetup, reuse_port: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    if addr.is_ipv6() {
        socket.set_only_v6(setup.ipv6_only)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    setup.tuning.apply_to_listener(socket.as_fd())?;
    Ok(socket)
}

/// Points each core's connections at its own listener, as --listen-steering
/// says. `fds` are one address's listeners in core order, which is the
/// order they joined the SO_REUSEPORT group.
fn steer(fds: &[OwnedFd], setup: &ListenSetup) -> io::Result<()> {
    match setup.tuning.steering {
        Steering::Hash => Ok(()),
        Steering::IncomingCpu => fds
            .iter()
            .zip(setup.cpus)
            .try_for_each(|(fd, &cpu)| crate::sys::set_incoming_cpu(fd.as_fd(), cpu)),
        Steering::CpuBpf => match fds.first() {
            Some(fd) => crate::sys::attach_reuseport_program(
                fd.as_fd(),
                &crate::sys::reuseport_cpu_program(&setup.cpus[..fds.len().min(setup.cpus.len())]),
            ),
            None => Ok(()),
        },
    }
}

/// Opens `cores` listening sockets on each address; returns, per address,
/// the address actually bound (a port of 0 becomes the kernel's choice, the
/// same for every core) and one socket per core.
pub(crate) fn open_listeners(
    addrs: &[SocketAddr],
    setup: &ListenSetup,
    mut inherited: Option<&mut super::upgrade::Inherited>,
) -> Result<Vec<(SocketAddr, Vec<OwnedFd>)>, ListenError> {
    let cores = setup.cpus.len();
    let backlog = setup.backlog.min(i32::MAX as u32) as i32;
    let mut out = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        // An upgrade: the old process's sockets for this address, and more
        // of the same SO_REUSEPORT group if this process runs more cores.
        // (With fewer, some core takes several.)
        if let Some(mut fds) = inherited.as_mut().and_then(|i| i.take(addr)) {
            while fds.len() < cores {
                let socket = new_socket(addr, setup, true).map_err(|e| listen_error(addr, e))?;
                socket
                    .bind(&addr.into())
                    .map_err(|e| listen_error(addr, e))?;
                socket.listen(backlog).map_err(|e| listen_error(addr, e))?;
                fds.push(OwnedFd::from(socket));
            }
            steer(&fds, setup).map_err(|e| listen_error(addr, e))?;
            // Unlike the options that must precede listen(2), this one
            // takes on a listening socket: this process's choice holds.
            if let Some(cc) = setup.tuning.client_congestion {
                for fd in &fds {
                    crate::sys::set_congestion(fd.as_fd(), cc.as_str())
                        .map_err(|e| listen_error(addr, e))?;
                }
            }
            out.push((addr, fds));
            continue;
        }
        // SO_REUSEPORT would let us silently share a port with another
        // process of the same user; a probe bind without it fails instead.
        if addr.port() != 0 {
            let probe = new_socket(addr, setup, false).map_err(|e| listen_error(addr, e))?;
            probe
                .bind(&addr.into())
                .map_err(|e| listen_error(addr, e))?;
        }
        let mut bound = addr;
        let mut fds = Vec::with_capacity(cores);
        for _ in 0..cores {
            let socket = new_socket(bound, setup, true).map_err(|e| listen_error(addr, e))?;
            socket
                .bind(&bound.into())
                .map_err(|e| listen_error(addr, e))?;
            socket.listen(backlog).map_err(|e| listen_error(addr, e))?;
            if bound.port() == 0 {
                bound = socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .ok_or_else(|| listen_error(addr, io::Error::other("no local address")))?;
            }
            fds.push(OwnedFd::from(socket));
        }
        steer(&fds, setup).map_err(|e| listen_error(addr, e))?;
        out.push((bound, fds));
    }
    Ok(out)
}
