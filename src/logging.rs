//! tracing setup: diagnostics to stderr, access-log lines (target
//! `access`) to their own destination. Both writers are non-blocking (a
//! background thread does the write), so a slow stderr or disk never stalls
//! a core; under a flood, lines are dropped rather than waited for.

use std::fs::OpenOptions;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{filter_fn, LevelFilter};
use tracing_subscriber::prelude::*;

use crate::config::AccessLog;

/// Keeps the writer threads alive; dropping it flushes them.
pub struct LogGuards(#[allow(dead_code)] Vec<WorkerGuard>);

pub fn init(level: &str, access: &AccessLog) -> std::io::Result<LogGuards> {
    let level: LevelFilter = level.parse().unwrap_or(LevelFilter::INFO);
    let (stderr, g1) = NonBlockingBuilder::default().finish(std::io::stderr());
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_writer(stderr)
        .with_ansi(false)
        .with_filter(level)
        .with_filter(filter_fn(|m| m.target() != "access"));
    let mut guards = vec![g1];
    let access_layer = match access {
        AccessLog::Off => None,
        AccessLog::Stderr | AccessLog::File(_) => {
            let (writer, guard) = match access {
                AccessLog::File(path) => {
                    let file = OpenOptions::new().create(true).append(true).open(path)?;
                    NonBlockingBuilder::default().finish(file)
                }
                _ => NonBlockingBuilder::default().finish(std::io::stderr()),
            };
            guards.push(guard);
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
    Ok(LogGuards(guards))
}
