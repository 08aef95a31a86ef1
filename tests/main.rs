//! The integration tests, one module per area, linked into one test binary:
//! on a two-core CI machine each extra binary cost over a minute of
//! compiling and linking the same helpers again. Run one area with a filter,
//! e.g. `cargo test --test integration relay::`.

mod common;

mod admission;
mod auth;
mod bind;
mod clients;
mod connect;
mod curl;
mod deploy;
mod errors;
mod fairness;
mod gssapi;
mod kernel_relay;
mod lifecycle;
mod netns;
mod policy;
mod protocols;
mod quota;
mod relay;
mod reload;
mod sockets;
mod third_party;
mod tuning;
mod udp;
mod upgrade;
