//! The few raw system calls coresocks needs beyond glommio and socket2,
//! each wrapped once here.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
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

/// Runs `f` with a raw socket borrowed for socket2's option setters.
fn with_sock<T>(fd: RawFd, f: impl FnOnce(SockRef<'_>) -> T) -> T {
    // SAFETY: callers pass the fd of a socket they own and keep open for the
    // duration of the call; SockRef never closes it.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    f(SockRef::from(&borrowed))
}

/// Makes the next close() send RST instead of FIN, so that a reset on one
/// side of a tunnel reaches the other side as a reset.
pub fn set_linger_zero(fd: RawFd) {
    let _ = with_sock(fd, |s| s.set_linger(Some(Duration::ZERO)));
}

/// TCP_NODELAY: a relay must not add Nagle delay to small messages.
pub fn set_nodelay(fd: RawFd) {
    let _ = with_sock(fd, |s| s.set_tcp_nodelay(true));
}

/// Stops a listening socket at once. Closing is not enough while io_uring
/// still holds an accept on it (the kernel keeps the file open until the
/// request is cancelled); shutdown() moves it out of LISTEN, so new
/// connection attempts are refused right away and the pending accept ends.
pub fn stop_listening(fd: RawFd) {
    let _ = with_sock(fd, |s| s.shutdown(std::net::Shutdown::Both));
}
