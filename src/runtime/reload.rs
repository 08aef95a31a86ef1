//! SIGHUP: read the configuration again and hand it to every core.
//!
//! The signal thread loads and checks the new configuration (file I/O,
//! Argon2 parsing, the keytab: all off the cores), then publishes it in a
//! [`ConfigSlot`]: a generation number and the configuration behind a
//! mutex. Each core looks at the generation on the timer it already runs
//! for shutdown (every 50 ms), and on a new one copies the configuration
//! into its own `Arc` and swaps it in. The mutex is taken once per core
//! per reload, never on the data path. Sessions keep the configuration
//! they started with, so open tunnels run on under their old rules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::logging::LogControl;

/// The latest configuration, and how many reloads made it.
pub struct ConfigSlot {
    generation: AtomicU64,
    latest: Mutex<Arc<Config>>,
}

impl ConfigSlot {
    pub fn new(config: Arc<Config>) -> ConfigSlot {
        ConfigSlot {
            generation: AtomicU64::new(0),
            latest: Mutex::new(config),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A core's own copy of the latest configuration.
    pub fn copy(&self) -> Config {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        Config::clone(&latest)
    }

    fn publish(&self, config: Config) -> u64 {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn current(&self) -> Arc<Config> {
        self.latest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// How to read the configuration again (the same file and flags as at
/// start), and the logging it steers.
pub struct Reloader {
    pub load: Box<dyn Fn() -> Result<Config, String> + Send>,
    pub log: Option<LogControl>,
}

impl Reloader {
    /// One SIGHUP: reopen the access log (after rotation), then load,
    /// check and publish the configuration. Every outcome is one log line;
    /// a bad configuration leaves the running one in place.
    pub fn reload(&self, slot: &ConfigSlot) {
        if let Some(log) = &self.log {
            if let Err(e) = log.reopen_access_log() {
                tracing::warn!("SIGHUP: cannot reopen the access log: {e}");
            }
        }
        let new = match (self.load)() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("SIGHUP: {e}; keeping the running configuration");
                return;
            }
        };
        let old = slot.current();
        let fixed = old.needs_restart(&new);
        if !fixed.is_empty() {
            tracing::warn!(
                "SIGHUP: {} changed, which needs a restart; keeping the running configuration",
                fixed.join(", ")
            );
            return;
        }
        if let Some(log) = &self.log {
            if let Err(e) = log.set_level(&new.log_level) {
                tracing::warn!("SIGHUP: {e}; keeping the running configuration");
                return;
            }
        }
        let summary = format!(
            "{} rule(s), {} user(s){}",
            new.policy.rules().len(),
            new.users.as_ref().map_or(0, |u| u.len()),
            if new.gssapi.is_some() { ", GSSAPI" } else { "" }
        );
        let generation = slot.publish(new);
        tracing::info!(
            "SIGHUP: configuration {generation} applied ({summary}); open tunnels keep the rules they started with"
        );
    }
}

/// A core's view of the slot: whether a reload it has not taken is there.
pub struct Follower {
    slot: Arc<ConfigSlot>,
    seen: u64,
}

impl Follower {
    pub fn new(slot: Arc<ConfigSlot>) -> Follower {
        let seen = slot.generation();
        Follower { slot, seen }
    }

    /// The new configuration, once per reload.
    pub fn take(&mut self) -> Option<Config> {
        let now = self.slot.generation();
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some(self.slot.copy())
    }
}
