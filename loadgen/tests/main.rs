//! loadgen's integration tests, one module per area, linked into one test
//! binary (each extra binary cost a minute of compiling and linking on a
//! two-core CI machine). Run one area with a filter, e.g.
//! `cargo test --workspace --test loadgen udp::`.

mod common;

mod compare;
mod cps;
mod errors;
mod gssapi;
mod idle;
mod labs;
mod latency;
mod outputs;
mod throughput;
mod udp;
