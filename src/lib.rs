//! coresocks: a thread-per-core SOCKS5 proxy for Linux.
//!
//! - [`proto`]: the sans-io RFC 1928/1929 codec, its own crate
//!   (`coresocks-proto`, shared with loadgen's client and the fuzz targets)
//! - [`runtime`]: pinned executors, per-core listeners, signals, shutdown
//! - [`session`]: one connection's state machine, greeting to access log
//! - [`relay`]: the engines that move a tunnel's bytes
//! - [`udp`]: UDP ASSOCIATE, per-core associations
//! - [`resolve`]: name resolution off the cores
//! - [`config`]: flags and TOML file
//! - [`policy`]: egress rules, who may reach which destination
//! - [`gssapi`]: Kerberos for the GSSAPI method (RFC 1961)
//! - [`client`]: a small SOCKS5 client over the same codec

pub mod client;
pub mod config;
pub mod gss_binding;
pub mod logging;
pub(crate) mod metrics;
pub mod policy;
pub(crate) mod quota;
pub(crate) mod relay;
pub(crate) mod resolve;
pub mod runtime;
pub mod session;
pub(crate) mod stop;
pub(crate) mod udp;

pub use coresocks_proto as proto;
// The I/O layer is a crate of its own; the proxy's modules reach it by
// these names.
pub(crate) use coresocks_io::{events, sys};
