//! Criterion benchmarks for the SOCKS5 / RFC 1929 codec in `coresocks::proto`.
//!
//! Every message is decoded from a ready buffer and encoded into a Vec that
//! is cleared and reused, so the encode numbers measure encoding rather than
//! allocation. Run with `cargo bench --bench codec`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use coresocks::proto::{
    Command, Decoded, Greeting, Method, ProtoError, Reply, Request, TargetAddr, UdpHeader,
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

/// Benchmarks decode and encode of one message under `name`. The codec
/// functions are generic parameters, not `fn` pointers, so each is inlined
/// as it would be in the server rather than called indirectly.
fn bench_message<T, E, D>(c: &mut Criterion, name: &str, msg: T, encode: E, decode: D)
where
    E: Fn(&T, &mut Vec<u8>),
    D: Fn(&[u8]) -> Result<Decoded<T>, ProtoError>,
{
    let mut wire = Vec::new();
    encode(&msg, &mut wire);
    assert!(
        matches!(decode(&wire), Ok(Decoded::Complete(_, n)) if n == wire.len()),
        "{name}: encoding does not decode back"
    );

    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("decode", |b| b.iter(|| decode(black_box(&wire))));
    let mut out = Vec::with_capacity(Reply::MAX_LEN);
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&msg), &mut out);
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
        Greeting::encode,
        Greeting::decode,
    );
    bench_message(
        c,
        "user_pass_request",
        UserPassRequest {
            username: b"loadgen-user-0042".to_vec(),
            password: b"correct horse battery staple".to_vec(),
        },
        UserPassRequest::encode,
        UserPassRequest::decode,
    );
    bench_message(
        c,
        "request_connect_ipv4",
        connect(ipv4()),
        Request::encode,
        Request::decode,
    );
    bench_message(
        c,
        "request_connect_ipv6",
        connect(ipv6()),
        Request::encode,
        Request::decode,
    );
    bench_message(
        c,
        "request_connect_domain",
        connect(domain()),
        Request::encode,
        Request::decode,
    );
    bench_message(
        c,
        "udp_header_ipv4",
        UdpHeader {
            frag: 0,
            target: ipv4(),
        },
        UdpHeader::encode,
        UdpHeader::decode,
    );
    bench_message(
        c,
        "udp_header_domain",
        UdpHeader {
            frag: 0,
            target: domain(),
        },
        UdpHeader::encode,
        UdpHeader::decode,
    );
}

criterion_group!(benches, codec);
criterion_main!(benches);
