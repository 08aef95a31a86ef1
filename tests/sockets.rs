//! The steering and tuning socket options (`--listen-steering`,
//! `--defer-accept`, `--listen-fastopen`, `--busy-poll`, socket buffers,
//! congestion control):
//! each one starts, says so in one log line, and serves; bad values are one
//! clear error at start; and the options that have an effect a test can see
//! from outside have it. (Which listener the kernel picks by CPU is checked
//! in `sys`'s unit tests, with threads pinned to each CPU.)

use std::io::Write;
use std::net::TcpStream;

use crate::common::*;

#[test]
fn each_option_starts_logs_what_it_set_and_serves() {
    let echo = echo_server("127.0.0.1:0");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--listen-steering", "incoming-cpu"],
            "listen steering incoming-cpu",
        ),
        (&["--listen-steering", "cpu-bpf"], "listen steering cpu-bpf"),
        (&["--defer-accept", "2s"], "defer accept 2s"),
        (&["--listen-fastopen", "64"], "TCP fast open queue 64"),
        (
            &["--busy-poll", "50", "--prefer-busy-poll"],
            "busy poll 50 µs (preferred)",
        ),
        (
            &[
                "--socket-receive-buffer",
                "262144",
                "--socket-send-buffer",
                "131072",
            ],
            "receive buffer 262144, send buffer 131072",
        ),
        (
            &[
                "--client-congestion",
                "reno",
                "--target-congestion",
                "cubic",
            ],
            "client congestion control reno, target congestion control cubic",
        ),
    ];
    for (args, said) in cases {
        let proxy = Proxy::start(args);
        proxy.wait_for_log(&["sockets: ", said]);
        proxy.assert_serves(&echo);
        proxy.assert_serves(&echo);
    }
}

#[test]
fn bad_values_stop_the_start_with_one_clear_line() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--defer-accept", "300ms"],
            "invalid setting defer-accept: must be at least 1s",
        ),
        (&["--busy-poll", "0"], "invalid setting busy-poll"),
        (&["--prefer-busy-poll"], "invalid setting busy-poll"),
        (
            &["--socket-receive-buffer", "100"],
            "invalid setting socket-receive-buffer",
        ),
        (
            &["--listen-steering", "round-robin"],
            "invalid value 'round-robin'",
        ),
        (
            &["--target-congestion", "no_such_cc"],
            "cannot use congestion control 'no_such_cc' (--target-congestion): the kernel has no algorithm of that name (it offers: ",
        ),
        (
            &["--client-congestion", "no_such_cc"],
            "cannot use congestion control 'no_such_cc' (--client-congestion)",
        ),
        (
            &["--client-congestion", "cubic;reno"],
            "'cubic;reno' is not a congestion control name",
        ),
    ];
    for (args, needle) in cases {
        match Proxy::try_start(args) {
            Ok(_) => panic!("started with {args:?}"),
            Err(log) => assert!(log.contains(needle), "{args:?}: {log}"),
        }
    }
}

/// With TCP_DEFER_ACCEPT a client that connects and says nothing never
/// reaches a core; one that sends its greeting is accepted at once.
#[test]
fn defer_accept_keeps_silent_connections_off_the_cores() {
    let echo = echo_server("127.0.0.1:0");
    // One core, one accept queue, taken in order.
    for (args, silent_counted) in [
        (&["--cores", "1", "--defer-accept", "5s"][..], 0),
        (&["--cores", "1"][..], 1),
    ] {
        let (proxy, metrics) = Proxy::start_with_metrics(args);
        let accepted = || {
            metric_sum(
                &scrape(&metrics),
                "coresocks_connections_accepted_total",
                &[],
            )
        };
        let _silent = TcpStream::connect(proxy.addr).unwrap();
        // One core takes its accept queue in order: once a client that
        // connected later is served, the silent one was accepted too,
        // unless TCP_DEFER_ACCEPT kept it out of the queue.
        proxy.assert_serves(&echo);
        assert_eq!(accepted(), silent_counted + 1, "args {args:?}");
    }
}

/// The buffer sizes reach the client socket (through the listener) and the
/// target socket: `ss` shows the kernel's doubled SO_RCVBUF as `rb`.
#[test]
fn socket_buffers_apply_to_both_sides_of_a_tunnel() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[
        "--socket-receive-buffer",
        "200000",
        "--socket-send-buffer",
        "100000",
    ]);
    let target = echo.target();
    let mut tunnel = proxy.connect(&target).unwrap();
    tunnel.write_all(b"x").unwrap();
    let echo_port = echo.addr.port();
    let proxy_port = proxy.addr.port();
    // The proxy's end toward the target (dport = echo) and toward the
    // client (sport = proxy).
    for filter in [
        format!("dport = :{echo_port}"),
        format!("sport = :{proxy_port}"),
    ] {
        let text = ss_established("nm", &filter);
        assert!(text.contains("rb400000"), "{filter}: {text}");
        assert!(text.contains("tb200000"), "{filter}: {text}");
    }
    drop(tunnel);
    proxy.assert_serves(&echo);
}

/// Each side gets its own congestion control: the client socket through
/// the listener it was accepted from, the target socket before its
/// connect. `ss -ti` names the algorithm of each.
#[test]
fn congestion_control_applies_to_each_side_of_a_tunnel() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[
        "--client-congestion",
        "reno",
        "--target-congestion",
        "cubic",
    ]);
    let mut tunnel = proxy.connect(&echo.target()).unwrap();
    tunnel.write_all(b"x").unwrap();
    // The proxy's end toward the client (sport = proxy) and toward the
    // target (dport = echo).
    assert_eq!(
        congestion_of(&format!("sport = :{}", proxy.addr.port())),
        "reno"
    );
    assert_eq!(
        congestion_of(&format!("dport = :{}", echo.addr.port())),
        "cubic"
    );
    drop(tunnel);
    proxy.assert_serves(&echo);
}
