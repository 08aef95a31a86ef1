//! SIGHUP: read the configuration again and hand it to every core.
//!
//! The signal thread loads and checks the new configuration (file I/O,
//! Argon2 parsing, the keytab: all off the cores), then publishes it in a
//! [`ConfigSlot`]: a generation number and the configuration behind a
//! mutex. Each core looks at the generation on the timer it already runs
//! for shutdown (every 50 ms), and on a new one copies the configuration
//! into its own `Arc`, swaps it in and acknowledges. The signal thread
//! logs "applied" only once every core has acknowledged, so a client that
//! connects after that line meets the new rules on whichever core takes
//! it. The mutexes are taken once per core per reload, never on the data
//! path. Sessions keep the configuration they started with, so open
//! tunnels run on under their old rules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::logging::LogControl;

/// How long a reload waits for every core to take it before it says which
/// have not (a core checks every 50 ms; only a core stuck in one task for
/// this long misses it).
const ACK_WAIT: Duration = Duration::from_secs(5);

/// The latest configuration, how many reloads made it, and which
/// generation each core serves new sessions with.
pub struct ConfigSlot {
    generation: AtomicU64,
    latest: Mutex<Arc<Config>>,
    /// By core index: the generation that core has applied.
    applied: Mutex<Vec<u64>>,
    acknowledged: Condvar,
}

impl ConfigSlot {
    pub fn new(config: Arc<Config>, cores: usize) -> ConfigSlot {
        ConfigSlot {
            generation: AtomicU64::new(0),
            latest: Mutex::new(config),
            applied: Mutex::new(vec![0; cores]),
            acknowledged: Condvar::new(),
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

    /// Core `index` now serves new sessions with `generation`.
    fn acknowledge(&self, index: usize, generation: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = applied.get_mut(index) {
            *slot = generation;
        }
        self.acknowledged.notify_all();
    }

    /// Waits until every core has applied `generation`, or `limit` passes;
    /// the indices of the cores still behind (empty: all took it).
    fn wait_applied(&self, generation: u64, limit: Duration) -> Vec<usize> {
        let deadline = Instant::now() + limit;
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let behind: Vec<usize> = (0..applied.len())
                .filter(|&i| applied[i] < generation)
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if behind.is_empty() || left.is_zero() {
                return behind;
            }
            applied = self
                .acknowledged
                .wait_timeout(applied, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
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
        let behind = slot.wait_applied(generation, ACK_WAIT);
        if behind.is_empty() {
            tracing::info!(
                "SIGHUP: configuration {generation} applied ({summary}) on every core; open tunnels keep the rules they started with"
            );
        } else {
            tracing::warn!(
                "SIGHUP: configuration {generation} published, but core index(es) {behind:?} had not taken it after {}s; they take it on their next check",
                ACK_WAIT.as_secs()
            );
        }
    }
}

/// A core's view of the slot: whether a reload it has not taken is there.
pub(crate) struct Follower {
    slot: Arc<ConfigSlot>,
    index: usize,
    seen: u64,
}

impl Follower {
    /// For the core at `index` in the slot's list.
    pub(crate) fn new(slot: Arc<ConfigSlot>, index: usize) -> Follower {
        let seen = slot.generation();
        Follower { slot, index, seen }
    }

    /// The new configuration and its generation, once per reload. Call
    /// [`Follower::applied`] once it serves new sessions.
    pub(crate) fn take(&mut self) -> Option<(u64, Config)> {
        let now = self.slot.generation();
        if now == self.seen {
            return None;
        }
        self.seen = now;
        Some((now, self.slot.copy()))
    }

    /// Tells the reloading thread this core now serves `generation`.
    pub(crate) fn applied(&self, generation: u64) {
        self.slot.acknowledge(self.index, generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_settings(crate::config::Settings::default()).expect("the defaults are valid")
    }

    #[test]
    fn a_reload_is_applied_once_every_core_acknowledges() {
        let slot = Arc::new(ConfigSlot::new(Arc::new(config()), 2));
        let mut followers = [
            Follower::new(slot.clone(), 0),
            Follower::new(slot.clone(), 1),
        ];
        let generation = slot.publish(config());
        assert_eq!(generation, 1);
        let (taken, _) = followers[0].take().expect("core 0 sees generation 1");
        followers[0].applied(taken);
        assert!(followers[0].take().is_none(), "once per reload");
        assert_eq!(slot.wait_applied(1, Duration::ZERO), vec![1]);
        let late = std::thread::spawn(move || {
            let (taken, _) = followers[1].take().expect("core 1 sees generation 1");
            followers[1].applied(taken);
        });
        assert!(slot.wait_applied(1, Duration::from_secs(10)).is_empty());
        late.join().unwrap();
    }
}
