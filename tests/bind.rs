//! BIND end to end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::common::*;
use coresocks::client::{handshake_blocking, read_reply, ClientError};
use coresocks::proto::{Command, ReplyCode, TargetAddr};

fn bind_request(proxy: &Proxy, expected_peer: &str) -> (TcpStream, SocketAddr) {
    let mut control = proxy.raw();
    let bound = handshake_blocking(
        &mut control,
        Command::Bind,
        &TargetAddr::Ip(expected_peer.parse().unwrap()),
        None,
    )
    .expect("first BIND reply");
    let TargetAddr::Ip(listen) = bound else {
        panic!("{bound:?}")
    };
    assert!(
        !listen.ip().is_unspecified() && listen.port() != 0,
        "{listen}"
    );
    (control, listen)
}

fn second_reply(control: &mut TcpStream) -> Result<TargetAddr, ClientError> {
    let mut s = futures_lite::io::AssertAsync::new(control);
    futures_lite::future::block_on(read_reply(&mut s))
}

fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&source.parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.connect(&to.into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Both ways BIND waits: its listener and the incoming connection on the
/// core's ring (the default), and on glommio (`--event-ring off`).
#[test]
fn two_replies_then_data_both_ways() {
    for flags in [&[][..], &["--event-ring", "off"]] {
        let proxy = Proxy::start(flags);
        let (mut control, listen) = bind_request(&proxy, "127.0.0.1:0");
        let mut incoming = connect_from("127.0.0.1:0", listen);
        let peer = second_reply(&mut control).unwrap();
        assert_eq!(
            peer,
            TargetAddr::Ip(incoming.local_addr().unwrap()),
            "second reply names the peer ({flags:?})"
        );
        incoming.write_all(b"from the peer").unwrap();
        let mut buf = [0u8; 13];
        control.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"from the peer");
        control.write_all(b"from the client").unwrap();
        let mut buf = [0u8; 15];
        incoming.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"from the client");
        // Bulk, to exercise the relay engine under BIND too.
        let data = pattern(4 << 20, 11);
        control.write_all(&data).unwrap();
        control.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_to_end(&mut incoming) == data, "{flags:?}");
        drop(incoming);
        proxy.wait_for_log(&["cmd=bind", "end=closed"]);
    }
}

#[test]
fn only_the_named_host_may_connect() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&[]);
    let (mut control, listen) = bind_request(&proxy, "127.0.0.2:0");
    let _wrong = connect_from("127.0.0.1:0", listen);
    let err = second_reply(&mut control).unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(ReplyCode::NotAllowed)),
        "{err}"
    );
    assert!(closed_without_data(&mut control));
    proxy.wait_for_log(&["cmd=bind", "end=bind-wrong-peer"]);

    let (mut control, listen) = bind_request(&proxy, "127.0.0.2:0");
    let right = connect_from("127.0.0.2:0", listen);
    let peer = second_reply(&mut control).unwrap();
    assert_eq!(peer, TargetAddr::Ip(right.local_addr().unwrap()));
    proxy.assert_serves(&echo);
}

#[test]
fn no_connection_within_the_timeout_is_a_failure_reply() {
    let echo = echo_server("127.0.0.1:0");
    let proxy = Proxy::start(&["--bind-timeout", "1s"]);
    let (mut control, listen) = bind_request(&proxy, "127.0.0.1:0");
    let err = second_reply(&mut control).unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(ReplyCode::GeneralFailure)),
        "{err}"
    );
    assert!(closed_without_data(&mut control));
    proxy.wait_for_log(&["cmd=bind", "end=bind-timeout"]);
    // The listening port is closed with the session.
    assert!(TcpStream::connect(listen).is_err());
    proxy.assert_serves(&echo);
}

#[test]
fn the_egress_policy_judges_the_named_peer_and_the_one_that_connects() {
    let echo = echo_server("127.0.0.1:0");
    // Only 127.0.0.1 is open: 127.0.0.2 stays private, denied.
    let proxy = Proxy::start(&["--allow", "127.0.0.1"]);
    let mut control = proxy.raw();
    let r = handshake_blocking(
        &mut control,
        Command::Bind,
        &TargetAddr::Ip("127.0.0.2:0".parse().unwrap()),
        None,
    );
    assert!(
        matches!(r, Err(ClientError::Rejected(ReplyCode::NotAllowed))),
        "{r:?}"
    );
    proxy.wait_for_log(&["cmd=bind", "target=127.0.0.2:0", "rule=private"]);

    // Any peer may connect (0.0.0.0), but one from a denied address is
    // reset and the second reply refuses it.
    let (mut control, listen) = bind_request(&proxy, "0.0.0.0:0");
    let mut denied = connect_from("127.0.0.2:0", listen);
    let err = second_reply(&mut control).unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(ReplyCode::NotAllowed)),
        "{err}"
    );
    assert!(closed_without_data(&mut denied));
    proxy.wait_for_log(&["cmd=bind", "resolved=127.0.0.2", "rule=private"]);

    let (mut control, listen) = bind_request(&proxy, "0.0.0.0:0");
    let allowed = connect_from("127.0.0.1:0", listen);
    let peer = second_reply(&mut control).unwrap();
    assert_eq!(peer, TargetAddr::Ip(allowed.local_addr().unwrap()));
    proxy.assert_serves(&echo);
}
