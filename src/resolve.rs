//! Name resolution that never blocks a core.
//!
//! getaddrinfo(3) blocks, so it runs on the core's blocking-thread pool
//! (glommio `spawn_blocking`, `--resolver-threads` threads per core), and the
//! core only awaits the answer, for at most `--resolve-timeout`. A resolver
//! that never answers ties up one pool thread until libc gives up; other
//! clients' lookups use the other threads, and IP literals never reach the
//! pool at all.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use futures_lite::future;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("{name} did not resolve: {source}")]
    Failed { name: String, source: io::Error },
    #[error("{name} resolved to no address")]
    NoAddress { name: String },
    #[error("resolving {name} took longer than {timeout:?}")]
    Timeout { name: String, timeout: Duration },
}

/// Parses a domain that is really an IP literal ("10.0.0.1", "::1",
/// "[::1]"): such names need no resolver.
pub(crate) fn ip_literal(name: &str) -> Option<IpAddr> {
    let bare = name
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse().ok()
}

/// Resolves `name` to every address it has, in getaddrinfo's order (RFC 6724
/// preference, which /etc/gai.conf can change).
pub(crate) async fn resolve(
    name: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    if let Some(ip) = ip_literal(name) {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let owned = name.to_owned();
    let lookup = async move {
        crate::events::blocking(move || {
            (owned.as_str(), port)
                .to_socket_addrs()
                .map(|addrs| addrs.collect::<Vec<_>>())
        })
        .await?
    };
    let timed_out = async {
        crate::events::sleep(timeout).await;
        Err(io::ErrorKind::TimedOut.into())
    };
    match future::or(lookup, timed_out).await {
        Ok(mut addrs) => {
            dedup_in_order(&mut addrs);
            if addrs.is_empty() {
                Err(ResolveError::NoAddress {
                    name: name.to_owned(),
                })
            } else {
                Ok(addrs)
            }
        }
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ResolveError::Timeout {
            name: name.to_owned(),
            timeout,
        }),
        Err(source) => Err(ResolveError::Failed {
            name: name.to_owned(),
            source,
        }),
    }
}

/// Orders addresses for connection attempts as RFC 8305 section 4 says:
/// the family of the first (preferred) address first, then alternating
/// families, each family keeping its own order. A host whose IPv6 path is
/// broken then costs one attempt delay, not one timeout per IPv6 address.
pub(crate) fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_v6 = first.is_ipv6();
    let (preferred, other): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|a| a.is_ipv6() == first_v6);
    let mut out = Vec::with_capacity(addrs.len());
    let (mut p, mut o) = (preferred.into_iter(), other.into_iter());
    loop {
        match (p.next(), o.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// getaddrinfo returns one entry per socket type; keep the first of each.
fn dedup_in_order(addrs: &mut Vec<SocketAddr>) {
    let mut seen = Vec::with_capacity(addrs.len());
    addrs.retain(|a| {
        if seen.contains(a) {
            false
        } else {
            seen.push(*a);
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_ip_literals() {
        assert_eq!(ip_literal("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("::1"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("[::1]"), Some("::1".parse().unwrap()));
        assert_eq!(ip_literal("localhost"), None);
        assert_eq!(ip_literal("1.2.3"), None);
    }

    #[test]
    fn interleaves_families_starting_with_the_preferred_one() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (v6a, v6b, v6c) = (
            a("[2001:db8::1]:80"),
            a("[2001:db8::2]:80"),
            a("[2001:db8::3]:80"),
        );
        let (v4a, v4b) = (a("192.0.2.1:80"), a("192.0.2.2:80"));
        let cases: [(Vec<SocketAddr>, Vec<SocketAddr>); 5] = [
            (vec![], vec![]),
            (vec![v4a], vec![v4a]),
            (vec![v6a, v6b, v4a, v4b], vec![v6a, v4a, v6b, v4b]),
            (vec![v4a, v6a, v6b, v6c], vec![v4a, v6a, v6b, v6c]),
            (vec![v6a, v6b, v6c, v4a], vec![v6a, v4a, v6b, v6c]),
        ];
        for (input, want) in cases {
            assert_eq!(interleave_families(input.clone()), want, "{input:?}");
        }
    }

    #[test]
    fn dedups_keeping_order() {
        let a: SocketAddr = "[::1]:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut v = vec![a, a, b, a, b];
        dedup_in_order(&mut v);
        assert_eq!(v, vec![a, b]);
    }
}
