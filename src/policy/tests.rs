use super::*;

fn who(client: &str, user: Option<&'static str>, command: Command) -> Requester<'static> {
    Requester {
        client: client.parse().unwrap(),
        user,
        command,
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn spec(toml_text: &str) -> Vec<RuleSpec> {
    #[derive(Deserialize)]
    struct File {
        rule: Vec<RuleSpec>,
    }
    toml::from_str::<File>(toml_text).unwrap().rule
}

/// The access log's view of a decision: the rule name, or `allow`.
fn verdict(p: &Policy, w: &Requester<'_>, domain: Option<&str>, dest: &str) -> String {
    match p.check(w, domain, sa(dest)) {
        Ok(Some(rule)) => format!("allow {}", rule.name),
        Ok(None) => "allow".to_owned(),
        Err(d) => format!("deny {}", d.name()),
    }
}

const ANYONE: Requester<'static> = Requester {
    client: IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 10)),
    user: None,
    command: Command::Connect,
};

#[test]
fn without_rules_private_is_denied_and_the_rest_allowed_in_every_form() {
    let p = Policy::default();
    let cases = [
        ("127.0.0.1:80", "deny private"),
        ("[::1]:80", "deny private"),
        ("[::ffff:127.0.0.1]:80", "deny private"),
        ("[::ffff:169.254.169.254]:80", "deny private"),
        ("[64:ff9b::a9fe:a9fe]:80", "deny private"),
        ("[2002:a00:1::]:80", "deny private"),
        ("10.1.2.3:443", "deny private"),
        ("0.0.0.0:80", "deny private"),
        ("[::]:80", "deny private"),
        ("8.8.8.8:53", "allow"),
        ("[::ffff:8.8.8.8]:53", "allow"),
        ("[2001:4860::8888]:443", "allow"),
    ];
    for (dest, want) in cases {
        assert_eq!(verdict(&p, &ANYONE, None, dest), want, "{dest}");
    }
}

#[test]
fn flags_open_and_close_by_cidr_ip_and_private_and_deny_comes_first() {
    let p = Policy::new(
        &["127.0.0.9".into(), ".blocked.example".into()],
        &["127.0.0.0/8".into(), "::1".into(), "private".into()],
        &[],
    )
    .unwrap();
    let cases = [
        (None, "127.0.0.1:80", "allow --allow#1"),
        (None, "[::ffff:127.0.0.1]:80", "allow --allow#1"),
        (None, "127.0.0.9:80", "deny --deny#1"),
        (None, "[::1]:80", "allow --allow#2"),
        (None, "10.0.0.1:80", "allow --allow#3"),
        (Some("a.blocked.example"), "8.8.8.8:80", "deny --deny#2"),
        (Some("BLOCKED.example."), "8.8.8.8:80", "deny --deny#2"),
        (Some("notblocked.example"), "8.8.8.8:80", "allow"),
        (None, "8.8.8.8:80", "allow"),
    ];
    for (domain, dest, want) in cases {
        assert_eq!(
            verdict(&p, &ANYONE, domain, dest),
            want,
            "{domain:?} {dest}"
        );
    }
}

#[test]
fn a_domain_rule_never_opens_a_private_address_its_dns_points_to() {
    let p = Policy::new(&[], &["internal.example".into()], &[]).unwrap();
    let name = Some("internal.example");
    assert_eq!(
        verdict(&p, &ANYONE, name, "93.184.216.34:80"),
        "allow --allow#1"
    );
    assert_eq!(verdict(&p, &ANYONE, name, "127.0.0.1:80"), "deny private");
    assert_eq!(
        verdict(&p, &ANYONE, name, "169.254.169.254:80"),
        "deny private"
    );
    // A rule naming the address does open it.
    let p = Policy::new(&[], &["169.254.169.254".into()], &[]).unwrap();
    assert_eq!(
        verdict(&p, &ANYONE, name, "169.254.169.254:80"),
        "allow --allow#1"
    );
}

#[test]
fn every_rule_field_narrows_the_match() {
    let rules = spec(
        r#"
        [[rule]]
        action = "allow"
        clients = ["10.0.0.0/8"]
        to = ["private"]

        [[rule]]
        action = "deny"
        users = ["guest"]

        [[rule]]
        action = "deny"
        commands = ["bind", "udp"]
        to = [".example.net"]

        [[rule]]
        action = "deny"
        ports = ["25", "6660-6669"]

        [[rule]]
        action = "allow"
        users = ["admin"]
        to = ["0.0.0.0/0", "::/0"]
        "#,
    );
    let p = Policy::new(&[], &[], &rules).unwrap();
    let cases = [
        // clients
        (
            who("10.9.9.9", None, Command::Connect),
            None,
            "10.0.0.1:22",
            "allow rule#1",
        ),
        (
            who("192.0.2.1", None, Command::Connect),
            None,
            "10.0.0.1:22",
            "deny private",
        ),
        // users; a session without a user never matches a user rule
        (
            who("192.0.2.1", Some("guest"), Command::Connect),
            None,
            "8.8.8.8:443",
            "deny rule#2",
        ),
        (
            who("192.0.2.1", Some("alice"), Command::Connect),
            None,
            "8.8.8.8:443",
            "allow",
        ),
        (
            who("192.0.2.1", None, Command::Connect),
            None,
            "8.8.8.8:443",
            "allow",
        ),
        // commands with a domain suffix
        (
            who("192.0.2.1", None, Command::Bind),
            Some("x.example.net"),
            "8.8.8.8:1",
            "deny rule#3",
        ),
        (
            who("192.0.2.1", None, Command::UdpAssociate),
            Some("example.net"),
            "8.8.8.8:1",
            "deny rule#3",
        ),
        (
            who("192.0.2.1", None, Command::Connect),
            Some("x.example.net"),
            "8.8.8.8:1",
            "allow",
        ),
        (
            who("192.0.2.1", None, Command::Bind),
            Some("xexample.net"),
            "8.8.8.8:1",
            "allow",
        ),
        // ports and ranges
        (
            who("192.0.2.1", None, Command::Connect),
            None,
            "8.8.8.8:25",
            "deny rule#4",
        ),
        (
            who("192.0.2.1", None, Command::Connect),
            None,
            "8.8.8.8:6665",
            "deny rule#4",
        ),
        (
            who("192.0.2.1", None, Command::Connect),
            None,
            "8.8.8.8:6670",
            "allow",
        ),
        // an address rule for everything opens private for that user only
        (
            who("192.0.2.1", Some("admin"), Command::Connect),
            None,
            "127.0.0.1:80",
            "allow rule#5",
        ),
        (
            who("192.0.2.1", Some("alice"), Command::Connect),
            None,
            "127.0.0.1:80",
            "deny private",
        ),
    ];
    for (w, domain, dest, want) in cases {
        assert_eq!(
            verdict(&p, &w, domain, dest),
            want,
            "{w:?} {domain:?} {dest}"
        );
    }
}

#[test]
fn a_rule_without_destinations_does_not_open_private_but_denies_everything() {
    let rules = spec("[[rule]]\naction = \"allow\"\n\n[[rule]]\naction = \"deny\"\n");
    let p = Policy::new(&[], &[], &rules).unwrap();
    assert_eq!(verdict(&p, &ANYONE, None, "8.8.8.8:80"), "allow rule#1");
    assert_eq!(verdict(&p, &ANYONE, None, "127.0.0.1:80"), "deny private");
    let rules = spec("[[rule]]\naction = \"deny\"\n");
    let p = Policy::new(&[], &[], &rules).unwrap();
    assert_eq!(verdict(&p, &ANYONE, None, "8.8.8.8:80"), "deny rule#1");
}

#[test]
fn mapped_ipv6_rules_match_ipv4_destinations_and_back() {
    let p = Policy::new(&[], &["::ffff:127.0.0.0/104".into()], &[]).unwrap();
    assert_eq!(
        verdict(&p, &ANYONE, None, "127.0.0.1:80"),
        "allow --allow#1"
    );
    assert_eq!(
        verdict(&p, &ANYONE, None, "[::ffff:127.0.0.1]:80"),
        "allow --allow#1"
    );
    assert_eq!(verdict(&p, &ANYONE, None, "128.0.0.1:80"), "allow");
}

#[test]
fn bad_targets_and_rules_say_what_is_wrong() {
    let cases: [(&[&str], &[&str], &str, &str); 7] = [
        (&["10.0.0.0/33"], &[], "", "--deny"),
        (&[], &["exa mple.com"], "", "--allow"),
        (
            &[],
            &[],
            "[[rule]]\naction = \"allow\"\nto = [\"..\"]\n",
            "rule#1 (to)",
        ),
        (
            &[],
            &[],
            "[[rule]]\naction = \"allow\"\nclients = [\"x\"]\n",
            "rule#1 (clients)",
        ),
        (
            &[],
            &[],
            "[[rule]]\naction = \"allow\"\ncommands = [\"get\"]\n",
            "rule#1 (commands)",
        ),
        (
            &[],
            &[],
            "[[rule]]\naction = \"allow\"\nports = [\"9-1\"]\n",
            "rule#1 (ports)",
        ),
        (
            &[],
            &[],
            "[[rule]]\naction = \"allow\"\nports = [\"65536\"]\n",
            "rule#1 (ports)",
        ),
    ];
    for (deny, allow, file, want) in cases {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let rules = if file.is_empty() {
            Vec::new()
        } else {
            spec(file)
        };
        let err = Policy::new(&owned(deny), &owned(allow), &rules).unwrap_err();
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
    assert!(toml::from_str::<RuleSpec>("action = \"maybe\"\n").is_err());
}

#[test]
fn restricts_clients_only_with_a_client_rule() {
    assert!(!Policy::new(&[], &["private".into()], &[])
        .unwrap()
        .restricts_clients());
    let rules = spec("[[rule]]\naction = \"deny\"\nclients = [\"0.0.0.0/0\"]\n");
    assert!(Policy::new(&[], &[], &rules).unwrap().restricts_clients());
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Every IPv6 spelling of an IPv4 address that [`special::embedded_v4`]
    /// knows.
    fn spellings(v4: Ipv4Addr) -> [IpAddr; 4] {
        let b = u32::from(v4) as u128;
        [
            IpAddr::V6(v4.to_ipv6_mapped()),
            IpAddr::V6(Ipv6Addr::from(b)),
            IpAddr::V6(Ipv6Addr::from((0x64_ff9b_u128 << 96) | b)),
            IpAddr::V6(Ipv6Addr::from((0x2002_u128 << 112) | (b << 80))),
        ]
    }

    fn rules() -> impl Strategy<Value = (Vec<String>, Vec<String>)> {
        let net = (any::<u32>(), 0u8..=32, any::<bool>()).prop_map(|(a, len, mapped)| {
            if mapped {
                format!("::ffff:{}/{}", Ipv4Addr::from(a), len + 96)
            } else {
                format!("{}/{len}", Ipv4Addr::from(a))
            }
        });
        let list = prop::collection::vec(net, 0..6);
        (list.clone(), list)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn every_spelling_of_an_ipv4_address_is_private_alike(a in any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            let want = special::is_private(IpAddr::V4(v4));
            for ip in spellings(v4) {
                prop_assert_eq!(special::is_private(ip), want, "{} as {}", v4, ip);
            }
        }

        #[test]
        fn a_mapped_address_gets_the_ipv4_decision(
            a in any::<u32>(),
            port in any::<u16>(),
            (deny, allow) in rules(),
        ) {
            let p = Policy::new(&deny, &allow, &[]).unwrap();
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port);
            let mapped = SocketAddr::new(IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped()), port);
            let name = |r: Result<Option<&Rule>, Denial<'_>>| match r {
                Ok(rule) => rule.map(|r| r.name.clone()).unwrap_or_default(),
                Err(d) => format!("deny {}", d.name()),
            };
            prop_assert_eq!(name(p.check(&ANYONE, None, v4)), name(p.check(&ANYONE, None, mapped)));
        }

        #[test]
        fn targets_and_checks_never_panic(target in ".{0,80}", domain in "[a-zA-Z0-9.-]{0,40}") {
            if let Ok(p) = Policy::new(&[], &[target], &[]) {
                let _ = p.check(&ANYONE, Some(&domain), "8.8.8.8:53".parse().unwrap());
            }
        }
    }
}
