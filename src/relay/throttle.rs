//! Bandwidth limits per user and per client address
//! (`--bandwidth-per-user`, `--bandwidth-per-client`): token buckets that
//! the relay reads against.
//!
//! Thread-per-core, like the tunnel quotas: each core has its own buckets,
//! refilled at the core's share of the rate (the rate over the cores), and
//! shared by the tunnels of one key on that core. A key whose tunnels are
//! spread over every core gets the whole rate; one whose tunnels all landed
//! on one core gets that core's share. So the process-wide bound is
//! `rate` (at most), and the worst case is `rate / cores` for a key with a
//! single tunnel; `--cores 1` makes the limit exact. Each direction (client
//! to target, target to client) has a bucket of its own.
//!
//! A bucket holds at most [`BURST`] of its rate (plus one read quantum), so
//! a tunnel that was quiet cannot send a long burst; a direction that finds
//! less than one quantum in every bucket it reads against waits for it on a
//! timer, and then reads at most what the buckets hold. UDP datagrams are
//! policed instead: one that does not fit in every bucket is dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Seconds of the rate a bucket can hold.
const BURST: f64 = 0.05;

/// The least a throttled direction reads at once (unless the rate is
/// lower): smaller reads would cost a syscall per few bytes.
const QUANTUM: f64 = 16.0 * 1024.0;

/// Which direction of a tunnel a bucket meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    Up = 0,
    Down = 1,
}

/// One key's buckets on this core, one per direction.
pub(crate) struct Bucket {
    /// Bytes per second, this core's share.
    rate: f64,
    tokens: [Cell<f64>; 2],
    refilled: [Cell<Instant>; 2],
}

impl Bucket {
    fn new(rate: f64, now: Instant) -> Bucket {
        let full = Bucket::capacity(rate);
        Bucket {
            rate,
            tokens: [Cell::new(full), Cell::new(full)],
            refilled: [Cell::new(now), Cell::new(now)],
        }
    }

    fn capacity(rate: f64) -> f64 {
        rate * BURST + Bucket::quantum(rate)
    }

    fn quantum(rate: f64) -> f64 {
        QUANTUM.min(rate)
    }

    fn tokens(&self, way: Way, now: Instant) -> f64 {
        let i = way as usize;
        let elapsed = now
            .saturating_duration_since(self.refilled[i].get())
            .as_secs_f64();
        let tokens = (self.tokens[i].get() + elapsed * self.rate).min(Bucket::capacity(self.rate));
        self.tokens[i].set(tokens);
        self.refilled[i].set(now);
        tokens
    }
}

/// The buckets one tunnel reads against: its user's and its client's.
#[derive(Clone, Default)]
pub(crate) struct Throttle {
    buckets: Vec<Rc<Bucket>>,
}

impl Throttle {
    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// How many bytes `way` may read now, or how long to wait before at
    /// least one quantum is there in every bucket.
    pub(crate) fn allowance(&self, way: Way, now: Instant) -> Result<usize, Duration> {
        let mut allow = f64::INFINITY;
        let mut wait = 0.0_f64;
        for b in &self.buckets {
            let tokens = b.tokens(way, now);
            allow = allow.min(tokens);
            let short = Bucket::quantum(b.rate) - tokens;
            if short > 0.0 {
                wait = wait.max(short / b.rate);
            }
        }
        if wait > 0.0 {
            // At least a millisecond: glommio's timers are no finer, and a
            // shorter wait would only spin.
            return Err(Duration::from_secs_f64(wait.max(0.001)));
        }
        Ok(if allow.is_finite() {
            allow as usize
        } else {
            usize::MAX
        })
    }

    /// Whether a datagram of `len` bytes fits in every bucket now; if so
    /// it is paid for. UDP is policed, not queued: one that does not fit is
    /// dropped by the caller.
    pub(crate) fn admit(&self, way: Way, len: usize, now: Instant) -> bool {
        let fits = self
            .buckets
            .iter()
            .all(|b| b.tokens(way, now) >= len as f64);
        if fits {
            self.spend(way, len);
        }
        fits
    }

    /// Takes `n` bytes read by `way` out of every bucket.
    pub(crate) fn spend(&self, way: Way, n: usize) {
        for b in &self.buckets {
            let t = &b.tokens[way as usize];
            t.set(t.get() - n as f64);
        }
    }
}

/// One kind of key's buckets on this core. A bucket outlives its key's
/// last tunnel until it is full again, so closing and reopening tunnels
/// does not buy a fresh burst.
struct Table<K> {
    rate: Option<f64>,
    map: HashMap<K, Rc<Bucket>>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(rate: Option<u64>, cores: usize) -> Table<K> {
        Table {
            rate: rate.map(|r| (r as f64 / cores.max(1) as f64).max(1.0)),
            map: HashMap::new(),
        }
    }

    fn bucket(&mut self, key: &K, now: Instant) -> Option<Rc<Bucket>> {
        let rate = self.rate?;
        if let Some(b) = self.map.get(key) {
            return Some(b.clone());
        }
        if self.map.len() >= 4096 {
            // Forget keys with no tunnel whose buckets refilled: nothing is
            // lost, and the table holds only keys active lately.
            let full = Bucket::capacity(rate);
            self.map.retain(|_, b| {
                Rc::strong_count(b) > 1
                    || b.tokens(Way::Up, now) < full
                    || b.tokens(Way::Down, now) < full
            });
        }
        let b = Rc::new(Bucket::new(rate, now));
        self.map.insert(key.clone(), b.clone());
        Some(b)
    }
}

/// This core's bandwidth buckets.
pub(crate) struct Bandwidth {
    users: RefCell<Table<String>>,
    clients: RefCell<Table<IpAddr>>,
}

impl Bandwidth {
    /// `per_user` and `per_client` in bytes per second for the process.
    pub(crate) fn new(per_user: Option<u64>, per_client: Option<u64>, cores: usize) -> Bandwidth {
        Bandwidth {
            users: RefCell::new(Table::new(per_user, cores)),
            clients: RefCell::new(Table::new(per_client, cores)),
        }
    }

    /// A reload's rates, for tunnels that start from now on: open tunnels
    /// keep the buckets (and the rate) they started with.
    pub(crate) fn set_rates(&self, per_user: Option<u64>, per_client: Option<u64>, cores: usize) {
        *self.users.borrow_mut() = Table::new(per_user, cores);
        *self.clients.borrow_mut() = Table::new(per_client, cores);
    }

    /// The buckets a new tunnel of `user` (when authenticated) from
    /// `client` reads against; empty when no limit applies.
    pub(crate) fn throttle(&self, user: Option<&str>, client: IpAddr) -> Throttle {
        let now = Instant::now();
        let mut buckets = Vec::new();
        if let Some(user) = user {
            buckets.extend(self.users.borrow_mut().bucket(&user.to_owned(), now));
        }
        buckets.extend(self.clients.borrow_mut().bucket(&client, now));
        Throttle { buckets }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn no_limit_means_no_buckets() {
        let bw = Bandwidth::new(None, None, 2);
        let t = bw.throttle(Some("alice"), ip());
        assert!(t.is_empty());
        assert_eq!(t.allowance(Way::Up, Instant::now()), Ok(usize::MAX));
    }

    #[test]
    fn a_full_bucket_allows_its_burst_then_waits_for_a_quantum() {
        // 1 MB/s over 2 cores: 500,000 B/s here, capacity 25,000 + 16,384.
        let bw = Bandwidth::new(None, Some(1_000_000), 2);
        let t = bw.throttle(None, ip());
        let now = Instant::now();
        let allow = t.allowance(Way::Up, now).unwrap();
        assert_eq!(allow, 25_000 + 16_384);
        t.spend(Way::Up, allow);
        let wait = t.allowance(Way::Up, now).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 16_384.0 / 500_000.0).abs() < 1e-6,
            "{wait:?}"
        );
        // The other direction has a bucket of its own.
        assert_eq!(t.allowance(Way::Down, now).unwrap(), allow);
        // After the wait exactly one quantum is there.
        assert_eq!(t.allowance(Way::Up, now + wait).unwrap(), 16_384);
    }

    #[test]
    fn a_quiet_bucket_refills_only_to_its_capacity() {
        let bw = Bandwidth::new(None, Some(100_000), 1);
        let t = bw.throttle(None, ip());
        let now = Instant::now();
        t.spend(Way::Down, t.allowance(Way::Down, now).unwrap());
        let later = now + Duration::from_secs(60);
        assert_eq!(t.allowance(Way::Down, later).unwrap(), 5_000 + 16_384);
    }

    #[test]
    fn tunnels_of_one_key_share_a_bucket_and_the_tightest_bucket_wins() {
        let bw = Bandwidth::new(Some(200_000), Some(10_000_000), 1);
        let a = bw.throttle(Some("alice"), ip());
        let b = bw.throttle(Some("alice"), "192.0.2.8".parse().unwrap());
        let now = Instant::now();
        let allow = a.allowance(Way::Up, now).unwrap();
        assert_eq!(allow, 10_000 + 16_384, "the user's bucket is the tighter");
        a.spend(Way::Up, allow);
        assert!(
            b.allowance(Way::Up, now).is_err(),
            "alice's other tunnel shares it"
        );
        let carol = bw.throttle(Some("carol"), ip());
        assert!(
            carol.allowance(Way::Up, now).is_ok(),
            "carol has her own user bucket, and the client bucket has room"
        );
    }

    #[test]
    fn a_rate_below_one_quantum_reads_its_whole_rate_at_once() {
        let bw = Bandwidth::new(None, Some(1_000), 1);
        let t = bw.throttle(None, ip());
        let now = Instant::now();
        assert_eq!(t.allowance(Way::Up, now).unwrap(), 1_050);
        t.spend(Way::Up, 1_050);
        let wait = t.allowance(Way::Up, now).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn datagrams_are_admitted_while_they_fit_and_paid_for() {
        let bw = Bandwidth::new(None, Some(1_000), 1);
        let t = bw.throttle(None, ip());
        let now = Instant::now();
        // Capacity 50 + 1,000.
        assert!(t.admit(Way::Up, 1_000, now));
        assert!(!t.admit(Way::Up, 100, now), "50 left");
        assert!(t.admit(Way::Up, 50, now));
        assert!(t.admit(Way::Down, 1_000, now), "the other way is apart");
        assert!(t.admit(Way::Up, 100, now + Duration::from_millis(100)));
        assert!(Throttle::default().admit(Way::Up, 65_000, now), "no limit");
    }

    #[test]
    fn a_new_tunnel_gets_no_fresh_burst_from_its_key() {
        let bw = Bandwidth::new(Some(1_000_000), None, 1);
        let now = Instant::now();
        let t = bw.throttle(Some("alice"), ip());
        t.spend(Way::Up, t.allowance(Way::Up, now).unwrap());
        drop(t);
        let again = bw.throttle(Some("alice"), ip());
        assert!(
            again.allowance(Way::Up, now).is_err(),
            "the bucket outlived the tunnel that emptied it"
        );
    }
}
