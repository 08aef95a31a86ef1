//! Zero-downtime upgrade: a new coresocks process takes over the running
//! one's listening sockets over a Unix socket (SCM_RIGHTS), the way
//! HAProxy's `-x` and Envoy's hot restart do, and the old one stops
//! accepting and drains.
//!
//! With `--upgrade-socket PATH`, a starting process first tries PATH. If a
//! running coresocks answers, the new one asks for its listeners
//! (`TAKEOVER`), receives every per-core socket of every address (and the
//! metrics socket) with one `sendmsg`, starts its cores on them, and says
//! `READY`. Only then does the old process stop accepting: it cancels its
//! accept loops and closes its copies without `shutdown(2)`, since the
//! sockets (and the connections queued in them) now belong to both, and
//! drains its open connections within `--shutdown-grace`. No socket is
//! closed while connections wait in it, so nothing is refused or reset. The
//! new process then listens on PATH for the next upgrade. If the new one
//! fails before `READY`, the old one keeps serving as if nothing happened.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const HELLO: &str = "coresocks-upgrade 1";

/// What the old process hands over: each listening address with its
/// per-core sockets, and the metrics socket.
pub(crate) struct Inherited {
    pub listeners: Vec<(SocketAddr, Vec<OwnedFd>)>,
    pub metrics: Option<(SocketAddr, OwnedFd)>,
    /// Said `READY` on once the new cores run; the old process then drains.
    conn: UnixStream,
}

impl Inherited {
    /// Takes the sockets for `addr`, if the old process had it.
    pub(crate) fn take(&mut self, addr: SocketAddr) -> Option<Vec<OwnedFd>> {
        let i = self.listeners.iter().position(|(a, _)| *a == addr)?;
        Some(self.listeners.swap_remove(i).1)
    }

    pub(crate) fn take_metrics(&mut self, addr: SocketAddr) -> Option<OwnedFd> {
        match self.metrics.take() {
            Some((a, fd)) if a == addr => Some(fd),
            other => {
                self.metrics = other;
                None
            }
        }
    }

    /// Tells the old process to stop accepting, and waits until it has let
    /// go of the upgrade socket's path.
    pub(crate) fn ready(mut self) -> std::io::Result<()> {
        self.conn.write_all(b"READY\n")?;
        let mut line = String::new();
        BufReader::new(&self.conn).read_line(&mut line)?;
        if line.trim() != "DRAINING" {
            return Err(std::io::Error::other(format!(
                "the old process answered {line:?} to READY"
            )));
        }
        Ok(())
    }
}

/// Asks a running process at `path` for its sockets. `Ok(None)`: nobody
/// listens there (a first start).
pub(crate) fn take_over(path: &Path) -> std::io::Result<Option<Inherited>> {
    let conn = match UnixStream::connect(path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    // Whatever goes wrong from here, the one thing to say is that PATH did
    // not answer as a running coresocks does.
    let stranger = |e: std::io::Error| {
        std::io::Error::other(format!(
            "{} is not a coresocks upgrade socket, or its process went away ({e})",
            path.display()
        ))
    };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(stranger)?;
    (&conn)
        .write_all(format!("TAKEOVER {}\n", std::process::id()).as_bytes())
        .map_err(stranger)?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, fds) = crate::sys::recv_fds(&conn, &mut buf, crate::sys::MAX_FDS).map_err(stranger)?;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let mut lines = text.lines();
    if lines.next() != Some(HELLO) {
        return Err(std::io::Error::other(format!(
            "{} is not a coresocks upgrade socket",
            path.display()
        )));
    }
    let mut fds = fds.into_iter();
    let mut listeners = Vec::new();
    let mut metrics = None;
    let bad = |l: &str| std::io::Error::other(format!("bad upgrade message line {l:?}"));
    for line in lines {
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("listen"), Some(addr), Some(count)) => {
                let addr: SocketAddr = addr.parse().map_err(|_| bad(line))?;
                let count: usize = count.parse().map_err(|_| bad(line))?;
                let group: Vec<OwnedFd> = fds.by_ref().take(count).collect();
                if group.len() != count {
                    return Err(bad(line));
                }
                listeners.push((addr, group));
            }
            (Some("metrics"), Some(addr), None) => {
                let addr: SocketAddr = addr.parse().map_err(|_| bad(line))?;
                metrics = Some((addr, fds.next().ok_or_else(|| bad(line))?));
            }
            _ => return Err(bad(line)),
        }
    }
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(Some(Inherited {
        listeners,
        metrics,
        conn,
    }))
}

/// The running process's side: serves takeovers at `path`, one at a time,
/// with copies of the listening sockets. On a new process's `READY` it
/// marks the sockets handed over (so the cores close their copies without
/// `shutdown(2)`), starts the graceful drain, and removes `path`.
pub(crate) struct Offer {
    pub path: PathBuf,
    pub listeners: Vec<(SocketAddr, Vec<OwnedFd>)>,
    pub metrics: Option<(SocketAddr, OwnedFd)>,
}

impl Offer {
    pub(crate) fn serve(
        self,
        handed_over: Arc<AtomicBool>,
        shutdown: Arc<AtomicBool>,
    ) -> std::io::Result<()> {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path)?;
        // Only this user may take the sockets over.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600))?;
        std::thread::Builder::new()
            .name("upgrade".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    match self.hand_over(&conn) {
                        Ok(pid) => {
                            handed_over.store(true, Ordering::Relaxed);
                            shutdown.store(true, Ordering::Relaxed);
                            super::notify::notify("STOPPING=1");
                            let _ = std::fs::remove_file(&self.path);
                            let _ = (&conn).write_all(b"DRAINING\n");
                            tracing::info!(
                                "upgrade: process {pid} took over the listeners; no longer accepting, draining open connections"
                            );
                            return;
                        }
                        Err(e) => tracing::warn!("upgrade: takeover failed ({e}); still serving"),
                    }
                }
            })?;
        Ok(())
    }

    /// Sends the sockets and waits for `READY`; returns the new pid.
    fn hand_over(&self, conn: &UnixStream) -> std::io::Result<String> {
        conn.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let pid = match line.trim().strip_prefix("TAKEOVER ") {
            Some(pid) => pid.to_owned(),
            None => return Err(std::io::Error::other(format!("unexpected {line:?}"))),
        };
        let mut text = format!("{HELLO}\n");
        let mut fds = Vec::new();
        for (addr, group) in &self.listeners {
            text.push_str(&format!("listen {addr} {}\n", group.len()));
            fds.extend(group.iter().map(|fd| fd.as_fd()));
        }
        if let Some((addr, fd)) = &self.metrics {
            text.push_str(&format!("metrics {addr}\n"));
            fds.push(fd.as_fd());
        }
        crate::sys::send_fds(conn, text.as_bytes(), &fds)?;
        tracing::info!(
            "upgrade: process {pid} asked for the listeners; sent {} socket(s)",
            fds.len()
        );
        line.clear();
        reader.read_line(&mut line)?;
        if line.trim() != "READY" {
            return Err(std::io::Error::other(format!(
                "process {pid} went away before it was ready"
            )));
        }
        Ok(pid)
    }
}
