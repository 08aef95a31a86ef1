//! Relay engine edges: backpressure and memory, the pipe pool, fallback
//! from splice to copy. (Data integrity, half-close and resets are in
//! connect.rs, which CI runs under every --relay mode.)

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;

#[test]
fn slow_reader_keeps_proxy_memory_bounded() {
    const TOTAL: usize = 256 << 20;
    let source = Server::start("127.0.0.1:0", |mut s| {
        let chunk = pattern(1 << 20, 5);
        for _ in 0..TOTAL >> 20 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let proxy = Proxy::start(&[]);
    let mut s = proxy.connect(&source.target()).unwrap();
    let baseline = proxy.rss_kib();
    let mut peak = baseline;
    let mut buf = [0u8; 4096];
    let mut got = 0usize;
    let expected = pattern(1 << 20, 5);
    let mut pos = 0usize;
    let mut reads = 0u64;
    while got < TOTAL {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "early EOF at {got}");
        // Check content as it streams by (the source repeats one MiB).
        for &b in &buf[..n] {
            assert_eq!(b, expected[pos], "corrupted at byte {got}");
            pos = (pos + 1) % expected.len();
        }
        got += n;
        reads += 1;
        if reads % 4096 == 0 {
            peak = peak.max(proxy.rss_kib());
            // Slower than the source, so the proxy must hold back.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    // Two copy buffers or two pipes per tunnel at most: a few MiB of slack
    // for allocator and runtime, never the transfer.
    assert!(
        peak - baseline < 32 * 1024,
        "proxy RSS grew from {baseline} KiB to {peak} KiB while relaying to a slow reader"
    );
}

#[test]
fn many_short_tunnels_reuse_pooled_pipes() {
    let source = Server::start("127.0.0.1:0", |mut s| {
        let _ = s.write_all(&pattern(200_000, 6));
    });
    let (proxy, metrics) = Proxy::start_with_metrics(&["--relay", "splice", "--cores", "1"]);
    for i in 0..200 {
        let mut s = proxy.connect(&source.target()).unwrap();
        assert_eq!(read_to_end(&mut s), pattern(200_000, 6), "tunnel {i}");
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    let body = loop {
        let body = scrape(&metrics);
        if metric_sum(&body, "coresocks_tunnels_total", &[]) == 200 {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // One tunnel at a time needs at most two pipes; the pool must not grow
    // with the number of tunnels served.
    let pipes = metric_sum(&body, "coresocks_pipes", &[]);
    assert!(pipes <= 2, "{pipes} pipes after 200 sequential tunnels");
    assert!(metric_sum(&body, "coresocks_bytes_spliced_total", &[]) >= 200 * 150_000);
    assert_eq!(
        metric_sum(&body, "coresocks_tunnels_total", &["engine=\"splice\""]),
        200
    );
}

#[test]
fn splice_falls_back_to_copy_when_no_pipe_is_left() {
    const SIZE: usize = 32 << 20;
    let source = Server::start("127.0.0.1:0", |mut s| {
        let _ = s.write_all(&pattern(SIZE, 7));
    });
    let (proxy, metrics) = Proxy::start_with_metrics(&[
        "--relay",
        "splice",
        "--cores",
        "1",
        "--max-pipes-per-core",
        "1",
    ]);
    // The first tunnel's reader does not read: its download direction fills
    // the only pipe and keeps it.
    let mut hog = proxy.connect(&source.target()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // The second tunnel finds no pipe and must still carry every byte.
    let mut second = proxy.connect(&source.target()).unwrap();
    let (n, digest) = hash_until_eof(&mut second).unwrap();
    assert_eq!(n, SIZE as u64);
    assert_eq!(digest, sha256(&pattern(SIZE, 7)));
    let (n, digest) = hash_until_eof(&mut hog).unwrap();
    assert_eq!(n, SIZE as u64);
    assert_eq!(digest, sha256(&pattern(SIZE, 7)));
    drop((hog, second));
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let body = scrape(&metrics);
        if metric_sum(&body, "coresocks_tunnels_total", &[]) == 2 {
            assert!(
                metric_sum(&body, "coresocks_pipe_misses_total", &[]) > 0,
                "{body}"
            );
            assert_eq!(metric_sum(&body, "coresocks_pipes", &[]), 1, "{body}");
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.wait_for_log(&["engine=copy", &format!("down={SIZE}")]);
}

#[test]
fn upload_to_a_slow_target_is_held_back_not_buffered() {
    // The target reads slowly; the client writes as fast as it can. The
    // client must block (TCP backpressure through the proxy) rather than
    // the proxy buffering the difference.
    const TOTAL: usize = 64 << 20;
    let sink = Server::start("127.0.0.1:0", |mut s| {
        let mut buf = [0u8; 8192];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            if total % (1 << 20) < 8192 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = s.write_all(&(total as u64).to_be_bytes());
    });
    let proxy = Proxy::start(&[]);
    let mut s = proxy.connect(&sink.target()).unwrap();
    let baseline = proxy.rss_kib();
    let chunk = vec![9u8; 1 << 20];
    let mut peak = baseline;
    for _ in 0..TOTAL >> 20 {
        s.write_all(&chunk).unwrap();
        peak = peak.max(proxy.rss_kib());
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).unwrap();
    assert_eq!(u64::from_be_bytes(n), TOTAL as u64);
    assert!(peak - baseline < 32 * 1024, "RSS {baseline} -> {peak} KiB");
}
