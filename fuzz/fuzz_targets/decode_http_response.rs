//! A proxy's response head to CONNECT, as the load generator's client
//! sees it.
#![no_main]

use coresocks_proto::ConnectResponseHead;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check_head::<ConnectResponseHead>(data);
});
