use futures_lite::io::AsyncReadExt;
use glommio::net::TcpStream;

use super::SessionError;
use crate::proto::{Codec, Decoded};

/// The longest handshake message: an RFC 1929 request (1 + 1 + 255 + 1 +
/// 255 bytes). Greetings (257) and requests (262) are shorter.
const MAX_MESSAGE: usize = 513;

/// Reads handshake messages off the client stream through the sans-io
/// decoders, keeping bytes that arrive ahead of time (pipelined messages,
/// or early data after the request, which goes on to the target). Lives
/// only for the handshake, so a tunnel does not carry its buffer.
pub struct MessageReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl MessageReader {
    pub fn new() -> MessageReader {
        MessageReader {
            buf: vec![0u8; 2 * MAX_MESSAGE],
            start: 0,
            end: 0,
        }
    }

    /// The next message of type `T`, read as far as it needs.
    pub async fn next<T: Codec>(&mut self, client: &mut TcpStream) -> Result<T, SessionError> {
        loop {
            if let Decoded::Complete(value, used) = T::decode(&self.buf[self.start..self.end])? {
                self.start += used;
                return Ok(value);
            }
            if self.end == self.buf.len() {
                // Decoders bound every message to MAX_MESSAGE bytes, so
                // moving the unread part to the front always makes room.
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = client
                .read(&mut self.buf[self.end..])
                .await
                .map_err(SessionError::ClientIo)?;
            if n == 0 {
                return Err(SessionError::ClientClosed);
            }
            self.end += n;
        }
    }

    /// Bytes received past the last decoded message.
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}
