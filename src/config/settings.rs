//! The settings as the command line and the config file give them (clap
//! and serde, every field optional), and how the two combine: flags over
//! the file. `Config::from_settings` (in `mod.rs`) checks them and fills
//! in the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use super::{
    AccessLogFormat, ConfigError, Congestion, CoreSpec, EventRingSetup, GssProtection, Protocol,
    RelayMode, Steering,
};

/// Settings shared by the command line and the TOML file. Field docs are the
/// `--help` text; each says its default.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Address to listen on; repeat for several (IPv4 and IPv6)
    /// [default: 127.0.0.1:1080]
    #[arg(short, long = "listen", value_name = "ADDR:PORT")]
    #[serde(default)]
    pub listen: Vec<SocketAddr>,

    /// Protocols the listeners serve, told apart by the client's first
    /// byte: socks5, socks4 (4a too), http-connect; a comma-separated list
    /// [default: socks5]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    #[serde(default)]
    pub protocols: Vec<Protocol>,

    /// CPUs to run one pinned executor on: "all" (every CPU this process may
    /// use), a count ("4": the first four), or a list ("0,2-3") [default: all]
    #[arg(long, value_name = "SPEC")]
    pub cores: Option<CoreSpec>,

    /// Listen backlog of each core's socket [default: 1024]
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,

    /// Which core's listener takes a new connection: `hash` (the kernel's
    /// SO_REUSEPORT hash), `incoming-cpu` (SO_INCOMING_CPU: the core on the
    /// CPU that processed the SYN) or `cpu-bpf` (the same by a reuseport
    /// BPF program) [default: hash]
    #[arg(long, value_name = "MODE")]
    pub listen_steering: Option<Steering>,

    /// TCP_DEFER_ACCEPT: hand a connection to its core only once the
    /// client's greeting has arrived, waiting at most this long (whole
    /// seconds) [default: off]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub defer_accept: Option<Duration>,

    /// TCP_FASTOPEN on the listeners, with this many pending requests:
    /// clients that use fast open send the greeting in their SYN
    /// [default: off]
    #[arg(long, value_name = "N")]
    pub listen_fastopen: Option<u32>,

    /// SO_BUSY_POLL: poll the device queue for this many microseconds
    /// before sleeping, on client and target sockets (needs a driver with
    /// NAPI busy polling) [default: off]
    #[arg(long, value_name = "USECS")]
    pub busy_poll: Option<u32>,

    /// With --busy-poll: SO_PREFER_BUSY_POLL, keeping the device's
    /// interrupts off while the proxy polls [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub prefer_busy_poll: Option<bool>,

    /// SO_RCVBUF of client and target sockets in bytes (turns the kernel's
    /// receive autotuning off for them) [default: autotuned]
    #[arg(long, value_name = "BYTES")]
    pub socket_receive_buffer: Option<usize>,

    /// SO_SNDBUF of client and target sockets in bytes (turns the kernel's
    /// send autotuning off for them) [default: autotuned]
    #[arg(long, value_name = "BYTES")]
    pub socket_send_buffer: Option<usize>,

    /// TCP congestion control of client sockets (TCP_CONGESTION: `cubic`,
    /// `bbr`, `reno`, ... as in /proc/sys/net/ipv4/tcp_available_congestion_control)
    /// [default: the system's, net.ipv4.tcp_congestion_control]
    #[arg(long, value_name = "NAME")]
    pub client_congestion: Option<Congestion>,

    /// TCP congestion control of target sockets, as --client-congestion
    /// [default: the system's]
    #[arg(long, value_name = "NAME")]
    pub target_congestion: Option<Congestion>,

    /// Set IPV6_V6ONLY on IPv6 listeners, so that [::] takes IPv6 only
    /// [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ipv6_only: Option<bool>,

    /// Require RFC 1929 username/password from the users in FILE (one
    /// `user:password` per line, `#` comments); without it no auth is asked
    /// [default: none]
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,

    /// Offer GSSAPI (RFC 1961, Kerberos) with the service keys in this
    /// keytab; clients get a ticket for `rcmd/<proxy host>` (curl's default
    /// service name) [default: no GSSAPI]
    #[arg(long, value_name = "FILE")]
    pub gssapi_keytab: Option<PathBuf>,

    /// GSSAPI: the service principal clients must ask for, e.g.
    /// `rcmd/proxy.example.com@EXAMPLE.COM` [default: any in the keytab]
    #[arg(long, value_name = "PRINCIPAL")]
    pub gssapi_principal: Option<String>,

    /// GSSAPI: the least per-message protection a client gets; `clear`
    /// (authentication only) is what curl supports [default: integrity]
    #[arg(long, value_name = "LEVEL")]
    pub gssapi_protection: Option<GssProtection>,

    /// On SIGHUP, cut (reset) the open tunnels of RFC 1929 users that the
    /// new users file no longer holds, instead of letting them run to
    /// their end [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub reload_closes_removed_users: Option<bool>,

    /// How long a client has to finish greeting, auth and request [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub handshake_timeout: Option<Duration>,

    /// How long resolving a domain name may take [default: 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub resolve_timeout: Option<Duration>,

    /// How long connecting to a target may take, for all of its addresses
    /// together [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_timeout: Option<Duration>,

    /// Happy Eyeballs (RFC 8305): when a target has several addresses, start
    /// the next connection attempt after this long without an answer, while
    /// the earlier ones go on [default: 250ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub connect_attempt_delay: Option<Duration>,

    /// Close a tunnel that moved no byte in either direction for this long
    /// [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,

    /// On SIGINT/SIGTERM, stop accepting and let open tunnels finish for this
    /// long before exiting [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub shutdown_grace: Option<Duration>,

    /// Most connections (handshaking or relaying) one core holds; when it is
    /// full, the oldest unfinished handshake is closed to make room, and only
    /// when every connection is past its handshake are new ones closed at
    /// once [default: 10000, lowered to fit RLIMIT_NOFILE]
    #[arg(long, value_name = "N")]
    pub max_tunnels_per_core: Option<usize>,

    /// Most connections one core holds in their handshake (greeting, auth,
    /// request); past it, the oldest unfinished handshake is closed to make
    /// room [default: 2048, at most max-tunnels-per-core]
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_core: Option<usize>,

    /// Most connections one client IP address holds in their handshake on
    /// one core; past it, that address's oldest unfinished handshake is
    /// closed [default: 256]
    #[arg(long, value_name = "N")]
    pub max_handshakes_per_client: Option<usize>,

    /// The part of each core's descriptors (its tunnels, UDP associations
    /// and BIND listeners, each counted at the sockets it holds) that one
    /// client IP address may hold; past it, that address's new requests are
    /// answered 0x02. Raise it (up to 1) when many users share one address:
    /// behind a NAT, a load balancer or another proxy [default: 0.25]
    #[arg(long, value_name = "FRACTION")]
    pub client_share: Option<f64>,

    /// Threads per core that run getaddrinfo, so a slow resolver never blocks
    /// a core [default: 4]
    #[arg(long, value_name = "N")]
    pub resolver_threads: Option<usize>,

    /// Threads per core that check Argon2 password hashes, apart from the
    /// resolver's; each holds one hash's memory (19 MiB at the default
    /// parameters) [default: 1]
    #[arg(long, value_name = "N")]
    pub hash_threads: Option<usize>,

    /// Wrong passwords per minute one client IP address may try (each core
    /// its share, in bursts of up to ten seconds' worth); past it, that
    /// address's logins are refused without a check until the rate allows
    /// [default: 60]
    #[arg(long, value_name = "N")]
    pub auth_failures_per_client: Option<u32>,

    /// How long a verified Argon2 login is remembered (a keyed MAC of user
    /// and password, per core, forgotten on reload), so a client that logs
    /// in again is not hashed again; 0s turns it off [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub auth_cache: Option<Duration>,

    /// Relay engine for TCP tunnels [default: auto]
    #[arg(long, value_name = "MODE")]
    pub relay: Option<RelayMode>,

    /// Setup of each core's own io_uring for readiness waits: auto,
    /// defer-taskrun, coop-taskrun, plain or off [default: auto]
    #[arg(long, value_name = "SETUP")]
    pub event_ring: Option<EventRingSetup>,

    /// Let each socket's readiness wait be one multishot poll for its life
    /// (Linux 5.13+); false re-arms a one-shot poll per wait, for kernels
    /// where multishot misbehaves [default: true where the kernel has it]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub multishot_poll: Option<bool>,

    /// Size of one copy-relay buffer in bytes [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub buffer_size: Option<usize>,

    /// Capacity of one splice pipe in bytes, at most
    /// /proc/sys/fs/pipe-max-size [default: 262144]
    #[arg(long, value_name = "BYTES")]
    pub pipe_size: Option<usize>,

    /// Most pipes one core holds for splicing; a direction that finds none
    /// copies instead [default: a tenth of the core's descriptors, at most
    /// 256]
    #[arg(long, value_name = "N")]
    pub max_pipes_per_core: Option<usize>,

    /// With --relay auto: a read this large (bulk data is waiting) moves a
    /// direction from copy to splice, and a splice under a quarter of it
    /// moves it back; at most --buffer-size [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub splice_threshold: Option<u64>,

    /// BIND: how long to wait for the incoming connection [default: 60s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub bind_timeout: Option<Duration>,

    /// UDP ASSOCIATE: close an association that relayed no datagram for this
    /// long [default: 2m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, deserialize_with = "de_duration")]
    pub udp_idle_timeout: Option<Duration>,

    /// Most UDP associations one core holds; more are answered 0x01
    /// [default: 4096]
    #[arg(long, value_name = "N")]
    pub max_udp_associations_per_core: Option<usize>,

    /// Most distinct targets one UDP association may send to; datagrams to
    /// more are dropped [default: 256]
    #[arg(long, value_name = "N")]
    pub max_udp_targets: Option<usize>,

    /// Log level for stderr: error, warn, info, debug, trace [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// Where the access log (one line per finished connection) goes: "stderr",
    /// "off", a file path, or "syslog" (the local syslog daemon at /dev/log;
    /// "syslog:PATH" for another datagram socket; facility daemon, level
    /// info, tag coresocks[PID]) [default: stderr]
    #[arg(long, value_name = "DEST")]
    pub access_log: Option<String>,

    /// Zero-downtime upgrade: a new process started with the same PATH
    /// takes this one's listening sockets over (SCM_RIGHTS), and this one
    /// stops accepting and drains; see docs/OPERATIONS.md, "Upgrades
    /// without downtime" [default: none]
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,

    /// Access-log lines as `logfmt` (key=value) or `json` (one object per
    /// line) [default: logfmt]
    #[arg(long, value_name = "FORMAT")]
    pub access_log_format: Option<AccessLogFormat>,

    /// Serve Prometheus metrics over HTTP on this address [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,

    /// Open a destination that is denied by default (or by a later rule):
    /// a CIDR, an IP, a domain ("example.com", ".example.com" with its
    /// subdomains) or "private" (loopback, RFC 1918, link-local, ULA...:
    /// everything not globally reachable). Repeatable; evaluated after
    /// --deny and before the config file's [[rule]] tables. A benchmark on
    /// loopback needs `--allow 127.0.0.0/8` [default: none, so private
    /// destinations are denied]
    #[arg(long, value_name = "TARGET")]
    #[serde(skip)]
    pub allow: Vec<String>,

    /// Refuse a destination (same TARGET forms as --allow), with reply
    /// 0x02. Repeatable; evaluated first [default: none]
    #[arg(long, value_name = "TARGET")]
    #[serde(skip)]
    pub deny: Vec<String>,

    /// Most tunnels (CONNECT, BIND, UDP ASSOCIATE) one authenticated user
    /// holds at once; more are answered 0x02. Each core enforces its share
    /// (the limit over the cores, rounded up) [default: none]
    #[arg(long, value_name = "N")]
    pub max_tunnels_per_user: Option<u32>,

    /// Most tunnels one client IP address holds at once (0x02 past it),
    /// enforced per core as above [default: none]
    #[arg(long, value_name = "N")]
    pub max_tunnels_per_client: Option<u32>,

    /// Most new tunnels per second for one authenticated user (a token
    /// bucket holding one second's worth); faster requests are answered
    /// 0x01 [default: none]
    #[arg(long, value_name = "N")]
    pub tunnel_rate_per_user: Option<u32>,

    /// Most new tunnels per second from one client IP address (0x01 past
    /// it) [default: none]
    #[arg(long, value_name = "N")]
    pub tunnel_rate_per_client: Option<u32>,

    /// Bandwidth of one authenticated user's tunnels together, in each
    /// direction: bytes per second with an optional unit ("500k", "10MB",
    /// "1MiB", "100Mbit"). Each core meters its share [default: none]
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_rate")]
    pub bandwidth_per_user: Option<u64>,

    /// Bandwidth of one client IP address's tunnels together, in each
    /// direction (same RATE forms) [default: none]
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    #[serde(default, deserialize_with = "de_rate")]
    pub bandwidth_per_client: Option<u64>,

    /// Outbound source address for connections and UDP; repeat for a pool
    /// (IPv4 and IPv6 members serve destinations of their family) [default:
    /// none, the kernel chooses]
    #[arg(long, value_name = "IP")]
    #[serde(default)]
    pub egress_source: Vec<std::net::IpAddr>,

    /// How a source is picked from a pool: random, or sticky (a hash of the
    /// user, or of the client address without one) [default: random]
    #[arg(long, value_name = "HOW")]
    pub egress_source_pick: Option<crate::policy::source::SourcePick>,

    /// Bind outbound sockets to this network interface (SO_BINDTODEVICE,
    /// needs CAP_NET_RAW) [default: none]
    #[arg(long, value_name = "IFACE")]
    pub egress_interface: Option<String>,

    /// UDP ASSOCIATE: the address the reply gives as BND.ADDR, for a proxy
    /// behind NAT or a load balancer (the port stays the relay's) [default:
    /// the address the client connected to]
    #[arg(long, value_name = "IP")]
    pub udp_advertise: Option<std::net::IpAddr>,

    /// Access rules of the config file (`[[rule]]` tables), evaluated in
    /// order after the flags; see docs/CONFIGURATION.md, "Egress policy".
    #[arg(skip)]
    #[serde(default)]
    pub rule: Vec<crate::policy::RuleSpec>,
}

/// Combines two `Settings`, taking each field from `self` where it is set.
macro_rules! overlay {
    ($hi:expr, $lo:expr, [$($field:ident),*], [$($list:ident),*]) => {
        Settings {
            $($field: $hi.$field.or($lo.$field),)*
            $($list: if $hi.$list.is_empty() { $lo.$list } else { $hi.$list },)*
        }
    };
}

impl Settings {
    /// `self` (the command line) over `file`.
    pub fn over(self, file: Settings) -> Settings {
        overlay!(
            self,
            file,
            [
                cores,
                backlog,
                listen_steering,
                defer_accept,
                listen_fastopen,
                busy_poll,
                prefer_busy_poll,
                socket_receive_buffer,
                socket_send_buffer,
                client_congestion,
                target_congestion,
                ipv6_only,
                users,
                gssapi_keytab,
                gssapi_principal,
                gssapi_protection,
                reload_closes_removed_users,
                handshake_timeout,
                resolve_timeout,
                connect_timeout,
                connect_attempt_delay,
                idle_timeout,
                shutdown_grace,
                max_tunnels_per_core,
                max_handshakes_per_core,
                max_handshakes_per_client,
                client_share,
                resolver_threads,
                hash_threads,
                auth_failures_per_client,
                auth_cache,
                relay,
                event_ring,
                multishot_poll,
                buffer_size,
                pipe_size,
                max_pipes_per_core,
                splice_threshold,
                bind_timeout,
                udp_idle_timeout,
                max_udp_associations_per_core,
                max_udp_targets,
                log_level,
                access_log,
                upgrade_socket,
                access_log_format,
                metrics,
                egress_source_pick,
                egress_interface,
                udp_advertise,
                max_tunnels_per_user,
                max_tunnels_per_client,
                tunnel_rate_per_user,
                tunnel_rate_per_client,
                bandwidth_per_user,
                bandwidth_per_client
            ],
            [listen, protocols, allow, deny, rule, egress_source]
        )
    }
}

/// coresocks: a thread-per-core SOCKS5 proxy for Linux.
///
/// Durations take a unit: "500ms", "10s", "5m", "1h".
#[derive(Debug, Parser)]
#[command(
    name = "coresocks",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub tool: Option<Tool>,

    /// Read settings from this TOML file (keys as the long flags, e.g.
    /// `idle-timeout = "5m"`); flags given on the command line win
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: Settings,
}

/// Helpers that run instead of the proxy.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// Read a password from standard input (one line) and print its
    /// Argon2id hash, for a users-file line `user:HASH`
    HashPassword,
    /// Validate a config file (and the users file and keytab it names) as
    /// a start or a SIGHUP reload would, without starting; exit status 0
    /// when it is good, 2 with the reason when not
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the man page (roff), generated from these definitions:
    /// `coresocks man > /usr/local/share/man/man1/coresocks.1`
    Man,
}

impl Settings {
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        Settings::from_toml(&text).map_err(|message| ConfigError::ParseFile {
            path: path.to_owned(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. \"10s\", \"500ms\", \"5m\")"))
}

/// Bytes per second: a number and an optional unit, decimal (k, M, G,
/// with or without B), binary (KiB, MiB, GiB) or in bits (kbit, Mbit,
/// Gbit); "/s" may follow. At least 1 byte per second.
pub(super) fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let bad =
        || format!("{s:?} is not a rate (write e.g. \"500k\", \"10MB\", \"1MiB\", \"100Mbit\")");
    let value: f64 = number.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "B" => 1.0,
        "k" | "K" | "kB" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "bit" => 1.0 / 8.0,
        "kbit" | "Kbit" => 1e3 / 8.0,
        "Mbit" => 1e6 / 8.0,
        "Gbit" => 1e9 / 8.0,
        _ => return Err(bad()),
    };
    let bytes = (value * scale).round();
    if !(1.0..=1e15).contains(&bytes) {
        return Err(format!("{s:?}: a rate is 1 B/s to 1 PB/s"));
    }
    Ok(bytes as u64)
}

fn de_rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let s = String::deserialize(d)?;
    parse_rate(&s).map(Some).map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}
