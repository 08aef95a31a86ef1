//! SOCKS4 and SOCKS4a: request (VN, CD, DSTPORT, DSTIP, USERID, NUL[,
//! domain, NUL]) and reply (VN, CD, DSTPORT, DSTIP). The protocol writes
//! reply codes in decimal, and so do these tests.

use std::net::SocketAddrV4;

use super::*;

impl Message for Socks4Request {
    fn exact_from(&self) -> usize {
        // NUL-terminated fields: only the last missing byte is certain.
        encode(self).len() - 1
    }
}

impl Message for Socks4Reply {
    fn exact_from(&self) -> usize {
        // VN and CD are checked before the length is asked for.
        2
    }
}

fn socks4(command: Socks4Command, target: TargetAddr, user_id: &[u8]) -> Socks4Request {
    Socks4Request::new(command, target, user_id.to_vec()).unwrap()
}

fn socks4_reply(code: Socks4ReplyCode, ip: [u8; 4], port: u16) -> Socks4Reply {
    Socks4Reply {
        code,
        addr: SocketAddrV4::new(Ipv4Addr::from(ip), port),
    }
}

// ---------------------------------------------------------------------------
// Codes
// ---------------------------------------------------------------------------

#[test]
fn socks4_command_codes_match_the_protocol() {
    let table = [
        (Socks4Command::Connect, 0x01, "connect"),
        (Socks4Command::Bind, 0x02, "bind"),
    ];
    for (command, byte, name) in table {
        assert_eq!(command as u8, byte);
        assert_eq!(Socks4Command::from_byte(byte), Some(command));
        assert_eq!(command.as_str(), name);
        assert_eq!(command.to_string(), name);
    }
    for byte in (0x00..=0xFF).filter(|b| !(0x01..=0x02).contains(b)) {
        assert_eq!(Socks4Command::from_byte(byte), None, "{byte:#04x}");
    }
    assert_eq!(SOCKS4_VERSION, 0x04);
    assert_eq!(SOCKS4_REPLY_VERSION, 0x00);
}

#[test]
fn socks4_reply_codes_match_the_protocol() {
    let table = [
        (Socks4ReplyCode::Granted, 90, "granted (90)"),
        (Socks4ReplyCode::Rejected, 91, "rejected (91)"),
        (
            Socks4ReplyCode::IdentdUnreachable,
            92,
            "identd-unreachable (92)",
        ),
        (Socks4ReplyCode::IdentdMismatch, 93, "identd-mismatch (93)"),
    ];
    for (code, byte, shown) in table {
        assert_eq!(code as u8, byte);
        assert_eq!(Socks4ReplyCode::from_byte(byte), Some(code));
        assert_eq!(code.to_string(), shown);
    }
    for byte in (0..=255u8).filter(|b| !(90..=93).contains(b)) {
        assert_eq!(Socks4ReplyCode::from_byte(byte), None, "{byte}");
    }
}

// ---------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------

fn socks4_request_cases() -> Vec<(Socks4Request, Vec<u8>)> {
    let long_user = vec![b'u'; 255];
    let long_name = "d".repeat(255);
    vec![
        // The protocol's own example shape: CONNECT, port, IP, USERID, NUL.
        (
            socks4(Socks4Command::Connect, v4(192, 0, 2, 1, 80), b"fred"),
            cat(&[&[0x04, 0x01, 0x00, 0x50, 192, 0, 2, 1], b"fred", &[0x00]]),
        ),
        // An empty USERID is the NUL alone.
        (
            socks4(Socks4Command::Bind, v4(10, 0, 0, 1, 0x1234), b""),
            vec![0x04, 0x02, 0x12, 0x34, 10, 0, 0, 1, 0x00],
        ),
        // 0.0.0.0 is an address, not the 4a marker (x must be non-zero).
        (
            socks4(Socks4Command::Connect, v4(0, 0, 0, 0, 1), b"u"),
            vec![0x04, 0x01, 0x00, 0x01, 0, 0, 0, 0, b'u', 0x00],
        ),
        // The USERID is opaque bytes: not UTF-8 is fine.
        (
            socks4(Socks4Command::Connect, v4(1, 2, 3, 4, 65535), &[0xFF, 0xC3]),
            vec![0x04, 0x01, 0xFF, 0xFF, 1, 2, 3, 4, 0xFF, 0xC3, 0x00],
        ),
        // 4a: DSTIP 0.0.0.1, then the domain name and its NUL.
        (
            socks4(Socks4Command::Connect, domain("example.com", 443), b"fred"),
            cat(&[
                &[0x04, 0x01, 0x01, 0xBB, 0, 0, 0, 1],
                b"fred\0example.com\0",
            ]),
        ),
        (
            socks4(Socks4Command::Bind, domain("b\u{fc}cher.example", 21), b""),
            cat(&[
                &[0x04, 0x02, 0x00, 0x15, 0, 0, 0, 1, 0x00],
                "b\u{fc}cher.example".as_bytes(),
                &[0x00],
            ]),
        ),
        // Both fields at their longest.
        (
            socks4(Socks4Command::Connect, domain(&long_name, 8080), &long_user),
            cat(&[
                &[0x04, 0x01, 0x1F, 0x90, 0, 0, 0, 1],
                &long_user,
                &[0x00],
                long_name.as_bytes(),
                &[0x00],
            ]),
        ),
    ]
}

#[test]
fn socks4_request_encodes_byte_exact_and_decodes_back() {
    for (request, wire) in socks4_request_cases() {
        assert_wire(&request, &wire);
        assert!(wire.len() <= Socks4Request::MAX_LEN);
    }
    assert_eq!(Socks4Request::MAX_LEN, 8 + 256 + 256);
}

#[test]
fn socks4_request_prefix_is_incomplete() {
    for (request, wire) in socks4_request_cases() {
        assert_prefixes_incomplete(&request, &wire);
    }
    assert_incomplete_counts::<Socks4Request>(&[
        (&[], 2),
        (&[0x04], 1),
        // VN and CD are good: the rest of the fixed part.
        (&[0x04, 0x01], 6),
        (&[0x04, 0x01, 0x00, 0x50, 1, 2, 3], 1),
        // The USERID's NUL has not come.
        (&[0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4], 1),
        (&[0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4, b'f'], 1),
        // 4a: the domain has not come, or its NUL has not.
        (&[0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0x00], 1),
        (&[0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0x00, b'a'], 1),
    ]);
}

#[test]
fn socks4_request_leaves_trailing_bytes() {
    for (request, wire) in socks4_request_cases() {
        assert_trailing_untouched(&request, &wire);
    }
}

#[test]
fn socks4a_accepts_any_marker_address_and_reencodes_with_0_0_0_1() {
    for x in [1, 2, 0x7F, 0xFF] {
        let wire = cat(&[&[0x04, 0x01, 0x00, 0x50, 0, 0, 0, x], b"\0a.example\0"]);
        let expected = socks4(Socks4Command::Connect, domain("a.example", 80), b"");
        assert_eq!(
            Socks4Request::decode(&wire),
            Ok(Decoded::Complete(expected.clone(), wire.len())),
            "0.0.0.{x}"
        );
        assert_eq!(&encode(&expected)[4..8], &[0, 0, 0, 1]);
    }
}

#[test]
fn socks4_request_accessors_give_the_parts() {
    let request = socks4(Socks4Command::Bind, domain("example.com", 21), b"ann");
    assert_eq!(request.command(), Socks4Command::Bind);
    assert_eq!(request.target(), &domain("example.com", 21));
    assert_eq!(request.user_id(), b"ann");
    assert_eq!(
        request.into_parts(),
        (
            Socks4Command::Bind,
            domain("example.com", 21),
            b"ann".to_vec()
        )
    );
}

#[test]
fn rejects_socks4_request_with_wrong_version() {
    // 0x05 is SOCKS5; 0x00 is a reply's VN, never a request's.
    for ver in [0x00, 0x01, 0x05, 0xFF] {
        assert_rejects::<Socks4Request>(&[ver, 0x01], ProtoError::UnsupportedSocks4Version(ver));
    }
}

#[test]
fn rejects_socks4_request_with_unknown_command_after_two_bytes() {
    // 0x03 is SOCKS5's UDP ASSOCIATE, which SOCKS4 does not have.
    for cd in [0x00, 0x03, 0x5A, 0xFF] {
        assert_rejects::<Socks4Request>(&[0x04, cd], ProtoError::UnsupportedSocks4Command(cd));
    }
}

#[test]
fn rejects_overlong_socks4_user_id() {
    let header = [0x04, 0x01, 0x00, 0x50, 1, 2, 3, 4];
    // 255 bytes without a NUL can still end with one.
    let at_limit = cat(&[&header, &[b'u'; 255]]);
    assert_eq!(Socks4Request::decode(&at_limit), Ok(Decoded::Incomplete(1)));
    // The 256th byte is not a NUL: the field can no longer fit.
    assert_rejects::<Socks4Request>(
        &cat(&[&header, &[b'u'; 256]]),
        ProtoError::Socks4UserIdTooLong,
    );
    assert_rejects::<Socks4Request>(
        &cat(&[&header, &[b'u'; 300], &[0x00]]),
        ProtoError::Socks4UserIdTooLong,
    );
}

#[test]
fn rejects_overlong_socks4a_domain() {
    let header = [0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, b'u', 0x00];
    assert_eq!(
        Socks4Request::decode(&cat(&[&header, &[b'd'; 255]])),
        Ok(Decoded::Incomplete(1))
    );
    assert_rejects::<Socks4Request>(
        &cat(&[&header, &[b'd'; 256]]),
        ProtoError::Socks4DomainTooLong,
    );
}

#[test]
fn rejects_socks4a_domain_the_socks5_path_would_reject() {
    let header = [0x04, 0x01, 0x00, 0x50, 0, 0, 0, 1, 0x00];
    assert_rejects::<Socks4Request>(&cat(&[&header, &[0x00]]), ProtoError::EmptyDomain);
    for name in [&[0xFF][..], &[0xC3, 0x28], &[b'a', 0xE2, 0x82]] {
        assert_rejects::<Socks4Request>(&cat(&[&header, name, &[0x00]]), ProtoError::InvalidDomain);
    }
}

#[test]
fn socks4_request_constructor_refuses_what_cannot_be_encoded() {
    let connect = Socks4Command::Connect;
    let table: Vec<(TargetAddr, Vec<u8>, ProtoError)> = vec![
        (v6("::1", 80), vec![], ProtoError::Socks4Ipv6Target),
        (
            v6("::ffff:192.0.2.1", 80),
            vec![],
            ProtoError::Socks4Ipv6Target,
        ),
        (
            v4(0, 0, 0, 1, 80),
            vec![],
            ProtoError::Socks4aMarkerAddress(Ipv4Addr::new(0, 0, 0, 1)),
        ),
        (
            v4(0, 0, 0, 255, 80),
            vec![],
            ProtoError::Socks4aMarkerAddress(Ipv4Addr::new(0, 0, 0, 255)),
        ),
        (
            v4(1, 2, 3, 4, 80),
            vec![b'u'; 256],
            ProtoError::Socks4UserIdTooLong,
        ),
        (
            v4(1, 2, 3, 4, 80),
            b"a\0b".to_vec(),
            ProtoError::Socks4UserIdContainsNul,
        ),
        (
            domain(&"d".repeat(256), 80),
            vec![],
            ProtoError::Socks4DomainTooLong,
        ),
        (domain("", 80), vec![], ProtoError::EmptyDomain),
        (domain("a\0b", 80), vec![], ProtoError::InvalidDomain),
    ];
    for (target, user_id, err) in table {
        assert_eq!(
            Socks4Request::new(connect, target.clone(), user_id),
            Err(err),
            "{target:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Reply
// ---------------------------------------------------------------------------

fn socks4_reply_cases() -> Vec<(Socks4Reply, Vec<u8>)> {
    vec![
        (
            socks4_reply(Socks4ReplyCode::Granted, [0, 0, 0, 0], 0),
            vec![0x00, 90, 0x00, 0x00, 0, 0, 0, 0],
        ),
        (
            socks4_reply(Socks4ReplyCode::Rejected, [192, 0, 2, 1], 80),
            vec![0x00, 91, 0x00, 0x50, 192, 0, 2, 1],
        ),
        (
            socks4_reply(Socks4ReplyCode::IdentdUnreachable, [1, 2, 3, 4], 0x1234),
            vec![0x00, 92, 0x12, 0x34, 1, 2, 3, 4],
        ),
        // After BIND: where the server listens.
        (
            socks4_reply(Socks4ReplyCode::IdentdMismatch, [255; 4], 65535),
            vec![0x00, 93, 0xFF, 0xFF, 255, 255, 255, 255],
        ),
    ]
}

#[test]
fn socks4_reply_encodes_byte_exact_and_decodes_back() {
    for (reply, wire) in socks4_reply_cases() {
        assert_wire(&reply, &wire);
        assert_eq!(wire.len(), Socks4Reply::LEN);
    }
}

#[test]
fn socks4_reply_prefix_is_incomplete() {
    for (reply, wire) in socks4_reply_cases() {
        assert_prefixes_incomplete(&reply, &wire);
    }
    assert_incomplete_counts::<Socks4Reply>(&[(&[], 2), (&[0x00], 1), (&[0x00, 90], 6)]);
}

#[test]
fn socks4_reply_leaves_trailing_bytes() {
    for (reply, wire) in socks4_reply_cases() {
        assert_trailing_untouched(&reply, &wire);
    }
}

#[test]
fn socks4_reply_accepts_version_4_and_writes_0() {
    let wire = [0x04, 90, 0x00, 0x50, 10, 0, 0, 1];
    let expected = socks4_reply(Socks4ReplyCode::Granted, [10, 0, 0, 1], 80);
    assert_eq!(
        Socks4Reply::decode(&wire),
        Ok(Decoded::Complete(expected, 8))
    );
    assert_eq!(encode(&expected)[0], 0x00);
}

#[test]
fn rejects_socks4_reply_with_wrong_version_or_unknown_code() {
    // 0x05 is a SOCKS5 server answering a SOCKS4 client.
    for ver in [0x01, 0x05, 0xFF] {
        assert_rejects::<Socks4Reply>(&[ver, 90], ProtoError::UnsupportedSocks4Version(ver));
    }
    // 0 is SOCKS5's success code, a likely mix-up.
    for cd in [0, 89, 94, 255] {
        assert_rejects::<Socks4Reply>(&[0x00, cd], ProtoError::UnknownSocks4ReplyCode(cd));
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

#[test]
fn socks4_error_messages_say_what_was_wrong() {
    let table = [
        (
            ProtoError::UnsupportedSocks4Version(0x05),
            "unsupported SOCKS4 version 0x05 (a request says 0x04, a reply 0x00)",
        ),
        (
            ProtoError::UnsupportedSocks4Command(0x03),
            "unsupported SOCKS4 command 0x03 (0x01 is CONNECT, 0x02 BIND)",
        ),
        (
            ProtoError::UnknownSocks4ReplyCode(0),
            "unknown SOCKS4 reply code 0 (90 to 93 are defined)",
        ),
        (
            ProtoError::Socks4aMarkerAddress(Ipv4Addr::new(0, 0, 0, 7)),
            "0.0.0.7 cannot be a SOCKS4 target: 0.0.0.x (x != 0) announces a SOCKS4a domain name",
        ),
    ];
    for (err, shown) in table {
        assert_eq!(err.to_string(), shown);
        assert_eq!(err.reply_code(), None, "{err:?} has no SOCKS5 reply");
        assert_eq!(err.http_status(), None, "{err:?} is not HTTP");
    }
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// Any target SOCKS4 can carry: IPv4 outside 0.0.0.1..=0.0.0.255, or a
/// domain.
fn arb_socks4_target() -> impl Strategy<Value = TargetAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_filter("0.0.0.x is the 4a marker", |(ip, _)| {
                ip[..3] != [0, 0, 0] || ip[3] == 0
            })
            .prop_map(|(ip, port)| TargetAddr::Ip(SocketAddr::new(
                Ipv4Addr::from(ip).into(),
                port
            ))),
        (arb_domain_name(), any::<u16>()).prop_map(|(name, port)| TargetAddr::Domain(name, port)),
    ]
}

pub(super) fn arb_socks4_request() -> impl Strategy<Value = Socks4Request> {
    let command = prop_oneof![Just(Socks4Command::Connect), Just(Socks4Command::Bind)];
    let user_id = prop::collection::vec(1..=255u8, 0..=255);
    (command, arb_socks4_target(), user_id).prop_map(|(command, target, user_id)| {
        Socks4Request::new(command, target, user_id).unwrap()
    })
}

pub(super) fn arb_socks4_reply() -> impl Strategy<Value = Socks4Reply> {
    (90..=93u8, any::<[u8; 4]>(), any::<u16>()).prop_map(|(code, ip, port)| Socks4Reply {
        code: Socks4ReplyCode::from_byte(code).unwrap(),
        addr: SocketAddrV4::new(ip.into(), port),
    })
}

proptest! {
    #[test]
    fn socks4_request_round_trips(request in arb_socks4_request()) {
        check_round_trip(&request)?;
    }

    #[test]
    fn socks4_reply_round_trips(reply in arb_socks4_reply()) {
        check_round_trip(&reply)?;
    }

    /// What `new` accepts always encodes; what it refuses never gets in.
    #[test]
    fn socks4_constructor_accepts_exactly_the_encodable(
        target in arb_target(),
        user_id in prop::collection::vec(any::<u8>(), 0..=300),
    ) {
        let encodable = match &target {
            TargetAddr::Ip(SocketAddr::V4(sa)) => {
                let o = sa.ip().octets();
                o[..3] != [0, 0, 0] || o[3] == 0
            }
            TargetAddr::Ip(SocketAddr::V6(_)) => false,
            TargetAddr::Domain(..) => true,
        } && user_id.len() <= 255 && !user_id.contains(&0);
        let made = Socks4Request::new(Socks4Command::Connect, target, user_id);
        prop_assert_eq!(made.is_ok(), encodable, "{:?}", made);
        if let Ok(request) = made {
            check_round_trip(&request)?;
        }
    }
}
