//! Client request (RFC 1928 section 4), and the address decoder on its own.
#![no_main]

use coresocks_proto::{Request, TargetAddr};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check::<Request>(data);
    common::check::<TargetAddr>(data);
});
