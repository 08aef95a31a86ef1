//! Invariants every decoder keeps on any input, shared by all targets.
//!
//! A decoder never reads more than 2 + 255 + 2 bytes past its fixed header
//! (4 + 65,535 for an RFC 1961 message), so the prefix loops below are
//! bounded however long the fuzz input is.

use std::fmt::Debug;

use coresocks_proto::{Codec, Decoded};

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
            for len in 0..n {
                match T::decode(&data[..len]) {
                    Ok(Decoded::Incomplete(k)) => {
                        assert!(k >= 1 && k <= n - len, "prefix {len}: Incomplete({k})")
                    }
                    other => panic!("prefix {len} of a complete message gave {other:?}"),
                }
            }

            let mut wire = Vec::new();
            value.encode(&mut wire);
            // Shorter only for a greeting with duplicate methods.
            assert!(wire.len() <= n, "re-encoded {} bytes from {n}", wire.len());
            match T::decode(&wire) {
                Ok(Decoded::Complete(again, m)) => {
                    assert_eq!(again, value, "decoding the re-encoding");
                    assert_eq!(m, wire.len(), "decoding the re-encoding");
                }
                other => panic!("re-encoding {wire:02x?} gave {other:?}"),
            }
        }
        Ok(Decoded::Incomplete(k)) => {
            assert!(k >= 1, "Incomplete(0)");
            for len in 0..data.len() {
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
