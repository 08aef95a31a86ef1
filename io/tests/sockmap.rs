//! The kernel-side relay's maps and program against real loopback sockets:
//! bytes queued before the join, bulk both ways, and the counts the relay
//! engine ends a direction by.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use coresocks_io::sockmap::{SockMap, Way};
use coresocks_io::sys;

fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let out = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (inn, _) = listener.accept().unwrap();
    (out, inn)
}

fn sockmap_or_skip() -> Option<SockMap> {
    match SockMap::new(64) {
        Ok(m) => Some(m),
        Err(e) if std::env::var_os("CORESOCKS_REQUIRE_SOCKMAP").is_some() => {
            panic!("sockmap required here: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no sockmap here: {e}");
            None
        }
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_joined_pair_relays_queued_and_new_bytes_both_ways_and_its_counts_close_it() {
    let Some(map) = sockmap_or_skip() else { return };
    let front = TcpListener::bind("127.0.0.1:0").unwrap();
    let back = TcpListener::bind("127.0.0.1:0").unwrap();
    let (mut client, a) = pair(&front);
    let (b, mut server) = pair(&back);
    // Queued before the join: a server banner and a client's early bytes.
    server.write_all(b"banner").unwrap();
    client.write_all(b"early").unwrap();
    wait_until("queued", || {
        sys::unread_bytes(a.as_fd()).unwrap() == 5 && sys::unread_bytes(b.as_fd()).unwrap() == 6
    });
    let consumed = [
        sys::consumed_bytes(a.as_fd()).unwrap(),
        sys::consumed_bytes(b.as_fd()).unwrap(),
    ];
    assert_eq!(consumed, [0, 0]);
    // Counted from the join (the active opener's count includes its SYN).
    let written_before = [
        sys::written_bytes(a.as_fd()).unwrap(),
        sys::written_bytes(b.as_fd()).unwrap(),
    ];
    let joined = map.join(a.as_fd(), b.as_fd()).expect("join");

    let mut got = [0u8; 6];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"banner");
    let mut got = [0u8; 5];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"early");

    // Bulk both ways at once.
    let size = 8 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let up = {
        let (mut client, data) = (client.try_clone().unwrap(), data.clone());
        std::thread::spawn(move || {
            client.write_all(&data).unwrap();
            client.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let down = {
        let (mut server, data) = (server.try_clone().unwrap(), data.clone());
        std::thread::spawn(move || server.write_all(&data).unwrap())
    };
    let mut at_server = vec![0u8; size];
    server.read_exact(&mut at_server).unwrap();
    let mut at_client = vec![0u8; size];
    client.read_exact(&mut at_client).unwrap();
    up.join().unwrap();
    down.join().unwrap();
    assert!(at_server == data && at_client == data, "bytes differ");
    // The program counted what it moved, queued bytes included.
    let counters = map.counters().unwrap();
    assert_eq!(counters.read(Way::FirstToSecond).unwrap(), 5 + size as u64);
    assert_eq!(counters.read(Way::SecondToFirst).unwrap(), 6 + size as u64);

    // The client's FIN: TCP counts it as a byte received; every data byte
    // `a` received has been written into `b`.
    wait_until("a's FIN", || sys::peer_finished(a.as_fd()).unwrap());
    assert_eq!(
        sys::tcp_counts(a.as_fd()).unwrap().received,
        5 + size as u64 + 1
    );
    assert_eq!(sys::consumed_bytes(a.as_fd()).unwrap(), 5 + size as u64);
    wait_until("a's bytes written into b", || {
        sys::written_bytes(b.as_fd()).unwrap() - written_before[1] == 5 + size as u64
    });
    sys::shutdown_write(b.as_fd()).unwrap();
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(
        sys::written_bytes(a.as_fd()).unwrap() - written_before[0],
        6 + size as u64
    );
    map.part(&joined);
}
