//! Configuration: command-line flags (clap) over an optional TOML file
//! (serde), merged into one validated [`Config`] that every core shares
//! read-only.
//!
//! Every setting is an `Option` in [`Settings`] so that "not given" is
//! distinguishable from "given as the default": a flag overrides the file,
//! the file overrides the built-in default.

mod settings;
mod sockets;
mod users;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub(crate) use coresocks_io::cpus::CoreSpec;
pub use settings::{Cli, Settings, Tool};
pub(crate) use sockets::{BusyPoll, Congestion, CongestionError, SocketTuning, Steering};

use crate::policy::source::{Outbound, SourcePick};
use crate::policy::Policy;
use crate::quota::QuotaConfig;
pub use users::hash_password;
pub(crate) use users::{UserDb, UsersError, Verification};

/// Which relay engine moves a tunnel's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Copy through a per-core buffer pool (read/write).
    Copy,
    /// Zero-copy splice(2) through a per-core pipe pool.
    Splice,
    /// Copy first, switch a direction to splice once it carries bulk data.
    Auto,
    /// The kernel relays each tunnel with a BPF sockmap program, the proxy
    /// only waits for its end; a tunnel that cannot (bandwidth limits,
    /// GSSAPI protection, a kernel without sockmap) runs `auto`.
    Sockmap,
}

impl RelayMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            RelayMode::Copy => "copy",
            RelayMode::Splice => "splice",
            RelayMode::Auto => "auto",
            RelayMode::Sockmap => "sockmap",
        }
    }
}

/// A protocol a listener serves; the client's first byte tells them apart
/// (0x05, 0x04, an ASCII method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// SOCKS5 (RFC 1928), with RFC 1929 and RFC 1961 authentication.
    Socks5,
    /// SOCKS4 and its 4a extension (domain names): CONNECT and BIND.
    Socks4,
    /// HTTP CONNECT (RFC 9110, 9.3.6), with Proxy-Authorization: Basic.
    HttpConnect,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Socks5 => "socks5",
            Protocol::Socks4 => "socks4",
            Protocol::HttpConnect => "http-connect",
        }
    }

    /// As indexed in the metrics' per-protocol counters.
    pub const ALL: [Protocol; 3] = [Protocol::Socks5, Protocol::Socks4, Protocol::HttpConnect];

    pub fn index(self) -> usize {
        self as usize
    }
}

/// The least per-message protection a GSSAPI client gets (RFC 1961
/// section 4): a client asking for less is answered with this level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GssProtection {
    /// Authentication only; data relayed unwrapped (and spliced). What
    /// curl asks for.
    Clear,
    /// Every message carries a checksum (gss_wrap without confidentiality).
    Integrity,
    /// Every message is encrypted too.
    Confidentiality,
}

impl GssProtection {
    pub fn level(self) -> crate::gss_binding::ProtectionLevel {
        use crate::gss_binding::ProtectionLevel;
        match self {
            GssProtection::Clear => ProtectionLevel::Clear,
            GssProtection::Integrity => ProtectionLevel::Integrity,
            GssProtection::Confidentiality => ProtectionLevel::Confidentiality,
        }
    }
}

/// How each core's own io_uring (the event ring) is set up; see
/// `io/src/events/ring.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum EventRingSetup {
    /// The best the kernel accepts: defer-taskrun, else coop-taskrun, else
    /// plain.
    Auto,
    /// SINGLE_ISSUER + DEFER_TASKRUN (Linux 6.1+).
    DeferTaskrun,
    /// COOP_TASKRUN + TASKRUN_FLAG (Linux 5.19+).
    CoopTaskrun,
    /// Default ring flags: completions may interrupt the core.
    Plain,
    /// No ring of our own: tunnels and UDP wait through glommio (whose
    /// completions may interrupt the core), and connects through its write path,
    /// where an ICMP error can take seconds to surface.
    Off,
}

impl From<EventRingSetup> for crate::events::RingSetup {
    fn from(setup: EventRingSetup) -> Self {
        use crate::events::RingSetup;
        match setup {
            EventRingSetup::Auto => RingSetup::Auto,
            EventRingSetup::DeferTaskrun => RingSetup::DeferTaskrun,
            EventRingSetup::CoopTaskrun => RingSetup::CoopTaskrun,
            EventRingSetup::Plain => RingSetup::Plain,
            EventRingSetup::Off => RingSetup::Off,
        }
    }
}

/// How an access-log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// `key=value` pairs, values quoted where they hold spaces.
    Logfmt,
    /// One JSON object per line, the same keys.
    Json,
}

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stderr,
    File(PathBuf),
    /// A syslog daemon's datagram socket (`/dev/log` by default).
    Syslog(PathBuf),
}

/// The validated configuration every core reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    /// What the listeners serve, as [`Protocol::index`] flags.
    pub protocols: [bool; 3],
    pub cores: CoreSpec,
    pub backlog: u32,
    pub ipv6_only: bool,
    /// Steering and tuning options of the listeners and outbound sockets.
    pub sockets: SocketTuning,
    pub users: Option<UserDb>,
    /// GSSAPI (method 0x01) when a keytab is configured.
    pub gssapi: Option<crate::gss_binding::Acceptor>,
    pub reload_closes_removed_users: bool,
    pub handshake_timeout: Duration,
    pub resolve_timeout: Duration,
    pub connect_timeout: Duration,
    pub connect_attempt_delay: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// `None`: 10,000, or fewer where RLIMIT_NOFILE cannot hold that many.
    pub max_tunnels_per_core: Option<usize>,
    pub max_handshakes_per_core: Option<usize>,
    pub max_handshakes_per_client: Option<usize>,
    /// The fraction of a core's descriptors one client address may hold.
    pub client_share: f64,
    pub resolver_threads: usize,
    pub hash_threads: usize,
    /// Wrong passwords per minute per client address.
    pub auth_failures_per_client: u32,
    /// `Duration::ZERO`: no cache.
    pub auth_cache: Duration,
    pub relay: RelayMode,
    pub event_ring: EventRingSetup,
    pub multishot_poll: bool,
    pub buffer_size: usize,
    pub pipe_size: usize,
    pub max_pipes_per_core: Option<usize>,
    pub splice_threshold: u64,
    pub bind_timeout: Duration,
    pub udp_idle_timeout: Duration,
    pub max_udp_associations_per_core: usize,
    pub max_udp_targets: usize,
    pub log_level: String,
    pub access_log: AccessLog,
    pub access_log_format: AccessLogFormat,
    pub upgrade_socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    /// Who may reach which destination: `--deny`, `--allow`, `[[rule]]`.
    pub policy: Policy,
    /// Where outbound sockets come from.
    pub outbound: Outbound,
    pub udp_advertise: Option<std::net::IpAddr>,
    pub quotas: QuotaConfig,
}

/// Why the configuration cannot be used. Each message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("{0}")]
    Users(#[from] UsersError),
    #[error("GSSAPI: {0}")]
    Gssapi(String),
    #[error("invalid access rule {0}")]
    Policy(String),
    #[error("invalid setting {setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

fn at_least_one(setting: &'static str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        Err(invalid(setting, "must be at least 1"))
    } else {
        Ok(n)
    }
}

fn invalid(setting: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting,
        message: message.into(),
    }
}

impl Config {
    /// The settings a running proxy cannot take from a reload, by the name
    /// of their flag, where `new` differs from `self`: sockets, cores,
    /// pools and rings are built once at start.
    pub fn needs_restart(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! same {
            ($($field:ident => $name:literal),* $(,)?) => {
                $(if format!("{:?}", self.$field) != format!("{:?}", new.$field) {
                    changed.push($name);
                })*
            };
        }
        same!(
            listen => "listen",
            cores => "cores",
            backlog => "backlog",
            ipv6_only => "ipv6-only",
            sockets => "listen-steering, defer-accept, listen-fastopen, busy-poll, socket buffers, congestion control",
            max_tunnels_per_core => "max-tunnels-per-core",
            max_handshakes_per_core => "max-handshakes-per-core",
            max_handshakes_per_client => "max-handshakes-per-client",
            client_share => "client-share",
            resolver_threads => "resolver-threads",
            hash_threads => "hash-threads",
            relay => "relay",
            event_ring => "event-ring",
            multishot_poll => "multishot-poll",
            buffer_size => "buffer-size",
            pipe_size => "pipe-size",
            max_pipes_per_core => "max-pipes-per-core",
            splice_threshold => "splice-threshold",
            max_udp_associations_per_core => "max-udp-associations-per-core",
            max_udp_targets => "max-udp-targets",
            access_log => "access-log",
            metrics => "metrics",
            upgrade_socket => "upgrade-socket",
        );
        let keytab = |c: &Config| c.gssapi.as_ref().map(|g| g.keytab.clone());
        if keytab(self) != keytab(new) {
            changed.push("gssapi-keytab");
        }
        changed
    }

    /// Reads the file named by `--config` (if any), overlays the flags and
    /// validates. File I/O here runs before any executor starts.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        Config::from_settings(cli.settings.over(file))
    }

    pub fn from_settings(s: Settings) -> Result<Config, ConfigError> {
        let positive = |name: &'static str, d: Option<Duration>, default: Duration| {
            let d = d.unwrap_or(default);
            if d.is_zero() {
                Err(invalid(name, "must be greater than zero"))
            } else {
                Ok(d)
            }
        };
        let sockets = socket_tuning(&s)?;
        let listen = if s.listen.is_empty() {
            vec![SocketAddr::from(([127, 0, 0, 1], 1080))]
        } else {
            s.listen
        };
        let mut protocols = [false; 3];
        for p in &s.protocols {
            protocols[p.index()] = true;
        }
        if s.protocols.is_empty() {
            protocols[Protocol::Socks5.index()] = true;
        }
        let users = match &s.users {
            Some(path) => Some(UserDb::load(path)?),
            None => None,
        };
        let protection = s.gssapi_protection.unwrap_or(GssProtection::Integrity);
        let gssapi = match &s.gssapi_keytab {
            Some(keytab) => Some(
                crate::gss_binding::Acceptor::load(
                    keytab,
                    s.gssapi_principal.as_deref(),
                    protection.level(),
                )
                .map_err(ConfigError::Gssapi)?,
            ),
            None if s.gssapi_principal.is_some() || s.gssapi_protection.is_some() => {
                return Err(invalid(
                    "gssapi-keytab",
                    "gssapi-principal and gssapi-protection need gssapi-keytab",
                ))
            }
            None => None,
        };
        let max_tunnels_per_core = s.max_tunnels_per_core;
        if max_tunnels_per_core == Some(0) {
            return Err(invalid("max-tunnels-per-core", "must be at least 1"));
        }
        if s.max_handshakes_per_core == Some(0) {
            return Err(invalid("max-handshakes-per-core", "must be at least 1"));
        }
        if s.max_handshakes_per_client == Some(0) {
            return Err(invalid("max-handshakes-per-client", "must be at least 1"));
        }
        let resolver_threads = s.resolver_threads.unwrap_or(4);
        if resolver_threads == 0 || resolver_threads > 256 {
            return Err(invalid("resolver-threads", "must be between 1 and 256"));
        }
        let hash_threads = s.hash_threads.unwrap_or(1);
        if hash_threads == 0 || hash_threads > 64 {
            return Err(invalid("hash-threads", "must be between 1 and 64"));
        }
        let client_share = s.client_share.unwrap_or(0.25);
        if !(client_share > 0.0 && client_share <= 1.0) {
            return Err(invalid(
                "client-share",
                "must be a fraction above 0 and at most 1 (1 turns per-address shares off)",
            ));
        }
        if s.auth_failures_per_client == Some(0) {
            return Err(invalid("auth-failures-per-client", "must be at least 1"));
        }
        let buffer_size = s.buffer_size.unwrap_or(64 * 1024);
        if !(512..=16 << 20).contains(&buffer_size) {
            return Err(invalid(
                "buffer-size",
                "must be between 512 bytes and 16 MiB",
            ));
        }
        let pipe_size = s.pipe_size.unwrap_or(256 * 1024);
        let pipe_max = crate::sys::pipe_max_size().unwrap_or(1 << 20);
        if pipe_size < 4096 || pipe_size > pipe_max {
            return Err(invalid(
                "pipe-size",
                format!("must be between 4096 and {pipe_max} bytes (/proc/sys/fs/pipe-max-size)"),
            ));
        }
        if s.max_pipes_per_core == Some(0) {
            return Err(invalid("max-pipes-per-core", "must be at least 1"));
        }
        let log_level = s.log_level.unwrap_or_else(|| "info".to_owned());
        if log_level
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_err()
        {
            return Err(invalid(
                "log-level",
                format!("{log_level:?} is not one of off, error, warn, info, debug, trace"),
            ));
        }
        let access_log = match s.access_log.as_deref() {
            None | Some("stderr") => AccessLog::Stderr,
            Some("off") => AccessLog::Off,
            Some("syslog") => AccessLog::Syslog(PathBuf::from("/dev/log")),
            Some(dest) if dest.starts_with("syslog:") => {
                AccessLog::Syslog(PathBuf::from(&dest["syslog:".len()..]))
            }
            Some("") => return Err(invalid("access-log", "empty path")),
            Some(path) => AccessLog::File(PathBuf::from(path)),
        };
        let policy = Policy::new(&s.deny, &s.allow, &s.rule).map_err(ConfigError::Policy)?;
        if s.egress_interface
            .as_deref()
            .is_some_and(|i| i.is_empty() || i.len() > 15)
        {
            return Err(invalid(
                "egress-interface",
                "an interface name is 1 to 15 bytes",
            ));
        }
        let outbound = Outbound {
            sources: s.egress_source.iter().map(|ip| ip.to_canonical()).collect(),
            pick: s.egress_source_pick.unwrap_or(SourcePick::Random),
            interface: s.egress_interface,
        };
        for (setting, v) in [
            ("max-tunnels-per-user", s.max_tunnels_per_user),
            ("max-tunnels-per-client", s.max_tunnels_per_client),
            ("tunnel-rate-per-user", s.tunnel_rate_per_user),
            ("tunnel-rate-per-client", s.tunnel_rate_per_client),
        ] {
            if v == Some(0) {
                return Err(invalid(setting, "must be at least 1"));
            }
        }
        let quotas = QuotaConfig {
            tunnels_per_user: s.max_tunnels_per_user,
            tunnels_per_client: s.max_tunnels_per_client,
            rate_per_user: s.tunnel_rate_per_user,
            rate_per_client: s.tunnel_rate_per_client,
            bandwidth_per_user: s.bandwidth_per_user,
            bandwidth_per_client: s.bandwidth_per_client,
        };
        Ok(Config {
            protocols,
            quotas,
            policy,
            outbound,
            udp_advertise: s.udp_advertise,
            listen,
            cores: s.cores.unwrap_or_default(),
            backlog: s.backlog.unwrap_or(1024),
            ipv6_only: s.ipv6_only.unwrap_or(false),
            sockets,
            users,
            gssapi,
            reload_closes_removed_users: s.reload_closes_removed_users.unwrap_or(false),
            handshake_timeout: positive(
                "handshake-timeout",
                s.handshake_timeout,
                Duration::from_secs(10),
            )?,
            resolve_timeout: positive(
                "resolve-timeout",
                s.resolve_timeout,
                Duration::from_secs(5),
            )?,
            connect_timeout: positive(
                "connect-timeout",
                s.connect_timeout,
                Duration::from_secs(10),
            )?,
            connect_attempt_delay: positive(
                "connect-attempt-delay",
                s.connect_attempt_delay,
                Duration::from_millis(250),
            )?,
            idle_timeout: positive("idle-timeout", s.idle_timeout, Duration::from_secs(300))?,
            shutdown_grace: s.shutdown_grace.unwrap_or(Duration::from_secs(10)),
            max_tunnels_per_core,
            max_handshakes_per_core: s.max_handshakes_per_core,
            max_handshakes_per_client: s.max_handshakes_per_client,
            client_share,
            resolver_threads,
            hash_threads,
            auth_failures_per_client: s.auth_failures_per_client.unwrap_or(60),
            auth_cache: s.auth_cache.unwrap_or(Duration::from_secs(60)),
            relay: s.relay.unwrap_or(RelayMode::Auto),
            event_ring: s.event_ring.unwrap_or(EventRingSetup::Auto),
            multishot_poll: s.multishot_poll.unwrap_or(true),
            buffer_size,
            pipe_size,
            max_pipes_per_core: s.max_pipes_per_core,
            splice_threshold: s.splice_threshold.unwrap_or(64 * 1024),
            bind_timeout: positive("bind-timeout", s.bind_timeout, Duration::from_secs(60))?,
            udp_idle_timeout: positive(
                "udp-idle-timeout",
                s.udp_idle_timeout,
                Duration::from_secs(120),
            )?,
            max_udp_associations_per_core: at_least_one(
                "max-udp-associations-per-core",
                s.max_udp_associations_per_core.unwrap_or(4096),
            )?,
            max_udp_targets: at_least_one("max-udp-targets", s.max_udp_targets.unwrap_or(256))?,
            log_level,
            access_log,
            access_log_format: s.access_log_format.unwrap_or(AccessLogFormat::Logfmt),
            upgrade_socket: s.upgrade_socket,
            metrics: s.metrics,
        })
    }
}

fn socket_tuning(s: &Settings) -> Result<SocketTuning, ConfigError> {
    let defer_accept = match s.defer_accept {
        Some(d) if d.as_secs() == 0 => {
            return Err(invalid(
                "defer-accept",
                "must be at least 1s (the kernel counts whole seconds)",
            ))
        }
        d => d,
    };
    let busy_poll = match (s.busy_poll, s.prefer_busy_poll.unwrap_or(false)) {
        (Some(0), _) | (None, true) => {
            return Err(invalid(
                "busy-poll",
                "give a number of microseconds of at least 1 (--prefer-busy-poll needs it)",
            ))
        }
        (Some(usecs), prefer) => Some(BusyPoll { usecs, prefer }),
        (None, false) => None,
    };
    let buffer = |setting, n: Option<usize>| match n {
        Some(n) if !(4096..=1 << 30).contains(&n) => Err(invalid(
            setting,
            "must be between 4096 and 1073741824 bytes",
        )),
        n => Ok(n),
    };
    Ok(SocketTuning {
        steering: s.listen_steering.unwrap_or_default(),
        defer_accept,
        fastopen_queue: s.listen_fastopen.filter(|&q| q > 0),
        busy_poll,
        receive_buffer: buffer("socket-receive-buffer", s.socket_receive_buffer)?,
        send_buffer: buffer("socket-send-buffer", s.socket_send_buffer)?,
        client_congestion: s.client_congestion,
        target_congestion: s.target_congestion,
    })
}

#[cfg(test)]
mod tests {
    use super::settings::parse_rate;
    use super::*;
    use clap::Parser;
    use std::path::Path;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("coresocks").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn rates_take_decimal_binary_and_bit_units() {
        for (text, bytes) in [
            ("1", 1),
            ("500k", 500_000),
            ("10MB", 10_000_000),
            ("10 MB/s", 10_000_000),
            ("1MiB", 1 << 20),
            ("1.5GiB", 3 << 29),
            ("100Mbit", 12_500_000),
            ("8bit", 1),
        ] {
            assert_eq!(parse_rate(text), Ok(bytes), "{text}");
        }
        for bad in ["", "fast", "10 parsecs", "0", "0.1", "-5M", "1..2M"] {
            assert!(parse_rate(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn congestion_names_are_checked_for_shape_and_read_from_the_file() {
        for good in [
            "cubic",
            "bbr",
            "reno",
            "dctcp",
            "bbr2",
            "tcp-nv",
            "a_15_chars_long",
        ] {
            let cc: Congestion = good.parse().unwrap();
            assert_eq!(cc.as_str(), good);
        }
        for bad in ["", "sixteen_chars_xx", "cubic reno", "bbr;", "cub/ic", "é"] {
            assert!(bad.parse::<Congestion>().is_err(), "{bad:?} was taken");
        }
        let file: Settings =
            toml::from_str("client-congestion = \"cubic\"\ntarget-congestion = \"bbr\"\n").unwrap();
        let config = parse(&[]).settings.over(file);
        let tuning = socket_tuning(&config).unwrap();
        assert_eq!(
            tuning
                .client_congestion
                .map(|c| c.as_str().to_owned())
                .as_deref(),
            Some("cubic")
        );
        assert_eq!(
            tuning
                .target_congestion
                .map(|c| c.as_str().to_owned())
                .as_deref(),
            Some("bbr")
        );
        assert!(toml::from_str::<Settings>("target-congestion = \"no way\"\n").is_err());
    }

    #[test]
    fn bandwidth_comes_from_the_file_as_a_string() {
        let file: Settings =
            toml::from_str("bandwidth-per-user = \"2MB\"\nbandwidth-per-client = \"1Mbit\"\n")
                .unwrap();
        let c = Config::from_settings(file).unwrap();
        assert_eq!(c.quotas.bandwidth_per_user, Some(2_000_000));
        assert_eq!(c.quotas.bandwidth_per_client, Some(125_000));
    }

    #[test]
    fn gssapi_keys_come_from_the_file_and_need_a_keytab() {
        let file = Settings::from_toml(
            "gssapi-keytab = \"/etc/coresocks/coresocks.keytab\"\ngssapi-principal = \"rcmd/proxy@EXAMPLE.COM\"\ngssapi-protection = \"confidentiality\"\n",
        )
        .unwrap();
        assert_eq!(
            file.gssapi_keytab.as_deref(),
            Some(Path::new("/etc/coresocks/coresocks.keytab"))
        );
        assert_eq!(
            file.gssapi_principal.as_deref(),
            Some("rcmd/proxy@EXAMPLE.COM")
        );
        assert_eq!(file.gssapi_protection, Some(GssProtection::Confidentiality));
        assert!(Settings::from_toml("gssapi-protection = \"secret\"\n").is_err());
        let orphan = Settings::from_toml("gssapi-protection = \"clear\"\n").unwrap();
        let e = Config::from_settings(orphan).unwrap_err().to_string();
        assert!(e.contains("need gssapi-keytab"), "{e}");
        // The keytab is read at start: a missing one is one clear error.
        let missing = Settings::from_toml("gssapi-keytab = \"/nonexistent.keytab\"\n").unwrap();
        let e = Config::from_settings(missing).unwrap_err().to_string();
        assert!(e.contains("cannot read keytab /nonexistent.keytab"), "{e}");
        let c = Config::from_settings(Settings::default()).unwrap();
        assert!(c.gssapi.is_none(), "no keytab, no GSSAPI");
    }

    #[test]
    fn defaults_listen_on_loopback_1080() {
        let c = Config::from_settings(Settings::default()).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:1080".parse().unwrap()]);
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(c.relay, RelayMode::Auto);
        assert_eq!(c.access_log, AccessLog::Stderr);
    }

    #[test]
    fn flag_overrides_file_and_file_overrides_default() {
        let file = Settings::from_toml(
            "listen = [\"127.0.0.1:2000\", \"[::1]:2000\"]\nidle-timeout = \"1m\"\nbacklog = 77\n",
        )
        .unwrap();
        let cli = parse(&["--idle-timeout", "30s"]);
        let c = Config::from_settings(cli.settings.over(file)).unwrap();
        assert_eq!(c.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.backlog, 77);
        assert_eq!(c.listen.len(), 2);
    }

    #[test]
    fn rejects_unknown_key_in_file() {
        let err = Settings::from_toml("idle_timeot = \"1m\"\n").unwrap_err();
        assert!(err.contains("idle_timeot"), "{err}");
    }

    #[test]
    fn rejects_bad_duration_in_file() {
        let err = Settings::from_toml("idle-timeout = \"soon\"\n").unwrap_err();
        assert!(err.contains("10s"), "{err}");
    }

    #[test]
    fn rejects_zero_timeout() {
        let s = Settings {
            connect_timeout: Some(Duration::ZERO),
            ..Settings::default()
        };
        let err = Config::from_settings(s).unwrap_err().to_string();
        assert!(err.contains("connect-timeout"), "{err}");
    }

    #[test]
    fn rejects_bad_log_level() {
        let s = Settings {
            log_level: Some("loud".into()),
            ..Settings::default()
        };
        assert!(Config::from_settings(s).is_err());
    }

    #[test]
    fn parses_relay_mode_and_access_log() {
        let c =
            Config::from_settings(parse(&["--relay", "splice", "--access-log", "off"]).settings)
                .unwrap();
        assert_eq!(c.relay, RelayMode::Splice);
        assert_eq!(c.access_log, AccessLog::Off);
        assert_eq!(c.event_ring, EventRingSetup::Auto);
        let c = Config::from_settings(parse(&["--event-ring", "coop-taskrun"]).settings).unwrap();
        assert_eq!(c.event_ring, EventRingSetup::CoopTaskrun);
    }

    #[test]
    fn flags_come_before_the_file_rules_and_bad_rules_are_refused() {
        let file = Settings::from_toml(
            "[[rule]]\naction = \"deny\"\nto = [\"10.0.0.0/8\"]\nports = [\"22\"]\n",
        )
        .unwrap();
        let cli = parse(&[
            "--allow",
            "127.0.0.0/8",
            "--deny",
            "127.0.0.2",
            "--allow",
            "::1",
        ]);
        let c = Config::from_settings(cli.settings.over(file)).unwrap();
        let names: Vec<&str> = c.policy.rules().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["--deny#1", "--allow#1", "--allow#2", "rule#1"]);
        let err = Config::from_settings(parse(&["--allow", "10.0.0.0/40"]).settings)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--allow") && err.contains("10.0.0.0/40"),
            "{err}"
        );
        let err = Settings::from_toml("allow = [\"10.0.0.0/8\"]\n").unwrap_err();
        assert!(err.contains("allow"), "{err}");
    }
}
