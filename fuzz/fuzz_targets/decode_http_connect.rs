//! HTTP CONNECT request head (RFC 9110 section 9.3.6, RFC 9112 syntax).
#![no_main]

use coresocks_proto::{Codec, ConnectRequest};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    common::check_head::<ConnectRequest>(data);
    // The server answers every refusal with a status.
    if let Err(err) = ConnectRequest::decode(data) {
        assert!(err.http_status().is_some(), "{err:?} has no HTTP status");
    }
});
