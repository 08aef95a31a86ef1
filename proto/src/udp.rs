use super::{need, Codec, Decoded, ProtoError, TargetAddr};

/// RSV(2), FRAG, ATYP, DST.ADDR, DST.PORT at the front of every datagram
/// between a client and the UDP relay (RFC 1928 section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    pub frag: u8,
    pub target: TargetAddr,
}

impl Codec for UdpHeader {
    /// Decodes the header at the front of a datagram; the payload starts at
    /// the returned length. A datagram is complete by nature, so
    /// `Incomplete` here means a truncated header (drop the datagram). RSV
    /// must be zero: a datagram that says otherwise was not made by a SOCKS5
    /// client of this version, and is dropped like a fragment.
    fn decode(datagram: &[u8]) -> Result<Decoded<UdpHeader>, ProtoError> {
        need!(datagram, 3);
        let rsv = u16::from_be_bytes([datagram[0], datagram[1]]);
        if rsv != 0 {
            return Err(ProtoError::NonZeroReserved(rsv));
        }
        let frag = datagram[2];
        Ok(match TargetAddr::decode(&datagram[3..])? {
            Decoded::Complete(target, n) => Decoded::Complete(UdpHeader { frag, target }, 3 + n),
            Decoded::Incomplete(more) => Decoded::Incomplete(more),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x00, 0x00, self.frag]);
        self.target.encode(out);
    }
}
