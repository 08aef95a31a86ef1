//! Criterion benchmarks for the egress policy: the cost of deciding one
//! destination against 0, 10 and 1,000 rules, for the request that no rule
//! matches (the loop runs to the end: the worst case) and for one the first
//! rule decides. Run with `cargo bench --bench policy`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use coresocks::policy::{Action, Policy, Requester, RuleSpec};
use coresocks::proto::Command;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// `n` rules of the kinds operators write: a client network, a user, a
/// destination network and a port range, none of which matches the
/// benchmark's request, so every one is evaluated.
fn rules(n: usize) -> Vec<RuleSpec> {
    (0..n)
        .map(|i| {
            let (a, b) = ((i / 256) % 256, i % 256);
            RuleSpec {
                action: if i % 2 == 0 {
                    Action::Deny
                } else {
                    Action::Allow
                },
                clients: vec![format!("10.{a}.{b}.0/24")],
                users: if i % 3 == 0 {
                    vec![format!("user{i}")]
                } else {
                    Vec::new()
                },
                commands: vec!["connect".into()],
                to: vec![
                    format!("172.{}.{b}.0/24", 16 + a % 16),
                    format!(".zone{i}.example"),
                ],
                ports: vec![format!("{}-{}", 1000 + i % 50_000, 1010 + i % 50_000)],
                log: false,
                source: Vec::new(),
            }
        })
        .collect()
}

fn policy(c: &mut Criterion) {
    let who = Requester {
        client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        user: Some("alice"),
        command: Command::Connect,
    };
    let dest = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(93, 184, 215, 14)), 443);
    let mut group = c.benchmark_group("policy_check");
    for n in [0usize, 10, 1000] {
        let p = Policy::new(&[], &[], &rules(n)).expect("valid rules");
        group.bench_with_input(BenchmarkId::new("no_match_ip", n), &p, |b, p| {
            b.iter(|| black_box(p.check(black_box(&who), None, black_box(dest)).is_ok()))
        });
        group.bench_with_input(BenchmarkId::new("no_match_domain", n), &p, |b, p| {
            b.iter(|| {
                let domain = black_box(Some("www.example.com"));
                black_box(p.check(black_box(&who), domain, black_box(dest)).is_ok())
            })
        });
    }
    let first = Policy::new(&[], &["93.184.0.0/16".into()], &rules(1000)).expect("valid rules");
    group.bench_function("first_of_1001_matches", |b| {
        b.iter(|| black_box(first.check(black_box(&who), None, black_box(dest)).is_ok()))
    });
    group.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
