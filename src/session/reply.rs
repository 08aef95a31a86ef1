//! A session past its request, typed by where it stands in its replies,
//! so the compiler keeps the order RFC 1928 gives them:
//!
//! ```text
//! Session<AwaitingReply> --reply_success--> Session<Replied> --established--> the tunnel
//!        |                                         (or into_client: UDP)
//!        +--reply_listening (BIND's first)--> Session<AwaitingPeer> --reply_success--> Session<Replied>
//!        +--refuse (consumes it)                    +--refuse (consumes it)
//! ```
//!
//! Each transition consumes the session, so a second reply, or a reply
//! after the refusal, does not compile. The client stream is private to
//! this module: the commands (`connect.rs`, `bind.rs`, `udp.rs`) read its
//! addresses and peek at it, and write to it only through these replies.
//! A session is made in one place, [`Session::new`], from the handshake's
//! [`Requested`] state.

use std::marker::PhantomData;
use std::net::SocketAddr;

use crate::events::Stream;

use super::handshake::{Dialect, Login, Requested};
use super::tunnel::Established;
use super::wire::send;
use super::{gssapi_method, http_connect, socks4, unspecified, AccessRecord, SessionError};
use crate::config::Config;
use crate::proto::{Codec, Reply, ReplyCode, TargetAddr};
use crate::relay::Sealed;
use crate::runtime::Core;

/// No reply sent yet.
pub(super) struct AwaitingReply;
/// BIND's first reply sent; the second waits for the incoming connection.
pub(super) struct AwaitingPeer;
/// The success reply sent: what is left is relaying.
pub(super) struct Replied;

/// One client past its request: what every command needs to reply, judge
/// destinations against the egress policy, and record what happened.
pub(super) struct Session<'a, S> {
    pub(super) core: &'a Core,
    /// The configuration this session started with (a reload does not
    /// change it midway).
    pub(super) config: &'a Config,
    client: Stream,
    pub(super) login: Login,
    pub(super) record: &'a mut AccessRecord,
    /// Client bytes past the request that are still encapsulated (GSSAPI
    /// protection): the relay unwraps them first.
    pending_sealed: Vec<u8>,
    state: PhantomData<S>,
}

impl<'a> Session<'a, AwaitingReply> {
    /// The session, and the plaintext client bytes that came with the
    /// request (for the target).
    pub(super) fn new(
        core: &'a Core,
        config: &'a Config,
        requested: Requested,
        record: &'a mut AccessRecord,
    ) -> (Self, Vec<u8>) {
        let (client, login, early, pending_sealed) = requested.into_parts();
        let session = Session {
            core,
            config,
            client,
            login,
            record,
            pending_sealed,
            state: PhantomData,
        };
        (session, early)
    }

    /// The success reply (CONNECT's, UDP ASSOCIATE's).
    pub(super) async fn reply_success(
        mut self,
        bound: SocketAddr,
    ) -> Result<Session<'a, Replied>, SessionError> {
        self.send_success(bound).await?;
        Ok(self.into_state())
    }

    /// BIND's first reply: the address it listens on.
    pub(super) async fn reply_listening(
        mut self,
        listening: SocketAddr,
    ) -> Result<Session<'a, AwaitingPeer>, SessionError> {
        self.send_success(listening).await?;
        Ok(self.into_state())
    }

    /// The failure reply `e` calls for, if any; the session ends.
    pub(super) async fn refuse(mut self, e: &SessionError) {
        self.send_error(e).await;
    }
}

impl<'a> Session<'a, AwaitingPeer> {
    /// BIND's second reply: who connected.
    pub(super) async fn reply_success(
        mut self,
        peer: SocketAddr,
    ) -> Result<Session<'a, Replied>, SessionError> {
        self.send_success(peer).await?;
        Ok(self.into_state())
    }

    /// BIND's second reply as a failure; the session ends.
    pub(super) async fn refuse(mut self, e: &SessionError) {
        self.send_error(e).await;
    }

    /// Looks at what the client sent without taking it: a close while
    /// BIND waits is the client giving up.
    pub(super) async fn peek_client(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.client.peek(buf).await
    }
}

impl<'a> Session<'a, Replied> {
    /// The tunnel to relay once a command has its other stream.
    pub(super) fn established(mut self, target: Stream, early: Vec<u8>) -> Established {
        let pending = self.pending_sealed;
        let sealed = self.login.take_protection().map(|protection| Sealed {
            protection,
            pending,
        });
        Established::new(self.client, target, early, sealed)
    }

    /// The control connection and the record, for a UDP association.
    pub(super) fn into_client(self) -> (Stream, &'a mut AccessRecord) {
        (self.client, self.record)
    }
}

impl<'a, S> Session<'a, S> {
    /// The client's stream, to read its addresses.
    pub(super) fn client(&self) -> &Stream {
        &self.client
    }

    fn into_state<T>(self) -> Session<'a, T> {
        Session {
            core: self.core,
            config: self.config,
            client: self.client,
            login: self.login,
            record: self.record,
            pending_sealed: self.pending_sealed,
            state: PhantomData,
        }
    }

    /// Sends the success reply, in the client's protocol, and records it
    /// (as the SOCKS5 code it stands for, whatever the protocol).
    async fn send_success(&mut self, bound: SocketAddr) -> Result<(), SessionError> {
        self.record.reply = Some(ReplyCode::Succeeded);
        self.core.metrics().reply(ReplyCode::Succeeded);
        let bound = SocketAddr::new(bound.ip().to_canonical(), bound.port());
        match self.login.dialect() {
            Dialect::Socks5 => {
                self.send_socks5(ReplyCode::Succeeded, &TargetAddr::Ip(bound))
                    .await
            }
            Dialect::Socks4 => send(&mut self.client, &socks4::granted(bound).to_bytes()).await,
            Dialect::Http(version) => {
                let status = crate::proto::HttpStatus::ConnectionEstablished;
                let answer = http_connect::response(status, version, "");
                send(&mut self.client, &answer).await
            }
        }
    }

    /// Sends the failure reply for `e`, if it has one, and records it.
    async fn send_error(&mut self, e: &SessionError) {
        let Some(code) = e.reply_code() else {
            return;
        };
        self.record.reply = Some(code);
        self.core.metrics().reply(code);
        let _ = match self.login.dialect() {
            Dialect::Socks5 => self.send_socks5(code, &unspecified()).await,
            Dialect::Socks4 => send(&mut self.client, &socks4::rejected().to_bytes()).await,
            Dialect::Http(version) => match http_connect::status_of(e) {
                Some(status) => {
                    let answer = http_connect::response(status, version, &http_connect::body_of(e));
                    send(&mut self.client, &answer).await
                }
                None => Ok(()),
            },
        };
    }

    async fn send_socks5(
        &mut self,
        code: ReplyCode,
        bound: &TargetAddr,
    ) -> Result<(), SessionError> {
        let reply = Reply {
            code,
            bound: bound.clone(),
        }
        .to_bytes();
        match self.login.protection() {
            Some(p) => {
                let sealed = gssapi_method::seal(p, &reply)?;
                send(&mut self.client, &sealed).await
            }
            None => send(&mut self.client, &reply).await,
        }
    }
}
