//! The handshake, typed so the compiler keeps its order. Each state owns
//! the client's stream (with the bytes read ahead), is made in one place,
//! by the step before it, and offers only the I/O its step may do:
//!
//! ```text
//! Connected --greet (SOCKS5's greeting and method selection)--> Greeted
//!    |                        the method's own messages (RFC 1929, RFC 1961)
//!    |                                   Greeted --authenticated--> Authenticated
//!    |                         Authenticated --read_request--> Requested
//!    +--ask (SOCKS4/4a, HTTP CONNECT: one request with its credentials)--> Asked
//!                               Asked --authenticated--> Requested
//!                               Asked --refuse (consumes it)
//! Requested --Session::new--> Session<AwaitingReply> (reply.rs)
//! ```
//!
//! So nothing before [`Requested`] can answer a request: a [`Greeted`]
//! client is sent only its method's messages, an [`Asked`] one only the
//! refusal that ends it, and a [`Requested`] one nothing until it becomes
//! a session, whose replies `reply.rs` orders.

use std::cell::Cell;
use std::net::IpAddr;

use crate::events::Stream;

use super::wire::Wire;
use super::{gssapi_method, http_connect, password, socks4, SessionError};
use crate::config::{Config, Protocol};
use crate::gss_binding::{Protection, ProtectionLevel};
use crate::proto::{
    Codec, Greeting, GssMessage, Method, MethodSelection, ProtoError, Request, UserPassRequest,
    UserPassStatus,
};
use crate::runtime::Core;

/// The whole handshake, in the protocol the client's first byte opens
/// (recorded in `spoken` as soon as it is known): the authenticated
/// client with its request, or the error that ended the handshake
/// (answered already where its protocol has an answer). A SOCKS5 request
/// that did not decode comes back with its [`Requested`] state, for the
/// reply its error calls for.
pub(super) async fn run(
    core: &Core,
    config: &Config,
    client_ip: IpAddr,
    client: Stream,
    spoken: &Cell<Option<Protocol>>,
) -> Result<(Requested, Result<Request, SessionError>), SessionError> {
    let mut connected = Connected::new(client);
    // A byte that opens no protocol served here goes the SOCKS5 way, whose
    // decoder says what is wrong with it.
    let first = connected.first_byte().await?;
    let protocol = Protocol::of_first_byte(first)
        .filter(|p| config.protocols[p.index()])
        .unwrap_or(Protocol::Socks5);
    spoken.set(Some(protocol));
    // SOCKS4 and HTTP CONNECT requests that fail to decode are answered
    // inside their handshakes.
    let whole = |(requested, request)| (requested, Ok(request));
    match protocol {
        Protocol::Socks5 => {
            let authenticated = negotiate(core, config, client_ip, connected).await?;
            Ok(authenticated.read_request().await)
        }
        Protocol::Socks4 => socks4::handshake(core, config, client_ip, connected)
            .await
            .map(whole),
        Protocol::HttpConnect => http_connect::handshake(core, config, client_ip, connected)
            .await
            .map(whole),
    }
}

/// Greeting, method selection (the first acceptable method in the
/// client's order) and that method's sub-negotiation.
async fn negotiate(
    core: &Core,
    config: &Config,
    client_ip: IpAddr,
    connected: Connected,
) -> Result<Authenticated, SessionError> {
    let greeted = connected.greet(&acceptable_methods(config)).await?;
    match (greeted.method, &config.gssapi, &config.users) {
        (Method::GSSAPI, Some(acceptor), _) => gssapi_method::authenticate(acceptor, greeted).await,
        (Method::USER_PASS, _, Some(users)) => {
            password::user_pass(core, config, users, client_ip, greeted).await
        }
        _ => Ok(greeted.authenticated(None, Auth::None, None)),
    }
}

/// The methods this server accepts: GSSAPI and RFC 1929 where configured,
/// else none at all.
fn acceptable_methods(config: &Config) -> Vec<Method> {
    let mut methods = Vec::with_capacity(2);
    if config.gssapi.is_some() {
        methods.push(Method::GSSAPI);
    }
    if config.users.is_some() {
        methods.push(Method::USER_PASS);
    }
    if methods.is_empty() {
        methods.push(Method::NO_AUTH);
    }
    methods
}

impl Protocol {
    /// The protocol a client's first byte opens: SOCKS's version byte, or
    /// the first letter of an HTTP method (uppercase, as methods are).
    fn of_first_byte(b: u8) -> Option<Protocol> {
        match b {
            0x05 => Some(Protocol::Socks5),
            0x04 => Some(Protocol::Socks4),
            b'A'..=b'Z' => Some(Protocol::HttpConnect),
            _ => None,
        }
    }
}

/// A client just accepted, nothing said yet.
pub(super) struct Connected {
    wire: Wire,
}

impl Connected {
    fn new(client: Stream) -> Connected {
        Connected {
            wire: Wire::new(client),
        }
    }

    /// The client's first byte, left for the protocol it opens.
    async fn first_byte(&mut self) -> Result<u8, SessionError> {
        self.wire.peek_byte().await
    }

    /// SOCKS5: reads the greeting and answers with the first method in the
    /// client's order that `acceptable` holds, or with "no acceptable
    /// methods" and the error.
    async fn greet(mut self, acceptable: &[Method]) -> Result<Greeted, SessionError> {
        let chosen = match self.wire.next::<Greeting>().await {
            Ok(greeting) => greeting.first_of(acceptable),
            Err(SessionError::Proto(ProtoError::NoMethods)) => None,
            Err(e) => return Err(e),
        };
        let answer = chosen.unwrap_or(Method::NO_ACCEPTABLE);
        self.wire.send(&MethodSelection(answer).to_bytes()).await?;
        match chosen {
            Some(method) => Ok(Greeted {
                wire: self.wire,
                method,
            }),
            None => Err(SessionError::NoAcceptableMethod),
        }
    }

    /// SOCKS4/4a and HTTP CONNECT: reads the one request, which carries
    /// the client's credentials. The [`Asked`] state comes back whether it
    /// decoded or not, so that a bad one can be refused.
    pub(super) async fn ask<R: Codec>(mut self) -> (Asked, Result<R, SessionError>) {
        let request = self.wire.next::<R>().await;
        (Asked { wire: self.wire }, request)
    }
}

/// A SOCKS5 client with its method chosen and sent: what is left before
/// the request is that method's sub-negotiation.
pub(super) struct Greeted {
    wire: Wire,
    method: Method,
}

/// A message of a method's sub-negotiation: the only kind a [`Greeted`]
/// client is read or sent.
pub(super) trait MethodMessage: Codec {}
impl MethodMessage for UserPassRequest {}
impl MethodMessage for UserPassStatus {}
impl MethodMessage for GssMessage {}

impl Greeted {
    pub(super) async fn read<M: MethodMessage>(&mut self) -> Result<M, SessionError> {
        self.wire.next::<M>().await
    }

    pub(super) async fn send<M: MethodMessage>(&mut self, message: &M) -> Result<(), SessionError> {
        self.wire.send(&message.to_bytes()).await
    }

    /// The method's check passed (or there was none to pass).
    pub(super) fn authenticated(
        self,
        user: Option<String>,
        auth: Auth,
        protection: Option<Protection>,
    ) -> Authenticated {
        Authenticated {
            wire: self.wire,
            login: Login {
                user,
                auth,
                protection,
                dialect: Dialect::Socks5,
            },
        }
    }
}

/// A SOCKS5 client that passed its method's check; its request is next.
pub(super) struct Authenticated {
    wire: Wire,
    login: Login,
}

impl Authenticated {
    /// Reads the request; the client becomes [`Requested`] whether it
    /// decoded or not (a malformed one gets the reply its error calls
    /// for). Under protection the request comes encapsulated, and
    /// plaintext after it is early data.
    async fn read_request(mut self) -> (Requested, Result<Request, SessionError>) {
        let (request, early) = match &mut self.login.protection {
            Some(p) => {
                let sealed = self.wire.next::<GssMessage>().await;
                match sealed.and_then(|m| gssapi_method::open_request(p, m)) {
                    Ok((request, early)) => (Ok(request), early),
                    Err(e) => (Err(e), Vec::new()),
                }
            }
            None => (self.wire.next::<Request>().await, Vec::new()),
        };
        (Requested::new(self.wire, self.login, early), request)
    }
}

/// A SOCKS4/4a or HTTP CONNECT client whose request is read, its
/// credentials not yet checked.
pub(super) struct Asked {
    wire: Wire,
}

impl Asked {
    /// The credentials passed (or none were needed): replies go out in
    /// `dialect`.
    pub(super) fn authenticated(
        self,
        user: Option<String>,
        auth: Auth,
        dialect: Dialect,
    ) -> Requested {
        let login = Login {
            user,
            auth,
            protection: None,
            dialect,
        };
        Requested::new(self.wire, login, Vec::new())
    }

    /// The protocol's refusal (SOCKS4's 91, an HTTP error response); the
    /// handshake ends.
    pub(super) async fn refuse(mut self, answer: &[u8]) -> Result<(), SessionError> {
        self.wire.send(answer).await
    }
}

/// An authenticated client whose request has been read: the only state a
/// session, and so a reply, is made from.
pub(super) struct Requested {
    client: Stream,
    login: Login,
    /// Plaintext client bytes past the request, for the target.
    early: Vec<u8>,
    /// Client bytes past the request that are still encapsulated (GSSAPI
    /// protection): the relay unwraps them first.
    pending_sealed: Vec<u8>,
}

impl Requested {
    /// What the wire read past the request is early data, or under
    /// protection still sealed (then `early` is the plaintext the
    /// request's own message carried past it).
    fn new(wire: Wire, login: Login, early: Vec<u8>) -> Requested {
        let (client, leftover) = wire.into_parts();
        let (early, pending_sealed) = match login.protection {
            Some(_) => (early, leftover),
            None => (leftover, Vec::new()),
        };
        Requested {
            client,
            login,
            early,
            pending_sealed,
        }
    }

    pub(super) fn login(&self) -> &Login {
        &self.login
    }

    /// Taken apart by [`super::reply::Session::new`] only: the stream, the
    /// login, early plaintext and pending sealed bytes.
    pub(super) fn into_parts(self) -> (Stream, Login, Vec<u8>, Vec<u8>) {
        (self.client, self.login, self.early, self.pending_sealed)
    }
}

/// Who the client proved to be, and how replies reach it.
pub(super) struct Login {
    user: Option<String>,
    auth: Auth,
    /// GSSAPI at integrity or confidentiality: every later message is
    /// encapsulated.
    protection: Option<Protection>,
    dialect: Dialect,
}

impl Login {
    /// The authenticated user, if users are configured.
    pub(super) fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub(super) fn auth(&self) -> Auth {
        self.auth
    }

    /// The protocol replies are written in.
    pub(super) fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(super) fn protection(&mut self) -> Option<&mut Protection> {
        self.protection.as_mut()
    }

    /// The protection, for the relay or a UDP association, once the last
    /// reply is out.
    pub(super) fn take_protection(&mut self) -> Option<Protection> {
        self.protection.take()
    }
}

/// How the client proved who it is.
#[derive(Debug, Clone, Copy)]
pub(super) enum Auth {
    None,
    /// RFC 1929.
    UserPass,
    /// SOCKS4's USERID as `user:password`.
    Socks4UserId,
    /// HTTP's `Proxy-Authorization: Basic`.
    Basic,
    /// RFC 1961, at the protection level agreed.
    Gssapi(ProtectionLevel),
}

impl Auth {
    /// For the access log's `auth=`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Auth::None => "none",
            Auth::UserPass => "userpass",
            Auth::Socks4UserId => "socks4-userid",
            Auth::Basic => "basic",
            Auth::Gssapi(ProtectionLevel::Clear) => "gssapi-clear",
            Auth::Gssapi(ProtectionLevel::Integrity) => "gssapi-integrity",
            Auth::Gssapi(_) => "gssapi-confidentiality",
        }
    }

    /// A login checked against the users file, whose user a reload may
    /// remove (`--reload-closes-removed-users`).
    pub(super) fn checks_users_file(self) -> bool {
        matches!(self, Auth::UserPass | Auth::Socks4UserId | Auth::Basic)
    }
}

/// The protocol replies are written in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Dialect {
    Socks5,
    Socks4,
    Http(crate::proto::HttpVersion),
}
