//! Username/password request and status (RFC 1929).
#![no_main]

use coresocks_proto::{UserPassRequest, UserPassStatus};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check(data, UserPassRequest::decode, UserPassRequest::encode);
    common::check(data, UserPassStatus::decode, |s, out| {
        out.extend_from_slice(&s.encode())
    });
});
