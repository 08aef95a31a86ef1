//! The client's side of the handshake: its stream, and the bytes read
//! ahead of the message being decoded (pipelined messages, or early data
//! after the request, which goes on to the target). Only the handshake's
//! states (`handshake.rs`) hold one, so a tunnel does not carry its buffer.

use crate::events::Stream;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};

use super::SessionError;
use crate::proto::{Codec, Decoded, GssMessage};

/// The longest SOCKS handshake message: an RFC 1929 request (1 + 1 + 255 +
/// 1 + 255 bytes). Greetings (257) and requests (262) are shorter. The
/// buffer starts at twice this and grows only for RFC 1961 messages
/// (GSSAPI tokens, up to 4 + 65,535 bytes).
const MAX_MESSAGE: usize = 513;

/// Reads handshake messages off the client stream through the sans-io
/// decoders, and writes the handshake's answers.
pub(super) struct Wire {
    client: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Wire {
    pub(super) fn new(client: Stream) -> Wire {
        Wire {
            client,
            buf: vec![0u8; 2 * MAX_MESSAGE],
            start: 0,
            end: 0,
        }
    }

    /// The next message of type `T`, read as far as it needs.
    pub(super) async fn next<T: Codec>(&mut self) -> Result<T, SessionError> {
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
            self.read_more().await?;
        }
    }

    /// One read into the free end of the buffer; the client's close is
    /// [`SessionError::ClientClosed`].
    async fn read_more(&mut self) -> Result<(), SessionError> {
        let n = self
            .client
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
    pub(super) async fn peek_byte(&mut self) -> Result<u8, SessionError> {
        if self.start == self.end {
            self.read_more().await?;
        }
        Ok(self.buf[self.start])
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        send(&mut self.client, bytes).await
    }

    /// The stream, and the bytes received past the last decoded message.
    pub(super) fn into_parts(self) -> (Stream, Vec<u8>) {
        let leftover = self.buf[self.start..self.end].to_vec();
        (self.client, leftover)
    }
}

/// Writes all of `bytes` to the client: for the states that own its
/// stream (this wire, and a session's replies).
pub(super) async fn send(client: &mut Stream, bytes: &[u8]) -> Result<(), SessionError> {
    client
        .write_all(bytes)
        .await
        .map_err(SessionError::ClientIo)
}
