//! RFC 1961 framing: the messages of the GSS-API method (0x01).
//!
//! Every message is VER (1), MTYP, LEN (2 octets, big-endian) and LEN
//! octets of token, except the abort, which is VER and MTYP 0xFF alone
//! (section 3.8). The tokens themselves are opaque here: the GSS-API
//! library makes and checks them.

use super::{need, Codec, Decoded, ProtoError};

/// VER of every RFC 1961 message.
pub const GSSAPI_VERSION: u8 = 0x01;

/// The longest token LEN can announce.
pub const MAX_TOKEN: usize = u16::MAX as usize;

/// MTYP: which stage a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GssMessageType {
    /// 1: a security-context token (section 3).
    Context,
    /// 2: the protection-level sub-negotiation (section 4).
    Protection,
    /// 3: encapsulated user data (section 5).
    Encapsulated,
    /// 0xFF: the server refuses the client (section 3.8); no LEN, no token.
    Abort,
}

impl GssMessageType {
    pub fn octet(self) -> u8 {
        match self {
            GssMessageType::Context => 1,
            GssMessageType::Protection => 2,
            GssMessageType::Encapsulated => 3,
            GssMessageType::Abort => 0xff,
        }
    }

    pub fn from_octet(b: u8) -> Option<GssMessageType> {
        Some(match b {
            1 => GssMessageType::Context,
            2 => GssMessageType::Protection,
            3 => GssMessageType::Encapsulated,
            0xff => GssMessageType::Abort,
            _ => return None,
        })
    }
}

/// One RFC 1961 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GssMessage {
    pub kind: GssMessageType,
    /// Empty for [`GssMessageType::Abort`]; at most [`MAX_TOKEN`] octets.
    pub token: Vec<u8>,
}

impl GssMessage {
    /// The longest message on the wire: header and the longest token.
    pub const MAX_LEN: usize = 4 + MAX_TOKEN;

    pub const ABORT: GssMessage = GssMessage {
        kind: GssMessageType::Abort,
        token: Vec::new(),
    };

    pub fn new(kind: GssMessageType, token: Vec<u8>) -> GssMessage {
        GssMessage { kind, token }
    }

    /// Appends the header of a message carrying `token_len` octets, for a
    /// caller that writes the token itself (the relay frames in place).
    pub fn encode_header(kind: GssMessageType, token_len: usize, out: &mut Vec<u8>) {
        let len = token_len.min(MAX_TOKEN) as u16;
        out.push(GSSAPI_VERSION);
        out.push(kind.octet());
        out.extend_from_slice(&len.to_be_bytes());
    }
}

impl Codec for GssMessage {
    fn decode(buf: &[u8]) -> Result<Decoded<GssMessage>, ProtoError> {
        need!(buf, 1);
        if buf[0] != GSSAPI_VERSION {
            return Err(ProtoError::UnsupportedGssVersion(buf[0]));
        }
        need!(buf, 2);
        let kind =
            GssMessageType::from_octet(buf[1]).ok_or(ProtoError::UnknownGssMessageType(buf[1]))?;
        if kind == GssMessageType::Abort {
            return Ok(Decoded::Complete(GssMessage::ABORT, 2));
        }
        need!(buf, 4);
        let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        need!(buf, 4 + len);
        Ok(Decoded::Complete(
            GssMessage {
                kind,
                token: buf[4..4 + len].to_vec(),
            },
            4 + len,
        ))
    }

    /// Encodes the message; a token longer than [`MAX_TOKEN`] is cut.
    fn encode(&self, out: &mut Vec<u8>) {
        if self.kind == GssMessageType::Abort {
            out.extend_from_slice(&[GSSAPI_VERSION, GssMessageType::Abort.octet()]);
            return;
        }
        let token = &self.token[..self.token.len().min(MAX_TOKEN)];
        GssMessage::encode_header(self.kind, token.len(), out);
        out.extend_from_slice(token);
    }
}

/// The per-message protection agreed in the sub-negotiation (section 4.3):
/// the octet the token carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtectionLevel {
    /// 0: no per-message protection, data unwrapped. Not in RFC 1961, but
    /// what curl asks for and what dante calls "clear": authentication
    /// only.
    Clear,
    /// 1: integrity (gss_wrap with conf_req_flag FALSE).
    Integrity,
    /// 2: integrity and confidentiality (conf_req_flag TRUE).
    Confidentiality,
    /// 3: chosen per message by local configuration.
    Selective,
}

impl ProtectionLevel {
    pub fn octet(self) -> u8 {
        match self {
            ProtectionLevel::Clear => 0,
            ProtectionLevel::Integrity => 1,
            ProtectionLevel::Confidentiality => 2,
            ProtectionLevel::Selective => 3,
        }
    }

    pub fn from_octet(b: u8) -> Result<ProtectionLevel, ProtoError> {
        Ok(match b {
            0 => ProtectionLevel::Clear,
            1 => ProtectionLevel::Integrity,
            2 => ProtectionLevel::Confidentiality,
            3 => ProtectionLevel::Selective,
            other => return Err(ProtoError::UnknownProtectionLevel(other)),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ProtectionLevel::Clear => "clear",
            ProtectionLevel::Integrity => "integrity",
            ProtectionLevel::Confidentiality => "confidentiality",
            ProtectionLevel::Selective => "selective",
        }
    }

    /// Whether data after the sub-negotiation is encapsulated (MTYP 3).
    pub fn wraps(self) -> bool {
        self != ProtectionLevel::Clear
    }
}
