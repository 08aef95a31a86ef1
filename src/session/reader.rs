use crate::events::Stream;
use futures_lite::io::AsyncReadExt;

use super::SessionError;
use crate::proto::{Codec, Decoded, GssMessage};

/// The longest SOCKS handshake message: an RFC 1929 request (1 + 1 + 255 +
/// 1 + 255 bytes). Greetings (257) and requests (262) are shorter. The
/// buffer starts at twice this and grows only for RFC 1961 messages
/// (GSSAPI tokens, up to 4 + 65,535 bytes).
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
    pub async fn next<T: Codec>(&mut self, client: &mut Stream) -> Result<T, SessionError> {
        loop {
            if let Decoded::Complete(value, used) = T::decode(&self.buf[self.start..self.end])? {
                self.start += used;
                return Ok(value);
            }
            if self.end == self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.end == self.buf.len() {
                    // One message fills the buffer: decoders bound every
                    // message (GssMessage::MAX_LEN at most), so this
                    // doubling stops there.
                    let len = (self.buf.len() * 2).min(2 * GssMessage::MAX_LEN);
                    self.buf.resize(len, 0);
                }
            }
            self.read_more(client).await?;
        }
    }

    /// One read into the free end of the buffer; the client's close is
    /// [`SessionError::ClientClosed`].
    async fn read_more(&mut self, client: &mut Stream) -> Result<(), SessionError> {
        let n = client
            .read(&mut self.buf[self.end..])
            .await
            .map_err(SessionError::ClientIo)?;
        if n == 0 {
            return Err(SessionError::ClientClosed);
        }
        self.end += n;
        Ok(())
    }

    /// The first byte not yet taken, read from the client if none is
    /// buffered: what tells the protocols apart.
    pub async fn peek_byte(&mut self, client: &mut Stream) -> Result<u8, SessionError> {
        if self.start == self.end {
            self.read_more(client).await?;
        }
        Ok(self.buf[self.start])
    }

    /// Bytes received past the last decoded message.
    pub fn leftover(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}
