//! systemd's readiness protocol (sd_notify): one datagram per state change
//! to the socket systemd names in NOTIFY_SOCKET, for a `Type=notify` unit.
//! Without NOTIFY_SOCKET (not under systemd) nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Sends `state` ("READY=1", "RELOADING=1", "STOPPING=1", ...). Failures
/// are ignored: systemd's bookkeeping must never stop the proxy.
pub(crate) fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let _ = match bytes.strip_prefix(b"@") {
        // An abstract socket (systemd's usual choice).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
}

/// `RELOADING=1` with the monotonic time systemd asks reloads to carry.
pub(crate) fn reloading() {
    let usec = crate::sys::monotonic_usec();
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}
