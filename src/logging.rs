//! tracing setup: diagnostics to stderr, access-log lines (target
//! `access`) to their own destination. Both writers are non-blocking (a
//! background thread does the write), so a slow stderr or disk never stalls
//! a core; under a flood, lines are dropped rather than waited for.
//!
//! [`LogControl`] is what SIGHUP uses: a new level for the diagnostics, and
//! the access-log file opened again by name (after logrotate moved it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, Registry};

use crate::config::AccessLog;

/// Lines each background writer holds before it drops. tracing-appender's
/// default (128,000) allocates and touches its whole queue at start, 4 MiB
/// per writer, which was most of the proxy's start-up memory. Diagnostics
/// are few (the repeating warnings are rate-limited); the access log gets
/// one line per connection, and its writer drains a line in microseconds,
/// so 16,384 lines ride out a stall of a good fraction of a second at
/// 50,000 connections/s before lines are dropped (and counted).
const DIAGNOSTIC_LINES: usize = 4096;
const ACCESS_LINES: usize = 16_384;

fn writer<W: Write + Send + 'static>(
    lines: usize,
    out: W,
) -> (tracing_appender::non_blocking::NonBlocking, WorkerGuard) {
    NonBlockingBuilder::default()
        .buffered_lines_limit(lines)
        .finish(out)
}

/// Keeps the writer threads alive; dropping it flushes them.
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

/// Changes logging while the proxy runs (from the signal thread).
#[derive(Clone)]
pub struct LogControl {
    level: reload::Handle<LevelFilter, Registry>,
    access: Option<Arc<ReopenableFile>>,
}

impl LogControl {
    /// Takes a new diagnostics level ("info", "debug", ...).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let level: LevelFilter = level
            .parse()
            .map_err(|_| format!("log-level {level:?} is not a level"))?;
        self.level.modify(|l| *l = level).map_err(|e| e.to_string())
    }

    /// Opens the access-log file again by its name; lines already queued
    /// go to whichever file is open when they are written.
    pub fn reopen_access_log(&self) -> std::io::Result<()> {
        match &self.access {
            Some(f) => f.reopen(),
            None => Ok(()),
        }
    }
}

/// The access-log file, which the writer thread appends to and a reopen
/// swaps (the lock is taken by that thread and by SIGHUP, never by a core).
struct ReopenableFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl ReopenableFile {
    fn open(path: &Path) -> std::io::Result<ReopenableFile> {
        Ok(ReopenableFile {
            path: path.to_owned(),
            file: Mutex::new(append(path)?),
        })
    }

    fn reopen(&self) -> std::io::Result<()> {
        let fresh = append(&self.path)?;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.flush();
        *file = fresh;
        Ok(())
    }
}

fn append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// What the writer thread writes through.
struct AccessFile(Arc<ReopenableFile>);

impl Write for AccessFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut file = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let mut file = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        file.flush()
    }
}

/// The access log as syslog messages: one datagram per line to the local
/// daemon's socket, `<30>coresocks[PID]: LINE` (facility daemon, level
/// info; the daemon adds the time and host). A daemon that restarted is
/// connected to again on the next line; while none listens, lines are
/// dropped (and counted, like any line the writer cannot take).
struct SyslogWriter {
    path: PathBuf,
    socket: Option<std::os::unix::net::UnixDatagram>,
    prefix: String,
}

/// `<PRI>` for facility daemon (3), severity info (6).
const SYSLOG_PRI: u8 = 3 * 8 + 6;

impl SyslogWriter {
    fn open(path: &Path) -> std::io::Result<SyslogWriter> {
        let mut w = SyslogWriter {
            path: path.to_owned(),
            socket: None,
            prefix: format!("<{SYSLOG_PRI}>coresocks[{}]: ", std::process::id()),
        };
        // At start a missing daemon is an error the operator should see.
        w.connect()?;
        Ok(w)
    }

    fn connect(&mut self) -> std::io::Result<()> {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.connect(&self.path)?;
        self.socket = Some(socket);
        Ok(())
    }

    fn send(&mut self, message: &[u8]) -> std::io::Result<()> {
        if self.socket.is_none() {
            self.connect()?;
        }
        match self.socket.as_ref().map(|s| s.send(message)) {
            Some(Ok(_)) => Ok(()),
            _ => {
                // The daemon went away or restarted: once more, afresh.
                self.connect()?;
                self.socket
                    .as_ref()
                    .map_or(Ok(()), |s| s.send(message).map(|_| ()))
            }
        }
    }
}

impl Write for SyslogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let line = buf.strip_suffix(b"\n").unwrap_or(buf);
        let mut message = Vec::with_capacity(self.prefix.len() + line.len());
        message.extend_from_slice(self.prefix.as_bytes());
        message.extend_from_slice(line);
        if let Err(e) = self.send(&message) {
            self.socket = None;
            return Err(e);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init(level: &str, access: &AccessLog) -> std::io::Result<(LogGuards, LogControl)> {
    let level: LevelFilter = level.parse().unwrap_or(LevelFilter::INFO);
    let (level, level_handle) = reload::Layer::new(level);
    let (stderr, g1) = writer(DIAGNOSTIC_LINES, std::io::stderr());
    // A per-layer filter: the level governs the diagnostics only, never
    // the access lines (which are INFO, and go wherever --access-log says).
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(stderr)
        .with_ansi(false)
        .with_filter(level)
        .with_filter(filter_fn(|m| m.target() != "access"));
    let mut guards = vec![g1];
    let mut reopenable = None;
    let access_layer = match access {
        AccessLog::Off => None,
        AccessLog::Stderr | AccessLog::File(_) | AccessLog::Syslog(_) => {
            let (writer, guard) = match access {
                AccessLog::File(path) => {
                    let file = Arc::new(ReopenableFile::open(path)?);
                    reopenable = Some(file.clone());
                    writer(ACCESS_LINES, AccessFile(file))
                }
                AccessLog::Syslog(path) => {
                    let syslog = SyslogWriter::open(path).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!(
                                "syslog socket {}: {e} (is a syslog daemon running?)",
                                path.display()
                            ),
                        )
                    })?;
                    writer(ACCESS_LINES, syslog)
                }
                _ => writer(ACCESS_LINES, std::io::stderr()),
            };
            guards.push(guard);
            let dropped = writer.error_counter();
            crate::metrics::count_access_drops(Box::new(move || dropped.dropped_lines() as u64));
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .with_target(true)
                    .with_level(false)
                    .with_filter(filter_fn(|m| m.target() == "access")),
            )
        }
    };
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(access_layer)
        .init();
    Ok((
        LogGuards(guards),
        LogControl {
            level: level_handle,
            access: reopenable,
        },
    ))
}
