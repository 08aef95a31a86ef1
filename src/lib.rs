//! coresocks: a thread-per-core SOCKS5 (and SOCKS4/4a, HTTP CONNECT) proxy
//! for Linux.
//!
//! - [`proto`]: the sans-io codecs, their own crate (`coresocks-proto`,
//!   shared with the client and the fuzz targets)
//! - `runtime`: pinned executors, per-core listeners, signals, shutdown
//!   ([`run`] starts it)
//! - `session`: one connection's state machine, first byte to access log
//! - `relay`: the engines that move a tunnel's bytes
//! - `udp`: UDP ASSOCIATE, per-core associations
//! - `resolve`: name resolution off the cores
//! - [`config`]: flags and TOML file
//! - [`policy`]: egress rules, who may reach which destination
//! - [`gss_binding`]: Kerberos for the GSSAPI method (RFC 1961), from the
//!   client crate (`coresocks-client`), which both sides use
//! - [`client`]: the client over the same codecs (`coresocks-client`)
//! - `sys`, `events`: the I/O layer (`coresocks-io`)

#![warn(unreachable_pub)]
// The public modules show only what the binary and the benches use (each
// item below them that nothing outside needs is `pub(crate)`); the tests
// drive the binary, through `client` and `proto`.
pub mod config;
pub mod logging;
pub(crate) mod metrics;
pub mod policy;
pub(crate) mod quota;
pub(crate) mod relay;
pub(crate) mod resolve;
pub(crate) mod runtime;
pub(crate) mod session;

pub use runtime::{probe_sockmap, Reloader, RuntimeError};

/// Runs the proxy until it shuts down: a pinned executor per core, each
/// serving the connections its listeners accept (`session::serve`).
pub fn run(config: config::Config, reloader: Reloader) -> Result<(), RuntimeError> {
    runtime::run(config, reloader, session::serve_boxed)
}
pub(crate) mod stop;
pub(crate) mod udp;

pub use coresocks_proto as proto;
// The client (tests, loadgen) and the GSS-API binding both sides use.
pub use coresocks_client as client;
pub use coresocks_client::gss as gss_binding;
// The I/O layer is a crate of its own; the proxy's modules reach it by
// these names.
pub(crate) use coresocks_io::{events, sys};
