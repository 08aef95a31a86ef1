//! HTTP CONNECT: the request head a client sends (RFC 9110 section 9.3.6,
//! RFC 9112 syntax), the response head a proxy answers with, and the
//! statuses. Heads are written as text, with their line endings spelled
//! out.

use std::net::SocketAddrV6;

use super::*;

impl Message for ConnectRequest {
    fn exact_from(&self) -> usize {
        // Until the empty line, any byte may end a line: only the last
        // missing byte is certain.
        encode(self).len() - 1
    }
}

impl Message for ConnectResponseHead {
    fn exact_from(&self) -> usize {
        encode(self).len() - 1
    }
}

fn credentials(user: &str, password: &str) -> BasicCredentials {
    BasicCredentials {
        user: user.to_owned(),
        password: password.to_owned(),
    }
}

fn connect(target: TargetAddr, version: HttpVersion, auth: Option<(&str, &str)>) -> ConnectRequest {
    let auth = auth.map(|(user, password)| credentials(user, password));
    ConnectRequest::new(target, version, auth).unwrap()
}

fn connect11(target: TargetAddr) -> ConnectRequest {
    connect(target, HttpVersion::Http11, None)
}

/// A head with a valid request line and the given field lines (each with
/// its line ending), ended by CRLF.
fn head_with_fields(fields: &str) -> Vec<u8> {
    format!("CONNECT example.com:443 HTTP/1.1\r\n{fields}\r\n").into_bytes()
}

fn response_head(status: u16, version: HttpVersion) -> ConnectResponseHead {
    ConnectResponseHead { status, version }
}

// ---------------------------------------------------------------------------
// Request: valid heads
// ---------------------------------------------------------------------------

/// Requests in the encoder's own form.
fn connect_request_cases() -> Vec<(ConnectRequest, &'static str)> {
    vec![
        (
            connect11(domain("example.com", 443)),
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        ),
        // RFC 7617's example credentials.
        (
            connect(
                domain("example.com", 443),
                HttpVersion::Http11,
                Some(("Aladdin", "open sesame")),
            ),
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
             Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n",
        ),
        (
            connect(v4(192, 0, 2, 1, 80), HttpVersion::Http10, None),
            "CONNECT 192.0.2.1:80 HTTP/1.0\r\nHost: 192.0.2.1:80\r\n\r\n",
        ),
        (
            connect11(v6("2001:db8::1", 8443)),
            "CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n",
        ),
        // The password may hold colons (the first one splits); both are
        // UTF-8.
        (
            connect(
                domain("a.example", 1),
                HttpVersion::Http11,
                Some(("b\u{fc}cher", "a:b")),
            ),
            "CONNECT a.example:1 HTTP/1.1\r\nHost: a.example:1\r\n\
             Proxy-Authorization: Basic YsO8Y2hlcjphOmI=\r\n\r\n",
        ),
        (
            connect(
                domain("a.example", 65535),
                HttpVersion::Http11,
                Some(("", "")),
            ),
            "CONNECT a.example:65535 HTTP/1.1\r\nHost: a.example:65535\r\n\
             Proxy-Authorization: Basic Og==\r\n\r\n",
        ),
    ]
}

#[test]
fn connect_request_encodes_byte_exact_and_decodes_back() {
    for (request, head) in connect_request_cases() {
        assert_wire(&request, head.as_bytes());
    }
}

#[test]
fn connect_request_decodes_what_clients_send() {
    let aladdin = Some(("Aladdin", "open sesame"));
    let table: Vec<(&[u8], ConnectRequest)> = vec![
        // curl's form: Host, User-Agent, Proxy-Connection.
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\
              User-Agent: curl/8.5.0\r\nProxy-Connection: Keep-Alive\r\n\r\n",
            connect11(domain("example.com", 443)),
        ),
        // No header fields at all, and HTTP/1.0.
        (
            b"CONNECT example.com:443 HTTP/1.0\r\n\r\n",
            connect(domain("example.com", 443), HttpVersion::Http10, None),
        ),
        // Field names and the scheme are case-insensitive.
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\
              proxy-authorization: basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n",
            connect(domain("example.com", 443), HttpVersion::Http11, aladdin),
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\n\
              PROXY-AUTHORIZATION: BASIC QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n",
            connect(domain("example.com", 443), HttpVersion::Http11, aladdin),
        ),
        // Optional whitespace around the value, several spaces after the
        // scheme.
        (
            b"CONNECT example.com:443 HTTP/1.1\r\n\
              Proxy-Authorization:\t Basic   QWxhZGRpbjpvcGVuIHNlc2FtZQ== \t\r\n\r\n",
            connect(domain("example.com", 443), HttpVersion::Http11, aladdin),
        ),
        // Bare LF line endings, and a mix of both.
        (
            b"CONNECT example.com:443 HTTP/1.1\nHost: example.com:443\n\n",
            connect11(domain("example.com", 443)),
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nAccept: */*\n\r\n",
            connect11(domain("example.com", 443)),
        ),
        // Other fields are skipped: empty values, obs-text, any Host.
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nX-Empty:\r\nX-Latin: caf\xE9\r\n\
              Host: elsewhere.example\r\n\r\n",
            connect11(domain("example.com", 443)),
        ),
        // Another scheme counts as no credentials: the server asks for
        // Basic with 407.
        (
            b"CONNECT example.com:443 HTTP/1.1\r\n\
              Proxy-Authorization: Digest username=\"a\"\r\n\r\n",
            connect11(domain("example.com", 443)),
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nProxy-Authorization: Bearer x.y.z\r\n\r\n",
            connect11(domain("example.com", 443)),
        ),
        // Targets: IPv4-mapped IPv6, leading zeros in the port, the case
        // and characters of a name kept as sent.
        (
            b"CONNECT [::ffff:192.0.2.1]:80 HTTP/1.1\r\n\r\n",
            connect11(v6("::ffff:192.0.2.1", 80)),
        ),
        (
            b"CONNECT [::1]:00443 HTTP/1.1\r\n\r\n",
            connect11(v6("::1", 443)),
        ),
        (
            b"CONNECT My_Host-1.example~:80 HTTP/1.1\r\n\r\n",
            connect11(domain("My_Host-1.example~", 80)),
        ),
        (
            b"CONNECT localhost:22 HTTP/1.1\r\n\r\n",
            connect11(domain("localhost", 22)),
        ),
        (
            b"CONNECT 0.0.0.0:1 HTTP/1.1\r\n\r\n",
            connect11(v4(0, 0, 0, 0, 1)),
        ),
    ];
    for (head, expected) in table {
        assert_eq!(
            ConnectRequest::decode(head),
            Ok(Decoded::Complete(expected, head.len())),
            "{}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn connect_request_leaves_early_tunnel_data() {
    let head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let expected = connect11(domain("example.com", 443));
    // A TLS ClientHello's first bytes, another empty line, another head:
    // all the tunnel's.
    let tails: [&[u8]; 4] = [
        &[0x16, 0x03, 0x01, 0x02, 0x00],
        b"\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        &[0x00; 9000],
    ];
    for tail in tails {
        assert_eq!(
            ConnectRequest::decode(&cat(&[head, tail])),
            Ok(Decoded::Complete(expected.clone(), head.len())),
            "followed by {} bytes",
            tail.len()
        );
    }
    for (request, head) in connect_request_cases() {
        assert_trailing_untouched(&request, head.as_bytes());
    }
}

#[test]
fn connect_request_prefix_is_incomplete() {
    for (request, head) in connect_request_cases() {
        assert_prefixes_incomplete(&request, head.as_bytes());
    }
    // Any one byte may end a line, so one is all the decoder can ask for.
    let heads: [&[u8]; 3] = [
        b"CONNECT example.com:443 HTTP/1.1\nHost: x\n\n",
        b"CONNECT [::1]:1 HTTP/1.0\r\nProxy-Authorization: Basic Og==\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n\r\n",
    ];
    for head in heads {
        for len in 0..head.len() {
            assert_eq!(
                ConnectRequest::decode(&head[..len]),
                Ok(Decoded::Incomplete(1)),
                "prefix {:?}",
                String::from_utf8_lossy(&head[..len])
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Request: errors
// ---------------------------------------------------------------------------

/// Each row is rejected whole, and already once the offending line is
/// complete (before the head ends); no bytes that follow change that.
fn assert_head_rejects(table: &[(&[u8], ProtoError)]) {
    for (head, err) in table {
        assert_rejects::<ConnectRequest>(head, err.clone());
        let first_line_end = head.iter().position(|&b| b == b'\n').unwrap() + 1;
        if first_line_end < head.len() && !head.starts_with(b"CONNECT example.com:443 HTTP/1.1\r\n")
        {
            // An error in the request line shows before any field.
            assert_rejects::<ConnectRequest>(&head[..first_line_end], err.clone());
        }
    }
}

#[test]
fn rejects_malformed_request_line() {
    let err = ProtoError::MalformedRequestLine;
    assert_head_rejects(&[
        // An empty line before the request line is not skipped.
        (b"\r\nCONNECT example.com:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"\r\n\r\n", err.clone()),
        (b"CONNECT\r\n\r\n", err.clone()),
        // HTTP/0.9 form: no version.
        (b"CONNECT example.com:443\r\n\r\n", err.clone()),
        // Exactly one space between the parts.
        (b"CONNECT  example.com:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT example.com:443  HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT example.com:443 HTTP/1.1 \r\n\r\n", err.clone()),
        (b"CONNECT\texample.com:443 HTTP/1.1\r\n\r\n", err.clone()),
        (
            b"CONNECT example.com:443 HTTP/1.1 extra\r\n\r\n",
            err.clone(),
        ),
        // HTTP-name is case-sensitive; the version is digit.digit.
        (b"CONNECT example.com:443 http/1.1\r\n\r\n", err.clone()),
        (b"CONNECT example.com:443 HTTP/1\r\n\r\n", err.clone()),
        (b"CONNECT example.com:443 HTTP/11.1\r\n\r\n", err.clone()),
        (b"CONNECT example.com:443 HTTP/1.x\r\n\r\n", err.clone()),
        // A bare CR is not a line ending.
        (b"CONNECT example.com:443 HTTP/1.1\r\r\n\r\n", err.clone()),
        // The method is a token.
        (b"C@NNECT example.com:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"\x16\x03\x01 example.com:443 HTTP/1.1\r\n\r\n", err),
    ]);
}

#[test]
fn rejects_unsupported_http_version() {
    let not_supported = |major, minor| ProtoError::HttpVersionNotSupported { major, minor };
    assert_head_rejects(&[
        (
            b"CONNECT example.com:443 HTTP/2.0\r\n\r\n",
            not_supported(2, 0),
        ),
        (
            b"CONNECT example.com:443 HTTP/1.2\r\n\r\n",
            not_supported(1, 2),
        ),
        (
            b"CONNECT example.com:443 HTTP/0.9\r\n\r\n",
            not_supported(0, 9),
        ),
        // The version is checked before the method.
        (b"GET / HTTP/3.0\r\n\r\n", not_supported(3, 0)),
    ]);
}

#[test]
fn rejects_other_methods_with_the_method() {
    let not_allowed = |m: &str| ProtoError::HttpMethodNotAllowed(m.to_owned());
    let long = "A".repeat(100);
    let long_line = format!("{long} example.com:443 HTTP/1.1\r\n\r\n");
    assert_head_rejects(&[
        (
            b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
            not_allowed("GET"),
        ),
        (
            b"POST http://example.com/ HTTP/1.0\r\n\r\n",
            not_allowed("POST"),
        ),
        (b"OPTIONS * HTTP/1.1\r\n\r\n", not_allowed("OPTIONS")),
        // Methods are case-sensitive.
        (
            b"connect example.com:443 HTTP/1.1\r\n\r\n",
            not_allowed("connect"),
        ),
        // Cut to 32 bytes.
        (long_line.as_bytes(), not_allowed(&long[..32])),
    ]);
}

#[test]
fn rejects_target_not_in_authority_form() {
    let err = ProtoError::HttpTargetNotAuthorityForm;
    assert_head_rejects(&[
        (b"CONNECT / HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT /index.html HTTP/1.1\r\n\r\n", err.clone()),
        (
            b"CONNECT http://example.com:443/ HTTP/1.1\r\n\r\n",
            err.clone(),
        ),
        (
            b"CONNECT http://example.com:443 HTTP/1.1\r\n\r\n",
            err.clone(),
        ),
        (b"CONNECT * HTTP/1.1\r\n\r\n", err.clone()),
        (
            b"CONNECT user@example.com:443 HTTP/1.1\r\n\r\n",
            err.clone(),
        ),
        (b"CONNECT example.com:443/x HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT example.com:443?q HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT example.com:443#f HTTP/1.1\r\n\r\n", err),
    ]);
}

#[test]
fn rejects_missing_or_invalid_port() {
    let missing = ProtoError::HttpTargetMissingPort;
    let invalid = ProtoError::InvalidHttpPort;
    assert_head_rejects(&[
        (b"CONNECT example.com HTTP/1.1\r\n\r\n", missing.clone()),
        (b"CONNECT example.com: HTTP/1.1\r\n\r\n", missing.clone()),
        (b"CONNECT [::1] HTTP/1.1\r\n\r\n", missing.clone()),
        (b"CONNECT [::1]: HTTP/1.1\r\n\r\n", missing.clone()),
        (b"CONNECT 192.0.2.1 HTTP/1.1\r\n\r\n", missing),
        (b"CONNECT example.com:0 HTTP/1.1\r\n\r\n", invalid.clone()),
        (
            b"CONNECT example.com:00000 HTTP/1.1\r\n\r\n",
            invalid.clone(),
        ),
        (
            b"CONNECT example.com:65536 HTTP/1.1\r\n\r\n",
            invalid.clone(),
        ),
        (
            b"CONNECT example.com:99999999999999999999 HTTP/1.1\r\n\r\n",
            invalid.clone(),
        ),
        (b"CONNECT example.com:8a HTTP/1.1\r\n\r\n", invalid.clone()),
        (b"CONNECT example.com:-1 HTTP/1.1\r\n\r\n", invalid.clone()),
        (
            b"CONNECT example.com:+443 HTTP/1.1\r\n\r\n",
            invalid.clone(),
        ),
        (b"CONNECT [::1]:0 HTTP/1.1\r\n\r\n", invalid),
    ]);
}

#[test]
fn rejects_invalid_host() {
    let err = ProtoError::InvalidHttpHost;
    let long = format!("CONNECT {}:80 HTTP/1.1\r\n\r\n", "a".repeat(256));
    assert_head_rejects(&[
        (b"CONNECT :443 HTTP/1.1\r\n\r\n", err.clone()),
        // Percent-encoding, sub-delims and non-ASCII are no DNS name.
        (b"CONNECT exa%41mple.com:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT exa!mple.com:443 HTTP/1.1\r\n\r\n", err.clone()),
        (
            "CONNECT b\u{fc}cher.example:443 HTTP/1.1\r\n\r\n".as_bytes(),
            err.clone(),
        ),
        (long.as_bytes(), err.clone()),
        // Digits and dots must be a dotted quad.
        (b"CONNECT 1.2.3:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT 127.1:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT 2130706433:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT 256.0.0.1:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT 010.0.0.1:443 HTTP/1.1\r\n\r\n", err.clone()),
        // IPv6 only in brackets, and only IPv6 there.
        (b"CONNECT ::1:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT [::1:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT [::1]x:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT [::1]]:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT [192.0.2.1]:443 HTTP/1.1\r\n\r\n", err.clone()),
        (
            b"CONNECT [fe80::1%25eth0]:443 HTTP/1.1\r\n\r\n",
            err.clone(),
        ),
        (b"CONNECT [v1.fe]:443 HTTP/1.1\r\n\r\n", err.clone()),
        (b"CONNECT []:443 HTTP/1.1\r\n\r\n", err),
    ]);
}

#[test]
fn rejects_obsolete_line_folding() {
    let err = ProtoError::HttpObsoleteLineFolding;
    assert_head_rejects(&[
        (
            &head_with_fields("X-Long: a\r\n continued\r\n"),
            err.clone(),
        ),
        (
            &head_with_fields("X-Long: a\r\n\tcontinued\r\n"),
            err.clone(),
        ),
        // Whitespace before the first field (RFC 9112 section 2.2).
        (&head_with_fields(" Host: example.com\r\n"), err),
    ]);
}

#[test]
fn rejects_malformed_header_field_line() {
    let err = ProtoError::MalformedHttpHeader;
    assert_head_rejects(&[
        (&head_with_fields("Host\r\n"), err.clone()),
        (&head_with_fields("Host : example.com\r\n"), err.clone()),
        (&head_with_fields(": example.com\r\n"), err.clone()),
        (&head_with_fields("Ho st: example.com\r\n"), err.clone()),
        (&head_with_fields("X: a\0b\r\n"), err.clone()),
        (&head_with_fields("X: a\rb\r\n"), err.clone()),
        (&head_with_fields("X: a\x7Fb\r\n"), err.clone()),
        (&head_with_fields("X: a\r\r\n"), err.clone()),
        // Checked even after a valid Proxy-Authorization.
        (
            &head_with_fields("Proxy-Authorization: Basic Og==\r\nbad\r\n"),
            err,
        ),
    ]);
}

#[test]
fn rejects_bad_basic_credentials() {
    let auth = |value: &str| head_with_fields(&format!("Proxy-Authorization: {value}\r\n"));
    let long_user = base64_of(&format!("{}:p", "u".repeat(256)));
    let long_password = base64_of(&format!("u:{}", "p".repeat(256)));
    assert_head_rejects(&[
        (&auth("Basic !!!!"), ProtoError::InvalidBasicBase64),
        (&auth("Basic QWxh ZGRp"), ProtoError::InvalidBasicBase64),
        // Standard base64 wants its padding.
        (&auth("Basic dXNlcjpwYXM"), ProtoError::InvalidBasicBase64),
        (&auth("Basic dXNlcjpwYXM=="), ProtoError::InvalidBasicBase64),
        (&auth("Basic /zp4"), ProtoError::BasicCredentialsNotUtf8),
        (
            &auth("Basic dXNlcnBhc3M="),
            ProtoError::BasicCredentialsMissingColon,
        ),
        (&auth("Basic"), ProtoError::BasicCredentialsMissingColon),
        (
            &auth(&format!("Basic {long_user}")),
            ProtoError::BasicCredentialsTooLong,
        ),
        (
            &auth(&format!("Basic {long_password}")),
            ProtoError::BasicCredentialsTooLong,
        ),
        // One Proxy-Authorization only, whatever the schemes.
        (
            &head_with_fields(
                "Proxy-Authorization: Basic Og==\r\nproxy-authorization: Basic Og==\r\n",
            ),
            ProtoError::DuplicateProxyAuthorization,
        ),
        (
            &head_with_fields(
                "Proxy-Authorization: Digest x\r\nProxy-Authorization: Basic Og==\r\n",
            ),
            ProtoError::DuplicateProxyAuthorization,
        ),
    ]);
}

/// Standard base64 by the crate's own dependency, for building inputs.
fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn head_may_be_max_head_bytes_and_no_more() {
    let head_of = |len: usize| {
        let fixed = head_with_fields("X-Pad: \r\n").len();
        head_with_fields(&format!("X-Pad: {}\r\n", "p".repeat(len - fixed)))
    };
    let at_limit = head_of(MAX_HEAD);
    assert_eq!(at_limit.len(), MAX_HEAD);
    assert_eq!(
        ConnectRequest::decode(&at_limit),
        Ok(Decoded::Complete(
            connect11(domain("example.com", 443)),
            MAX_HEAD
        ))
    );
    // One byte more: the head cannot end in time once MAX_HEAD bytes are
    // in without its empty line.
    let over = head_of(MAX_HEAD + 1);
    assert_eq!(
        ConnectRequest::decode(&over[..MAX_HEAD - 1]),
        Ok(Decoded::Incomplete(1))
    );
    assert_rejects::<ConnectRequest>(&over[..MAX_HEAD], ProtoError::HeadTooLarge);
    assert_rejects::<ConnectRequest>(&over, ProtoError::HeadTooLarge);
}

#[test]
fn rejects_endless_line_at_max_head() {
    // No line ending at all, as from a client that is not speaking HTTP.
    let endless = vec![b'A'; MAX_HEAD];
    assert_eq!(
        ConnectRequest::decode(&endless[..MAX_HEAD - 1]),
        Ok(Decoded::Incomplete(1))
    );
    assert_rejects::<ConnectRequest>(&endless, ProtoError::HeadTooLarge);
    // The request line alone too long: still HeadTooLarge, not a 400.
    let long_target = format!("CONNECT {}:443 HTTP/1.1", "a.".repeat(MAX_HEAD));
    assert_rejects::<ConnectRequest>(long_target.as_bytes(), ProtoError::HeadTooLarge);
}

#[test]
fn head_may_have_max_header_lines_and_no_more() {
    let fields = |n: usize| (0..n).map(|i| format!("X-{i}: v\r\n")).collect::<String>();
    let at_limit = head_with_fields(&fields(MAX_HEADER_LINES));
    assert_eq!(
        ConnectRequest::decode(&at_limit),
        Ok(Decoded::Complete(
            connect11(domain("example.com", 443)),
            at_limit.len()
        ))
    );
    // The 101st line is refused as soon as it is complete.
    let over = head_with_fields(&fields(MAX_HEADER_LINES + 1));
    let before_end = &over[..over.len() - 2];
    assert_rejects::<ConnectRequest>(before_end, ProtoError::TooManyHttpHeaders);
    assert_rejects::<ConnectRequest>(&over, ProtoError::TooManyHttpHeaders);
}

#[test]
fn request_errors_map_to_http_statuses() {
    let table = [
        (
            ProtoError::HttpMethodNotAllowed("GET".into()),
            HttpStatus::MethodNotAllowed,
        ),
        (
            ProtoError::HttpVersionNotSupported { major: 2, minor: 0 },
            HttpStatus::HttpVersionNotSupported,
        ),
        (
            ProtoError::HeadTooLarge,
            HttpStatus::RequestHeaderFieldsTooLarge,
        ),
        (
            ProtoError::TooManyHttpHeaders,
            HttpStatus::RequestHeaderFieldsTooLarge,
        ),
        (ProtoError::MalformedRequestLine, HttpStatus::BadRequest),
        (
            ProtoError::HttpTargetNotAuthorityForm,
            HttpStatus::BadRequest,
        ),
        (ProtoError::HttpTargetMissingPort, HttpStatus::BadRequest),
        (ProtoError::InvalidHttpPort, HttpStatus::BadRequest),
        (ProtoError::InvalidHttpHost, HttpStatus::BadRequest),
        (ProtoError::MalformedHttpHeader, HttpStatus::BadRequest),
        (ProtoError::HttpObsoleteLineFolding, HttpStatus::BadRequest),
        (
            ProtoError::DuplicateProxyAuthorization,
            HttpStatus::BadRequest,
        ),
        (ProtoError::InvalidBasicBase64, HttpStatus::BadRequest),
        (ProtoError::BasicCredentialsNotUtf8, HttpStatus::BadRequest),
        (
            ProtoError::BasicCredentialsMissingColon,
            HttpStatus::BadRequest,
        ),
        (ProtoError::BasicCredentialsTooLong, HttpStatus::BadRequest),
    ];
    for (err, status) in table {
        assert_eq!(err.http_status(), Some(status), "{err:?}");
        assert_eq!(err.reply_code(), None, "{err:?} is not SOCKS5");
    }
    // Not from a request a server reads.
    for err in [
        ProtoError::MalformedStatusLine,
        ProtoError::BasicUserContainsColon,
        ProtoError::UnsupportedVersion(0x47),
        ProtoError::InvalidDomain,
    ] {
        assert_eq!(err.http_status(), None, "{err:?}");
    }
}

#[test]
fn http_error_messages_say_what_was_wrong() {
    let table = [
        (
            ProtoError::HttpMethodNotAllowed("GET".into()),
            "HTTP method \"GET\" is not allowed (only CONNECT)",
        ),
        (
            ProtoError::HttpVersionNotSupported { major: 2, minor: 0 },
            "HTTP/2.0 is not supported (only HTTP/1.0 and HTTP/1.1)",
        ),
        (
            ProtoError::HeadTooLarge,
            "HTTP head is longer than 8192 bytes",
        ),
        (
            ProtoError::TooManyHttpHeaders,
            "HTTP head has more than 100 header field lines",
        ),
    ];
    for (err, shown) in table {
        assert_eq!(err.to_string(), shown);
    }
}

// ---------------------------------------------------------------------------
// Request: constructor and accessors
// ---------------------------------------------------------------------------

#[test]
fn connect_request_constructor_takes_ip_literals_as_the_decoder_does() {
    let v6_scoped = TargetAddr::Ip(SocketAddr::V6(SocketAddrV6::new(
        "fe80::1".parse().unwrap(),
        443,
        7,
        3,
    )));
    let table = [
        (domain("192.0.2.1", 80), v4(192, 0, 2, 1, 80)),
        (domain("[::1]", 80), v6("::1", 80)),
        // An authority cannot carry the flow label and scope id.
        (v6_scoped, v6("fe80::1", 443)),
        (domain("example.com", 80), domain("example.com", 80)),
    ];
    for (given, target) in table {
        let request = ConnectRequest::new(given, HttpVersion::Http11, None).unwrap();
        assert_eq!(request.target(), &target);
    }
}

#[test]
fn connect_request_constructor_refuses_what_would_not_decode_back() {
    let none = None;
    let table = [
        (
            v4(192, 0, 2, 1, 0),
            none.clone(),
            ProtoError::InvalidHttpPort,
        ),
        (
            domain("example.com", 0),
            none.clone(),
            ProtoError::InvalidHttpPort,
        ),
        (
            domain("exa mple", 80),
            none.clone(),
            ProtoError::InvalidHttpHost,
        ),
        (
            domain("a\r\nX: y", 80),
            none.clone(),
            ProtoError::InvalidHttpHost,
        ),
        (
            domain("1.2.3", 80),
            none.clone(),
            ProtoError::InvalidHttpHost,
        ),
        (domain("", 80), none.clone(), ProtoError::InvalidHttpHost),
        (
            domain(&"a".repeat(256), 80),
            none,
            ProtoError::InvalidHttpHost,
        ),
        (
            domain("example.com", 80),
            Some(credentials("a:b", "c")),
            ProtoError::BasicUserContainsColon,
        ),
        (
            domain("example.com", 80),
            Some(credentials(&"u".repeat(256), "")),
            ProtoError::BasicCredentialsTooLong,
        ),
        (
            domain("example.com", 80),
            Some(credentials("u", &"p".repeat(256))),
            ProtoError::BasicCredentialsTooLong,
        ),
    ];
    for (target, auth, err) in table {
        assert_eq!(
            ConnectRequest::new(target.clone(), HttpVersion::Http11, auth),
            Err(err),
            "{target:?}"
        );
    }
    let longest = credentials(&"u".repeat(255), &"p".repeat(255));
    let request = ConnectRequest::new(
        domain("example.com", 80),
        HttpVersion::Http11,
        Some(longest.clone()),
    )
    .unwrap();
    assert_wire(&request, &encode(&request));
    assert_eq!(request.proxy_authorization(), Some(&longest));
}

#[test]
fn connect_request_accessors_give_the_parts() {
    let request = connect(
        v6("::1", 8080),
        HttpVersion::Http10,
        Some(("alice", "hunter2")),
    );
    assert_eq!(request.target(), &v6("::1", 8080));
    assert_eq!(request.version(), HttpVersion::Http10);
    assert_eq!(
        request.proxy_authorization(),
        Some(&credentials("alice", "hunter2"))
    );
    assert_eq!(
        request.into_parts(),
        (
            v6("::1", 8080),
            HttpVersion::Http10,
            Some(credentials("alice", "hunter2"))
        )
    );
}

#[test]
fn basic_credentials_debug_redacts_password() {
    let request = connect(
        domain("example.com", 443),
        HttpVersion::Http11,
        Some(("alice", "hunter2")),
    );
    let shown = format!("{request:?}");
    assert!(shown.contains("alice"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

// ---------------------------------------------------------------------------
// Statuses and the proxy's response
// ---------------------------------------------------------------------------

const ALL_STATUSES: [(HttpStatus, u16, &str); 13] = [
    (
        HttpStatus::ConnectionEstablished,
        200,
        "Connection established",
    ),
    (HttpStatus::BadRequest, 400, "Bad Request"),
    (HttpStatus::Forbidden, 403, "Forbidden"),
    (HttpStatus::MethodNotAllowed, 405, "Method Not Allowed"),
    (
        HttpStatus::ProxyAuthenticationRequired,
        407,
        "Proxy Authentication Required",
    ),
    (HttpStatus::RequestTimeout, 408, "Request Timeout"),
    (HttpStatus::TooManyRequests, 429, "Too Many Requests"),
    (
        HttpStatus::RequestHeaderFieldsTooLarge,
        431,
        "Request Header Fields Too Large",
    ),
    (
        HttpStatus::InternalServerError,
        500,
        "Internal Server Error",
    ),
    (HttpStatus::BadGateway, 502, "Bad Gateway"),
    (HttpStatus::ServiceUnavailable, 503, "Service Unavailable"),
    (HttpStatus::GatewayTimeout, 504, "Gateway Timeout"),
    (
        HttpStatus::HttpVersionNotSupported,
        505,
        "HTTP Version Not Supported",
    ),
];

#[test]
fn http_statuses_have_their_codes_and_reasons() {
    for (status, code, reason) in ALL_STATUSES {
        assert_eq!(status.code(), code);
        assert_eq!(status.reason(), reason);
        assert_eq!(HttpStatus::from_code(code), Some(status));
        assert_eq!(status.is_success(), code == 200, "{status:?}");
        assert_eq!(status.to_string(), format!("{code} {reason}"));
    }
    for code in [0, 100, 201, 404, 599, 999] {
        assert_eq!(HttpStatus::from_code(code), None, "{code}");
    }
    assert_eq!(HttpVersion::Http10.to_string(), "HTTP/1.0");
    assert_eq!(HttpVersion::Http11.as_str(), "HTTP/1.1");
}

fn response(
    status: HttpStatus,
    version: HttpVersion,
    headers: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_response(status, version, headers, body, &mut out);
    out
}

#[test]
fn encode_response_writes_byte_exact_heads() {
    let table: [(Vec<u8>, &str); 5] = [
        // 2xx: no Content-Length and no body, whatever is passed.
        (
            response(
                HttpStatus::ConnectionEstablished,
                HttpVersion::Http11,
                &[],
                "ignored",
            ),
            "HTTP/1.1 200 Connection established\r\n\r\n",
        ),
        (
            response(
                HttpStatus::ProxyAuthenticationRequired,
                HttpVersion::Http11,
                &[
                    ("Proxy-Authenticate", "Basic realm=\"coresocks\""),
                    ("Connection", "close"),
                ],
                "",
            ),
            "HTTP/1.1 407 Proxy Authentication Required\r\n\
             Proxy-Authenticate: Basic realm=\"coresocks\"\r\nConnection: close\r\n\
             Content-Length: 0\r\n\r\n",
        ),
        (
            response(
                HttpStatus::MethodNotAllowed,
                HttpVersion::Http11,
                &[("Allow", "CONNECT")],
                "only CONNECT\n",
            ),
            "HTTP/1.1 405 Method Not Allowed\r\nAllow: CONNECT\r\n\
             Content-Length: 13\r\n\r\nonly CONNECT\n",
        ),
        (
            response(HttpStatus::BadGateway, HttpVersion::Http10, &[], "b\u{fc}"),
            "HTTP/1.0 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nb\u{fc}",
        ),
        // Pairs that would forge fields or the framing are left out.
        (
            response(
                HttpStatus::Forbidden,
                HttpVersion::Http11,
                &[
                    ("X-Injected", "a\r\nSet-Cookie: x"),
                    ("X-Nul", "a\0"),
                    ("Bad Name", "v"),
                    ("", "v"),
                    ("Name:", "v"),
                    ("Content-Length", "99"),
                    ("transfer-encoding", "chunked"),
                    ("X-Ok", " padded\t"),
                ],
                "",
            ),
            "HTTP/1.1 403 Forbidden\r\nX-Ok: padded\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    for (written, expected) in table {
        assert_eq!(
            String::from_utf8_lossy(&written),
            expected,
            "{:?}",
            String::from_utf8_lossy(&written)
        );
    }
}

#[test]
fn encode_response_appends_and_decodes_as_a_response_head() {
    for (status, code, _) in ALL_STATUSES {
        for version in [HttpVersion::Http10, HttpVersion::Http11] {
            let body = "denied\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
            let mut out = b"before".to_vec();
            encode_response(status, version, &[("Connection", "close")], body, &mut out);
            let written = &out[b"before".len()..];
            let head_len = if status.is_success() {
                written.len()
            } else {
                written.len() - body.len()
            };
            assert_eq!(
                ConnectResponseHead::decode(written),
                Ok(Decoded::Complete(response_head(code, version), head_len)),
                "{status:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Response head (for clients)
// ---------------------------------------------------------------------------

#[test]
fn response_head_encodes_byte_exact_and_decodes_back() {
    let table = [
        (
            response_head(200, HttpVersion::Http11),
            "HTTP/1.1 200 Connection established\r\n\r\n",
        ),
        (
            response_head(407, HttpVersion::Http10),
            "HTTP/1.0 407 Proxy Authentication Required\r\n\r\n",
        ),
        // No reason phrase known: an empty one, the space kept.
        (
            response_head(299, HttpVersion::Http11),
            "HTTP/1.1 299 \r\n\r\n",
        ),
        (
            response_head(100, HttpVersion::Http11),
            "HTTP/1.1 100 \r\n\r\n",
        ),
    ];
    for (head, wire) in table {
        assert_wire(&head, wire.as_bytes());
        assert_prefixes_incomplete(&head, wire.as_bytes());
        assert_trailing_untouched(&head, wire.as_bytes());
    }
}

#[test]
fn response_head_decodes_what_proxies_send() {
    let table: [(&[u8], u16, HttpVersion); 7] = [
        (
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            200,
            HttpVersion::Http11,
        ),
        (
            b"HTTP/1.0 200 OK\r\nProxy-Agent: squid\r\n\r\n",
            200,
            HttpVersion::Http10,
        ),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
              Proxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n",
            407,
            HttpVersion::Http11,
        ),
        (b"HTTP/1.1 502 Bad Gateway\n\n", 502, HttpVersion::Http11),
        // Without a reason phrase, with or without its space.
        (b"HTTP/1.1 200\r\n\r\n", 200, HttpVersion::Http11),
        (b"HTTP/1.1 200 \r\n\r\n", 200, HttpVersion::Http11),
        // A client may take obsolete line folding in a response.
        (
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
            200,
            HttpVersion::Http11,
        ),
    ];
    for (head, status, version) in table {
        let with_body = cat(&[head, b"body bytes"]);
        assert_eq!(
            ConnectResponseHead::decode(&with_body),
            Ok(Decoded::Complete(
                response_head(status, version),
                head.len()
            )),
            "{}",
            String::from_utf8_lossy(head)
        );
        for len in 0..head.len() {
            assert_eq!(
                ConnectResponseHead::decode(&head[..len]),
                Ok(Decoded::Incomplete(1))
            );
        }
    }
}

#[test]
fn response_head_rejects_malformed_status_line() {
    let malformed: [&[u8]; 13] = [
        b"\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 600 High\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1200 OK\r\n\r\n",
        b"HTTP/1 200 OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        // A SOCKS5 reply where an HTTP one was expected.
        &[0x05, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, b'\n', b'\n'],
    ];
    for head in malformed {
        assert_rejects::<ConnectResponseHead>(head, ProtoError::MalformedStatusLine);
    }
    assert_rejects::<ConnectResponseHead>(
        b"HTTP/2.0 200 OK\r\n\r\n",
        ProtoError::HttpVersionNotSupported { major: 2, minor: 0 },
    );
    let many = (0..=MAX_HEADER_LINES)
        .map(|i| format!("X-{i}: v\r\n"))
        .collect::<String>();
    assert_rejects::<ConnectResponseHead>(
        format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes(),
        ProtoError::TooManyHttpHeaders,
    );
    assert_rejects::<ConnectResponseHead>(&[b'H'; MAX_HEAD], ProtoError::HeadTooLarge);
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// A DNS name as an authority carries it: unreserved characters, not all
/// digits and dots.
fn arb_http_domain_name() -> impl Strategy<Value = String> {
    let labels = "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}";
    let any_unreserved = "[a-zA-Z0-9._~-]{1,255}";
    prop_oneof![labels, any_unreserved].prop_filter("digits and dots are an address", |name| {
        !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    })
}

fn arb_http_target() -> impl Strategy<Value = TargetAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), 1..=65535u16).prop_map(|(ip, port)| TargetAddr::Ip(SocketAddr::new(
            Ipv4Addr::from(ip).into(),
            port
        ))),
        (any::<[u8; 16]>(), 1..=65535u16).prop_map(|(ip, port)| TargetAddr::Ip(SocketAddr::new(
            Ipv6Addr::from(ip).into(),
            port
        ))),
        (arb_http_domain_name(), 1..=65535u16)
            .prop_map(|(name, port)| TargetAddr::Domain(name, port)),
    ]
}

/// Up to 60 characters of any kind (at most 240 bytes), control
/// characters included: base64 carries them.
fn arb_credential_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..=60).prop_map(|chars| chars.into_iter().collect())
}

fn arb_credentials() -> impl Strategy<Value = BasicCredentials> {
    (arb_credential_text(), arb_credential_text()).prop_map(|(user, password)| BasicCredentials {
        user: user.replace(':', ""),
        password,
    })
}

fn arb_http_version() -> impl Strategy<Value = HttpVersion> {
    prop_oneof![Just(HttpVersion::Http10), Just(HttpVersion::Http11)]
}

fn arb_connect_request() -> impl Strategy<Value = ConnectRequest> {
    (
        arb_http_target(),
        arb_http_version(),
        prop::option::of(arb_credentials()),
    )
        .prop_map(|(target, version, auth)| ConnectRequest::new(target, version, auth).unwrap())
}

fn arb_response_head() -> impl Strategy<Value = ConnectResponseHead> {
    (100..=599u16, arb_http_version())
        .prop_map(|(status, version)| ConnectResponseHead { status, version })
}

/// Heads made of pieces that reach deep into the parser, in any order.
fn arb_head_soup() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"CONNECT ",
        b"GET ",
        b"example.com",
        b"[::1]",
        b"192.0.2.1",
        b":",
        b"443",
        b"0",
        b" ",
        b"\t",
        b"/",
        b" HTTP/1.1",
        b"HTTP/1.0 ",
        b"HTTP/2.0",
        b"200 OK",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: ",
        b"Proxy-Authorization: ",
        b"Basic ",
        b"QWxhZGRpbjpvcGVuIHNlc2FtZQ==",
        b"Og==",
        b"=",
        b"\0",
        b"\xFF",
    ];
    prop::collection::vec(prop::sample::select(pieces), 0..=40).prop_map(|pieces| pieces.concat())
}

/// A valid request or response head with up to four bytes overwritten and
/// possibly cut short.
fn arb_mutated_head() -> impl Strategy<Value = Vec<u8>> {
    let wire = prop_oneof![
        arb_connect_request().prop_map(|m| encode(&m)),
        arb_response_head().prop_map(|m| encode(&m)),
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

/// What a head decoder must do with any input. As `check_any_input`, but a
/// decoded head re-encodes to its canonical form, which may be longer
/// (CRLF for LF, a Host field added) and encodes back to itself.
fn check_any_head<M: Message>(buf: &[u8]) -> Result<(), TestCaseError> {
    match M::decode(buf) {
        Ok(Decoded::Complete(msg, n)) => {
            prop_assert!(n >= 1 && n <= buf.len() && n <= MAX_HEAD);
            prop_assert_eq!(M::decode(&buf[..n]), Ok(Decoded::Complete(msg.clone(), n)));
            let wire = encode(&msg);
            prop_assert!(wire.len() <= MAX_HEAD);
            prop_assert_eq!(M::decode(&wire), Ok(Decoded::Complete(msg, wire.len())));
        }
        Ok(Decoded::Incomplete(k)) => {
            // Any byte may end a line; and every prefix is incomplete too
            // (a sample of them: each decode reads the whole prefix).
            prop_assert_eq!(k, 1);
            for len in (0..buf.len()).step_by(1 + buf.len() / 64) {
                prop_assert_eq!(M::decode(&buf[..len]), Ok(Decoded::Incomplete(1)));
            }
        }
        Err(err) => {
            prop_assert_eq!(M::decode(&cat(&[buf, &[0x00; 300]])), Err(err.clone()));
            prop_assert_eq!(M::decode(&cat(&[buf, b"\r\n\r\n"])), Err(err));
        }
    }
    Ok(())
}

fn check_head_decoders(buf: &[u8]) -> Result<(), TestCaseError> {
    check_any_head::<ConnectRequest>(buf)?;
    // The server has a status for every refusal.
    if let Err(err) = ConnectRequest::decode(buf) {
        prop_assert!(err.http_status().is_some(), "{:?}", err);
    }
    check_any_head::<ConnectResponseHead>(buf)
}

proptest! {
    #[test]
    fn connect_request_round_trips(request in arb_connect_request()) {
        check_round_trip(&request)?;
    }

    #[test]
    fn response_head_round_trips(head in arb_response_head()) {
        check_round_trip(&head)?;
    }

    /// Whatever the headers and body, the response is one well-formed
    /// head: the pairs that are kept are one line each, and nothing else
    /// is added but Content-Length.
    #[test]
    fn encode_response_never_forges_fields(
        status in prop::sample::select(ALL_STATUSES.map(|(s, _, _)| s).to_vec()),
        version in arb_http_version(),
        headers in prop::collection::vec((".{0,12}", ".{0,40}"), 0..=6),
        body in ".{0,100}",
    ) {
        let pairs: Vec<(&str, &str)> =
            headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let written = response(status, version, &pairs, &body);
        let body_len = if status.is_success() { 0 } else { body.len() };
        let head_len = written.len() - body_len;
        prop_assert_eq!(
            ConnectResponseHead::decode(&written),
            Ok(Decoded::Complete(response_head(status.code(), version), head_len))
        );
        let lines = written[..head_len].split(|&b| b == b'\n').count();
        let kept = pairs
            .iter()
            .filter(|(n, v)| {
                !n.is_empty()
                    && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                    && v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7F))
                    && !n.eq_ignore_ascii_case("content-length")
                    && !n.eq_ignore_ascii_case("transfer-encoding")
            })
            .count();
        // Status line, fields, Content-Length, the empty line, and the
        // empty piece after the last LF.
        prop_assert_eq!(lines, 1 + kept + usize::from(!status.is_success()) + 2);
    }
}

// The fuzz targets' invariants for the HTTP decoders.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn head_decoders_keep_invariants_on_arbitrary_bytes(
        buf in prop::collection::vec(any::<u8>(), 0..=300)
    ) {
        check_head_decoders(&buf)?;
    }

    #[test]
    fn head_decoders_keep_invariants_on_head_soup(buf in arb_head_soup()) {
        check_head_decoders(&buf)?;
    }

    #[test]
    fn head_decoders_keep_invariants_on_mutated_heads(buf in arb_mutated_head()) {
        check_head_decoders(&buf)?;
    }
}
