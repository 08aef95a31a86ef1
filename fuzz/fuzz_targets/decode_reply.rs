//! Server reply (RFC 1928 section 6), as the load generator's client sees it.
#![no_main]

use coresocks_proto::Reply;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check::<Reply>(data);
});
