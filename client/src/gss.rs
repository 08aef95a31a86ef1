//! GSS-API (Kerberos 5) for the GSSAPI method, RFC 1961: the server's
//! acceptor, the client's initiator, and the per-message protection both
//! apply once a context is established. A thin layer over `libgssapi`
//! (the system's MIT krb5); the framing is `proto`'s.
//!
//! Context steps can block (a keytab or replay-cache file, a KDC lookup on
//! the client side): the server runs them off the core. Wrapping and
//! unwrapping are CPU work on memory and run where the data is.

use std::fmt;
use std::path::Path;

use libgssapi::context::{ClientCtx, CtxFlags, SecurityContext, ServerCtx};
use libgssapi::credential::{Cred, CredUsage};
use libgssapi::name::Name;
use libgssapi::oid::{GSS_MECH_KRB5, GSS_NT_HOSTBASED_SERVICE, GSS_NT_KRB5_PRINCIPAL};

pub use coresocks_proto::ProtectionLevel;
use coresocks_proto::{GssMessage, GssMessageType, MAX_TOKEN};

/// The most plaintext one encapsulated message carries. A wrapped token
/// adds a header, a confounder and a checksum, under 100 octets with the
/// AES enctypes; LEN bounds the token to 65,535. Near that bound, since
/// each message has a fixed cost: 63 KiB moved 15% more per CPU second
/// than 16 KiB did (`benches/gssapi.sh`).
pub const MAX_PLAIN_PER_MESSAGE: usize = 63 * 1024;

/// What GSS-API reported, in its own words (major and minor status).
#[derive(Debug, thiserror::Error)]
pub enum GssError {
    #[error("{0}")]
    Gss(#[from] libgssapi::error::Error),
    #[error("peer sent {0}")]
    Protocol(String),
}

/// Set when the cores start: from then on [`Acceptor::load`] (a reload)
/// may not point the library at another keytab.
static ENVIRONMENT_FROZEN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Called before threads that use GSS-API start.
pub fn freeze_environment() {
    ENVIRONMENT_FROZEN.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The server's side: the keytab's credential for its principal, and the
/// least protection it accepts.
#[derive(Clone)]
pub struct Acceptor {
    cred: Cred,
    /// Where the keys are: the library reads this file at each context.
    pub keytab: std::path::PathBuf,
    /// The service principal clients must ask for, as configured (empty:
    /// any principal in the keytab).
    pub principal: String,
    pub minimum: ProtectionLevel,
}

impl fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptor")
            .field("principal", &self.principal)
            .field("minimum", &self.minimum)
            .finish()
    }
}

impl Acceptor {
    /// Points the GSS-API library at `keytab` and acquires the accepting
    /// credential for `principal` (e.g. `rcmd/proxy.example.com`), or for
    /// whatever the keytab holds. Sets KRB5_KTNAME: call before any thread
    /// starts.
    pub fn load(
        keytab: &Path,
        principal: Option<&str>,
        minimum: ProtectionLevel,
    ) -> Result<Acceptor, String> {
        std::fs::metadata(keytab)
            .map_err(|e| format!("cannot read keytab {}: {e}", keytab.display()))?;
        let wanted = format!("FILE:{}", keytab.display());
        if std::env::var_os("KRB5_KTNAME").as_deref() != Some(wanted.as_ref()) {
            // The environment is the process's: once cores run (and may be
            // inside the library, reading it), it must not change.
            if ENVIRONMENT_FROZEN.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(format!(
                    "keytab {} is not the one the proxy started with: a new keytab path needs a restart (rotate keys in the same file instead)",
                    keytab.display()
                ));
            }
            std::env::set_var("KRB5_KTNAME", wanted);
        }
        let name = match principal {
            Some(p) => Some(
                Name::new(p.as_bytes(), Some(&GSS_NT_KRB5_PRINCIPAL))
                    .map_err(|e| format!("principal {p:?}: {e}"))?,
            ),
            None => None,
        };
        let cred = Cred::acquire(name.as_ref(), None, CredUsage::Accept, None).map_err(|e| {
            format!(
                "no key for {} in keytab {}: {e} (ktutil or kadmin's ktadd puts it there)",
                principal.unwrap_or("any principal"),
                keytab.display()
            )
        })?;
        Ok(Acceptor {
            cred,
            keytab: keytab.to_owned(),
            principal: principal.unwrap_or_default().to_owned(),
            minimum,
        })
    }

    /// A fresh context for one client.
    pub fn context(&self) -> ServerCtx {
        ServerCtx::new(Some(self.cred.clone()))
    }

    /// The level the server agrees to when a client asks for `asked`
    /// (RFC 1961 section 4.2: it may differ, and a client that cannot live
    /// with it closes). Selective is answered with confidentiality, which
    /// it allows; anything below the minimum is raised to it.
    pub fn agree(&self, asked: ProtectionLevel) -> ProtectionLevel {
        let asked = match asked {
            ProtectionLevel::Selective => ProtectionLevel::Confidentiality,
            other => other,
        };
        asked.max(self.minimum)
    }
}

/// The authenticated peer's principal, e.g. `alice@EXAMPLE.COM`.
pub fn peer_name(ctx: &mut ServerCtx) -> Result<String, GssError> {
    Ok(ctx.source_name()?.to_string())
}

/// The client's side: a context for the proxy's service principal, with
/// the credentials of the default cache (KRB5CCNAME, as kinit left it) or,
/// given `principal`, that principal's cache in the collection. `stream`:
/// the context protects a TCP stream, so replayed, reordered or dropped
/// messages must fail (the replay and sequence flags); a UDP association
/// leaves them off, since datagrams may be lost or reordered.
pub fn initiator(
    service: &str,
    proxy_host: &str,
    principal: Option<&str>,
    stream: bool,
) -> Result<ClientCtx, GssError> {
    let cred = match principal {
        Some(p) => {
            let name = Name::new(p.as_bytes(), Some(&GSS_NT_KRB5_PRINCIPAL))?;
            Some(Cred::acquire(Some(&name), None, CredUsage::Initiate, None)?)
        }
        None => None,
    };
    let target = Name::new(
        format!("{service}@{proxy_host}").as_bytes(),
        Some(&GSS_NT_HOSTBASED_SERVICE),
    )?;
    // Mutual authentication, and the per-message services RFC 1961 uses.
    let mut flags =
        CtxFlags::GSS_C_MUTUAL_FLAG | CtxFlags::GSS_C_INTEG_FLAG | CtxFlags::GSS_C_CONF_FLAG;
    if stream {
        flags |= CtxFlags::GSS_C_REPLAY_FLAG | CtxFlags::GSS_C_SEQUENCE_FLAG;
    }
    Ok(ClientCtx::new(cred, target, flags, Some(&GSS_MECH_KRB5)))
}

/// How the protection-level octet travels: wrapped as RFC 1961 section
/// 4.4 says, or bare, as the NEC reference implementation (and curl's
/// `--socks5-gssapi-nec`) sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LevelEncoding {
    Wrapped,
    Nec,
}

/// The token of a protection-level message (MTYP 2) carrying `level`.
pub fn encode_level(
    ctx: &mut dyn SecurityContext,
    level: ProtectionLevel,
    encoding: LevelEncoding,
) -> Result<Vec<u8>, GssError> {
    match encoding {
        LevelEncoding::Nec => Ok(vec![level.octet()]),
        LevelEncoding::Wrapped => Ok(ctx.wrap(false, &[level.octet()])?.to_vec()),
    }
}

/// Reads a protection-level token: a bare octet (NEC; a wrapped token is
/// never one octet long) or one wrapped octet.
pub fn decode_level(
    ctx: &mut dyn SecurityContext,
    token: &[u8],
) -> Result<(ProtectionLevel, LevelEncoding), GssError> {
    let (octet, encoding) = if token.len() == 1 {
        (token[0], LevelEncoding::Nec)
    } else {
        let plain = ctx.unwrap(token)?;
        match &plain[..] {
            [octet] => (*octet, LevelEncoding::Wrapped),
            other => {
                return Err(GssError::Protocol(format!(
                    "a protection level of {} octets",
                    other.len()
                )))
            }
        }
    };
    let level =
        ProtectionLevel::from_octet(octet).map_err(|e| GssError::Protocol(e.to_string()))?;
    Ok((level, encoding))
}

/// An established context at an agreed level: what the session, the relay
/// and UDP use to encapsulate and check every later message (RFC 1961
/// section 5). At `clear` nothing is wrapped.
pub struct Protection {
    ctx: Box<dyn SecurityContext + Send>,
    level: ProtectionLevel,
}

impl fmt::Debug for Protection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Protection({})", self.level.as_str())
    }
}

impl Protection {
    pub fn new(ctx: Box<dyn SecurityContext + Send>, level: ProtectionLevel) -> Protection {
        Protection { ctx, level }
    }

    pub fn level(&self) -> ProtectionLevel {
        self.level
    }

    /// Appends one encapsulated message (MTYP 3) carrying `plain`, at most
    /// [`MAX_PLAIN_PER_MESSAGE`] octets, to `out`.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), GssError> {
        let conf = self.level != ProtectionLevel::Integrity;
        let token = self.ctx.wrap(conf, plain)?;
        if token.len() > MAX_TOKEN {
            return Err(GssError::Protocol(format!(
                "a wrapped token of {} octets, over LEN's limit",
                token.len()
            )));
        }
        GssMessage::encode_header(GssMessageType::Encapsulated, token.len(), out);
        out.extend_from_slice(&token);
        Ok(())
    }

    /// Checks (and, at confidentiality, decrypts) one encapsulated token.
    pub fn open(&mut self, token: &[u8]) -> Result<Vec<u8>, GssError> {
        Ok(self.ctx.unwrap(token)?.to_vec())
    }

    /// Decodes one whole encapsulated message from the front of `buf` and
    /// opens it: `Ok(None)` while `buf` holds only part of one, else the
    /// plaintext and the octets the message took.
    pub fn open_message(&mut self, buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, GssError> {
        use coresocks_proto::{Codec, Decoded};
        match GssMessage::decode(buf).map_err(|e| GssError::Protocol(e.to_string()))? {
            Decoded::Incomplete(_) => Ok(None),
            Decoded::Complete(m, used) if m.kind == GssMessageType::Encapsulated => {
                Ok(Some((self.open(&m.token)?, used)))
            }
            Decoded::Complete(m, _) => Err(GssError::Protocol(format!(
                "message type {:#04x} where encapsulated data belongs",
                m.kind.octet()
            ))),
        }
    }
}
