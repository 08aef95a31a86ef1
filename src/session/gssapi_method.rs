//! The GSSAPI method (RFC 1961) on the server: security-context
//! establishment, with each GSS-API step off the core; the
//! protection-level sub-negotiation; and, once a level that wraps is
//! agreed, the encapsulated request and replies.

use libgssapi::context::SecurityContext;

use super::handshake::{Auth, Authenticated, Greeted};
use super::SessionError;
use crate::gss_binding::{self as gssapi, Acceptor, Protection, ProtectionLevel};
use crate::proto::{Codec, Decoded, GssMessage, GssMessageType, Request};

/// Runs the method: the client is authenticated as its principal, at the
/// level agreed, with the protection to apply unless that level is
/// `clear`. Any failure sends the abort message (MTYP 0xFF) before the
/// error returns.
pub(super) async fn authenticate(
    acceptor: &Acceptor,
    mut greeted: Greeted,
) -> Result<Authenticated, SessionError> {
    match run(acceptor, &mut greeted).await {
        Ok((principal, level, protection)) => {
            Ok(greeted.authenticated(Some(principal), Auth::Gssapi(level), protection))
        }
        Err(e) => {
            if !matches!(e, SessionError::ClientIo(_) | SessionError::ClientClosed) {
                let _ = greeted.send(&GssMessage::ABORT).await;
            }
            Err(e)
        }
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> SessionError {
    SessionError::GssapiFailed(format!("{what}: {e}"))
}

/// The next message, which must be of `kind`.
async fn expect(kind: GssMessageType, greeted: &mut Greeted) -> Result<Vec<u8>, SessionError> {
    token_of(kind, greeted.read::<GssMessage>().await?)
}

/// The token of `m`, which must be of `kind`.
fn token_of(kind: GssMessageType, m: GssMessage) -> Result<Vec<u8>, SessionError> {
    match m.kind {
        k if k == kind => Ok(m.token),
        GssMessageType::Abort => Err(SessionError::GssapiFailed("the client aborted".into())),
        other => Err(failed(
            "unexpected message",
            format!(
                "type {:#04x} where {:#04x} belongs",
                other.octet(),
                kind.octet()
            ),
        )),
    }
}

async fn run(
    acceptor: &Acceptor,
    greeted: &mut Greeted,
) -> Result<(String, ProtectionLevel, Option<Protection>), SessionError> {
    let mut ctx = acceptor.context();
    // Section 3: tokens go back and forth until the context is complete.
    loop {
        let token = expect(GssMessageType::Context, greeted).await?;
        // Reading the keytab and the replay cache is file I/O: off the core.
        let (back, stepped) = crate::events::blocking(move || {
            let r = ctx.step(&token).map(|t| t.map(|t| t.to_vec()));
            (ctx, r)
        })
        .await
        .map_err(|e| failed("security context step", e))?;
        ctx = back;
        let reply = stepped.map_err(|e| failed("security context refused", e))?;
        if let Some(token) = reply {
            let m = GssMessage::new(GssMessageType::Context, token);
            greeted.send(&m).await?;
        }
        if ctx.is_complete() {
            break;
        }
    }
    let principal = gssapi::peer_name(&mut ctx).map_err(|e| failed("client name", e))?;
    // Section 4: the client asks for a level, the server answers with the
    // one it agrees to, in the encoding the client used.
    let token = expect(GssMessageType::Protection, greeted).await?;
    let (asked, encoding) =
        gssapi::decode_level(&mut ctx, &token).map_err(|e| failed("protection level", e))?;
    let agreed = acceptor.agree(asked);
    if agreed != asked {
        tracing::debug!(
            %principal,
            "GSSAPI client asked for {} protection, gets {}",
            asked.as_str(),
            agreed.as_str()
        );
    }
    let token = gssapi::encode_level(&mut ctx, agreed, encoding)
        .map_err(|e| failed("protection level", e))?;
    greeted
        .send(&GssMessage::new(GssMessageType::Protection, token))
        .await?;
    let protection = match agreed {
        ProtectionLevel::Clear => None,
        level => Some(Protection::new(Box::new(ctx), level)),
    };
    Ok((principal, agreed, protection))
}

/// The request from one encapsulated message. Plaintext past the request
/// is early data for the target.
pub(super) fn open_request(
    protection: &mut Protection,
    m: GssMessage,
) -> Result<(Request, Vec<u8>), SessionError> {
    let token = token_of(GssMessageType::Encapsulated, m)?;
    let plain = protection
        .open(&token)
        .map_err(|e| failed("encapsulated request refused", e))?;
    match Request::decode(&plain)? {
        Decoded::Complete(request, used) => Ok((request, plain[used..].to_vec())),
        Decoded::Incomplete(_) => Err(failed(
            "encapsulated request",
            "the message ends inside the request",
        )),
    }
}

/// One reply (or any message) to the client, encapsulated.
pub(super) fn seal(protection: &mut Protection, bytes: &[u8]) -> Result<Vec<u8>, SessionError> {
    let mut out = Vec::with_capacity(bytes.len() + 96);
    protection
        .seal(bytes, &mut out)
        .map_err(|e| failed("wrapping the reply", e))?;
    Ok(out)
}
