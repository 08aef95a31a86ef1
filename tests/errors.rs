//! Every reply code producible on loopback, and bad input. After each, a
//! fresh client must be served at once.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use coresocks::client::ClientError;
use coresocks::proto::{ReplyCode, TargetAddr};

/// The reply to a raw request after a no-auth greeting.
fn reply_to_request(proxy: &Proxy, request: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0x05, 0x01, 0x00];
    bytes.extend_from_slice(request);
    exchange_raw(proxy, &bytes)
}

/// A failure reply with BND 0.0.0.0:0, after the method selection.
fn failure(code: u8) -> Vec<u8> {
    vec![0x05, 0x00, 0x05, code, 0x00, 0x01, 0, 0, 0, 0, 0, 0]
}

#[test]
fn refused_port_gets_0x05() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let err = proxy.connect(&TargetAddr::Ip(closed_port())).unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(ReplyCode::ConnectionRefused)),
        "{err}"
    );
    proxy.wait_for_log(&["reply=connection-refused", "end=connect-failed"]);
    proxy.assert_serves(&echo);
}

#[test]
fn refused_port_reply_is_byte_exact() {
    let proxy = Proxy::start(&[]);
    let port = closed_port().port().to_be_bytes();
    let got = reply_to_request(
        &proxy,
        &[0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, port[0], port[1]],
    );
    assert_eq!(got, failure(0x05));
}

#[test]
fn unknown_command_gets_0x07() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let got = reply_to_request(&proxy, &[0x05, 0x09, 0x00, 0x01, 127, 0, 0, 1, 0, 80]);
    assert_eq!(got, failure(0x07));
    proxy.wait_for_log(&["reply=command-not-supported", "end=bad-request"]);
    proxy.assert_serves(&echo);
}

#[test]
fn unknown_address_type_gets_0x08() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let got = reply_to_request(&proxy, &[0x05, 0x01, 0x00, 0x05, 1, 2, 3, 4, 0, 80]);
    assert_eq!(got, failure(0x08));
    proxy.assert_serves(&echo);
}

#[test]
fn unresolvable_name_gets_0x04() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--resolve-timeout", "3s"]);
    let target = TargetAddr::domain("no-such-host.invalid", 80).unwrap();
    let err = proxy.connect(&target).unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(ReplyCode::HostUnreachable)),
        "{err}"
    );
    proxy.wait_for_log(&["target=no-such-host.invalid:80", "reply=host-unreachable"]);
    proxy.assert_serves(&echo);
}

#[test]
fn zero_length_domain_gets_0x04() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let got = reply_to_request(&proxy, &[0x05, 0x01, 0x00, 0x03, 0x00, 0, 80]);
    assert_eq!(got, failure(0x04));
    proxy.assert_serves(&echo);
}

#[test]
fn oversized_domain_gets_0x04() {
    // 255 bytes is the most the length byte allows and more than DNS does.
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let mut req = vec![0x05, 0x01, 0x00, 0x03, 255];
    req.extend(std::iter::repeat_n(b'a', 255));
    req.extend_from_slice(&[0, 80]);
    let got = reply_to_request(&proxy, &req);
    assert_eq!(got, failure(0x04));
    proxy.assert_serves(&echo);
}

#[test]
fn domain_with_nul_byte_gets_0x04() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let got = reply_to_request(&proxy, &[0x05, 0x01, 0x00, 0x03, 3, b'a', 0, b'b', 0, 80]);
    assert_eq!(got, failure(0x04));
    proxy.assert_serves(&echo);
}

#[test]
fn request_with_wrong_version_gets_general_failure() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let got = reply_to_request(&proxy, &[0x04, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0, 80]);
    assert_eq!(got, failure(0x01));
    proxy.assert_serves(&echo);
}

#[test]
fn no_acceptable_method_gets_0xff() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    // Offers GSSAPI only.
    assert_eq!(exchange_raw(&proxy, &[0x05, 0x01, 0x01]), [0x05, 0xFF]);
    proxy.wait_for_log(&["end=no-acceptable-method"]);
    proxy.assert_serves(&echo);
}

#[test]
fn zero_methods_gets_0xff() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    assert_eq!(exchange_raw(&proxy, &[0x05, 0x00]), [0x05, 0xFF]);
    proxy.assert_serves(&echo);
}

#[test]
fn wrong_version_greeting_is_closed_without_reply() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    // A SOCKS4 CONNECT.
    assert_eq!(
        exchange_raw(&proxy, &[0x04, 0x01, 0x00, 0x50, 127, 0, 0, 1, 0]),
        b""
    );
    proxy.wait_for_log(&["end=bad-request"]);
    proxy.assert_serves(&echo);
}

#[test]
fn garbage_is_closed_without_reply() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    assert_eq!(
        exchange_raw(&proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        b""
    );
    assert_eq!(exchange_raw(&proxy, &pattern(4096, 9)), b"" as &[u8]);
    proxy.assert_serves(&echo);
}

#[test]
fn truncated_greeting_then_close_is_handled() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let mut s = proxy.raw();
    s.write_all(&[0x05, 0x03, 0x00]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(out.is_empty(), "{out:?}");
    proxy.wait_for_log(&["end=client-closed"]);
    proxy.assert_serves(&echo);
}

#[test]
fn truncated_request_then_close_is_handled() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    // Greeting, then half an IPv6 request.
    let got = exchange_raw(&proxy, &[0x05, 0x01, 0x00, 0x05, 0x01, 0x00, 0x04, 0, 0, 0]);
    assert_eq!(got, [0x05, 0x00]);
    proxy.assert_serves(&echo);
}

#[test]
fn slow_handshake_is_dropped_at_the_timeout() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--handshake-timeout", "1500ms"]);
    let mut slow = proxy.raw();
    let started = Instant::now();
    // One byte at a time: a valid greeting would take far longer than the
    // timeout at this pace.
    let mut dropped = false;
    for b in [
        0x05u8, 0x01, 0x00, 0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0, 80,
    ] {
        if slow.write_all(&[b]).is_err() {
            dropped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !dropped {
        // The proxy answered the greeting (2 bytes) and then closed. When
        // bytes of ours were still unread there, its close is a reset, and
        // Linux may then discard the 2 bytes before we read them: what we
        // read is the greeting's reply or a part of it, never more.
        let mut out = Vec::new();
        let _ = slow.read_to_end(&mut out);
        assert!(
            [0x05, 0x00].starts_with(&out),
            "no reply to the request may come after the timeout: {out:02x?}"
        );
    }
    proxy.wait_for_log(&["end=handshake-timeout"]);
    // Others were never held up by the slow client.
    proxy.assert_serves(&echo);
}

#[test]
fn silent_client_is_dropped_at_the_timeout() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--handshake-timeout", "1s"]);
    let mut silent = proxy.raw();
    let started = Instant::now();
    assert!(closed_without_data(&mut silent));
    assert!(started.elapsed() >= Duration::from_millis(900));
    proxy.assert_serves(&echo);
}
