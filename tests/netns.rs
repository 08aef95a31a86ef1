//! CONNECT when the network fails, in network namespaces: nftables in the
//! targets' namespace rejects (TCP reset, each ICMP unreachable type) or
//! drops the SYN, or the proxy has no route at all. Each test asserts the
//! exact reply code, how long the reply took, the access-log line, and that
//! the proxy serves a fresh client afterwards. See `common/netns.rs` for
//! the lab (root, iproute2 and nftables; skipped without them).
//!
//! What a plain connect(2) in the proxy's namespace gets is noted on each
//! test (measured on Linux 6.18). One kernel behaviour matters for the
//! timings: in this lab the ICMP error is generated and delivered inside
//! the connect(2) call, while the socket is still locked, and the kernel
//! then records it only as a *soft* error (`TcpExtLockDroppedIcmps`); the
//! connect fails for good only when a retransmitted SYN draws a second ICMP,
//! 1 to 3 s later. IPv4 is mostly fast anyway, IPv6 never is. The same
//! happens with a reject in the proxy host's own OUTPUT firewall, so it is
//! not a lab-only case. With `IP_RECVERR`/`IPV6_RECVERR` set before
//! connecting, the first ICMP is queued on the error queue at once (POLLERR,
//! and `recvmsg(MSG_ERRQUEUE)` gives its type and code), so a proxy can
//! answer "fast" as these tests require.

#[path = "common/netns.rs"]
mod netns_lab;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::ops::Range;
use std::time::{Duration, Instant};

use crate::common::{Echo, Proxy};
use coresocks::client::ClientError;
use coresocks::proto::{ReplyCode, TargetAddr};
use netns_lab::{Lab, T_V4, T_V6};

/// The port the rules act on; nothing listens there.
const PORT: u16 = 7001;
/// A reply that needs no timer: the kernel knows at once, and the proxy
/// acts on the first ICMP (read from the error queue when its event ring
/// reports POLLERR); quiet, that takes milliseconds. The bound leaves room
/// for a loaded CI machine (one run stalled ~1 s on a TCP reset, which has
/// no soft-error path at all) while still failing a proxy that waits for
/// the retransmitted SYNs at 3 and 7 s to draw a second ICMP.
const FAST: Range<Duration> = Duration::ZERO..Duration::from_millis(2_500);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// One CONNECT through a fresh proxy in a fresh lab.
struct Case<'a> {
    /// nft statements for the targets' input chain.
    rules: &'a str,
    /// Extra `/etc/hosts` lines in the proxy's namespace.
    hosts: &'a str,
    connect_timeout: &'a str,
}

/// The outcome, with what it ran in. Fields drop in order: the client's
/// socket, the proxy, the echo server, then the lab.
struct Run {
    got: Result<TcpStream, ClientError>,
    took: Duration,
    target: TargetAddr,
    proxy: Proxy,
    echo: Echo,
    lab: Lab,
}

impl Case<'_> {
    /// Sets up, then CONNECTs to `target` (a `Fn` of the echo server's
    /// address, for targets on its port). `None`: skipped.
    fn run(&self, target: impl FnOnce(SocketAddr) -> TargetAddr) -> Option<Run> {
        self.run_with(&[], target)
    }

    /// As `run`, with extra proxy flags.
    fn run_with(
        &self,
        flags: &[&str],
        target: impl FnOnce(SocketAddr) -> TargetAddr,
    ) -> Option<Run> {
        let mut lab = Lab::new()?;
        lab.filter_targets(self.rules);
        if !self.hosts.is_empty() {
            lab.hosts(self.hosts);
        }
        let echo = lab.echo();
        let mut args = vec!["--connect-timeout", self.connect_timeout];
        args.extend_from_slice(flags);
        let proxy = lab.proxy(&args);
        let target = target(echo.addr);
        let (got, took) = lab.client(|| {
            let start = Instant::now();
            let got = proxy.connect(&target);
            (got, start.elapsed())
        });
        Some(Run {
            got,
            took,
            target,
            proxy,
            echo,
            lab,
        })
    }
}

impl Run {
    fn outcome(&self) -> String {
        let what = match &self.got {
            Ok(_) => ReplyCode::Succeeded.to_string(),
            Err(ClientError::Rejected(code)) => code.to_string(),
            Err(e) => e.to_string(),
        };
        format!("CONNECT {} -> {what} after {:?}", self.target, self.took)
    }

    /// The access-log line of the CONNECT to our target.
    fn access_line(&self) -> String {
        self.proxy
            .wait_for_log(&[" access: ", &format!(" target={} ", self.target)])
    }

    /// The reply was `want`, within `within`; the access log says so; and
    /// the proxy still serves.
    fn assert_failed(self, want: ReplyCode, within: Range<Duration>) {
        let outcome = self.outcome();
        assert!(
            matches!(&self.got, Err(ClientError::Rejected(code)) if *code == want),
            "{outcome}; want {want}"
        );
        assert!(
            within.contains(&self.took),
            "{outcome}; want the reply within {within:?}"
        );
        let line = self.access_line();
        assert!(
            line.contains(&format!(" reply={} ", want.as_str()))
                && !line.contains("reply=succeeded"),
            "{outcome}; access line: {line}"
        );
        self.lab.client(|| self.proxy.assert_serves(&self.echo));
    }

    /// The tunnel is up within `within`, through `via`, and echoes.
    fn assert_connected(self, via: SocketAddr, within: Range<Duration>) {
        let outcome = self.outcome();
        let Ok(mut s) = self.got.as_ref() else {
            panic!("{outcome}; want succeeded through {via}")
        };
        assert!(
            within.contains(&self.took),
            "{outcome}; want the reply within {within:?}"
        );
        s.write_all(b"through the fallback").unwrap();
        let mut back = [0u8; 20];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"through the fallback");
        // Ends the tunnel, which writes its access line.
        s.shutdown(Shutdown::Both).unwrap();
        let line = self.access_line();
        assert!(
            line.contains(" reply=succeeded ") && line.contains(&format!(" resolved={via} ")),
            "{outcome}; access line: {line}"
        );
    }
}

/// Checks that getaddrinfo in the proxy's namespace lists `name`'s
/// addresses in the order the test depends on.
fn assert_resolves_in_order(lab: &Lab, name: &str, want: &[&str]) {
    let got = lab.resolve_in_p(name);
    assert_eq!(
        got, want,
        "getaddrinfo orders {name} differently here (gai.conf?); the test needs this order"
    );
}

/// One test per answer the network gives: CONNECT to `$ip` port PORT with
/// the rules in the targets' input chain (none: the proxy's namespace has
/// no route to `$ip` at all) is answered `$want` at once, logged so, and
/// the proxy serves the next client. Each doc says what a plain connect(2)
/// in the proxy's namespace gets.
macro_rules! answered_at_once {
    ($($(#[doc = $doc:expr])* $name:ident: [$($rules:tt)*] $ip:expr => $want:ident;)*) => {$(
        $(#[doc = $doc])*
        #[test]
        fn $name() {
            let case = Case {
                rules: &format!($($rules)*),
                hosts: "",
                connect_timeout: "20s",
            };
            let Some(run) = case.run(|_| TargetAddr::Ip(addr($ip, PORT))) else {
                return;
            };
            run.assert_failed(ReplyCode::$want, FAST);
        }
    )*};
}

answered_at_once! {
    /// `reject with tcp reset`. Plain connect(2): ECONNREFUSED at once (poll
    /// OUT|ERR|HUP, SO_ERROR ECONNREFUSED, getpeername ENOTCONN).
    tcp_reset_is_connection_refused_0x05_ipv4:
        ["tcp dport {PORT} reject with tcp reset"] T_V4[0] => ConnectionRefused;
    /// As the IPv4 case: ECONNREFUSED at once.
    tcp_reset_is_connection_refused_0x05_ipv6:
        ["tcp dport {PORT} reject with tcp reset"] T_V6[0] => ConnectionRefused;

    /// `reject with icmp type port-unreachable`. Plain connect(2):
    /// ECONNREFUSED, at once (poll ERR, SO_ERROR ECONNREFUSED, getpeername
    /// ENOTCONN).
    icmp_port_unreachable_is_connection_refused_0x05_ipv4:
        ["meta nfproto ipv4 tcp dport {PORT} reject with icmp type port-unreachable"]
        T_V4[0] => ConnectionRefused;
    /// `reject with icmpv6 type port-unreachable`. Plain connect(2):
    /// ECONNREFUSED, but only after 1-3 s (the first ICMPv6 becomes a soft
    /// error, see the module doc); at once with IPV6_RECVERR.
    icmp_port_unreachable_is_connection_refused_0x05_ipv6:
        ["meta nfproto ipv6 tcp dport {PORT} reject with icmpv6 type port-unreachable"]
        T_V6[0] => ConnectionRefused;

    /// `reject with icmp type host-unreachable`. Plain connect(2):
    /// EHOSTUNREACH at once.
    icmp_host_unreachable_is_host_unreachable_0x04_ipv4:
        ["meta nfproto ipv4 tcp dport {PORT} reject with icmp type host-unreachable"]
        T_V4[0] => HostUnreachable;
    /// `reject with icmpv6 type addr-unreachable` (ICMPv6's host
    /// unreachable). Plain connect(2): EHOSTUNREACH after 1-3 s; at once with
    /// IPV6_RECVERR.
    icmp_host_unreachable_is_host_unreachable_0x04_ipv6:
        ["meta nfproto ipv6 tcp dport {PORT} reject with icmpv6 type addr-unreachable"]
        T_V6[0] => HostUnreachable;

    /// `reject with icmp type net-unreachable`. Plain connect(2):
    /// ENETUNREACH at once.
    icmp_net_unreachable_is_network_unreachable_0x03_ipv4:
        ["meta nfproto ipv4 tcp dport {PORT} reject with icmp type net-unreachable"]
        T_V4[0] => NetworkUnreachable;
    /// `reject with icmpv6 type no-route` (ICMPv6's net unreachable). Plain
    /// connect(2): ENETUNREACH after 1-3 s; at once with IPV6_RECVERR.
    icmp_net_unreachable_is_network_unreachable_0x03_ipv6:
        ["meta nfproto ipv6 tcp dport {PORT} reject with icmpv6 type no-route"]
        T_V6[0] => NetworkUnreachable;

    /// `reject with icmp type admin-prohibited` (ICMP type 3 code 13). Plain
    /// connect(2): EHOSTUNREACH at once, the same errno as host-unreachable,
    /// so SO_ERROR cannot tell them apart. The error queue can: with
    /// IP_RECVERR set before connecting, `recvmsg(MSG_ERRQUEUE)` returns a
    /// sock_extended_err with ee_origin ICMP, ee_type 3, ee_code 13, which
    /// the proxy answers 0x02 (a firewall said no).
    icmp_admin_prohibited_is_not_allowed_0x02_ipv4:
        ["meta nfproto ipv4 tcp dport {PORT} reject with icmp type admin-prohibited"]
        T_V4[0] => NotAllowed;
    /// `reject with icmpv6 type admin-prohibited` (type 1 code 1). Plain
    /// connect(2): EACCES (after 1-3 s; at once with IPV6_RECVERR): 0x02.
    icmp_admin_prohibited_is_not_allowed_0x02_ipv6:
        ["meta nfproto ipv6 tcp dport {PORT} reject with icmpv6 type admin-prohibited"]
        T_V6[0] => NotAllowed;

    /// An address the proxy's namespace has no route to (it has no default
    /// route). Plain connect(2) fails in the call itself with ENETUNREACH
    /// (not EINPROGRESS; SO_ERROR stays 0).
    unroutable_target_is_network_unreachable_0x03_ipv4: [""] "10.232.0.9" => NetworkUnreachable;
    /// As the IPv4 case: ENETUNREACH from connect(2) itself.
    unroutable_target_is_network_unreachable_0x03_ipv6: [""] "fd00:232::9" => NetworkUnreachable;
}

/// Without the event ring (`--event-ring off`, or a kernel that refuses
/// it) connects wait through glommio's write path, where the first ICMPv6
/// error stays soft: the answer is still the truth (0x05), only later, when
/// a retransmitted SYN draws a second ICMP (1, 3 or 7 s).
#[test]
fn without_the_event_ring_an_icmp_answer_is_still_truthful() {
    let case = Case {
        rules: &format!(
            "meta nfproto ipv6 tcp dport {PORT} reject with icmpv6 type port-unreachable"
        ),
        hosts: "",
        connect_timeout: "20s",
    };
    let Some(run) = case.run_with(&["--event-ring", "off"], |_| {
        TargetAddr::Ip(addr(T_V6[0], PORT))
    }) else {
        return;
    };
    run.assert_failed(ReplyCode::ConnectionRefused, ms(0)..ms(12_000));
}

// --- Blackhole ------------------------------------------------------------

/// `drop`: no answer at all. Plain connect(2) retries the SYN until
/// tcp_syn_retries runs out (about 2 min); a nonblocking one just never
/// becomes writable (SO_ERROR 0, getpeername ENOTCONN). The proxy gives up
/// at --connect-timeout and answers 0x04.
#[test]
fn blackholed_target_is_host_unreachable_0x04_at_connect_timeout_ipv4() {
    let case = Case {
        rules: &format!("tcp dport {PORT} drop"),
        hosts: "",
        connect_timeout: "1s",
    };
    let Some(run) = case.run(|_| TargetAddr::Ip(addr(T_V4[0], PORT))) else {
        return;
    };
    run.assert_failed(ReplyCode::HostUnreachable, ms(900)..ms(3000));
}

/// As the IPv4 case.
#[test]
fn blackholed_target_is_host_unreachable_0x04_at_connect_timeout_ipv6() {
    let case = Case {
        rules: &format!("tcp dport {PORT} drop"),
        hosts: "",
        connect_timeout: "1s",
    };
    let Some(run) = case.run(|_| TargetAddr::Ip(addr(T_V6[0], PORT))) else {
        return;
    };
    run.assert_failed(ReplyCode::HostUnreachable, ms(900)..ms(3000));
}

// --- Names with several addresses -----------------------------------------

/// A name whose first address is blackholed and second is live: the proxy
/// must not spend the whole --connect-timeout (10s) on the first, but start
/// the next attempt soon (Happy Eyeballs, RFC 8305: about 250 ms).
#[test]
fn name_with_blackholed_first_address_connects_to_the_second() {
    let case = Case {
        rules: &format!("ip daddr {} drop", T_V4[1]),
        hosts: &format!("{} fallback.test\n{} fallback.test", T_V4[1], T_V4[0]),
        connect_timeout: "20s",
    };
    let Some(run) = case.run(|echo| TargetAddr::Domain("fallback.test".into(), echo.port())) else {
        return;
    };
    assert_resolves_in_order(&run.lab, "fallback.test", &[T_V4[1], T_V4[0]]);
    let live = run.echo.addr;
    run.assert_connected(live, ms(0)..ms(5000));
}

/// The same with an IPv6 first address (getaddrinfo puts it first) that is
/// blackholed and a live IPv4 one: RFC 8305 falls back to the other family
/// without waiting for the first attempt's timeout.
#[test]
fn name_with_blackholed_ipv6_first_falls_back_to_ipv4() {
    let case = Case {
        rules: &format!("ip6 daddr {} drop", T_V6[1]),
        hosts: &format!("{} dual.test\n{} dual.test", T_V6[1], T_V4[0]),
        connect_timeout: "20s",
    };
    let Some(run) = case.run(|echo| TargetAddr::Domain("dual.test".into(), echo.port())) else {
        return;
    };
    assert_resolves_in_order(&run.lab, "dual.test", &[T_V6[1], T_V4[0]]);
    let live = run.echo.addr;
    run.assert_connected(live, ms(0)..ms(5000));
}

/// A name whose two addresses are both blackholed: 0x04 after one
/// --connect-timeout for the whole CONNECT, not one per address.
#[test]
fn name_with_all_addresses_blackholed_fails_after_one_connect_timeout_0x04() {
    let case = Case {
        rules: &format!("ip daddr {{ {}, {} }} drop", T_V4[1], T_V4[2]),
        hosts: &format!("{} dead.test\n{} dead.test", T_V4[1], T_V4[2]),
        connect_timeout: "3s",
    };
    let Some(run) = case.run(|_| TargetAddr::Domain("dead.test".into(), PORT)) else {
        return;
    };
    assert_resolves_in_order(&run.lab, "dead.test", &[T_V4[1], T_V4[2]]);
    run.assert_failed(ReplyCode::HostUnreachable, ms(2900)..ms(5500));
}

// --- Egress source ----------------------------------------------------------

/// The source address a target in T saw for one tunnel through `proxy`
/// (the client in P).
fn seen_from_t(lab: &Lab, proxy: &Proxy, target: &crate::common::Server) -> String {
    lab.client(|| {
        let mut s = proxy.connect(&target.target()).expect("tunnel");
        let mut seen = String::new();
        s.read_to_string(&mut seen).unwrap();
        seen
    })
}

/// P has two addresses on its link to T; the target sees the one chosen by
/// `--egress-source`, a pool, a rule, or the kernel (P's first address).
#[test]
fn targets_across_a_link_see_the_chosen_egress_source() {
    let Some(lab) = Lab::new() else {
        return;
    };
    let second = "10.231.0.11";
    lab.add_p_address(&format!("{second}/24"));
    lab.add_p_address("fd00:231::11/64");
    let target = lab.source_reporter(T_V4[0]);
    let target6 = lab.source_reporter(T_V6[0]);

    let kernel = lab.proxy(&[]);
    assert_eq!(seen_from_t(&lab, &kernel, &target), netns_lab::P_V4);

    let chosen = lab.proxy(&["--egress-source", second, "--egress-source", "fd00:231::11"]);
    for _ in 0..3 {
        assert_eq!(seen_from_t(&lab, &chosen, &target), second);
        assert_eq!(seen_from_t(&lab, &chosen, &target6), "fd00:231::11");
    }

    let pool = lab.proxy(&[
        "--egress-source",
        netns_lab::P_V4,
        "--egress-source",
        second,
    ]);
    let seen: std::collections::HashSet<String> =
        (0..40).map(|_| seen_from_t(&lab, &pool, &target)).collect();
    assert_eq!(seen.len(), 2, "40 random picks used one member: {seen:?}");

    let sticky = lab.proxy(&[
        "--egress-source",
        netns_lab::P_V4,
        "--egress-source",
        second,
        "--egress-source-pick",
        "sticky",
    ]);
    let seen: std::collections::HashSet<String> = (0..10)
        .map(|_| seen_from_t(&lab, &sticky, &target))
        .collect();
    assert_eq!(seen.len(), 1, "one client address, one member: {seen:?}");

    // SO_BINDTODEVICE onto the link that leads there works; onto one
    // that does not (lo), the connect fails and is answered, not hung.
    let on_v0 = lab.proxy(&["--egress-interface", "v0"]);
    assert_eq!(seen_from_t(&lab, &on_v0, &target), netns_lab::P_V4);
    let on_lo = lab.proxy(&["--egress-interface", "lo", "--connect-timeout", "2s"]);
    let got = lab.client(|| on_lo.connect(&target.target()));
    assert!(
        matches!(got, Err(ClientError::Rejected(code)) if code != ReplyCode::Succeeded),
        "{got:?}"
    );
    on_lo.wait_for_log(&[" access: ", "cmd=connect", "reply="]);
    assert_eq!(seen_from_t(&lab, &on_v0, &target), netns_lab::P_V4);
}
