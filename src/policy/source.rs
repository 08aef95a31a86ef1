//! The outbound source address: which local address (and interface) a
//! connection or UDP association leaves from.
//!
//! Operators pick the egress IP so that targets and abuse desks see the
//! address they expect, to spread load over a pool, or to keep one user on
//! one address (sticky). A rule may carry its own pool; otherwise the
//! global `--egress-source` pool applies; with neither, the kernel chooses.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// How an address is picked from a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourcePick {
    /// A random member for each connection.
    Random,
    /// The same member for the same user (or, without one, the same client
    /// address), on every core and across restarts.
    Sticky,
}

/// Where outbound sockets come from.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub sources: Vec<IpAddr>,
    pub pick: SourcePick,
    /// SO_BINDTODEVICE for every outbound socket.
    pub interface: Option<String>,
}

/// A pool holds addresses, but none of the destination's family.
#[derive(Debug, thiserror::Error)]
#[error("no egress source address for {family} destinations ({dest}); add one with --egress-source or the rule's source")]
pub struct NoSource {
    pub family: &'static str,
    pub dest: SocketAddr,
}

impl Outbound {
    /// The source for a connection to `dest`: from `rule_pool` when it has
    /// members, else from the global pool; `None` leaves it to the kernel.
    /// `key` is what a sticky pick hashes (the user, or the client address).
    pub fn source_for(
        &self,
        rule_pool: &[IpAddr],
        dest: SocketAddr,
        key: impl Hash,
    ) -> Result<Option<IpAddr>, NoSource> {
        let pool = if rule_pool.is_empty() {
            &self.sources
        } else {
            rule_pool
        };
        if pool.is_empty() {
            return Ok(None);
        }
        let v4 = dest.ip().to_canonical().is_ipv4();
        let count = pool.iter().filter(|ip| ip.is_ipv4() == v4).count();
        if count == 0 {
            return Err(NoSource {
                family: if v4 { "IPv4" } else { "IPv6" },
                dest,
            });
        }
        let n = match self.pick {
            SourcePick::Random => RandomState::new().hash_one(0u8),
            SourcePick::Sticky => {
                // Fixed keys: the same user maps to the same member on
                // every core and after a restart.
                let mut h = DefaultHasher::new();
                key.hash(&mut h);
                h.finish()
            }
        };
        let index = (n % count as u64) as usize;
        Ok(pool
            .iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .nth(index)
            .copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(sources: &[&str], pick: SourcePick) -> Outbound {
        Outbound {
            sources: sources.iter().map(|s| s.parse().unwrap()).collect(),
            pick,
            interface: None,
        }
    }

    fn dest(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_pool_leaves_the_choice_to_the_kernel() {
        let o = outbound(&[], SourcePick::Random);
        assert_eq!(
            o.source_for(&[], dest("8.8.8.8:53"), "alice").unwrap(),
            None
        );
    }

    #[test]
    fn the_family_of_the_destination_decides_and_a_missing_one_is_an_error() {
        let o = outbound(&["192.0.2.1", "2001:db8::1"], SourcePick::Random);
        for _ in 0..20 {
            let v4 = o.source_for(&[], dest("8.8.8.8:53"), "k").unwrap();
            assert_eq!(v4, Some("192.0.2.1".parse().unwrap()));
            let mapped = o.source_for(&[], dest("[::ffff:8.8.8.8]:53"), "k").unwrap();
            assert_eq!(mapped, Some("192.0.2.1".parse().unwrap()));
            let v6 = o
                .source_for(&[], dest("[2001:4860::8888]:53"), "k")
                .unwrap();
            assert_eq!(v6, Some("2001:db8::1".parse().unwrap()));
        }
        let only_v4 = outbound(&["192.0.2.1"], SourcePick::Random);
        let err = only_v4
            .source_for(&[], dest("[2001:4860::8888]:53"), "k")
            .unwrap_err();
        assert!(err.to_string().contains("IPv6"), "{err}");
    }

    #[test]
    fn sticky_keeps_a_key_on_one_member_and_random_spreads() {
        let pool = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"];
        let sticky = outbound(&pool, SourcePick::Sticky);
        let first = sticky.source_for(&[], dest("8.8.8.8:53"), "alice").unwrap();
        for _ in 0..50 {
            assert_eq!(
                sticky.source_for(&[], dest("8.8.8.8:53"), "alice").unwrap(),
                first
            );
        }
        let users: std::collections::HashSet<_> = (0..64)
            .map(|i| {
                sticky
                    .source_for(&[], dest("8.8.8.8:53"), format!("user{i}"))
                    .unwrap()
            })
            .collect();
        assert!(users.len() > 1, "64 users all on one member");
        let random = outbound(&pool, SourcePick::Random);
        let seen: std::collections::HashSet<_> = (0..200)
            .map(|_| random.source_for(&[], dest("8.8.8.8:53"), "alice").unwrap())
            .collect();
        assert_eq!(seen.len(), 4, "random must reach every member: {seen:?}");
    }

    #[test]
    fn a_rule_pool_replaces_the_global_one() {
        let o = outbound(&["192.0.2.1"], SourcePick::Random);
        let rule: [IpAddr; 1] = ["198.51.100.7".parse().unwrap()];
        assert_eq!(
            o.source_for(&rule, dest("8.8.8.8:53"), "k").unwrap(),
            Some(rule[0])
        );
    }
}
