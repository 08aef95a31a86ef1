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

pub fn init(level: &str, access: &AccessLog) -> std::io::Result<(LogGuards, LogControl)> {
    let level: LevelFilter = level.parse().unwrap_or(LevelFilter::INFO);
    let (level, level_handle) = reload::Layer::new(level);
    let (stderr, g1) = NonBlockingBuilder::default().finish(std::io::stderr());
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
        AccessLog::Stderr | AccessLog::File(_) => {
            let (writer, guard) = match access {
                AccessLog::File(path) => {
                    let file = Arc::new(ReopenableFile::open(path)?);
                    reopenable = Some(file.clone());
                    NonBlockingBuilder::default().finish(AccessFile(file))
                }
                _ => NonBlockingBuilder::default().finish(std::io::stderr()),
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
