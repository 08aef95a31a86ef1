//! Invariants every decoder keeps on any input, shared by all targets.
//!
//! A decoder never reads more than 2 + 255 + 2 bytes past its fixed header
//! (4 + 65,535 for an RFC 1961 message, 8 + 256 + 256 for SOCKS4, 8,192 for
//! an HTTP head), so the prefix loops below are bounded however long the
//! fuzz input is. An HTTP decoder reads the whole prefix on every call, so
//! for heads the loops take a sample of the prefixes.

// Each target compiles this module and uses `check` or `check_head`.
#![allow(dead_code)]

use std::fmt::Debug;

use coresocks_proto::{Codec, Decoded, MAX_HEAD};

/// Bytes appended to show that an error cannot be undone by more input:
/// more than any message's longest variable part.
const MORE: [u8; 300] = [0; 300];

/// Decodes `data` and checks what the result promises:
///
/// * `Complete(v, n)`: `1 <= n <= data.len()`; `data[..n]` alone decodes to
///   the same; each strict prefix of `data[..n]` is `Incomplete(k)` with
///   `1 <= k <= n - prefix`; `v` re-encodes to at most `n` bytes that decode
///   to `Complete(v, encoded length)`.
/// * `Incomplete(k)`: `k >= 1`; every prefix of `data` is `Incomplete` too;
///   `k - 1` more bytes still leave it `Incomplete` (`k` is a lower bound).
/// * `Err(e)`: appending bytes gives the same `Err(e)` (errors are final).
pub fn check<T: Codec + Debug + PartialEq>(data: &[u8]) {
    check_with::<T>(data, Reencoding::NoLonger);
}

/// [`check`] for a text head (HTTP CONNECT): `v` re-encodes to its
/// canonical form, which may be longer than the `n` bytes it came from
/// (CRLF for LF, a Host field added) but fits in [`MAX_HEAD`] and encodes
/// to itself again. Prefixes are sampled, not all checked.
pub fn check_head<T: Codec + Debug + PartialEq>(data: &[u8]) {
    check_with::<T>(data, Reencoding::Canonical);
}

/// How a decoded value's encoding relates to the bytes it came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reencoding {
    /// Binary messages: at most the bytes consumed.
    NoLonger,
    /// Text heads: a canonical form of any length up to `MAX_HEAD`.
    Canonical,
}

/// The prefix lengths below `n` to check: all of them for binary messages;
/// for heads the first and last 128 and about 64 between.
fn prefix_lens(n: usize, reencoding: Reencoding) -> impl Iterator<Item = usize> {
    let step = match reencoding {
        Reencoding::NoLonger => 1,
        Reencoding::Canonical => (n / 64).max(1),
    };
    (0..n).filter(move |&len| step == 1 || len < 128 || len + 128 >= n || len % step == 0)
}

fn check_with<T: Codec + Debug + PartialEq>(data: &[u8], reencoding: Reencoding) {
    match T::decode(data) {
        Ok(Decoded::Complete(value, n)) => {
            assert!(n >= 1 && n <= data.len(), "consumed {n} of {}", data.len());
            match T::decode(&data[..n]) {
                Ok(Decoded::Complete(again, m)) => {
                    assert_eq!(again, value, "decoding only the consumed bytes");
                    assert_eq!(m, n, "decoding only the consumed bytes");
                }
                other => panic!("the {n} consumed bytes alone gave {other:?}"),
            }
            for len in prefix_lens(n, reencoding) {
                match T::decode(&data[..len]) {
                    Ok(Decoded::Incomplete(k)) => {
                        assert!(k >= 1 && k <= n - len, "prefix {len}: Incomplete({k})")
                    }
                    other => panic!("prefix {len} of a complete message gave {other:?}"),
                }
            }

            let mut wire = Vec::new();
            value.encode(&mut wire);
            match reencoding {
                // Shorter only for a greeting with duplicate methods.
                Reencoding::NoLonger => {
                    assert!(wire.len() <= n, "re-encoded {} bytes from {n}", wire.len())
                }
                Reencoding::Canonical => {
                    assert!(wire.len() <= MAX_HEAD, "re-encoded {} bytes", wire.len())
                }
            }
            match T::decode(&wire) {
                Ok(Decoded::Complete(again, m)) => {
                    assert_eq!(again, value, "decoding the re-encoding");
                    assert_eq!(m, wire.len(), "decoding the re-encoding");
                    if reencoding == Reencoding::Canonical {
                        let mut canonical = Vec::new();
                        again.encode(&mut canonical);
                        assert_eq!(canonical, wire, "the canonical form encodes to itself");
                    }
                }
                other => panic!("re-encoding {wire:02x?} gave {other:?}"),
            }
        }
        Ok(Decoded::Incomplete(k)) => {
            assert!(k >= 1, "Incomplete(0)");
            for len in prefix_lens(data.len(), reencoding) {
                match T::decode(&data[..len]) {
                    Ok(Decoded::Incomplete(j)) => assert!(j >= 1, "prefix {len}: Incomplete(0)"),
                    other => panic!("prefix {len} of an incomplete message gave {other:?}"),
                }
            }
            let mut longer = data.to_vec();
            longer.resize(data.len() + k - 1, 0xFF);
            match T::decode(&longer) {
                Ok(Decoded::Incomplete(_)) => {}
                other => panic!("Incomplete({k}), yet {} more bytes gave {other:?}", k - 1),
            }
        }
        Err(err) => {
            let mut longer = data.to_vec();
            longer.extend_from_slice(&MORE);
            assert_eq!(T::decode(&longer), Err(err), "an error must be final");
        }
    }
}
