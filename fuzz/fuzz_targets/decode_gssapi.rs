//! RFC 1961 framing (GSS-API method) and the protection-level octet.
#![no_main]

use coresocks_proto::{GssMessage, ProtectionLevel};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check::<GssMessage>(data);
    if let Some(&octet) = data.first() {
        if let Ok(level) = ProtectionLevel::from_octet(octet) {
            assert_eq!(level.octet(), octet);
        }
    }
});
