//! SOCKS4/4a request and reply: what a server reads, and what a client
//! reads back.
#![no_main]

use coresocks_proto::{Socks4Reply, Socks4Request};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check::<Socks4Request>(data);
    common::check::<Socks4Reply>(data);
});
