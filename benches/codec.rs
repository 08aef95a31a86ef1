//! Criterion benchmarks for the SOCKS5 / RFC 1929 codec in `coresocks::proto`.
//!
//! Every message is decoded from a ready buffer and encoded into a Vec that
//! is cleared and reused, so the encode numbers measure encoding rather than
//! allocation. Run with `cargo bench --bench codec`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use coresocks::proto::{
    Codec, Command, Decoded, Greeting, Method, Reply, Request, TargetAddr, UdpHeader,
    UserPassRequest,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn connect(target: TargetAddr) -> Request {
    Request {
        command: Command::Connect,
        target,
    }
}

fn ipv4() -> TargetAddr {
    TargetAddr::Ip(SocketAddr::new(Ipv4Addr::new(93, 184, 215, 14).into(), 443))
}

fn ipv6() -> TargetAddr {
    let ip: Ipv6Addr = "2606:2800:21f:cb07:6820:80da:af6b:8b2c".parse().unwrap();
    TargetAddr::Ip(SocketAddr::new(ip.into(), 443))
}

fn domain() -> TargetAddr {
    TargetAddr::domain("www.example.com", 443).unwrap()
}

/// Benchmarks decode and encode of one message under `name`, through the
/// `Codec` trait (monomorphised, so inlined as in the server).
fn bench_message<T: Codec>(c: &mut Criterion, name: &str, msg: T) {
    let mut wire = Vec::new();
    msg.encode(&mut wire);
    assert!(
        matches!(T::decode(&wire), Ok(Decoded::Complete(_, n)) if n == wire.len()),
        "{name}: encoding does not decode back"
    );

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode", |b| b.iter(|| T::decode(black_box(&wire))));
    let mut out = Vec::with_capacity(Reply::MAX_LEN);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            black_box(&msg).encode(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_message(
        c,
        "greeting",
        Greeting::new(&[Method::NO_AUTH, Method::USER_PASS]),
    );
    bench_message(
        c,
        "user_pass_request",
        UserPassRequest {
            username: b"loadgen-user-0042".to_vec(),
            password: b"correct horse battery staple".to_vec(),
        },
    );
    bench_message(c, "request_connect_ipv4", connect(ipv4()));
    bench_message(c, "request_connect_ipv6", connect(ipv6()));
    bench_message(c, "request_connect_domain", connect(domain()));
    bench_message(
        c,
        "udp_header_ipv4",
        UdpHeader {
            frag: 0,
            target: ipv4(),
        },
    );
    bench_message(
        c,
        "udp_header_domain",
        UdpHeader {
            frag: 0,
            target: domain(),
        },
    );
}

criterion_group!(benches, codec);
criterion_main!(benches);
