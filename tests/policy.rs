//! The egress policy end to end: the default denial of private
//! destinations in every spelling, `--allow`/`--deny`, the file's rules on
//! each field, the access log and metrics. After each refusal the proxy must
//! serve the next client at once.

use std::io::Write;
use std::net::SocketAddr;

use crate::common::*;
use coresocks::client::{ClientError, Credentials};
use coresocks::proto::{ReplyCode, TargetAddr};

fn refused(r: Result<std::net::TcpStream, ClientError>) -> bool {
    matches!(r, Err(ClientError::Rejected(ReplyCode::NotAllowed)))
}

fn domain(name: &str, port: u16) -> TargetAddr {
    TargetAddr::Domain(name.to_owned(), port)
}

fn ip(s: &str) -> TargetAddr {
    TargetAddr::Ip(s.parse::<SocketAddr>().unwrap())
}

#[test]
fn by_default_every_spelling_of_a_private_destination_is_refused() {
    let echo = echo_server("127.0.0.1:0");
    let port = echo.addr.port();
    // Any --allow/--deny replaces the harness's loopback opening; this one
    // touches nothing here, so the built-in default is what is tested.
    let (proxy, metrics) = Proxy::start_with_metrics(&["--deny", "192.0.2.1"]);
    let targets = [
        echo.target(),
        ip(&format!("[::ffff:127.0.0.1]:{port}")),
        ip(&format!("[::1]:{port}")),
        ip(&format!("0.0.0.0:{port}")),
        ip(&format!("169.254.169.254:{port}")),
        ip(&format!("10.0.0.1:{port}")),
        domain("localhost", port),
        domain("127.0.0.1", port),
        domain("LocalHost", port),
    ];
    for t in &targets {
        assert!(refused(proxy.connect(t)), "{t} was not refused");
    }
    let body = scrape(&metrics);
    assert_eq!(
        metric_sum(
            &body,
            "coresocks_requests_denied_total",
            &["reason=\"private\""]
        ),
        targets.len() as u64
    );
    assert_eq!(
        metric_sum(&body, "coresocks_replies_total", &["code=\"not-allowed\""]),
        targets.len() as u64
    );
    assert_eq!(echo.accepted(), 0, "no refused request reached the target");
    let line = proxy.wait_for_log(&["cmd=connect", "rule=private"]);
    assert!(
        line.contains("reply=not-allowed") && line.contains("end=not-allowed"),
        "{line}"
    );
}

#[test]
fn allow_opens_deny_closes_and_deny_is_evaluated_first() {
    let echo = echo_server("127.0.0.1:0");
    let port = echo.addr.port();
    let proxy = Proxy::start(&["--allow", "127.0.0.0/8", "--deny", "127.0.0.2"]);
    proxy.assert_serves(&echo);
    assert!(refused(proxy.connect(&ip(&format!("127.0.0.2:{port}")))));
    proxy.wait_for_log(&["target=127.0.0.2", "rule=--deny#1", "reply=not-allowed"]);
    proxy.assert_serves(&echo);
    // ::1 was not opened.
    assert!(refused(proxy.connect(&ip(&format!("[::1]:{port}")))));
    proxy.wait_for_log(&["target=[::1]", "rule=private"]);
    proxy.assert_serves(&echo);
}

#[test]
fn a_name_is_connected_only_to_its_allowed_addresses() {
    // localhost resolves to 127.0.0.1 (and ::1 where configured); only
    // 127.0.0.1 is open, and the echo listens only there.
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--allow", "127.0.0.1"]);
    let mut s = proxy
        .connect(&domain("localhost", echo.addr.port()))
        .unwrap();
    s.write_all(b"x").unwrap();
    drop(s);
    proxy.wait_for_log(&["target=localhost", "resolved=127.0.0.1", "rule=--allow#1"]);
}

#[test]
fn a_domain_rule_does_not_open_the_private_addresses_its_name_resolves_to() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--allow", "localhost"]);
    assert!(refused(
        proxy.connect(&domain("localhost", echo.addr.port()))
    ));
    proxy.wait_for_log(&["target=localhost", "rule=private"]);
    assert_eq!(echo.accepted(), 0);
}

/// A proxy whose policy is the config file's `rules` (the harness's
/// loopback opening is replaced by a --deny that touches nothing here).
fn proxy_with_rules(rules: &str, extra: &[&str]) -> (Proxy, TempPath) {
    let file = TempPath::new("rules.toml");
    std::fs::write(&file.0, rules).unwrap();
    let mut args = vec!["--config", file.arg(), "--deny", "192.0.2.1"];
    args.extend_from_slice(extra);
    (Proxy::start(&args), file)
}

#[test]
fn file_rules_match_on_ports_and_ranges() {
    let echo = echo_server("127.0.0.1:0");
    let other = echo_server("127.0.0.1:0");
    let rules = format!(
        "[[rule]]\naction = \"deny\"\nports = [\"{}\", \"1-3\"]\nlog = true\n\n\
         [[rule]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n",
        echo.addr.port()
    );
    let (proxy, _file) = proxy_with_rules(&rules, &[]);
    assert!(refused(proxy.connect(&echo.target())));
    assert!(refused(proxy.connect(&ip("127.0.0.1:2"))));
    proxy.wait_for_log(&["rule=rule#1", "reply=not-allowed"]);
    proxy.wait_for_log(&["rule#1 Deny", "cmd=connect"]);
    proxy.assert_serves(&other);
    proxy.wait_for_log(&["rule=rule#2", "reply=succeeded"]);
}

#[test]
fn file_rules_match_on_client_address() {
    let echo = echo_server("127.0.0.1:0");
    // Clients come from 127.0.0.1: the first rule does not match them.
    let rules = "[[rule]]\naction = \"allow\"\nclients = [\"10.0.0.0/8\"]\nto = [\"private\"]\n";
    let (proxy, _file) = proxy_with_rules(rules, &[]);
    assert!(refused(proxy.connect(&echo.target())));
    let rules = "[[rule]]\naction = \"allow\"\nclients = [\"127.0.0.1\"]\nto = [\"private\"]\n";
    let (proxy, _file) = proxy_with_rules(rules, &[]);
    proxy.assert_serves(&echo);
}

#[test]
fn file_rules_match_on_user_and_command() {
    let echo = echo_server("127.0.0.1:0");
    let users = TempPath::new("users");
    std::fs::write(&users.0, "alice:a\nbob:b\n").unwrap();
    let rules = "[[rule]]\naction = \"deny\"\ncommands = [\"bind\"]\n\n\
                 [[rule]]\naction = \"allow\"\nusers = [\"alice\"]\nto = [\"127.0.0.0/8\"]\n";
    let (proxy, _file) = proxy_with_rules(rules, &["--users", users.arg()]);
    let alice = Credentials {
        username: "alice".into(),
        password: "a".into(),
    };
    let bob = Credentials {
        username: "bob".into(),
        password: "b".into(),
    };
    proxy.assert_serves_as(&echo, Some(&alice));
    assert!(refused(proxy.connect_as(&echo.target(), Some(&bob))));
    proxy.wait_for_log(&["user=bob", "rule=private"]);
    // BIND is denied for everyone, before anything listens.
    let mut s = proxy.raw();
    let r = coresocks::client::handshake_blocking(
        &mut s,
        coresocks::proto::Command::Bind,
        &ip("127.0.0.1:0"),
        Some(&alice),
    );
    assert!(
        matches!(r, Err(ClientError::Rejected(ReplyCode::NotAllowed))),
        "{r:?}"
    );
    proxy.wait_for_log(&["cmd=bind", "rule=rule#1"]);
    proxy.assert_serves_as(&echo, Some(&alice));
}

/// The log of a proxy that must refuse to start.
fn start_fails(args: &[&str]) -> String {
    match Proxy::try_start(args) {
        Ok(_) => panic!("coresocks started with {args:?}"),
        Err(log) => log,
    }
}

#[test]
fn bad_rules_stop_the_start_with_one_line_naming_the_rule() {
    let file = TempPath::new("bad-rules.toml");
    std::fs::write(
        &file.0,
        "[[rule]]\naction = \"allow\"\nto = [\"10.0.0.0/33\"]\n",
    )
    .unwrap();
    let err = start_fails(&["--config", file.arg()]);
    assert!(
        err.contains("rule#1 (to)") && err.contains("10.0.0.0/33"),
        "{err}"
    );
    let err = start_fails(&["--allow", "not a target"]);
    assert!(err.contains("--allow"), "{err}");
}

#[test]
fn an_open_listener_without_users_or_client_rules_is_warned_about() {
    let proxy = Proxy::start(&["--listen", "0.0.0.0:0"]);
    proxy.wait_for_log(&["0.0.0.0:0", "anyone who can reach it"]);
    let proxy = Proxy::start(&["--listen", "127.0.0.1:0"]);
    proxy.wait_for_log(&["egress policy:"]);
    assert!(!proxy
        .log()
        .iter()
        .any(|l| l.contains("anyone who can reach it")));
}

/// A loopback server that answers each connection with the address it
/// sees the connection come from.
fn source_reporter() -> Server {
    Server::start("127.0.0.1:0", |mut s| {
        let ip = s.peer_addr().unwrap().ip().to_string();
        let _ = s.write_all(ip.as_bytes());
    })
}

/// The source address `target` saw for one tunnel through `proxy`.
fn seen_source(proxy: &Proxy, target: &Server) -> String {
    let mut s = proxy.connect(&target.target()).expect("tunnel");
    String::from_utf8(read_to_end(&mut s)).unwrap()
}

#[test]
fn the_egress_source_is_the_address_targets_see() {
    let target = source_reporter();
    let proxy = Proxy::start(&["--allow", "127.0.0.0/8", "--egress-source", "127.0.0.2"]);
    for _ in 0..3 {
        assert_eq!(seen_source(&proxy, &target), "127.0.0.2");
    }
}

#[test]
fn a_pool_is_spread_at_random_or_kept_sticky() {
    let target = source_reporter();
    let pool = [
        "--egress-source",
        "127.0.0.2",
        "--egress-source",
        "127.0.0.3",
    ];
    let mut args = vec!["--allow", "127.0.0.0/8"];
    args.extend(pool);
    let random = Proxy::start(&args);
    let seen: std::collections::HashSet<String> =
        (0..40).map(|_| seen_source(&random, &target)).collect();
    assert_eq!(seen.len(), 2, "40 random picks used one member: {seen:?}");
    args.extend(["--egress-source-pick", "sticky"]);
    let sticky = Proxy::start(&args);
    let seen: std::collections::HashSet<String> =
        (0..10).map(|_| seen_source(&sticky, &target)).collect();
    assert_eq!(seen.len(), 1, "one client address, one member: {seen:?}");
}

#[test]
fn a_rule_chooses_its_own_source_and_bad_sources_fail_clearly() {
    let target = source_reporter();
    let rules = "[[rule]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\nsource = [\"127.0.0.4\"]\n";
    let (proxy, _file) = proxy_with_rules(rules, &["--egress-source", "127.0.0.2"]);
    assert_eq!(seen_source(&proxy, &target), "127.0.0.4");

    // Not an address of this host: the bind fails, the reply is 0x01.
    let proxy = Proxy::start(&["--allow", "127.0.0.0/8", "--egress-source", "192.0.2.55"]);
    let r = proxy.connect(&target.target());
    assert!(
        matches!(r, Err(ClientError::Rejected(ReplyCode::GeneralFailure))),
        "{r:?}"
    );
    proxy.wait_for_log(&["cannot bind the egress source 192.0.2.55"]);

    // An IPv6 target with only an IPv4 source: 0x01, and a line that says
    // what to add.
    let echo6 = echo_server("[::1]:0");
    let args = ["--allow", "::1", "--egress-source", "127.0.0.2"];
    let proxy = Proxy::start(&args);
    let r = proxy.connect(&echo6.target());
    assert!(
        matches!(r, Err(ClientError::Rejected(ReplyCode::GeneralFailure))),
        "{r:?}"
    );
    proxy.wait_for_log(&["end=egress-source"]);
    // The warning comes through the diagnostics' writer, the access line
    // through its own: either may be first.
    proxy.wait_for_log(&["no egress source address for IPv6"]);
}
