//! UDP relay header (RFC 1928 section 7): every datagram a client sends.
#![no_main]

use coresocks_proto::UdpHeader;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check::<UdpHeader>(data);
});
