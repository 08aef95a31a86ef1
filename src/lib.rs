//! coresocks: a thread-per-core SOCKS5 proxy for Linux.
//!
//! - [`proto`]: sans-io RFC 1928/1929 codec (shared with loadgen's client)
//! - [`runtime`]: pinned executors, per-core listeners, signals, shutdown
//! - [`session`]: one connection's state machine, greeting to access log
//! - [`relay`]: the engines that move a tunnel's bytes
//! - [`udp`]: UDP ASSOCIATE, per-core associations
//! - [`resolve`]: name resolution off the cores
//! - [`config`]: flags and TOML file
//! - [`client`]: a small SOCKS5 client over the same codec

pub mod client;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod relay;
pub mod resolve;
pub mod runtime;
pub mod session;
pub mod sys;
pub mod udp;
