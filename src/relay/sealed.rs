//! The sealed engine: a GSSAPI tunnel at integrity or confidentiality
//! (RFC 1961 section 5). Client to target, it reads whole encapsulated
//! messages (MTYP 3), checks and unwraps each, and writes the plaintext;
//! target to client, it reads at most one message's worth of plaintext,
//! wraps it and writes the message. The bytes must pass through the
//! process, so this is a copy engine; a `clear` GSSAPI tunnel needs none of
//! it and relays like any other.
//!
//! Both directions share the one security context (a per-tunnel `Rc`, on
//! one core); it is borrowed only inside a wrap or unwrap, never across a
//! wait.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;
use std::task::{Context, Poll};

use super::step::{Fill, Flush};
use crate::events::Stream;
use crate::gss_binding::{GssError, Protection, MAX_PLAIN_PER_MESSAGE};

/// One tunnel's security context, shared by its two directions.
pub(super) type SharedProtection = Rc<RefCell<Protection>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seal {
    /// Target to client: wrap what the target sends.
    Wrap,
    /// Client to target: unwrap what the client sends.
    Unwrap,
}

pub(super) struct SealedState {
    seal: Seal,
    protection: SharedProtection,
    /// Unwrap: client bytes read that are not yet a whole message. Wrap:
    /// the read buffer.
    input: Vec<u8>,
    /// Bytes to write: `output[pos..]`.
    output: Vec<u8>,
    pos: usize,
    /// Plaintext octets `output` stands for, counted once it is written.
    plain: usize,
}

/// A context that refuses a message breaks the tunnel: the peer sent
/// something forged, damaged or out of order.
fn refused(e: GssError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("GSS-API: {e}"))
}

impl SealedState {
    /// `pending`: client bytes that arrived with the request, still
    /// wrapped (Unwrap only).
    pub(super) fn new(seal: Seal, protection: SharedProtection, pending: &[u8]) -> SealedState {
        SealedState {
            seal,
            protection,
            input: pending.to_vec(),
            output: Vec::new(),
            pos: 0,
            plain: 0,
        }
    }

    /// Writes pending output to `dst`; `Moved` counts plaintext, credited
    /// when its whole message is out.
    pub(super) fn poll_flush(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut Stream,
    ) -> io::Result<Flush> {
        if self.pos == self.output.len() {
            return Ok(Flush::Empty);
        }
        match dst.poll_send(cx, &self.output[self.pos..]) {
            Poll::Ready(Ok(0)) => Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => {
                self.pos += n;
                if self.pos < self.output.len() {
                    return Ok(Flush::Moved(0));
                }
                // All out: an idle tunnel keeps no buffer.
                self.output = Vec::new();
                self.pos = 0;
                Ok(Flush::Moved(std::mem::take(&mut self.plain)))
            }
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(Flush::Blocked),
        }
    }

    /// Produces the next output from `src`. Only called when empty.
    pub(super) fn poll_fill(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        limit: usize,
    ) -> io::Result<Fill> {
        match self.seal {
            Seal::Wrap => self.poll_wrap(cx, src, limit),
            Seal::Unwrap => self.poll_unwrap(cx, src),
        }
    }

    fn poll_wrap(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut Stream,
        limit: usize,
    ) -> io::Result<Fill> {
        let room = MAX_PLAIN_PER_MESSAGE.min(limit).max(1);
        self.input.resize(room, 0);
        let read = src.poll_recv(cx, &mut self.input[..room]);
        let filled = match read {
            Poll::Ready(Ok(0)) => Fill::Eof,
            Poll::Ready(Ok(n)) => {
                self.protection
                    .borrow_mut()
                    .seal(&self.input[..n], &mut self.output)
                    .map_err(refused)?;
                self.plain = n;
                Fill::Data(n)
            }
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => Fill::Blocked,
        };
        self.input = Vec::new();
        Ok(filled)
    }

    fn poll_unwrap(&mut self, cx: &mut Context<'_>, src: &mut Stream) -> io::Result<Fill> {
        loop {
            let opened = self
                .protection
                .borrow_mut()
                .open_message(&self.input)
                .map_err(refused)?;
            if let Some((plain, used)) = opened {
                self.input.drain(..used);
                let n = plain.len();
                self.output = plain;
                self.plain = n;
                if n == 0 {
                    // An empty message carries nothing; read on.
                    continue;
                }
                return Ok(Fill::Data(n));
            }
            let at = self.input.len();
            self.input.resize(at + MAX_PLAIN_PER_MESSAGE, 0);
            let read = src.poll_recv(cx, &mut self.input[at..]);
            let got = match &read {
                Poll::Ready(Ok(n)) => *n,
                _ => 0,
            };
            self.input.truncate(at + got);
            match read {
                Poll::Ready(Ok(0)) if self.input.is_empty() => return Ok(Fill::Eof),
                Poll::Ready(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed in the middle of an encapsulated message",
                    ))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    if self.input.is_empty() {
                        self.input = Vec::new();
                    }
                    return Ok(Fill::Blocked);
                }
            }
        }
    }
}
