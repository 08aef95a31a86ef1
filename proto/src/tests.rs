//! Tests for the SOCKS5 (RFC 1928) and RFC 1929 codec.
//!
//! Sections: shared helpers; one section per message (target address,
//! greeting and method set, method selection, username/password request and
//! status, request, reply, UDP header); errors; property tests; RFC 1961
//! framing. SOCKS4/4a and HTTP CONNECT have their own files under `tests/`,
//! using the helpers here.
//! Protocol numbers are written in hex, as the RFCs write them.

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;

use super::*;

mod http_connect;
mod socks4;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One message type as the tests see it: its codec, and from which
/// prefix length the decoder can know exactly how many bytes are still
/// missing.
trait Message: Codec + Debug + Clone + PartialEq {
    /// From this prefix length on, `Incomplete(k)` must be exactly the number
    /// of bytes left; before it the format only allows a lower bound.
    fn exact_from(&self) -> usize;
}

/// A target address's length is known after ATYP for IP addresses and after
/// ATYP and LEN for a domain.
fn addr_exact_from(addr: &TargetAddr) -> usize {
    match addr {
        TargetAddr::Ip(_) => 1,
        TargetAddr::Domain(..) => 2,
    }
}

impl Message for TargetAddr {
    fn exact_from(&self) -> usize {
        addr_exact_from(self)
    }
}

impl Message for Greeting {
    fn exact_from(&self) -> usize {
        2
    }
}

impl Message for MethodSelection {
    fn exact_from(&self) -> usize {
        0
    }
}

impl Message for UserPassRequest {
    fn exact_from(&self) -> usize {
        // VER, ULEN, UNAME, PLEN.
        3 + self.username.len()
    }
}

impl Message for UserPassStatus {
    fn exact_from(&self) -> usize {
        0
    }
}

impl Message for Request {
    fn exact_from(&self) -> usize {
        3 + addr_exact_from(&self.target)
    }
}

impl Message for Reply {
    fn exact_from(&self) -> usize {
        3 + addr_exact_from(&self.bound)
    }
}

impl Message for GssMessage {
    fn exact_from(&self) -> usize {
        // VER, MTYP, LEN; an abort's length is known after MTYP.
        if self.kind == GssMessageType::Abort {
            2
        } else {
            4
        }
    }
}

impl Message for UdpHeader {
    fn exact_from(&self) -> usize {
        3 + addr_exact_from(&self.target)
    }
}

fn encode<M: Message>(msg: &M) -> Vec<u8> {
    let mut out = Vec::new();
    msg.encode(&mut out);
    out
}

fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> TargetAddr {
    TargetAddr::Ip(SocketAddr::new(Ipv4Addr::new(a, b, c, d).into(), port))
}

fn v6(ip: &str, port: u16) -> TargetAddr {
    let ip: Ipv6Addr = ip.parse().unwrap();
    TargetAddr::Ip(SocketAddr::new(ip.into(), port))
}

fn domain(name: &str, port: u16) -> TargetAddr {
    TargetAddr::Domain(name.to_owned(), port)
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `msg` encodes to exactly `wire`, and `wire` decodes to `msg` taking every
/// byte.
fn assert_wire<M: Message>(msg: &M, wire: &[u8]) {
    assert_eq!(encode(msg), wire, "encoding of {msg:?}");
    assert_eq!(
        M::decode(wire),
        Ok(Decoded::Complete(msg.clone(), wire.len())),
        "decoding of {wire:02x?}"
    );
}

/// Every strict prefix of the valid encoding `wire` of `msg` is
/// `Incomplete(k)` with `1 <= k <= missing`, and `k == missing` once the
/// prefix holds the length-determining fields.
fn assert_prefixes_incomplete<M: Message>(msg: &M, wire: &[u8]) {
    for len in 0..wire.len() {
        let missing = wire.len() - len;
        match M::decode(&wire[..len]) {
            Ok(Decoded::Incomplete(k)) => {
                assert!(
                    (1..=missing).contains(&k),
                    "prefix of {len} of {wire:02x?}: Incomplete({k}), {missing} missing"
                );
                if len >= msg.exact_from() {
                    assert_eq!(k, missing, "prefix of {len} of {wire:02x?}");
                }
            }
            other => panic!("prefix of {len} of {wire:02x?} gave {other:?}"),
        }
    }
}

/// Bytes after a complete message are not consumed and do not change it.
fn assert_trailing_untouched<M: Message>(msg: &M, wire: &[u8]) {
    for tail in [&[0x00][..], &[0x05, 0x01, 0x00], &[0xFF; 300]] {
        assert_eq!(
            M::decode(&cat(&[wire, tail])),
            Ok(Decoded::Complete(msg.clone(), wire.len())),
            "{wire:02x?} followed by {} bytes",
            tail.len()
        );
    }
}

/// `buf` is rejected with `err`, and no bytes that follow change that.
fn assert_rejects<M: Message>(buf: &[u8], err: ProtoError) {
    assert_eq!(M::decode(buf), Err(err.clone()), "decoding of {buf:02x?}");
    assert_eq!(
        M::decode(&cat(&[buf, &[0x00; 300]])),
        Err(err),
        "decoding of {buf:02x?} followed by more bytes"
    );
}

/// Prefixes whose `Incomplete` count the format pins down, as a table of
/// (bytes so far, bytes the decoder must ask for).
fn assert_incomplete_counts<M: Message>(table: &[(&[u8], usize)]) {
    for &(buf, need) in table {
        assert_eq!(
            M::decode(buf),
            Ok(Decoded::Incomplete(need)),
            "decoding of {buf:02x?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Decoded
// ---------------------------------------------------------------------------

#[test]
fn decoded_complete_gives_value_and_length_only_when_complete() {
    assert_eq!(Decoded::Complete('x', 3).complete(), Some(('x', 3)));
    assert_eq!(Decoded::<char>::Incomplete(2).complete(), None);
}

// ---------------------------------------------------------------------------
// TargetAddr (ATYP, ADDR, PORT)
// ---------------------------------------------------------------------------

fn target_addr_cases() -> Vec<(TargetAddr, Vec<u8>)> {
    let long = "a".repeat(255);
    vec![
        (v4(127, 0, 0, 1, 80), vec![0x01, 127, 0, 0, 1, 0x00, 0x50]),
        (v4(0, 0, 0, 0, 0), vec![0x01, 0, 0, 0, 0, 0x00, 0x00]),
        (
            v4(255, 255, 255, 255, 65535),
            vec![0x01, 255, 255, 255, 255, 0xFF, 0xFF],
        ),
        // Port is in network order: 0x1234 is 0x12 then 0x34.
        (v4(10, 1, 2, 3, 0x1234), vec![0x01, 10, 1, 2, 3, 0x12, 0x34]),
        (
            v6("::1", 443),
            cat(&[&[0x04], &[0; 15], &[0x01], &[0x01, 0xBB]]),
        ),
        (
            v6("2001:db8::ff00:42:8329", 8080),
            vec![
                0x04, 0x20, 0x01, 0x0D, 0xB8, 0, 0, 0, 0, 0, 0, 0xFF, 0x00, 0x00, 0x42, 0x83, 0x29,
                0x1F, 0x90,
            ],
        ),
        (
            domain("example.com", 443),
            cat(&[&[0x03, 0x0B], b"example.com", &[0x01, 0xBB]]),
        ),
        (domain("a", 1), vec![0x03, 0x01, b'a', 0x00, 0x01]),
        (
            domain("b\u{fc}cher.example", 80),
            cat(&[
                &[0x03, 0x0F],
                "b\u{fc}cher.example".as_bytes(),
                &[0x00, 0x50],
            ]),
        ),
        (
            domain(&long, 65535),
            cat(&[&[0x03, 0xFF], long.as_bytes(), &[0xFF, 0xFF]]),
        ),
    ]
}

#[test]
fn target_addr_encodes_byte_exact_and_decodes_back() {
    for (addr, wire) in target_addr_cases() {
        assert_wire(&addr, &wire);
        assert_eq!(addr.encoded_len(), wire.len(), "encoded_len of {addr:?}");
    }
}

#[test]
fn target_addr_prefix_is_incomplete() {
    for (addr, wire) in target_addr_cases() {
        assert_prefixes_incomplete(&addr, &wire);
    }
    assert_incomplete_counts::<TargetAddr>(&[
        (&[], 1),
        (&[0x01], 6),
        (&[0x01, 127, 0, 0, 1, 0x00], 1),
        (&[0x04], 18),
        (&[0x03], 1),
        (&[0x03, 0x0B], 13),
        (&[0x03, 0xFF], 257),
    ]);
}

#[test]
fn target_addr_leaves_trailing_bytes() {
    for (addr, wire) in target_addr_cases() {
        assert_trailing_untouched(&addr, &wire);
    }
}

#[test]
fn target_addr_encode_appends_to_buffer() {
    let mut out = vec![0xAA, 0xBB];
    v4(1, 2, 3, 4, 5).encode(&mut out);
    assert_eq!(out, [0xAA, 0xBB, 0x01, 1, 2, 3, 4, 0x00, 0x05]);
}

#[test]
fn rejects_unsupported_address_type() {
    // ATYP alone is enough to reject: no address bytes are waited for.
    for atyp in [0x00, 0x02, 0x05, 0x80, 0xFF] {
        assert_rejects::<TargetAddr>(&[atyp], ProtoError::UnsupportedAddressType(atyp));
    }
}

#[test]
fn rejects_zero_length_domain() {
    assert_rejects::<TargetAddr>(&[0x03, 0x00], ProtoError::EmptyDomain);
    assert_rejects::<TargetAddr>(&[0x03, 0x00, 0x00, 0x50], ProtoError::EmptyDomain);
}

#[test]
fn rejects_domain_that_is_not_utf8() {
    let names: [&[u8]; 6] = [
        &[0xFF],
        &[0x80],             // lone continuation byte
        &[0xC3, 0x28],       // bad continuation
        &[0xC0, 0x80],       // overlong NUL
        &[0xED, 0xA0, 0x80], // UTF-16 surrogate
        &[b'a', 0xE2, 0x82], // truncated sequence
    ];
    for name in names {
        let wire = cat(&[&[0x03, name.len() as u8], name, &[0x00, 0x50]]);
        assert_rejects::<TargetAddr>(&wire, ProtoError::InvalidDomain);
    }
}

#[test]
fn rejects_domain_containing_nul() {
    let names: [&[u8]; 3] = [b"\0", b"a\0b", b"example.com\0"];
    for name in names {
        let wire = cat(&[&[0x03, name.len() as u8], name, &[0x00, 0x50]]);
        assert_rejects::<TargetAddr>(&wire, ProtoError::InvalidDomain);
    }
}

#[test]
fn domain_constructor_checks_like_the_decoder() {
    let long = "x".repeat(255);
    let too_long = "x".repeat(256);
    let cases: [(&str, Result<TargetAddr, ProtoError>); 5] = [
        ("example.com", Ok(domain("example.com", 53))),
        (&long, Ok(domain(&long, 53))),
        ("", Err(ProtoError::EmptyDomain)),
        ("a\0b", Err(ProtoError::InvalidDomain)),
        (&too_long, Err(ProtoError::InvalidDomain)),
    ];
    for (name, expected) in cases {
        assert_eq!(TargetAddr::domain(name, 53), expected, "domain({name:?})");
    }
}

#[test]
fn encode_cuts_overlong_domain_to_255_bytes() {
    let addr = domain(&"a".repeat(300), 80);
    let wire = encode(&addr);
    assert_eq!(
        wire,
        cat(&[&[0x03, 0xFF], "a".repeat(255).as_bytes(), &[0x00, 0x50]])
    );
    assert_eq!(addr.encoded_len(), wire.len());
}

#[test]
fn target_addr_port_display_and_from_socket_addr() {
    let sa: SocketAddr = "[2001:db8::1]:1080".parse().unwrap();
    let cases = [
        (v4(192, 0, 2, 1, 80), 80, "192.0.2.1:80"),
        (TargetAddr::from(sa), 1080, "[2001:db8::1]:1080"),
        (domain("example.com", 443), 443, "example.com:443"),
    ];
    for (addr, port, shown) in cases {
        assert_eq!(addr.port(), port);
        assert_eq!(addr.to_string(), shown);
    }
    assert_eq!(TargetAddr::from(sa), TargetAddr::Ip(sa));
}

// ---------------------------------------------------------------------------
// Greeting (VER, NMETHODS, METHODS) and MethodSet
// ---------------------------------------------------------------------------

#[test]
fn method_constants_match_rfc1928() {
    assert_eq!(Method::NO_AUTH, Method(0x00));
    assert_eq!(Method::GSSAPI, Method(0x01));
    assert_eq!(Method::USER_PASS, Method(0x02));
    assert_eq!(Method::NO_ACCEPTABLE, Method(0xFF));
    assert_eq!(SOCKS_VERSION, 0x05);
}

#[test]
fn method_set_tracks_membership_across_all_words() {
    // One code at each edge of each 64-bit word.
    let codes = [0x00, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFF];
    let mut set = MethodSet::default();
    assert!(set.is_empty());
    assert_eq!(set.len(), 0);
    for (i, &code) in codes.iter().enumerate() {
        set.insert(Method(code));
        set.insert(Method(code));
        assert_eq!(set.len(), i + 1, "after inserting {code:#04x} twice");
    }
    assert!(!set.is_empty());
    for code in 0..=255u8 {
        assert_eq!(
            set.contains(Method(code)),
            codes.contains(&code),
            "{code:#04x}"
        );
    }
    let listed: Vec<u8> = set.iter().map(|m| m.0).collect();
    assert_eq!(listed, codes, "iter lists codes in ascending order");
}

#[test]
fn method_set_holds_all_256_codes() {
    let set: MethodSet = (0..=255u8).map(Method).collect();
    assert_eq!(set.len(), 256);
    assert!(set.iter().map(|m| m.0).eq(0..=255u8));
}

fn greeting_cases() -> Vec<(Greeting, Vec<u8>)> {
    let all_but_ff: Vec<Method> = (0x00..=0xFE).map(Method).collect();
    vec![
        (Greeting::new(&[Method::NO_AUTH]), vec![0x05, 0x01, 0x00]),
        (Greeting::new(&[Method::GSSAPI]), vec![0x05, 0x01, 0x01]),
        (
            Greeting::new(&[Method::NO_AUTH, Method::USER_PASS]),
            vec![0x05, 0x02, 0x00, 0x02],
        ),
        // Encoded in the order given: the client's preference.
        (
            Greeting::new(&[Method(0xFE), Method::USER_PASS, Method(0x80)]),
            vec![0x05, 0x03, 0xFE, 0x02, 0x80],
        ),
        (
            Greeting::new(&all_but_ff),
            cat(&[&[0x05, 0xFF], &(0x00..=0xFE).collect::<Vec<u8>>()]),
        ),
    ]
}

#[test]
fn greeting_encodes_byte_exact_and_decodes_back() {
    for (greeting, wire) in greeting_cases() {
        assert_wire(&greeting, &wire);
    }
}

#[test]
fn greeting_decodes_every_offered_method() {
    let (greeting, n) = Greeting::decode(&[0x05, 0x03, 0x00, 0x02, 0x80])
        .unwrap()
        .complete()
        .unwrap();
    assert_eq!(n, 5);
    let offered: Vec<Method> = greeting.methods.iter().collect();
    assert_eq!(offered, [Method::NO_AUTH, Method::USER_PASS, Method(0x80)]);
    assert!(!greeting.methods.contains(Method::GSSAPI));
}

#[test]
fn greeting_collapses_duplicate_methods_but_consumes_them() {
    let wire = [0x05, 0x04, 0x02, 0x00, 0x02, 0x02];
    assert_eq!(
        Greeting::decode(&wire),
        Ok(Decoded::Complete(
            Greeting::new(&[Method::USER_PASS, Method::NO_AUTH]),
            6
        ))
    );
}

#[test]
fn greeting_prefix_is_incomplete() {
    for (greeting, wire) in greeting_cases() {
        assert_prefixes_incomplete(&greeting, &wire);
    }
    assert_incomplete_counts::<Greeting>(&[
        (&[], 2),
        (&[0x05], 1),
        (&[0x05, 0x03], 3),
        (&[0x05, 0x03, 0x00], 2),
        (&[0x05, 0x03, 0x00, 0x01], 1),
        (&[0x05, 0xFF], 255),
    ]);
}

#[test]
fn greeting_leaves_trailing_bytes() {
    for (greeting, wire) in greeting_cases() {
        assert_trailing_untouched(&greeting, &wire);
    }
}

#[test]
fn rejects_greeting_with_wrong_version() {
    // 0x04 is SOCKS4, 0x01 the RFC 1929 sub-negotiation version.
    for ver in [0x00, 0x01, 0x04, 0x06, 0xFF] {
        assert_rejects::<Greeting>(&[ver, 0x01], ProtoError::UnsupportedVersion(ver));
        assert_rejects::<Greeting>(&[ver, 0x01, 0x00], ProtoError::UnsupportedVersion(ver));
    }
}

#[test]
fn rejects_greeting_without_methods() {
    assert_rejects::<Greeting>(&[0x05, 0x00], ProtoError::NoMethods);
}

#[test]
fn greeting_keeps_the_clients_order_without_duplicates() {
    let wire = [0x05, 0x04, 0x02, 0x01, 0x02, 0x00];
    let (g, n) = Greeting::decode(&wire).unwrap().complete().unwrap();
    assert_eq!(n, wire.len());
    assert_eq!(
        g.offered,
        [Method::USER_PASS, Method::GSSAPI, Method::NO_AUTH]
    );
    assert_eq!(g.methods.len(), 3);
    assert_eq!(encode(&g), [0x05, 0x03, 0x02, 0x01, 0x00]);
    // The server takes the first acceptable method the client lists.
    let both = [Method::GSSAPI, Method::USER_PASS];
    assert_eq!(g.first_of(&both), Some(Method::USER_PASS));
    let g = Greeting::new(&[Method::GSSAPI, Method::USER_PASS]);
    assert_eq!(g.first_of(&both), Some(Method::GSSAPI));
    assert_eq!(g.first_of(&[Method::NO_AUTH]), None);
}

#[test]
fn greeting_with_empty_set_encodes_zero_methods() {
    let wire = encode(&Greeting::new(&[]));
    assert_eq!(wire, [0x05, 0x00]);
    assert_eq!(Greeting::decode(&wire), Err(ProtoError::NoMethods));
}

#[test]
fn greeting_with_all_256_codes_encodes_255_and_drops_no_acceptable() {
    let all: Vec<Method> = (0..=255u8).map(Method).collect();
    let wire = encode(&Greeting::new(&all));
    assert_eq!(
        wire,
        cat(&[&[0x05, 0xFF], &(0x00..=0xFE).collect::<Vec<u8>>()])
    );
    let (decoded, n) = Greeting::decode(&wire).unwrap().complete().unwrap();
    assert_eq!(n, wire.len());
    assert_eq!(decoded.methods.len(), 255);
    assert!(!decoded.methods.contains(Method::NO_ACCEPTABLE));
}

// ---------------------------------------------------------------------------
// MethodSelection (VER, METHOD)
// ---------------------------------------------------------------------------

fn method_selection_cases() -> Vec<(MethodSelection, Vec<u8>)> {
    vec![
        (MethodSelection(Method::NO_AUTH), vec![0x05, 0x00]),
        (MethodSelection(Method::GSSAPI), vec![0x05, 0x01]),
        (MethodSelection(Method::USER_PASS), vec![0x05, 0x02]),
        (MethodSelection(Method(0x80)), vec![0x05, 0x80]),
        (MethodSelection(Method::NO_ACCEPTABLE), vec![0x05, 0xFF]),
    ]
}

#[test]
fn method_selection_encodes_byte_exact_and_decodes_back() {
    for (selection, wire) in method_selection_cases() {
        assert_wire(&selection, &wire);
        assert_eq!(wire.len(), MethodSelection::LEN);
    }
}

#[test]
fn method_selection_prefix_is_incomplete() {
    for (selection, wire) in method_selection_cases() {
        assert_prefixes_incomplete(&selection, &wire);
    }
    assert_incomplete_counts::<MethodSelection>(&[(&[], 2), (&[0x05], 1)]);
}

#[test]
fn method_selection_leaves_trailing_bytes() {
    for (selection, wire) in method_selection_cases() {
        assert_trailing_untouched(&selection, &wire);
    }
}

#[test]
fn rejects_method_selection_with_wrong_version() {
    for ver in [0x00, 0x01, 0x04, 0xFF] {
        assert_rejects::<MethodSelection>(&[ver, 0x00], ProtoError::UnsupportedVersion(ver));
    }
}

// ---------------------------------------------------------------------------
// UserPassRequest (VER, ULEN, UNAME, PLEN, PASSWD; RFC 1929)
// ---------------------------------------------------------------------------

fn user_pass(username: &[u8], password: &[u8]) -> UserPassRequest {
    UserPassRequest {
        username: username.to_vec(),
        password: password.to_vec(),
    }
}

fn user_pass_cases() -> Vec<(UserPassRequest, Vec<u8>)> {
    let u255 = vec![b'u'; 255];
    let p255 = vec![b'p'; 255];
    vec![
        (
            user_pass(b"user", b"pass"),
            cat(&[&[0x01, 0x04], b"user", &[0x04], b"pass"]),
        ),
        // PLEN = 0: an empty password is allowed.
        (user_pass(b"u", b""), vec![0x01, 0x01, b'u', 0x00]),
        // RFC 1929 fields are opaque octets, not text.
        (
            user_pass(&[0x00, 0xFF], &[0xC3, 0x28, 0x00]),
            vec![0x01, 0x02, 0x00, 0xFF, 0x03, 0xC3, 0x28, 0x00],
        ),
        (
            user_pass(&u255, &p255),
            cat(&[&[0x01, 0xFF], &u255, &[0xFF], &p255]),
        ),
    ]
}

#[test]
fn user_pass_request_encodes_byte_exact_and_decodes_back() {
    assert_eq!(AUTH_VERSION, 0x01);
    for (request, wire) in user_pass_cases() {
        assert_wire(&request, &wire);
    }
}

#[test]
fn user_pass_request_prefix_is_incomplete() {
    for (request, wire) in user_pass_cases() {
        assert_prefixes_incomplete(&request, &wire);
    }
    assert_incomplete_counts::<UserPassRequest>(&[
        (&[], 2),
        (&[0x01], 1),
        // UNAME and PLEN.
        (&[0x01, 0x04], 5),
        (&[0x01, 0x04, b'u', b's', b'e', b'r'], 1),
        (&[0x01, 0x04, b'u', b's', b'e', b'r', 0x04], 4),
        (&[0x01, 0x04, b'u', b's', b'e', b'r', 0x04, b'p'], 3),
    ]);
}

#[test]
fn user_pass_request_leaves_trailing_bytes() {
    for (request, wire) in user_pass_cases() {
        assert_trailing_untouched(&request, &wire);
    }
}

#[test]
fn rejects_user_pass_request_with_wrong_auth_version() {
    // 0x05 is the SOCKS version, a likely client mix-up.
    for ver in [0x00, 0x02, 0x05, 0xFF] {
        assert_rejects::<UserPassRequest>(
            &[ver, 0x01, b'u', 0x00],
            ProtoError::UnsupportedAuthVersion(ver),
        );
    }
}

#[test]
fn rejects_empty_username() {
    // Rejected as soon as ULEN is seen, before any password byte.
    assert_rejects::<UserPassRequest>(&[0x01, 0x00], ProtoError::EmptyUsername);
    assert_rejects::<UserPassRequest>(&[0x01, 0x00, 0x01, b'p'], ProtoError::EmptyUsername);
}

#[test]
fn user_pass_request_encode_cuts_fields_to_255_bytes() {
    let request = user_pass(&[b'u'; 300], &[b'p'; 256]);
    let wire = encode(&request);
    assert_eq!(
        wire,
        cat(&[&[0x01, 0xFF], &[b'u'; 255], &[0xFF], &[b'p'; 255]])
    );
}

#[test]
fn user_pass_request_debug_redacts_password() {
    let shown = format!("{:?}", user_pass(b"alice", b"hunter2"));
    assert!(shown.contains("alice"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

// ---------------------------------------------------------------------------
// UserPassStatus (VER, STATUS; RFC 1929)
// ---------------------------------------------------------------------------

#[test]
fn user_pass_status_encodes_byte_exact_and_decodes_back() {
    assert_wire(&UserPassStatus::SUCCESS, &[0x01, 0x00]);
    assert_wire(&UserPassStatus::FAILURE, &[0x01, 0x01]);
    assert_eq!(
        UserPassStatus::SUCCESS.to_bytes().len(),
        UserPassStatus::LEN
    );
}

#[test]
fn user_pass_status_zero_is_the_only_success() {
    for status in 0..=255u8 {
        let wire = [0x01, status];
        assert_wire(&UserPassStatus(status), &wire);
        let (decoded, _) = UserPassStatus::decode(&wire).unwrap().complete().unwrap();
        assert_eq!(decoded.is_success(), status == 0x00, "STATUS {status:#04x}");
    }
}

#[test]
fn user_pass_status_prefix_is_incomplete() {
    for status in [UserPassStatus::SUCCESS, UserPassStatus::FAILURE] {
        assert_prefixes_incomplete(&status, &status.to_bytes());
    }
    assert_incomplete_counts::<UserPassStatus>(&[(&[], 2), (&[0x01], 1)]);
}

#[test]
fn user_pass_status_leaves_trailing_bytes() {
    for status in [UserPassStatus::SUCCESS, UserPassStatus::FAILURE] {
        assert_trailing_untouched(&status, &status.to_bytes());
    }
}

#[test]
fn rejects_user_pass_status_with_wrong_auth_version() {
    for ver in [0x00, 0x02, 0x05, 0xFF] {
        assert_rejects::<UserPassStatus>(&[ver, 0x00], ProtoError::UnsupportedAuthVersion(ver));
    }
}

// ---------------------------------------------------------------------------
// Request (VER, CMD, RSV, ATYP, DST.ADDR, DST.PORT)
// ---------------------------------------------------------------------------

#[test]
fn command_codes_match_rfc1928() {
    let table = [
        (Command::Connect, 0x01, "connect"),
        (Command::Bind, 0x02, "bind"),
        (Command::UdpAssociate, 0x03, "udp-associate"),
    ];
    for (command, byte, name) in table {
        assert_eq!(command as u8, byte);
        assert_eq!(Command::from_byte(byte), Some(command));
        assert_eq!(command.as_str(), name);
        assert_eq!(command.to_string(), name);
    }
    for byte in (0x00..=0xFF).filter(|b| !(0x01..=0x03).contains(b)) {
        assert_eq!(Command::from_byte(byte), None, "{byte:#04x}");
    }
}

fn request(command: Command, target: TargetAddr) -> Request {
    Request { command, target }
}

fn request_cases() -> Vec<(Request, Vec<u8>)> {
    vec![
        (
            request(Command::Connect, v4(127, 0, 0, 1, 80)),
            vec![0x05, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0x00, 0x50],
        ),
        (
            request(Command::Bind, v6("::1", 443)),
            cat(&[&[0x05, 0x02, 0x00, 0x04], &[0; 15], &[0x01], &[0x01, 0xBB]]),
        ),
        // What a client sends when it does not know its UDP source yet.
        (
            request(Command::UdpAssociate, v4(0, 0, 0, 0, 0)),
            vec![0x05, 0x03, 0x00, 0x01, 0, 0, 0, 0, 0x00, 0x00],
        ),
        (
            request(Command::Connect, domain("example.com", 443)),
            cat(&[
                &[0x05, 0x01, 0x00, 0x03, 0x0B],
                b"example.com",
                &[0x01, 0xBB],
            ]),
        ),
    ]
}

#[test]
fn request_encodes_byte_exact_and_decodes_back() {
    for (request, wire) in request_cases() {
        assert_wire(&request, &wire);
    }
}

#[test]
fn request_ignores_reserved_byte() {
    let wire = [0x05, 0x01, 0xFF, 0x01, 10, 0, 0, 1, 0x00, 0x16];
    let expected = request(Command::Connect, v4(10, 0, 0, 1, 22));
    assert_eq!(
        Request::decode(&wire),
        Ok(Decoded::Complete(expected.clone(), 10))
    );
    assert_eq!(encode(&expected)[2], 0x00, "RSV is written as 0x00");
}

#[test]
fn request_prefix_is_incomplete() {
    for (request, wire) in request_cases() {
        assert_prefixes_incomplete(&request, &wire);
    }
    assert_incomplete_counts::<Request>(&[
        (&[], 3),
        (&[0x05], 2),
        (&[0x05, 0x01], 1),
        (&[0x05, 0x01, 0x00], 1),
        (&[0x05, 0x01, 0x00, 0x01], 6),
        (&[0x05, 0x01, 0x00, 0x04], 18),
        (&[0x05, 0x01, 0x00, 0x03], 1),
        (&[0x05, 0x01, 0x00, 0x03, 0x0B], 13),
    ]);
}

#[test]
fn request_leaves_trailing_bytes() {
    for (request, wire) in request_cases() {
        assert_trailing_untouched(&request, &wire);
    }
}

#[test]
fn rejects_request_with_wrong_version() {
    for ver in [0x00, 0x01, 0x04, 0xFF] {
        assert_rejects::<Request>(
            &[ver, 0x01, 0x00, 0x01, 127, 0, 0, 1, 0x00, 0x50],
            ProtoError::UnsupportedVersion(ver),
        );
    }
    // VER is checked before CMD.
    assert_rejects::<Request>(&[0x04, 0x09, 0x00], ProtoError::UnsupportedVersion(0x04));
}

#[test]
fn rejects_unsupported_command() {
    // Reported from the first three bytes, before any address byte.
    for cmd in [0x00, 0x04, 0x80, 0xFF] {
        assert_rejects::<Request>(&[0x05, cmd, 0x00], ProtoError::UnsupportedCommand(cmd));
    }
}

#[test]
fn rejects_request_with_bad_address() {
    let table: [(&[u8], ProtoError); 5] = [
        (
            &[0x05, 0x01, 0x00, 0x02],
            ProtoError::UnsupportedAddressType(0x02),
        ),
        (
            &[0x05, 0x01, 0x00, 0x00],
            ProtoError::UnsupportedAddressType(0x00),
        ),
        (&[0x05, 0x01, 0x00, 0x03, 0x00], ProtoError::EmptyDomain),
        (
            &[0x05, 0x01, 0x00, 0x03, 0x01, 0xFF, 0x00, 0x50],
            ProtoError::InvalidDomain,
        ),
        (
            &[0x05, 0x01, 0x00, 0x03, 0x01, 0x00, 0x00, 0x50],
            ProtoError::InvalidDomain,
        ),
    ];
    for (wire, err) in table {
        assert_rejects::<Request>(wire, err);
    }
}

// ---------------------------------------------------------------------------
// Reply (VER, REP, RSV, ATYP, BND.ADDR, BND.PORT)
// ---------------------------------------------------------------------------

const REPLY_CODES: [(ReplyCode, u8, &str); 9] = [
    (ReplyCode::Succeeded, 0x00, "succeeded"),
    (ReplyCode::GeneralFailure, 0x01, "general-failure"),
    (ReplyCode::NotAllowed, 0x02, "not-allowed"),
    (ReplyCode::NetworkUnreachable, 0x03, "network-unreachable"),
    (ReplyCode::HostUnreachable, 0x04, "host-unreachable"),
    (ReplyCode::ConnectionRefused, 0x05, "connection-refused"),
    (ReplyCode::TtlExpired, 0x06, "ttl-expired"),
    (
        ReplyCode::CommandNotSupported,
        0x07,
        "command-not-supported",
    ),
    (
        ReplyCode::AddressTypeNotSupported,
        0x08,
        "address-type-not-supported",
    ),
];

#[test]
fn reply_codes_match_rfc1928() {
    for (code, byte, name) in REPLY_CODES {
        assert_eq!(code.to_byte(), byte);
        assert_eq!(ReplyCode::from_byte(byte), code);
        assert_eq!(code.as_str(), name);
    }
    assert_eq!(
        ReplyCode::HostUnreachable.to_string(),
        "host-unreachable (0x04)"
    );
}

#[test]
fn unassigned_reply_codes_keep_their_byte() {
    for byte in 0x09..=0xFF {
        let code = ReplyCode::from_byte(byte);
        assert_eq!(code, ReplyCode::Unassigned(byte));
        assert_eq!(code.to_byte(), byte);
        assert_eq!(code.as_str(), "unassigned");
    }
    assert_eq!(ReplyCode::Unassigned(0xFF).to_string(), "unassigned (0xff)");
}

fn reply(code: ReplyCode, bound: TargetAddr) -> Reply {
    Reply { code, bound }
}

fn reply_cases() -> Vec<(Reply, Vec<u8>)> {
    let long = "r".repeat(255);
    vec![
        (
            reply(ReplyCode::Succeeded, v4(10, 0, 0, 1, 1080)),
            vec![0x05, 0x00, 0x00, 0x01, 10, 0, 0, 1, 0x04, 0x38],
        ),
        (
            reply(ReplyCode::HostUnreachable, v4(0, 0, 0, 0, 0)),
            vec![0x05, 0x04, 0x00, 0x01, 0, 0, 0, 0, 0x00, 0x00],
        ),
        (
            reply(ReplyCode::Succeeded, v6("fe80::1", 0xC350)),
            cat(&[
                &[0x05, 0x00, 0x00, 0x04, 0xFE, 0x80],
                &[0; 13],
                &[0x01],
                &[0xC3, 0x50],
            ]),
        ),
        (
            reply(ReplyCode::Unassigned(0x2A), domain("relay.local", 9)),
            cat(&[
                &[0x05, 0x2A, 0x00, 0x03, 0x0B],
                b"relay.local",
                &[0x00, 0x09],
            ]),
        ),
        (
            reply(ReplyCode::Succeeded, domain(&long, 1)),
            cat(&[
                &[0x05, 0x00, 0x00, 0x03, 0xFF],
                long.as_bytes(),
                &[0x00, 0x01],
            ]),
        ),
    ]
}

#[test]
fn reply_encodes_byte_exact_and_decodes_back() {
    for (reply, wire) in reply_cases() {
        assert_wire(&reply, &wire);
    }
}

#[test]
fn reply_decodes_every_code_byte() {
    for byte in 0x00..=0xFF {
        let wire = [0x05, byte, 0x00, 0x01, 127, 0, 0, 1, 0x00, 0x50];
        let expected = reply(ReplyCode::from_byte(byte), v4(127, 0, 0, 1, 80));
        assert_wire(&expected, &wire);
    }
}

#[test]
fn reply_max_len_is_a_255_byte_domain_reply() {
    let longest = reply(ReplyCode::Succeeded, domain(&"m".repeat(255), 65535));
    assert_eq!(encode(&longest).len(), Reply::MAX_LEN);
}

#[test]
fn reply_ignores_reserved_byte() {
    let wire = [0x05, 0x00, 0x7E, 0x01, 10, 0, 0, 1, 0x00, 0x16];
    assert_eq!(
        Reply::decode(&wire),
        Ok(Decoded::Complete(
            reply(ReplyCode::Succeeded, v4(10, 0, 0, 1, 22)),
            10
        ))
    );
}

#[test]
fn reply_prefix_is_incomplete() {
    for (reply, wire) in reply_cases() {
        assert_prefixes_incomplete(&reply, &wire);
    }
    assert_incomplete_counts::<Reply>(&[
        (&[], 3),
        (&[0x05, 0x00], 1),
        (&[0x05, 0x00, 0x00], 1),
        (&[0x05, 0x00, 0x00, 0x01], 6),
        (&[0x05, 0x00, 0x00, 0x04], 18),
        (&[0x05, 0x00, 0x00, 0x03, 0xFF], 257),
    ]);
}

#[test]
fn reply_leaves_trailing_bytes() {
    for (reply, wire) in reply_cases() {
        assert_trailing_untouched(&reply, &wire);
    }
}

#[test]
fn rejects_reply_with_wrong_version() {
    for ver in [0x00, 0x01, 0x04, 0xFF] {
        assert_rejects::<Reply>(&[ver, 0x00, 0x00], ProtoError::UnsupportedVersion(ver));
    }
}

#[test]
fn rejects_reply_with_bad_address() {
    let table: [(&[u8], ProtoError); 3] = [
        (
            &[0x05, 0x00, 0x00, 0x05],
            ProtoError::UnsupportedAddressType(0x05),
        ),
        (&[0x05, 0x00, 0x00, 0x03, 0x00], ProtoError::EmptyDomain),
        (
            &[0x05, 0x00, 0x00, 0x03, 0x02, 0xC3, 0x28, 0x00, 0x50],
            ProtoError::InvalidDomain,
        ),
    ];
    for (wire, err) in table {
        assert_rejects::<Reply>(wire, err);
    }
}

// ---------------------------------------------------------------------------
// UdpHeader (RSV, FRAG, ATYP, DST.ADDR, DST.PORT; RFC 1928 section 7)
// ---------------------------------------------------------------------------

fn udp(frag: u8, target: TargetAddr) -> UdpHeader {
    UdpHeader { frag, target }
}

fn udp_cases() -> Vec<(UdpHeader, Vec<u8>)> {
    vec![
        (
            udp(0x00, v4(127, 0, 0, 1, 53)),
            vec![0x00, 0x00, 0x00, 0x01, 127, 0, 0, 1, 0x00, 0x35],
        ),
        (
            udp(0x01, v6("2001:db8::53", 53)),
            cat(&[
                &[0x00, 0x00, 0x01, 0x04, 0x20, 0x01, 0x0D, 0xB8],
                &[0; 11],
                &[0x53],
                &[0x00, 0x35],
            ]),
        ),
        // High bit of FRAG marks the end of a fragment sequence.
        (
            udp(0x81, domain("dns.example", 853)),
            cat(&[
                &[0x00, 0x00, 0x81, 0x03, 0x0B],
                b"dns.example",
                &[0x03, 0x55],
            ]),
        ),
        (
            udp(0xFF, v4(8, 8, 8, 8, 65535)),
            vec![0x00, 0x00, 0xFF, 0x01, 8, 8, 8, 8, 0xFF, 0xFF],
        ),
    ]
}

#[test]
fn udp_header_encodes_byte_exact_and_decodes_back() {
    for (header, wire) in udp_cases() {
        assert_wire(&header, &wire);
    }
}

#[test]
fn udp_header_length_is_where_the_payload_starts() {
    for (header, wire) in udp_cases() {
        let datagram = cat(&[&wire, b"payload"]);
        let (decoded, n) = UdpHeader::decode(&datagram).unwrap().complete().unwrap();
        assert_eq!(decoded, header);
        assert_eq!(&datagram[n..], b"payload");
    }
}

#[test]
fn rejects_udp_header_with_nonzero_reserved_bytes() {
    let table: [(&[u8], ProtoError); 3] = [
        (
            &[0xAB, 0xCD, 0x00, 0x01, 10, 0, 0, 1, 0x00, 0x35],
            ProtoError::NonZeroReserved(0xABCD),
        ),
        (&[0x00, 0x01, 0x00], ProtoError::NonZeroReserved(0x0001)),
        (
            &[0x80, 0x00, 0x00, 0x01],
            ProtoError::NonZeroReserved(0x8000),
        ),
    ];
    for (wire, err) in table {
        assert_rejects::<UdpHeader>(wire, err);
    }
    assert_eq!(encode(&udp(0x00, v4(10, 0, 0, 1, 53)))[..2], [0x00, 0x00]);
}

#[test]
fn udp_header_prefix_is_incomplete() {
    for (header, wire) in udp_cases() {
        assert_prefixes_incomplete(&header, &wire);
    }
    assert_incomplete_counts::<UdpHeader>(&[
        (&[], 3),
        (&[0x00, 0x00], 1),
        (&[0x00, 0x00, 0x00], 1),
        (&[0x00, 0x00, 0x00, 0x01], 6),
        (&[0x00, 0x00, 0x00, 0x04], 18),
        (&[0x00, 0x00, 0x00, 0x03, 0x0B], 13),
    ]);
}

#[test]
fn udp_header_leaves_trailing_bytes() {
    for (header, wire) in udp_cases() {
        assert_trailing_untouched(&header, &wire);
    }
}

#[test]
fn rejects_udp_header_with_bad_address() {
    let table: [(&[u8], ProtoError); 4] = [
        (
            &[0x00, 0x00, 0x00, 0x02],
            ProtoError::UnsupportedAddressType(0x02),
        ),
        (&[0x00, 0x00, 0x00, 0x03, 0x00], ProtoError::EmptyDomain),
        (
            &[0x00, 0x00, 0x00, 0x03, 0x01, 0x80, 0x00, 0x35],
            ProtoError::InvalidDomain,
        ),
        (
            &[0x00, 0x00, 0x00, 0x03, 0x02, b'a', 0x00, 0x00, 0x35],
            ProtoError::InvalidDomain,
        ),
    ];
    for (wire, err) in table {
        assert_rejects::<UdpHeader>(wire, err);
    }
}

// ---------------------------------------------------------------------------
// ProtoError
// ---------------------------------------------------------------------------

#[test]
fn proto_error_maps_request_errors_to_reply_codes() {
    let table = [
        (
            ProtoError::UnsupportedCommand(0x04),
            Some(ReplyCode::CommandNotSupported),
        ),
        (
            ProtoError::UnsupportedAddressType(0x02),
            Some(ReplyCode::AddressTypeNotSupported),
        ),
        (ProtoError::EmptyDomain, Some(ReplyCode::HostUnreachable)),
        (ProtoError::InvalidDomain, Some(ReplyCode::HostUnreachable)),
        (ProtoError::UnsupportedVersion(0x04), None),
        (ProtoError::NoMethods, None),
        (ProtoError::UnsupportedAuthVersion(0x05), None),
        (ProtoError::EmptyUsername, None),
    ];
    for (err, code) in table {
        assert_eq!(err.reply_code(), code, "{err:?}");
    }
    assert_eq!(
        ProtoError::UnsupportedCommand(0x04)
            .reply_code()
            .map(ReplyCode::to_byte),
        Some(0x07)
    );
    assert_eq!(
        ProtoError::UnsupportedAddressType(0x02)
            .reply_code()
            .map(ReplyCode::to_byte),
        Some(0x08)
    );
}

#[test]
fn proto_error_messages_show_bytes_in_hex() {
    let table = [
        (
            ProtoError::UnsupportedVersion(0x04),
            "unsupported SOCKS version 0x04 (only SOCKS5 is spoken)",
        ),
        (
            ProtoError::UnsupportedCommand(0xFF),
            "unsupported command 0xff",
        ),
        (
            ProtoError::UnsupportedAddressType(0x02),
            "unsupported address type 0x02",
        ),
        (
            ProtoError::UnsupportedAuthVersion(0x05),
            "unsupported username/password sub-negotiation version 0x05",
        ),
    ];
    for (err, shown) in table {
        assert_eq!(err.to_string(), shown);
    }
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// 1 to 255 bytes of UTF-8 without NUL: short ASCII names and names of
/// arbitrary characters, cut at a character boundary to fit 255 bytes.
fn arb_domain_name() -> impl Strategy<Value = String> {
    let ascii = "[a-z0-9.-]{1,255}";
    let any_chars =
        prop::collection::vec(any::<char>().prop_filter("NUL", |c| *c != '\0'), 1..=255).prop_map(
            |chars| {
                let mut name = String::new();
                for c in chars {
                    if name.len() + c.len_utf8() > 255 {
                        break;
                    }
                    name.push(c);
                }
                name
            },
        );
    prop_oneof![ascii, any_chars]
}

fn arb_target() -> impl Strategy<Value = TargetAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| TargetAddr::Ip(SocketAddr::new(
            Ipv4Addr::from(ip).into(),
            port
        ))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| TargetAddr::Ip(SocketAddr::new(
            Ipv6Addr::from(ip).into(),
            port
        ))),
        (arb_domain_name(), any::<u16>()).prop_map(|(name, port)| TargetAddr::Domain(name, port)),
    ]
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        Just(Command::Connect),
        Just(Command::Bind),
        Just(Command::UdpAssociate)
    ]
}

/// Sets of 1 to 255 methods (NMETHODS is one byte), sparse and dense.
fn arb_method_set() -> impl Strategy<Value = MethodSet> {
    let sparse = prop::collection::vec(any::<u8>(), 1..=8);
    let dense = (0.0..1.0f64)
        .prop_flat_map(|p| prop::collection::vec(prop::bool::weighted(p), 256))
        .prop_map(|bits| (0..=255u8).filter(|&i| bits[i as usize]).collect());
    prop_oneof![sparse, dense]
        .prop_map(|codes: Vec<u8>| codes.into_iter().map(Method).collect::<MethodSet>())
        .prop_filter("NMETHODS is 1..=255", |set| (1..=255).contains(&set.len()))
}

/// Greetings of 1 to 255 methods: a set, in ascending or shuffled order.
fn arb_greeting() -> impl Strategy<Value = Greeting> {
    (arb_method_set(), any::<bool>(), any::<u64>()).prop_map(|(set, shuffle, seed)| {
        let mut methods: Vec<Method> = set.iter().collect();
        if shuffle {
            // A cheap deterministic shuffle; order is what is tested.
            let mut x = seed | 1;
            for i in (1..methods.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                methods.swap(i, (x % (i as u64 + 1)) as usize);
            }
        }
        Greeting::new(&methods)
    })
}

fn arb_user_pass() -> impl Strategy<Value = UserPassRequest> {
    (
        prop::collection::vec(any::<u8>(), 1..=255),
        prop::collection::vec(any::<u8>(), 0..=255),
    )
        .prop_map(|(username, password)| UserPassRequest { username, password })
}

fn arb_request() -> impl Strategy<Value = Request> {
    (arb_command(), arb_target()).prop_map(|(command, target)| Request { command, target })
}

fn arb_reply() -> impl Strategy<Value = Reply> {
    (any::<u8>(), arb_target()).prop_map(|(code, bound)| Reply {
        code: ReplyCode::from_byte(code),
        bound,
    })
}

fn arb_udp_header() -> impl Strategy<Value = UdpHeader> {
    (any::<u8>(), arb_target()).prop_map(|(frag, target)| UdpHeader { frag, target })
}

/// decode(encode(msg)) is `msg` with every byte consumed; every prefix is
/// incomplete and trailing bytes are left alone.
fn check_round_trip<M: Message>(msg: &M) -> Result<(), TestCaseError> {
    let wire = encode(msg);
    prop_assert_eq!(
        M::decode(&wire),
        Ok(Decoded::Complete(msg.clone(), wire.len()))
    );
    assert_prefixes_incomplete(msg, &wire);
    assert_trailing_untouched(msg, &wire);
    Ok(())
}

/// What a decoder must do with any input at all.
fn check_any_input<M: Message>(buf: &[u8]) -> Result<(), TestCaseError> {
    match M::decode(buf) {
        Ok(Decoded::Complete(msg, n)) => {
            prop_assert!(n >= 1 && n <= buf.len());
            // The decoder did not look past the bytes it consumed.
            prop_assert_eq!(M::decode(&buf[..n]), Ok(Decoded::Complete(msg.clone(), n)));
            // Only a greeting's duplicate methods can make the re-encoding
            // shorter than the input.
            let wire = encode(&msg);
            prop_assert!(wire.len() <= n);
            prop_assert_eq!(M::decode(&wire), Ok(Decoded::Complete(msg, wire.len())));
        }
        Ok(Decoded::Incomplete(k)) => {
            prop_assert!(k >= 1);
            // k is a lower bound: k - 1 more bytes, whatever they are, never
            // complete the message nor make it invalid.
            for fill in [0x00, 0xFF] {
                let longer = cat(&[buf, &vec![fill; k - 1]]);
                prop_assert!(
                    matches!(M::decode(&longer), Ok(Decoded::Incomplete(_))),
                    "Incomplete({}) but {} more bytes gave {:?}",
                    k,
                    k - 1,
                    M::decode(&longer)
                );
            }
        }
        Err(err) => {
            // An error is final: no following bytes make the message valid.
            prop_assert_eq!(M::decode(&cat(&[buf, &[0x00; 300]])), Err(err));
        }
    }
    Ok(())
}

fn check_all_decoders(buf: &[u8]) -> Result<(), TestCaseError> {
    check_any_input::<TargetAddr>(buf)?;
    check_any_input::<Greeting>(buf)?;
    check_any_input::<MethodSelection>(buf)?;
    check_any_input::<UserPassRequest>(buf)?;
    check_any_input::<UserPassStatus>(buf)?;
    check_any_input::<Request>(buf)?;
    check_any_input::<Reply>(buf)?;
    check_any_input::<UdpHeader>(buf)?;
    check_any_input::<GssMessage>(buf)?;
    check_any_input::<Socks4Request>(buf)?;
    check_any_input::<Socks4Reply>(buf)
}

fn arb_gss_message() -> impl Strategy<Value = GssMessage> {
    let kind = prop_oneof![
        Just(GssMessageType::Context),
        Just(GssMessageType::Protection),
        Just(GssMessageType::Encapsulated),
    ];
    prop_oneof![
        9 => (kind, prop::collection::vec(any::<u8>(), 0..=300))
            .prop_map(|(kind, token)| GssMessage::new(kind, token)),
        1 => Just(GssMessage::ABORT),
    ]
}

/// A valid encoding of any message type, with up to four bytes overwritten
/// and possibly cut short: inputs that get past the first checks.
fn arb_mutated_message() -> impl Strategy<Value = Vec<u8>> {
    let wire = prop_oneof![
        arb_target().prop_map(|m| encode(&m)),
        arb_greeting().prop_map(|m| encode(&m)),
        arb_user_pass().prop_map(|m| encode(&m)),
        arb_request().prop_map(|m| encode(&m)),
        arb_reply().prop_map(|m| encode(&m)),
        arb_udp_header().prop_map(|m| encode(&m)),
        arb_gss_message().prop_map(|m| encode(&m)),
        socks4::arb_socks4_request().prop_map(|m| encode(&m)),
        socks4::arb_socks4_reply().prop_map(|m| encode(&m)),
    ];
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..=4);
    (wire, edits, any::<prop::sample::Index>(), any::<bool>()).prop_map(
        |(mut wire, edits, cut, truncate)| {
            for (at, byte) in edits {
                let i = at.index(wire.len());
                wire[i] = byte;
            }
            if truncate {
                wire.truncate(cut.index(wire.len() + 1));
            }
            wire
        },
    )
}

proptest! {
    #[test]
    fn target_addr_round_trips(addr in arb_target()) {
        prop_assert_eq!(addr.encoded_len(), encode(&addr).len());
        check_round_trip(&addr)?;
    }

    #[test]
    fn greeting_round_trips(greeting in arb_greeting()) {
        prop_assert_eq!(encode(&greeting).len(), 2 + greeting.methods.len());
        check_round_trip(&greeting)?;
    }

    #[test]
    fn method_selection_round_trips(method in any::<u8>()) {
        check_round_trip(&MethodSelection(Method(method)))?;
    }

    #[test]
    fn user_pass_request_round_trips(request in arb_user_pass()) {
        check_round_trip(&request)?;
    }

    #[test]
    fn user_pass_status_round_trips(status in any::<u8>()) {
        check_round_trip(&UserPassStatus(status))?;
    }

    #[test]
    fn request_round_trips(request in arb_request()) {
        check_round_trip(&request)?;
    }

    #[test]
    fn reply_round_trips(reply in arb_reply()) {
        check_round_trip(&reply)?;
    }

    #[test]
    fn udp_header_round_trips(header in arb_udp_header()) {
        check_round_trip(&header)?;
    }

    #[test]
    fn gss_message_round_trips(message in arb_gss_message()) {
        check_round_trip(&message)?;
    }

}

// The fuzz targets' invariants, run by every `cargo test` (CI does not run
// libFuzzer): more cases than the round trips, as the input space is larger.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn decoders_keep_invariants_on_arbitrary_bytes(
        buf in prop::collection::vec(any::<u8>(), 0..=600)
    ) {
        check_all_decoders(&buf)?;
    }

    #[test]
    fn decoders_keep_invariants_on_mutated_messages(buf in arb_mutated_message()) {
        check_all_decoders(&buf)?;
    }
}

// ---------------------------------------------------------------------------
// RFC 1961 framing
// ---------------------------------------------------------------------------

#[test]
fn gss_message_wire_forms() {
    let table: &[(GssMessage, &[u8])] = &[
        // Section 3.3: a context token.
        (
            GssMessage::new(GssMessageType::Context, vec![0x60, 0x82]),
            &[0x01, 0x01, 0x00, 0x02, 0x60, 0x82],
        ),
        // Section 4.3: a protection-level token (here NEC's bare octet).
        (
            GssMessage::new(GssMessageType::Protection, vec![0x02]),
            &[0x01, 0x02, 0x00, 0x01, 0x02],
        ),
        // Section 5: encapsulated data, empty and long (LEN is big-endian).
        (
            GssMessage::new(GssMessageType::Encapsulated, vec![]),
            &[0x01, 0x03, 0x00, 0x00],
        ),
        // Section 3.8: the abort has no LEN and no token.
        (GssMessage::ABORT, &[0x01, 0xFF]),
    ];
    for (msg, wire) in table {
        assert_wire(msg, wire);
        assert_prefixes_incomplete(msg, wire);
        assert_trailing_untouched(msg, wire);
    }
    let long = GssMessage::new(GssMessageType::Encapsulated, vec![0xAB; 0x1234]);
    let wire = encode(&long);
    assert_eq!(&wire[..4], &[0x01, 0x03, 0x12, 0x34]);
    assert_wire(&long, &wire);
}

#[test]
fn gss_message_incomplete_counts() {
    assert_incomplete_counts::<GssMessage>(&[
        (&[], 1),
        (&[0x01], 1),
        (&[0x01, 0x01], 2),
        (&[0x01, 0x01, 0x00], 1),
        (&[0x01, 0x01, 0x00, 0x05], 5),
        (&[0x01, 0x03, 0xFF, 0xFF], 65_535),
        (&[0x01, 0x03, 0x00, 0x03, 0xAA], 2),
    ]);
}

#[test]
fn gss_message_rejects_bad_version_and_type() {
    assert_rejects::<GssMessage>(&[0x05, 0x01], ProtoError::UnsupportedGssVersion(0x05));
    assert_rejects::<GssMessage>(&[0x00], ProtoError::UnsupportedGssVersion(0x00));
    assert_rejects::<GssMessage>(&[0x01, 0x00], ProtoError::UnknownGssMessageType(0x00));
    assert_rejects::<GssMessage>(&[0x01, 0x04, 0x00], ProtoError::UnknownGssMessageType(0x04));
    for e in [
        ProtoError::UnsupportedGssVersion(5),
        ProtoError::UnknownGssMessageType(4),
        ProtoError::UnknownProtectionLevel(9),
    ] {
        assert_eq!(e.reply_code(), None, "{e} is not a request error");
    }
}

#[test]
fn gss_encode_cuts_overlong_token() {
    let msg = GssMessage::new(GssMessageType::Encapsulated, vec![7; MAX_TOKEN + 10]);
    let wire = encode(&msg);
    assert_eq!(wire.len(), GssMessage::MAX_LEN);
    assert_eq!(&wire[2..4], &[0xFF, 0xFF]);
    let mut header = Vec::new();
    GssMessage::encode_header(GssMessageType::Encapsulated, 300, &mut header);
    assert_eq!(header, [0x01, 0x03, 0x01, 0x2C]);
}

#[test]
fn protection_levels_match_rfc1961_section_4_3() {
    let table = [
        (0x00, ProtectionLevel::Clear, "clear", false),
        (0x01, ProtectionLevel::Integrity, "integrity", true),
        (
            0x02,
            ProtectionLevel::Confidentiality,
            "confidentiality",
            true,
        ),
        (0x03, ProtectionLevel::Selective, "selective", true),
    ];
    for (octet, level, name, wraps) in table {
        assert_eq!(ProtectionLevel::from_octet(octet), Ok(level));
        assert_eq!(level.octet(), octet);
        assert_eq!(level.as_str(), name);
        assert_eq!(level.wraps(), wraps);
    }
    for bad in [0x04, 0x7F, 0xFF] {
        assert_eq!(
            ProtectionLevel::from_octet(bad),
            Err(ProtoError::UnknownProtectionLevel(bad))
        );
    }
    assert!(ProtectionLevel::Clear < ProtectionLevel::Integrity);
    assert!(ProtectionLevel::Integrity < ProtectionLevel::Confidentiality);
}
