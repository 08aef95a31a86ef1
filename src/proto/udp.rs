use super::{need, Decoded, ProtoError, TargetAddr};

/// RSV(2), FRAG, ATYP, DST.ADDR, DST.PORT at the front of every datagram
/// between a client and the UDP relay (RFC 1928 section 7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    pub frag: u8,
    pub target: TargetAddr,
}

impl UdpHeader {
    /// Decodes the header at the front of a datagram; the payload starts at
    /// the returned length. A datagram is complete by nature, so
    /// `Incomplete` here means a truncated header (drop the datagram).
    pub fn decode(datagram: &[u8]) -> Result<Decoded<UdpHeader>, ProtoError> {
        need!(datagram, 3);
        let frag = datagram[2];
        Ok(match TargetAddr::decode(&datagram[3..])? {
            Decoded::Complete(target, n) => Decoded::Complete(UdpHeader { frag, target }, 3 + n),
            Decoded::Incomplete(more) => Decoded::Incomplete(more),
        })
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0x00, 0x00, self.frag]);
        self.target.encode(out);
    }
}
