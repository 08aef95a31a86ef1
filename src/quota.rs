//! Per-user and per-client-address quotas: concurrent tunnels and new
//! tunnels per second (`--max-tunnels-per-user`, `--tunnel-rate-per-user`
//! and their `-per-client` twins).
//!
//! Thread-per-core: each core enforces its share of a limit on the
//! connections it accepted, with no shared counter. A share is the limit
//! divided by the number of cores, rounded up, so a user can hold at most
//! `limit + cores - 1` tunnels across the process, and, when the
//! SO_REUSEPORT hash puts all of a user's connections on one core, can be
//! refused from that core's share onwards. Both bounds are documented in
//! docs/CONFIGURATION.md, "Limits under load and attack"; one core
//! (`--cores 1`) makes the limits exact.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Instant;

/// Why a new tunnel was refused: the limit it met, and for whom ("user
/// alice", "client address 192.0.2.7"). The session turns it into the
/// reply and the access log's end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("{0} holds as many tunnels as its limit allows")]
    OverLimit(String),
    #[error("{0} opens tunnels faster than its rate limit")]
    RateLimited(String),
}

/// The four limits, as configured for the whole process.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotaConfig {
    pub tunnels_per_user: Option<u32>,
    pub tunnels_per_client: Option<u32>,
    pub rate_per_user: Option<u32>,
    pub rate_per_client: Option<u32>,
    /// Bytes per second in each direction (see `relay::throttle`).
    pub bandwidth_per_user: Option<u64>,
    pub bandwidth_per_client: Option<u64>,
}

/// Why a request was refused, as labelled in metrics: the four quotas
/// here, then the client address's share of its core's descriptors and
/// the core's descriptor budget (`runtime::admission`).
pub(crate) const QUOTA_REASONS: [&str; 6] = [
    "user-tunnels",
    "client-tunnels",
    "user-rate",
    "client-rate",
    "client-share",
    "descriptors",
];

/// Indexes of the last two [`QUOTA_REASONS`].
pub(crate) const CLIENT_SHARE: usize = 4;
pub(crate) const DESCRIPTORS: usize = 5;

/// One key's use on this core.
struct Usage {
    open: u32,
    /// Token bucket for new tunnels: tokens now, refilled at the core's
    /// share of the rate, up to one second's worth.
    tokens: f64,
    refilled: Instant,
}

struct Table<K> {
    map: HashMap<K, Usage>,
    max_open: Option<u32>,
    rate: Option<f64>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new(max_open: Option<u32>, rate: Option<u32>, cores: usize) -> Table<K> {
        let share = |n: u32| n.div_ceil(cores as u32).max(1);
        Table {
            map: HashMap::new(),
            max_open: max_open.map(share),
            rate: rate.map(|r| f64::from(share(r))),
        }
    }

    fn active(&self) -> bool {
        self.max_open.is_some() || self.rate.is_some()
    }

    /// Counts one more tunnel for `key`, or says which limit is reached:
    /// `Err(false)` concurrency, `Err(true)` rate.
    fn acquire(&mut self, key: &K, now: Instant) -> Result<(), bool> {
        if self.map.len() >= 4096 {
            self.sweep(now);
        }
        let burst = self.rate.unwrap_or(0.0);
        let usage = self.map.entry(key.clone()).or_insert(Usage {
            open: 0,
            tokens: burst,
            refilled: now,
        });
        if self.max_open.is_some_and(|max| usage.open >= max) {
            return Err(false);
        }
        if let Some(rate) = self.rate {
            let elapsed = now.duration_since(usage.refilled).as_secs_f64();
            usage.tokens = (usage.tokens + elapsed * rate).min(rate);
            usage.refilled = now;
            if usage.tokens < 1.0 {
                return Err(true);
            }
            usage.tokens -= 1.0;
        }
        usage.open += 1;
        Ok(())
    }

    fn release(&mut self, key: &K, now: Instant) {
        let Some(usage) = self.map.get_mut(key) else {
            return;
        };
        usage.open = usage.open.saturating_sub(1);
        if usage.open == 0 && self.refilled_full(key, now) {
            self.map.remove(key);
        }
    }

    /// Whether an idle key's bucket is full again, so forgetting it loses
    /// nothing.
    fn refilled_full(&self, key: &K, now: Instant) -> bool {
        let (Some(usage), Some(rate)) = (self.map.get(key), self.rate) else {
            return true;
        };
        usage.tokens + now.duration_since(usage.refilled).as_secs_f64() * rate >= rate
    }

    /// Forgets idle keys whose buckets are full again: the table holds only
    /// clients active within about a second.
    fn sweep(&mut self, now: Instant) {
        let rate = self.rate;
        self.map.retain(|_, u| {
            u.open > 0
                || rate.is_some_and(|r| {
                    u.tokens + now.duration_since(u.refilled).as_secs_f64() * r < r
                })
        });
    }
}

/// This core's quota tables.
pub(crate) struct Quotas {
    users: RefCell<Table<String>>,
    clients: RefCell<Table<IpAddr>>,
}

impl Quotas {
    /// A reload's limits: the counts of open tunnels stay, so tunnels
    /// opened before still count against the new limits.
    pub(crate) fn set_limits(&self, config: QuotaConfig, cores: usize) {
        let users = Table::<String>::new(config.tunnels_per_user, config.rate_per_user, cores);
        let clients =
            Table::<IpAddr>::new(config.tunnels_per_client, config.rate_per_client, cores);
        let mut u = self.users.borrow_mut();
        (u.max_open, u.rate) = (users.max_open, users.rate);
        let mut c = self.clients.borrow_mut();
        (c.max_open, c.rate) = (clients.max_open, clients.rate);
    }

    pub(crate) fn new(config: QuotaConfig, cores: usize) -> Rc<Quotas> {
        Rc::new(Quotas {
            users: RefCell::new(Table::new(
                config.tunnels_per_user,
                config.rate_per_user,
                cores,
            )),
            clients: RefCell::new(Table::new(
                config.tunnels_per_client,
                config.rate_per_client,
                cores,
            )),
        })
    }

    /// Counts a new tunnel for `user` (when authenticated) and `client`;
    /// the lease gives it back when dropped. A refusal says which limit,
    /// and its metrics index.
    pub(crate) fn acquire(
        self: &Rc<Self>,
        user: Option<&str>,
        client: IpAddr,
    ) -> Result<QuotaLease, (Refusal, usize)> {
        let now = Instant::now();
        let mut lease = QuotaLease {
            quotas: self.clone(),
            user: None,
            client: None,
        };
        let mut users = self.users.borrow_mut();
        if let (Some(user), true) = (user, users.active()) {
            let user = user.to_owned();
            users
                .acquire(&user, now)
                .map_err(|rate| refusal(rate, "user", &user, 0))?;
            lease.user = Some(user);
        }
        drop(users);
        let mut clients = self.clients.borrow_mut();
        if clients.active() {
            clients
                .acquire(&client, now)
                .map_err(|rate| refusal(rate, "client address", &client.to_string(), 1))?;
            lease.client = Some(client);
        }
        Ok(lease)
    }
}

fn refusal(rate: bool, what: &str, who: &str, index: usize) -> (Refusal, usize) {
    let whom = format!("{what} {who}");
    if rate {
        (Refusal::RateLimited(whom), index + 2)
    } else {
        (Refusal::OverLimit(whom), index)
    }
}

/// One tunnel's place in the quota tables, given back on drop.
pub(crate) struct QuotaLease {
    quotas: Rc<Quotas>,
    user: Option<String>,
    client: Option<IpAddr>,
}

impl Drop for QuotaLease {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Some(user) = &self.user {
            self.quotas.users.borrow_mut().release(user, now);
        }
        if let Some(client) = &self.client {
            self.quotas.clients.borrow_mut().release(client, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn concurrency_share_is_the_limit_over_the_cores_rounded_up() {
        let mut t: Table<u8> = Table::new(Some(5), None, 2);
        let now = Instant::now();
        for _ in 0..3 {
            t.acquire(&1, now).unwrap();
        }
        assert_eq!(
            t.acquire(&1, now),
            Err(false),
            "share of 5 over 2 cores is 3"
        );
        t.acquire(&2, now).unwrap();
        t.release(&1, now);
        t.acquire(&1, now).unwrap();
        for _ in 0..3 {
            t.release(&1, now);
        }
        assert!(
            !t.map.contains_key(&1),
            "an idle key without a rate is forgotten"
        );
    }

    #[test]
    fn rate_refills_over_time_and_survives_short_connections() {
        let mut t: Table<u8> = Table::new(None, Some(4), 2);
        let start = Instant::now();
        // Share 2/s, burst 2: short tunnels opened and closed at once.
        for _ in 0..2 {
            t.acquire(&1, start).unwrap();
            t.release(&1, start);
        }
        assert_eq!(t.acquire(&1, start), Err(true));
        assert!(t.map.contains_key(&1), "an empty bucket is remembered");
        t.acquire(&1, start + Duration::from_millis(500)).unwrap();
        assert_eq!(t.acquire(&1, start + Duration::from_millis(500)), Err(true));
        t.release(&1, start + Duration::from_millis(500));
        t.sweep(start + Duration::from_secs(2));
        assert!(t.map.is_empty(), "a full bucket is forgotten by the sweep");
    }

    #[test]
    fn leases_count_user_and_client_and_give_back_on_drop() {
        let quotas = Quotas::new(
            QuotaConfig {
                tunnels_per_user: Some(1),
                tunnels_per_client: Some(2),
                ..QuotaConfig::default()
            },
            1,
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = quotas.acquire(Some("alice"), ip).unwrap();
        let (e, index) = quotas.acquire(Some("alice"), ip).map(|_| ()).unwrap_err();
        assert_eq!(index, 0, "{e}");
        let b = quotas.acquire(Some("bob"), ip).unwrap();
        let (_, index) = quotas.acquire(Some("carol"), ip).map(|_| ()).unwrap_err();
        assert_eq!(index, 1, "the client's share is full");
        drop(a);
        drop(b);
        quotas.acquire(Some("alice"), ip).unwrap();
    }
}
