//! UDP through UDP ASSOCIATE: not runnable yet, because coresocks does not
//! implement UDP ASSOCIATE. The pieces that do not depend on the proxy are
//! here so the scenario can be filled in: framing a datagram for the relay
//! and reading one back, with coresocks' own `UdpHeader`.
//!
//! The plan, once the proxy supports it: per association, a TCP control
//! connection does `client::handshake(.., Command::UdpAssociate, ..)` and
//! stays open; the reply's BND address is the relay. Datagrams to the relay
//! carry [`frame`]d requests to a UDP echo target (a mode of `loadgen
//! serve`), at a fixed rate as in the latency scenario, and answers are
//! matched by a sequence number in the payload (UDP may drop or reorder).

use std::net::SocketAddr;

use coresocks::proto::{Decoded, TargetAddr, UdpHeader};

use crate::cli::UdpArgs;
use crate::error::LoadgenError;
use crate::report::Report;
use crate::scenario::PathChoice;

pub fn run(_path: &PathChoice, _args: &UdpArgs) -> Result<Report, LoadgenError> {
    Err(LoadgenError::UdpNotYet)
}

/// Appends the SOCKS5 UDP header for `target`, then `payload`.
#[allow(dead_code)]
pub fn frame(target: SocketAddr, payload: &[u8], out: &mut Vec<u8>) {
    UdpHeader {
        frag: 0,
        target: TargetAddr::Ip(target),
    }
    .encode(out);
    out.extend_from_slice(payload);
}

/// Splits a datagram from the relay into its source and payload. Fragments
/// (FRAG != 0) and malformed headers are dropped, as RFC 1928 allows.
#[allow(dead_code)]
pub fn unframe(datagram: &[u8]) -> Option<(TargetAddr, &[u8])> {
    match UdpHeader::decode(datagram) {
        Ok(Decoded::Complete(header, len)) if header.frag == 0 => {
            Some((header.target, &datagram[len..]))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let target: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let mut d = Vec::new();
        frame(target, b"seq-1", &mut d);
        let (from, payload) = unframe(&d).unwrap();
        assert_eq!(from, TargetAddr::Ip(target));
        assert_eq!(payload, b"seq-1");
        assert!(unframe(&d[..4]).is_none());
        d[2] = 1; // a fragment
        assert!(unframe(&d).is_none());
    }
}
