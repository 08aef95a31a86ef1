//! The built-in set `private`: every address the IANA special-purpose
//! registries (IPv4 and IPv6) mark as not globally reachable, plus
//! multicast and broadcast, and every IPv6 form that embeds an IPv4 address
//! of the set (mapped, compatible, NAT64, 6to4).
//!
//! These are the destinations an open proxy must not hand to strangers:
//! the proxy host's own services (loopback), the internal network (RFC 1918,
//! ULA), cloud instance metadata (169.254.169.254, fd00:ec2::254) and
//! anything the host can reach only because of where it sits.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// (network, prefix length) pairs of IPv4 special-purpose blocks that are
/// not globally reachable, with multicast and the reserved 240/4 (which
/// holds the limited broadcast address).
const V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // RFC 1918
    ([100, 64, 0, 0], 10),   // shared address space (CGNAT)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local, cloud metadata
    ([172, 16, 0, 0], 12),   // RFC 1918
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // TEST-NET-1
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
    ([192, 168, 0, 0], 16),  // RFC 1918
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // TEST-NET-2
    ([203, 0, 113, 0], 24),  // TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and 255.255.255.255 broadcast
];

/// IPv6 blocks that are not globally reachable. The forms that embed an
/// IPv4 address (::ffff:0:0/96, ::/96, 64:ff9b::/96, 2002::/16) are judged
/// by that address instead, in [`is_private`].
const V6: &[([u16; 8], u8)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified
    ([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32),     // Teredo (embeds an obfuscated IPv4)
    ([0x2001, 2, 0, 0, 0, 0, 0, 0], 48),     // benchmarking
    ([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28),  // ORCHID (deprecated)
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),     // SRv6 SIDs
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local (ULA)
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// Whether `ip` is in the set `private`, in whichever form it is written.
pub(crate) fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_private(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => v4_private(v4),
            None => {
                let bits = u128::from(v6);
                V6.iter()
                    .any(|(net, len)| in_prefix128(bits, u128::from(Ipv6Addr::from(*net)), *len))
            }
        },
    }
}

fn v4_private(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    V4.iter().any(|(net, len)| {
        let mask = if *len == 0 { 0 } else { u32::MAX << (32 - len) };
        bits & mask == u32::from(Ipv4Addr::from(*net)) & mask
    })
}

fn in_prefix128(bits: u128, net: u128, len: u8) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    bits & mask == net & mask
}

/// The IPv4 address an IPv6 address stands for, where it has one:
/// IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, deprecated
/// but still routed by some stacks), NAT64 (64:ff9b::a.b.c.d) and 6to4
/// (2002:aabb:ccdd::/48). `::` and `::1` are not compatible addresses.
pub(crate) fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low32 = Ipv4Addr::from(bits as u32);
    if in_prefix128(bits, 0xffff << 32, 96) {
        return Some(low32);
    }
    if in_prefix128(bits, 0, 96) && bits > 1 {
        return Some(low32);
    }
    if in_prefix128(
        bits,
        u128::from(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0)),
        96,
    ) {
        return Some(low32);
    }
    if in_prefix128(
        bits,
        u128::from(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0)),
        16,
    ) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(s: &str) -> bool {
        is_private(s.parse().unwrap())
    }

    #[test]
    fn every_ipv4_block_is_private_at_both_ends_and_its_neighbours_are_not() {
        let cases = [
            ("0.0.0.0", true),
            ("0.255.255.255", true),
            ("1.0.0.0", false),
            ("9.255.255.255", false),
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("100.63.255.255", false),
            ("100.64.0.0", true),
            ("100.127.255.255", true),
            ("100.128.0.0", false),
            ("126.255.255.255", false),
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("169.254.169.254", true),
            ("169.255.0.0", false),
            ("172.15.255.255", false),
            ("172.16.0.0", true),
            ("172.31.255.255", true),
            ("172.32.0.0", false),
            ("192.0.0.8", true),
            ("192.0.1.0", false),
            ("192.0.2.1", true),
            ("192.88.99.1", true),
            ("192.167.255.255", false),
            ("192.168.1.1", true),
            ("192.169.0.0", false),
            ("198.17.255.255", false),
            ("198.18.0.0", true),
            ("198.19.255.255", true),
            ("198.20.0.0", false),
            ("198.51.100.7", true),
            ("203.0.113.9", true),
            ("223.255.255.255", false),
            ("224.0.0.1", true),
            ("239.255.255.255", true),
            ("240.0.0.1", true),
            ("255.255.255.255", true),
            ("8.8.8.8", false),
            ("93.184.216.34", false),
        ];
        for (ip, want) in cases {
            assert_eq!(private(ip), want, "{ip}");
        }
    }

    #[test]
    fn every_ipv6_block_is_private_and_global_unicast_is_not() {
        let cases = [
            ("::", true),
            ("::1", true),
            ("64:ff9b:1::1", true),
            ("100::1", true),
            ("100:0:0:1::", false),
            ("2001::1", true),
            ("2001:2::1", true),
            ("2001:10::1", true),
            ("2001:db8::1", true),
            ("3fff::1", true),
            ("5f00::1", true),
            ("fc00::1", true),
            ("fd00:ec2::254", true),
            ("fe80::1", true),
            ("fec0::1", true),
            ("ff02::1", true),
            ("2606:4700::1111", false),
            ("2a00:1450::1", false),
            ("2001:4860::8888", false),
        ];
        for (ip, want) in cases {
            assert_eq!(private(ip), want, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_get_the_ipv4_answer() {
        let cases = [
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:8.8.8.8", false),
            ("::127.0.0.1", true),
            ("::10.1.2.3", true),
            ("::8.8.8.8", false),
            ("64:ff9b::127.0.0.1", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::8.8.8.8", false),
            ("2002:7f00:1::", true),
            ("2002:a9fe:a9fe::1", true),
            ("2002:0808:0808::1", false),
        ];
        for (ip, want) in cases {
            assert_eq!(private(ip), want, "{ip}");
        }
    }
}
