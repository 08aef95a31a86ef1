//! RFC 1929 username/password sub-negotiation.
use super::{need, Codec, Decoded, ProtoError};

/// VER of the RFC 1929 sub-negotiation (not the SOCKS version).
pub const AUTH_VERSION: u8 = 0x01;

/// VER, ULEN, UNAME, PLEN, PASSWD. Both fields are at most 255 bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct UserPassRequest {
    pub username: Vec<u8>,
    pub password: Vec<u8>,
}

// Never print a password, not even in debug logs.
impl std::fmt::Debug for UserPassRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserPassRequest")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Codec for UserPassRequest {
    fn decode(buf: &[u8]) -> Result<Decoded<UserPassRequest>, ProtoError> {
        need!(buf, 2);
        if buf[0] != AUTH_VERSION {
            return Err(ProtoError::UnsupportedAuthVersion(buf[0]));
        }
        let ulen = buf[1] as usize;
        if ulen == 0 {
            return Err(ProtoError::EmptyUsername);
        }
        need!(buf, 2 + ulen + 1);
        let plen = buf[2 + ulen] as usize;
        let total = 2 + ulen + 1 + plen;
        need!(buf, total);
        Ok(Decoded::Complete(
            UserPassRequest {
                username: buf[2..2 + ulen].to_vec(),
                password: buf[3 + ulen..total].to_vec(),
            },
            total,
        ))
    }

    /// Encodes the request; fields longer than 255 bytes are cut to 255.
    fn encode(&self, out: &mut Vec<u8>) {
        let user = &self.username[..self.username.len().min(255)];
        let pass = &self.password[..self.password.len().min(255)];
        out.push(AUTH_VERSION);
        out.push(user.len() as u8);
        out.extend_from_slice(user);
        out.push(pass.len() as u8);
        out.extend_from_slice(pass);
    }
}

/// VER, STATUS. Zero is success; anything else is failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserPassStatus(pub u8);

impl UserPassStatus {
    pub const SUCCESS: UserPassStatus = UserPassStatus(0x00);
    pub const FAILURE: UserPassStatus = UserPassStatus(0x01);
    pub const LEN: usize = 2;

    pub fn is_success(&self) -> bool {
        self.0 == 0
    }
}

impl Codec for UserPassStatus {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[AUTH_VERSION, self.0]);
    }

    fn decode(buf: &[u8]) -> Result<Decoded<UserPassStatus>, ProtoError> {
        need!(buf, 2);
        if buf[0] != AUTH_VERSION {
            return Err(ProtoError::UnsupportedAuthVersion(buf[0]));
        }
        Ok(Decoded::Complete(UserPassStatus(buf[1]), 2))
    }
}
