//! HTTP CONNECT (RFC 9110 section 9.3.6) in the HTTP/1.1 message syntax of
//! RFC 9112: the request head a client sends a proxy, the response head the
//! proxy answers with.
//!
//! A head is a start line and header field lines, each ended by CRLF, then
//! an empty line. Bare LF line endings are accepted too (RFC 9112 section
//! 2.2 lets a recipient do so); in a request, a bare CR anywhere else is an
//! error. A head
//! is at most [`MAX_HEAD`] bytes with at most [`MAX_HEADER_LINES`] header
//! lines, so a client cannot make the server buffer without end. Every
//! complete line is checked as soon as it arrives, so an error is final;
//! while the empty line is missing the decoder asks for one more byte, as
//! any byte may end a line.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use super::addr::validate_domain;
use super::{Codec, Decoded, ProtoError, TargetAddr};

/// Longest request or response head, empty line included.
pub const MAX_HEAD: usize = 8192;

/// Most header field lines in a head (the start line not counted).
pub const MAX_HEADER_LINES: usize = 100;

/// Longest method kept in [`ProtoError::HttpMethodNotAllowed`]: every
/// registered method fits, and a log line stays short.
const MAX_METHOD_SHOWN: usize = 32;

/// HTTP-version of a start line. HTTP/2 and later have no CONNECT head in
/// this syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpVersion {
    Http10,
    Http11,
}

impl HttpVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpVersion::Http10 => "HTTP/1.0",
            HttpVersion::Http11 => "HTTP/1.1",
        }
    }
}

impl fmt::Display for HttpVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The user-id and password of a `Proxy-Authorization: Basic` field
/// (RFC 7617): UTF-8, split at the first colon, so the user cannot hold one.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    pub user: String,
    pub password: String,
}

impl BasicCredentials {
    /// Longest user-id, and longest password: RFC 1929's limit, as HTTP
    /// and SOCKS5 clients log in as the same users. It also keeps every
    /// request's encoding far below [`MAX_HEAD`].
    pub const MAX_LEN: usize = 255;

    fn check(&self) -> Result<(), ProtoError> {
        if self.user.len() > Self::MAX_LEN || self.password.len() > Self::MAX_LEN {
            return Err(ProtoError::BasicCredentialsTooLong);
        }
        Ok(())
    }
}

// Never print a password, not even in debug logs.
impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `CONNECT host:port HTTP/1.x` and the one header field a proxy acts on.
///
/// The fields are private so that every value encodes to a head the
/// decoder reads back as the same value: [`ConnectRequest::new`] checks the
/// target and the credentials as the decoder would; the decoder only makes
/// such values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    target: TargetAddr,
    version: HttpVersion,
    proxy_authorization: Option<BasicCredentials>,
}

impl ConnectRequest {
    /// A request that encodes and decodes back to itself. A domain that is
    /// an IP literal (`192.0.2.1`, `[::1]`) becomes the IP target the
    /// decoder would read; an IPv6 target loses its scope id and flow
    /// label, which an HTTP authority cannot carry.
    pub fn new(
        target: TargetAddr,
        version: HttpVersion,
        proxy_authorization: Option<BasicCredentials>,
    ) -> Result<ConnectRequest, ProtoError> {
        if target.port() == 0 {
            return Err(ProtoError::InvalidHttpPort);
        }
        let target = match target {
            TargetAddr::Ip(sa) => TargetAddr::Ip(SocketAddr::new(sa.ip(), sa.port())),
            TargetAddr::Domain(name, port) => parse_host(name.as_bytes(), port)?,
        };
        if let Some(credentials) = &proxy_authorization {
            if credentials.user.contains(':') {
                return Err(ProtoError::BasicUserContainsColon);
            }
            credentials.check()?;
        }
        Ok(ConnectRequest {
            target,
            version,
            proxy_authorization,
        })
    }

    pub fn target(&self) -> &TargetAddr {
        &self.target
    }

    pub fn version(&self) -> HttpVersion {
        self.version
    }

    /// Basic credentials, if the client sent them. A field of another
    /// scheme counts as none, so the server answers 407 and names Basic.
    pub fn proxy_authorization(&self) -> Option<&BasicCredentials> {
        self.proxy_authorization.as_ref()
    }

    pub fn into_parts(self) -> (TargetAddr, HttpVersion, Option<BasicCredentials>) {
        (self.target, self.version, self.proxy_authorization)
    }
}

impl Codec for ConnectRequest {
    /// Decodes a request head. `Complete` takes exactly the head: what
    /// follows is early tunnel data, for the server to relay. Header fields
    /// other than Proxy-Authorization are checked for syntax and skipped;
    /// Host is not compared with the target, which the request line alone
    /// gives for CONNECT.
    fn decode(buf: &[u8]) -> Result<Decoded<ConnectRequest>, ProtoError> {
        let mut start = None;
        let mut proxy_authorization = None;
        let mut seen_proxy_authorization = false;
        let head = scan_head(buf, |index, line| {
            if index == 0 {
                start = Some(parse_request_line(line)?);
                return Ok(());
            }
            let (name, value) = parse_field_line(line)?;
            if name.eq_ignore_ascii_case(b"proxy-authorization") {
                if seen_proxy_authorization {
                    return Err(ProtoError::DuplicateProxyAuthorization);
                }
                seen_proxy_authorization = true;
                proxy_authorization = parse_basic(value)?;
            }
            Ok(())
        })?;
        Ok(match head {
            Decoded::Complete((), len) => {
                // `scan_head` gives every head's first line to the closure.
                let (target, version) = start.ok_or(ProtoError::MalformedRequestLine)?;
                Decoded::Complete(
                    ConnectRequest {
                        target,
                        version,
                        proxy_authorization,
                    },
                    len,
                )
            }
            Decoded::Incomplete(more) => Decoded::Incomplete(more),
        })
    }

    /// `CONNECT host:port HTTP/1.x`, a Host field with the same authority
    /// (RFC 9112 section 3.2 wants one in every HTTP/1.1 request), the
    /// credentials if any, and the empty line.
    fn encode(&self, out: &mut Vec<u8>) {
        let authority = authority(&self.target);
        out.extend_from_slice(b"CONNECT ");
        out.extend_from_slice(authority.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.version.as_str().as_bytes());
        out.extend_from_slice(b"\r\nHost: ");
        out.extend_from_slice(authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(credentials) = &self.proxy_authorization {
            let pair = format!("{}:{}", credentials.user, credentials.password);
            out.extend_from_slice(b"Proxy-Authorization: Basic ");
            out.extend_from_slice(BASE64.encode(pair).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(target: &TargetAddr) -> String {
    match target {
        TargetAddr::Ip(SocketAddr::V4(sa)) => format!("{}:{}", sa.ip(), sa.port()),
        TargetAddr::Ip(SocketAddr::V6(sa)) => format!("[{}]:{}", sa.ip(), sa.port()),
        TargetAddr::Domain(name, port) => format!("{name}:{port}"),
    }
}

/// The statuses a proxy answers a CONNECT with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HttpStatus {
    /// 200: the tunnel is open; what follows the head is the target's.
    ConnectionEstablished,
    /// 400: the head is malformed.
    BadRequest,
    /// 403: the rules refuse this client or target.
    Forbidden,
    /// 405: a method other than CONNECT.
    MethodNotAllowed,
    /// 407: credentials are missing or wrong.
    ProxyAuthenticationRequired,
    /// 408: the head did not arrive in time.
    RequestTimeout,
    /// 429: the client is over a rate or connection limit.
    TooManyRequests,
    /// 431 (RFC 6585): the head is over [`MAX_HEAD`] or
    /// [`MAX_HEADER_LINES`].
    RequestHeaderFieldsTooLarge,
    /// 500: the proxy failed.
    InternalServerError,
    /// 502: the target refused or reset the connection, or its name does
    /// not resolve.
    BadGateway,
    /// 503: the proxy is shutting down or out of resources.
    ServiceUnavailable,
    /// 504: connecting to the target timed out.
    GatewayTimeout,
    /// 505: an HTTP version other than 1.0 and 1.1.
    HttpVersionNotSupported,
}

impl HttpStatus {
    pub fn code(self) -> u16 {
        match self {
            HttpStatus::ConnectionEstablished => 200,
            HttpStatus::BadRequest => 400,
            HttpStatus::Forbidden => 403,
            HttpStatus::MethodNotAllowed => 405,
            HttpStatus::ProxyAuthenticationRequired => 407,
            HttpStatus::RequestTimeout => 408,
            HttpStatus::TooManyRequests => 429,
            HttpStatus::RequestHeaderFieldsTooLarge => 431,
            HttpStatus::InternalServerError => 500,
            HttpStatus::BadGateway => 502,
            HttpStatus::ServiceUnavailable => 503,
            HttpStatus::GatewayTimeout => 504,
            HttpStatus::HttpVersionNotSupported => 505,
        }
    }

    /// The reason phrase (RFC 9110 section 15; 200 says what it means for
    /// CONNECT, as proxies customarily do).
    pub fn reason(self) -> &'static str {
        match self {
            HttpStatus::ConnectionEstablished => "Connection established",
            HttpStatus::BadRequest => "Bad Request",
            HttpStatus::Forbidden => "Forbidden",
            HttpStatus::MethodNotAllowed => "Method Not Allowed",
            HttpStatus::ProxyAuthenticationRequired => "Proxy Authentication Required",
            HttpStatus::RequestTimeout => "Request Timeout",
            HttpStatus::TooManyRequests => "Too Many Requests",
            HttpStatus::RequestHeaderFieldsTooLarge => "Request Header Fields Too Large",
            HttpStatus::InternalServerError => "Internal Server Error",
            HttpStatus::BadGateway => "Bad Gateway",
            HttpStatus::ServiceUnavailable => "Service Unavailable",
            HttpStatus::GatewayTimeout => "Gateway Timeout",
            HttpStatus::HttpVersionNotSupported => "HTTP Version Not Supported",
        }
    }

    pub fn from_code(code: u16) -> Option<HttpStatus> {
        Some(match code {
            200 => HttpStatus::ConnectionEstablished,
            400 => HttpStatus::BadRequest,
            403 => HttpStatus::Forbidden,
            405 => HttpStatus::MethodNotAllowed,
            407 => HttpStatus::ProxyAuthenticationRequired,
            408 => HttpStatus::RequestTimeout,
            429 => HttpStatus::TooManyRequests,
            431 => HttpStatus::RequestHeaderFieldsTooLarge,
            500 => HttpStatus::InternalServerError,
            502 => HttpStatus::BadGateway,
            503 => HttpStatus::ServiceUnavailable,
            504 => HttpStatus::GatewayTimeout,
            505 => HttpStatus::HttpVersionNotSupported,
            _ => return None,
        })
    }

    /// 2xx: the tunnel opens right after the head.
    pub fn is_success(self) -> bool {
        (200..300).contains(&self.code())
    }
}

impl fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

/// Appends a proxy's response head, and its body unless the status is 2xx.
///
/// A 2xx response to CONNECT has no content and must not say
/// Content-Length (RFC 9110 section 9.3.6), so `body` is ignored there;
/// any other response gets Content-Length (0 for an empty body), so a
/// client knows where it ends without waiting for the close.
/// `extra_headers` are written in order (`Proxy-Authenticate`, `Allow`,
/// `Connection: close`, ...); a pair whose name is not a token, whose value
/// holds a control character (a line break would forge fields), or that
/// names Content-Length or Transfer-Encoding (framing is this function's)
/// is left out.
pub fn encode_response(
    status: HttpStatus,
    version: HttpVersion,
    extra_headers: &[(&str, &str)],
    body: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(
        format!("{version} {} {}\r\n", status.code(), status.reason()).as_bytes(),
    );
    for &(name, value) in extra_headers {
        let framing = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        if !is_token(name.as_bytes()) || !is_field_value(value.as_bytes()) || framing {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.trim_matches([' ', '\t']).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status.is_success() {
        out.extend_from_slice(b"\r\n");
        return;
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// A proxy's response head as a client reads it: the status and the
/// version; header fields are skipped. The body of a non-2xx response, if
/// any, follows the head and is the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectResponseHead {
    /// 100 to 599; a status outside that range encodes to a head that does
    /// not decode.
    pub status: u16,
    pub version: HttpVersion,
}

impl Codec for ConnectResponseHead {
    /// Decodes a response head. Field lines are only counted and bounded:
    /// a client acts on the status alone, and RFC 9112 section 5.2 lets a
    /// client take obsolete line folding in a response.
    fn decode(buf: &[u8]) -> Result<Decoded<ConnectResponseHead>, ProtoError> {
        let mut start = None;
        let head = scan_head(buf, |index, line| {
            if index == 0 {
                start = Some(parse_status_line(line)?);
            }
            Ok(())
        })?;
        Ok(match head {
            Decoded::Complete((), len) => {
                let head = start.ok_or(ProtoError::MalformedStatusLine)?;
                Decoded::Complete(head, len)
            }
            Decoded::Incomplete(more) => Decoded::Incomplete(more),
        })
    }

    /// The status line (with the reason phrase of a known status, else an
    /// empty one) and the empty line.
    fn encode(&self, out: &mut Vec<u8>) {
        let reason = HttpStatus::from_code(self.status).map_or("", HttpStatus::reason);
        out.extend_from_slice(
            format!("{} {:03} {reason}\r\n\r\n", self.version, self.status).as_bytes(),
        );
    }
}

/// Gives each complete line of the head at the front of `buf` to
/// `on_line` (index 0 is the start line), without its LF or CRLF, up to the
/// empty line that ends the head: `Complete` with the head's length.
/// Without that empty line: [`ProtoError::HeadTooLarge`] once the buffer
/// holds [`MAX_HEAD`] bytes (the head cannot end in time any more), else
/// `Incomplete(1)`.
fn scan_head(
    buf: &[u8],
    mut on_line: impl FnMut(usize, &[u8]) -> Result<(), ProtoError>,
) -> Result<Decoded<()>, ProtoError> {
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut line_start = 0;
    let mut index = 0;
    while let Some(lf) = window[line_start..].iter().position(|&b| b == b'\n') {
        let line_end = line_start + lf;
        let line = &window[line_start..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line_start = line_end + 1;
        if index > 0 && line.is_empty() {
            return Ok(Decoded::Complete((), line_start));
        }
        if index > MAX_HEADER_LINES {
            return Err(ProtoError::TooManyHttpHeaders);
        }
        on_line(index, line)?;
        index += 1;
    }
    if buf.len() >= MAX_HEAD {
        return Err(ProtoError::HeadTooLarge);
    }
    Ok(Decoded::Incomplete(1))
}

/// `method SP request-target SP HTTP-version`, single spaces (RFC 9112
/// section 3). The version is checked before the method, so that 405 goes
/// only to an HTTP/1.x request; a line that is not one gets 400 or 505.
fn parse_request_line(line: &[u8]) -> Result<(TargetAddr, HttpVersion), ProtoError> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ProtoError::MalformedRequestLine);
    };
    if !is_token(method) || target.is_empty() {
        return Err(ProtoError::MalformedRequestLine);
    }
    let version = parse_version(version).ok_or(ProtoError::MalformedRequestLine)??;
    // Methods are case-sensitive (RFC 9110 section 9.1).
    if method != b"CONNECT" {
        let shown = &method[..method.len().min(MAX_METHOD_SHOWN)];
        return Err(ProtoError::HttpMethodNotAllowed(
            String::from_utf8_lossy(shown).into_owned(),
        ));
    }
    Ok((parse_authority(target)?, version))
}

/// `HTTP-version SP status-code SP [reason-phrase]`; the space after the
/// code may be missing when the phrase is, as some servers write it.
fn parse_status_line(line: &[u8]) -> Result<ConnectResponseHead, ProtoError> {
    let (version, rest) = line.split_at(line.len().min(8));
    let version = parse_version(version).ok_or(ProtoError::MalformedStatusLine)??;
    let code = match *rest {
        [b' ', a, b, c] | [b' ', a, b, c, b' ', ..] => [a, b, c],
        _ => return Err(ProtoError::MalformedStatusLine),
    };
    let status = parse_decimal(&code).ok_or(ProtoError::MalformedStatusLine)?;
    if !(100..=599).contains(&status) {
        return Err(ProtoError::MalformedStatusLine);
    }
    Ok(ConnectResponseHead {
        status: status as u16,
        version,
    })
}

/// `HTTP/1.0` or `HTTP/1.1`; another `HTTP/d.d` is unsupported, anything
/// else not a version at all (`None`).
fn parse_version(version: &[u8]) -> Option<Result<HttpVersion, ProtoError>> {
    match version.strip_prefix(b"HTTP/")? {
        b"1.0" => Some(Ok(HttpVersion::Http10)),
        b"1.1" => Some(Ok(HttpVersion::Http11)),
        &[major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit() => {
            Some(Err(ProtoError::HttpVersionNotSupported {
                major: major - b'0',
                minor: minor - b'0',
            }))
        }
        _ => None,
    }
}

/// The authority form of a CONNECT target, `host:port` (RFC 9112 section
/// 3.2.3): no scheme, path, query or user info.
fn parse_authority(target: &[u8]) -> Result<TargetAddr, ProtoError> {
    if target == b"*" || target.iter().any(|b| b"/?#@".contains(b)) {
        return Err(ProtoError::HttpTargetNotAuthorityForm);
    }
    let (host, port) = if target.starts_with(b"[") {
        // An IPv6 literal holds colons of its own: the port follows `]`.
        let close = target
            .iter()
            .position(|&b| b == b']')
            .ok_or(ProtoError::InvalidHttpHost)?;
        match &target[close + 1..] {
            [] => return Err(ProtoError::HttpTargetMissingPort),
            [b':', port @ ..] => (&target[..=close], port),
            _ => return Err(ProtoError::InvalidHttpHost),
        }
    } else {
        let colon = target
            .iter()
            .rposition(|&b| b == b':')
            .ok_or(ProtoError::HttpTargetMissingPort)?;
        (&target[..colon], &target[colon + 1..])
    };
    if port.is_empty() {
        return Err(ProtoError::HttpTargetMissingPort);
    }
    let port = parse_decimal(port)
        .filter(|p| (1..=65535).contains(p))
        .ok_or(ProtoError::InvalidHttpPort)?;
    parse_host(host, port as u16)
}

/// A host of an authority: `[IPv6]`, a dotted-quad IPv4 address, or a DNS
/// name of letters, digits and `-._~` (RFC 3986's unreserved characters;
/// percent-encoding and sub-delims have no place in a name to resolve).
/// Digits and dots that are not a dotted quad ("1.2.3", "127.1") are
/// refused: resolvers read those as addresses too, in ways that differ.
fn parse_host(host: &[u8], port: u16) -> Result<TargetAddr, ProtoError> {
    let ip = |ip: IpAddr| Ok(TargetAddr::Ip(SocketAddr::new(ip, port)));
    if let Some(literal) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        return match std::str::from_utf8(literal).map(str::parse::<Ipv6Addr>) {
            Ok(Ok(addr)) => ip(addr.into()),
            _ => Err(ProtoError::InvalidHttpHost),
        };
    }
    if host.iter().all(|&b| b.is_ascii_digit() || b == b'.') {
        return match std::str::from_utf8(host).map(str::parse::<Ipv4Addr>) {
            Ok(Ok(addr)) => ip(addr.into()),
            _ => Err(ProtoError::InvalidHttpHost),
        };
    }
    let unreserved = |b: &u8| b.is_ascii_alphanumeric() || b"-._~".contains(b);
    if !host.iter().all(unreserved) {
        return Err(ProtoError::InvalidHttpHost);
    }
    let name = validate_domain(host).map_err(|_| ProtoError::InvalidHttpHost)?;
    Ok(TargetAddr::Domain(name.to_owned(), port))
}

/// A run of ASCII digits (leading zeros allowed). The value saturates at
/// 65,536, past every port and status, so that no length overflows it.
fn parse_decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u32, |n, d| (n * 10 + u32::from(d - b'0')).min(65_536)),
    )
}

/// `field-name ":" OWS field-value OWS` (RFC 9112 section 5): a token
/// right before the colon (whitespace there is an error, section 5.1), and
/// a value without control characters. A line starting with whitespace is
/// obsolete line folding, which a server must reject (section 5.2).
fn parse_field_line(line: &[u8]) -> Result<(&[u8], &[u8]), ProtoError> {
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Err(ProtoError::HttpObsoleteLineFolding);
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(ProtoError::MalformedHttpHeader)?;
    let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
    if !is_token(name) || !is_field_value(value) {
        return Err(ProtoError::MalformedHttpHeader);
    }
    Ok((name, value))
}

/// The credentials of a `Basic` Proxy-Authorization value; `None` for
/// another scheme. The scheme is case-insensitive (RFC 9110 section 11.1).
fn parse_basic(value: &[u8]) -> Result<Option<BasicCredentials>, ProtoError> {
    let scheme_end = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
    if !value[..scheme_end].eq_ignore_ascii_case(b"basic") {
        return Ok(None);
    }
    let token = trim_ows(&value[scheme_end..]);
    let decoded = BASE64
        .decode(token)
        .map_err(|_| ProtoError::InvalidBasicBase64)?;
    let pair = String::from_utf8(decoded).map_err(|_| ProtoError::BasicCredentialsNotUtf8)?;
    let (user, password) = pair
        .split_once(':')
        .ok_or(ProtoError::BasicCredentialsMissingColon)?;
    let credentials = BasicCredentials {
        user: user.to_owned(),
        password: password.to_owned(),
    };
    credentials.check()?;
    Ok(Some(credentials))
}

/// tchar (RFC 9110 section 5.6.2), at least one.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// Visible characters, spaces, tabs and obs-text: no control character
/// (RFC 9110 section 5.5), so no NUL and no CR or LF.
fn is_field_value(s: &[u8]) -> bool {
    s.iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7F))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
