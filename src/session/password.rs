//! RFC 1929 logins, and what keeps one client address from starving the
//! others with them.
//!
//! An Argon2 check costs tens of milliseconds of CPU by design, so a
//! client that sends wrong passwords as fast as it can would queue the
//! core's checks (and everybody's logins behind them). Each core therefore
//! keeps, per client address:
//! - a token bucket of wrong passwords (`--auth-failures-per-client` per
//!   minute, this core's share, in bursts of ten seconds' worth): an
//!   address whose bucket is empty is refused at once, without a check;
//! - a count of its logins waiting for a hash, at most
//!   [`WAITING_PER_CLIENT`]: more are refused at once;
//!
//! and the hashes run on helpers of their own ([`Pool::Hashing`]) whose
//! queue is short: a full queue refuses at once too. Every refusal answers
//! the RFC 1929 failure status and is counted by reason.
//!
//! A login already verified is remembered for `--auth-cache` as a keyed
//! MAC (BLAKE2b, a key drawn per process) of user and password, tied to
//! the users file it was checked against, so a client that reconnects is
//! not hashed again, and is let in even while its address is throttled.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use blake2::digest::{FixedOutput, KeyInit, Update};
use subtle::ConstantTimeEq;

use super::handshake::{Auth, Authenticated, Greeted};
use super::SessionError;
use crate::config::{Config, UserDb, Verification};
use crate::events::Pool;
use crate::metrics;
use crate::proto::{UserPassRequest, UserPassStatus};
use crate::runtime::Core;

/// Logins of one address waiting for a hash on one core.
pub(super) const WAITING_PER_CLIENT: u32 = 4;

/// Verified logins one core remembers, at most.
const CACHE_ENTRIES: usize = 4096;

/// Addresses whose wrong passwords one core tracks before it forgets
/// those whose buckets are full again.
const TRACKED_ADDRESSES: usize = 4096;

/// Why a login was refused without a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address's wrong passwords used up its rate.
    FailureRate,
    /// The address has [`WAITING_PER_CLIENT`] logins waiting already.
    ClientQueue,
    /// The core's hash queue is full.
    HashQueue,
}

impl Refusal {
    /// Index in [`metrics::AUTH_REFUSALS`].
    fn index(self) -> usize {
        self as usize
    }

    /// The access log's `end=`.
    pub(crate) fn tag(self) -> &'static str {
        match self {
            Refusal::FailureRate => "auth-failure-rate",
            Refusal::ClientQueue => "auth-client-queue",
            Refusal::HashQueue => "auth-hash-queue",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::FailureRate => "too many wrong passwords from this address",
            Refusal::ClientQueue => "this address's logins already wait for password checks",
            Refusal::HashQueue => "this core's password checks are queued full",
        })
    }
}

/// One address's wrong-password bucket.
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A verified login: who, a MAC of the password, against which users
/// file, until when.
struct Verified {
    mac: [u8; 32],
    users: u64,
    until: Instant,
}

/// One core's login bookkeeping.
pub(crate) struct PasswordGate {
    cores: u32,
    waiting: RefCell<HashMap<IpAddr, u32>>,
    failures: RefCell<HashMap<IpAddr, Bucket>>,
    verified: RefCell<HashMap<Box<[u8]>, Verified>>,
}

impl PasswordGate {
    /// `cores`: the rate is shared out among them.
    pub(crate) fn new(cores: usize) -> PasswordGate {
        PasswordGate {
            cores: cores.max(1) as u32,
            waiting: RefCell::default(),
            failures: RefCell::default(),
            verified: RefCell::default(),
        }
    }

    /// Wrong passwords per second this core allows one address, and the
    /// burst (ten seconds' worth, at least one).
    fn rate(&self, per_minute: u32) -> (f64, f64) {
        let per_second = f64::from(per_minute) / 60.0 / f64::from(self.cores);
        (per_second, (per_second * 10.0).max(1.0))
    }

    fn tokens(&self, client: IpAddr, per_minute: u32, now: Instant) -> f64 {
        let (rate, burst) = self.rate(per_minute);
        self.failures.borrow().get(&client).map_or(burst, |b| {
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst)
        })
    }

    /// Whether `client` may try a password now.
    pub(crate) fn may_try(&self, client: IpAddr, per_minute: u32, now: Instant) -> bool {
        self.tokens(client, per_minute, now) >= 1.0
    }

    /// A wrong password from `client`: one token less.
    pub(crate) fn failed(&self, client: IpAddr, per_minute: u32, now: Instant) {
        let tokens = self.tokens(client, per_minute, now) - 1.0;
        let mut failures = self.failures.borrow_mut();
        if failures.len() >= TRACKED_ADDRESSES && !failures.contains_key(&client) {
            let (rate, burst) = self.rate(per_minute);
            failures
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        failures.insert(client, Bucket { tokens, at: now });
    }

    /// Takes a place for one of `client`'s logins among those waiting for
    /// a hash; the place is freed when the returned guard drops.
    fn wait_place(&self, client: IpAddr) -> Option<WaitPlace<'_>> {
        let mut waiting = self.waiting.borrow_mut();
        let n = waiting.entry(client).or_insert(0);
        if *n >= WAITING_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(WaitPlace { gate: self, client })
    }

    /// Whether this login was verified against `users` within the cache's
    /// lifetime.
    pub(crate) fn remembers(
        &self,
        users: &UserDb,
        user: &[u8],
        password: &[u8],
        now: Instant,
    ) -> bool {
        let verified = self.verified.borrow();
        let (Some(v), Some(mac)) = (verified.get(user), login_mac(user, password)) else {
            return false;
        };
        v.users == users.generation() && v.until > now && bool::from(v.mac.ct_eq(&mac))
    }

    /// Remembers a login just verified against `users`.
    pub(crate) fn remember(
        &self,
        users: &UserDb,
        user: &[u8],
        password: &[u8],
        ttl: Duration,
        now: Instant,
    ) {
        let Some(mac) = login_mac(user, password).filter(|_| !ttl.is_zero()) else {
            return;
        };
        let mut verified = self.verified.borrow_mut();
        if verified.len() >= CACHE_ENTRIES && !verified.contains_key(user) {
            let generation = users.generation();
            verified.retain(|_, v| v.until > now && v.users == generation);
            if verified.len() >= CACHE_ENTRIES {
                return;
            }
        }
        verified.insert(
            user.into(),
            Verified {
                mac,
                users: users.generation(),
                until: now + ttl,
            },
        );
    }
}

/// A login's place among those of its address waiting for a hash.
struct WaitPlace<'a> {
    gate: &'a PasswordGate,
    client: IpAddr,
}

impl Drop for WaitPlace<'_> {
    fn drop(&mut self) {
        let mut waiting = self.gate.waiting.borrow_mut();
        if let Some(n) = waiting.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&self.client);
            }
        }
    }
}

/// BLAKE2b-256 keyed with a key drawn once per process, over the user's
/// length, the user and the password; `None` (no cache) if the kernel gave
/// no key.
fn login_mac(user: &[u8], password: &[u8]) -> Option<[u8; 32]> {
    static KEY: OnceLock<Option<[u8; 32]>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        crate::sys::random_bytes(&mut key).ok().map(|()| key)
    });
    let mut mac =
        blake2::Blake2bMac::<blake2::digest::consts::U32>::new_from_slice(key.as_ref()?).ok()?;
    mac.update(&[user.len() as u8]);
    mac.update(user);
    mac.update(password);
    Some(mac.finalize_fixed().into())
}

/// RFC 1929: one username and password, checked against the users file.
pub(super) async fn user_pass(
    core: &Core,
    config: &Config,
    users: &UserDb,
    client_ip: IpAddr,
    mut greeted: Greeted,
) -> Result<Authenticated, SessionError> {
    let creds = match greeted.read::<UserPassRequest>().await {
        Ok(c) => c,
        Err(e @ SessionError::Proto(_)) => {
            greeted.send(&UserPassStatus::FAILURE).await?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let checked = check_login(
        core,
        config,
        users,
        client_ip,
        &creds.username,
        &creds.password,
    )
    .await;
    let status = match checked {
        Ok(_) => UserPassStatus::SUCCESS,
        Err(_) => UserPassStatus::FAILURE,
    };
    greeted.send(&status).await?;
    Ok(greeted.authenticated(Some(checked?), Auth::UserPass, None))
}

/// The login of a protocol whose request carries its credentials (SOCKS4's
/// USERID, HTTP's Proxy-Authorization): none where the proxy needs none,
/// [`check_login`] where it has users, and
/// [`SessionError::CredentialsRequired`] where it needs a login the
/// request lacks or cannot carry (GSSAPI alone).
pub(super) async fn request_login(
    core: &Core,
    config: &Config,
    client_ip: IpAddr,
    protocol: &'static str,
    credentials: Option<(&[u8], &[u8])>,
) -> Result<Option<String>, SessionError> {
    match (&config.users, credentials) {
        (None, _) if config.gssapi.is_none() => Ok(None),
        (Some(users), Some((name, password))) => {
            check_login(core, config, users, client_ip, name, password)
                .await
                .map(Some)
        }
        _ => Err(SessionError::CredentialsRequired(protocol)),
    }
}

/// Checks a user name and password against the users file, through the
/// address's throttles, the login cache and the hashing pool: the one
/// check every protocol's login goes through (RFC 1929, SOCKS4's USERID,
/// HTTP's Proxy-Authorization). The user's name when it passes.
pub(super) async fn check_login(
    core: &Core,
    config: &Config,
    users: &UserDb,
    client_ip: IpAddr,
    username: &[u8],
    password: &[u8],
) -> Result<String, SessionError> {
    let user = String::from_utf8_lossy(username).into_owned();
    let gate = &core.passwords;
    let per_minute = config.auth_failures_per_client;
    let m = core.metrics();
    let now = Instant::now();
    let verdict = match users.verify(username, password) {
        Verification::Slow(_) if gate.remembers(users, username, password, now) => {
            metrics::add(&m.auth_cache_hits, 1);
            Ok((true, false))
        }
        _ if !gate.may_try(client_ip, per_minute, now) => Err(Refusal::FailureRate),
        Verification::Decided(ok) => Ok((ok, false)),
        Verification::Slow(check) => match gate.wait_place(client_ip) {
            None => Err(Refusal::ClientQueue),
            Some(_place) => crate::events::blocking_on(Pool::Hashing, move || check.run())
                .await
                .map(|ok| (ok, true))
                .map_err(|_| Refusal::HashQueue),
        },
    };
    let (ok, hashed) = match verdict {
        Ok(verdict) => verdict,
        Err(reason) => {
            metrics::add(&m.auth_refusals[reason.index()], 1);
            return Err(SessionError::AuthRefused {
                client: client_ip,
                reason,
            });
        }
    };
    let now = Instant::now();
    if !ok {
        gate.failed(client_ip, per_minute, now);
        return Err(SessionError::AuthFailed(user));
    }
    if hashed {
        gate.remember(users, username, password, config.auth_cache, now);
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn wrong_passwords_use_up_only_their_own_address_rate() {
        let gate = PasswordGate::new(1);
        let t0 = Instant::now();
        // 60 a minute: one a second, ten in a burst.
        for _ in 0..10 {
            assert!(gate.may_try(ip(2), 60, t0));
            gate.failed(ip(2), 60, t0);
        }
        assert!(!gate.may_try(ip(2), 60, t0));
        assert!(gate.may_try(ip(3), 60, t0), "another address is untouched");
        assert!(!gate.may_try(ip(2), 60, t0 + Duration::from_millis(500)));
        assert!(gate.may_try(ip(2), 60, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn each_core_allows_its_share_of_the_rate() {
        let gate = PasswordGate::new(2);
        let t0 = Instant::now();
        for _ in 0..5 {
            gate.failed(ip(2), 60, t0);
        }
        assert!(!gate.may_try(ip(2), 60, t0));
        assert!(gate.may_try(ip(2), 60, t0 + Duration::from_secs(2)));
    }

    #[test]
    fn an_address_waits_for_at_most_its_places() {
        let gate = PasswordGate::new(1);
        let places: Vec<_> = (0..WAITING_PER_CLIENT)
            .map(|_| gate.wait_place(ip(2)).expect("a place"))
            .collect();
        assert!(gate.wait_place(ip(2)).is_none());
        assert!(gate.wait_place(ip(3)).is_some());
        drop(places);
        assert!(gate.wait_place(ip(2)).is_some());
        assert!(gate.waiting.borrow().is_empty());
    }

    #[test]
    fn a_verified_login_is_remembered_for_its_password_its_file_and_its_time() {
        let db = UserDb::parse("alice:secret\n").unwrap();
        let gate = PasswordGate::new(1);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        gate.remember(&db, b"alice", b"secret", ttl, t0);
        assert!(gate.remembers(&db, b"alice", b"secret", t0));
        assert!(!gate.remembers(&db, b"alice", b"secreT", t0));
        assert!(!gate.remembers(&db, b"bob", b"secret", t0));
        assert!(!gate.remembers(&db, b"alice", b"secret", t0 + ttl));
        let reloaded = UserDb::parse("alice:secret\n").unwrap();
        assert!(
            !gate.remembers(&reloaded, b"alice", b"secret", t0),
            "a reload forgets"
        );
        gate.remember(&db, b"carol", b"x", Duration::ZERO, t0);
        assert!(!gate.remembers(&db, b"carol", b"x", t0), "0s turns it off");
    }
}
