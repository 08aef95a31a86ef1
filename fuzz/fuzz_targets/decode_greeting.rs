//! Client greeting and server method selection (RFC 1928 section 3).
#![no_main]

use coresocks_proto::{Greeting, MethodSelection};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check::<Greeting>(data);
    common::check::<MethodSelection>(data);
});
