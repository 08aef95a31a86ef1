//! Username/password request and status (RFC 1929).
#![no_main]

use coresocks_proto::{UserPassRequest, UserPassStatus};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check::<UserPassRequest>(data);
    common::check::<UserPassStatus>(data);
});
