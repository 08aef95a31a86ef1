//! Counters per core, and a Prometheus text endpoint.
//!
//! Each core writes only its own [`CoreMetrics`] (a cache-line-aligned block
//! of atomics with a single writer, so an update is a plain load and store,
//! never a locked read-modify-write). The metrics thread reads all cores
//! when scraped; that is the only cross-core traffic, and it is off the data
//! path.

mod http;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

pub(crate) use http::serve;

use crate::proto::ReplyCode;
use crate::stop::ShedReason;

/// Relay engines, as indexed in [`CoreMetrics::tunnels_by_engine`].
pub(crate) const ENGINES: [&str; 4] = ["copy", "splice", "sealed", "sockmap"];

#[derive(Default)]
#[repr(align(128))]
pub(crate) struct CoreMetrics {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub rejected_over_limit: AtomicU64,
    pub accept_errors: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    /// Unfinished handshakes closed to make room, by
    /// [`crate::stop::ShedReason`].
    pub handshakes_shed: [AtomicU64; 3],
    /// Connections cut at the end of the shutdown grace.
    pub shutdown_cuts: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Replies sent, by REP code 0x00..=0x08.
    pub replies: [AtomicU64; 9],
    pub bytes_client_to_target: AtomicU64,
    pub bytes_target_to_client: AtomicU64,
    /// `--relay sockmap`: what the kernel moved for this core's tunnels,
    /// counted by its BPF program and read at each scrape (added to the
    /// two above).
    pub kernel_bytes: std::sync::OnceLock<coresocks_io::sockmap::Counters>,
    /// Tunnels finished, by the engine that carried most of their bytes.
    pub tunnels_by_engine: [AtomicU64; 4],
    /// Bytes moved by splice (both directions); the rest were copied.
    pub bytes_spliced: AtomicU64,
    /// Pipes this core holds now (in use or pooled).
    pub pipes: AtomicU64,
    /// Times a direction wanted a pipe and had to copy instead.
    pub pipe_misses: AtomicU64,
    pub udp_associations: AtomicU64,
    pub udp_datagrams_client_to_target: AtomicU64,
    pub udp_datagrams_target_to_client: AtomicU64,
    pub udp_datagrams_dropped: AtomicU64,
    /// Requests refused by the egress policy, by
    /// [`crate::policy::Denial::metrics_index`].
    pub denied: [AtomicU64; 2],
    /// Requests refused by a per-user or per-client quota, by
    /// [`crate::quota::QUOTA_REASONS`].
    pub quota_refusals: [AtomicU64; 6],
    /// RFC 1929 logins refused without a password check, by
    /// [`AUTH_REFUSALS`].
    pub auth_refusals: [AtomicU64; 3],
    /// Argon2 logins accepted from the verified-login cache.
    pub auth_cache_hits: AtomicU64,
    /// UDP datagrams the egress policy dropped (also in `dropped`).
    pub udp_datagrams_denied: AtomicU64,
    /// Times a tunnel direction waited for its bandwidth limit.
    pub bandwidth_waits: AtomicU64,
    /// UDP datagrams dropped for a bandwidth limit (also in `dropped`).
    pub udp_datagrams_over_bandwidth: AtomicU64,
    /// Tunnels (and UDP associations) open now, by [`COMMANDS`].
    pub open_by_command: [AtomicU64; 3],
    /// Directions of open tunnels relaying with each engine now, by
    /// [`ENGINES`] (`auto` moves a direction between copy and splice).
    pub directions_by_engine: [AtomicU64; 4],
    /// Accept to request read.
    pub handshake_seconds: Histogram,
    /// The connect race of a CONNECT, resolution included.
    pub connect_seconds: Histogram,
    /// How long finished TCP tunnels and UDP associations lived.
    pub tunnel_seconds: Histogram,
    /// The configuration generation this core serves new sessions with
    /// (0 as started; each applied SIGHUP adds one).
    pub config_generation: AtomicU64,
    /// Sessions by the protocol the client spoke, by
    /// [`crate::config::Protocol::index`].
    pub sessions_by_protocol: [AtomicU64; 3],
}

/// Why a login was refused unchecked, as indexed in
/// [`CoreMetrics::auth_refusals`]: the address's wrong-password rate, its
/// logins already waiting for a hash, the core's hash queue full.
pub(crate) const AUTH_REFUSALS: [&str; 3] = ["failure-rate", "client-queue", "hash-queue"];

/// Commands, as indexed in [`CoreMetrics::open_by_command`].
pub(crate) const COMMANDS: [&str; 3] = ["connect", "bind", "udp-associate"];

/// Upper bounds (seconds) of the latency histograms' buckets.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
/// Upper bounds (seconds) of the tunnel-lifetime histogram's buckets.
pub(crate) const LIFETIME_BUCKETS: [f64; 12] = [
    0.01, 0.1, 1.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

/// A Prometheus histogram with one writer (its core): counts per bucket
/// (not cumulative; rendering adds them up), the sum in microseconds.
#[derive(Default)]
pub(crate) struct Histogram {
    /// One more than the bounds: the last counts what exceeds them all.
    buckets: [AtomicU64; 13],
    sum_us: AtomicU64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration, bounds: &[f64; 12]) {
        let s = d.as_secs_f64();
        let i = bounds.iter().position(|&b| s <= b).unwrap_or(bounds.len());
        add(&self.buckets[i], 1);
        add(&self.sum_us, d.as_micros() as u64);
    }
}

/// Sets a gauge that only the calling core writes.
#[inline]
pub(crate) fn set(gauge: &AtomicU64, v: u64) {
    gauge.store(v, Relaxed);
}

/// Takes one from a gauge that only the calling core writes (never below 0).
#[inline]
pub(crate) fn sub_one(gauge: &AtomicU64) {
    gauge.store(gauge.load(Relaxed).saturating_sub(1), Relaxed);
}

/// Adds to a counter that only the calling core writes.
#[inline]
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl CoreMetrics {
    /// Bytes relayed `way`: by the core, plus by the kernel's program.
    fn bytes(&self, way: coresocks_io::sockmap::Way) -> u64 {
        use coresocks_io::sockmap::Way;
        let by_core = match way {
            Way::FirstToSecond => &self.bytes_client_to_target,
            Way::SecondToFirst => &self.bytes_target_to_client,
        };
        let by_kernel = self.kernel_bytes.get().and_then(|c| c.read(way).ok());
        by_core.load(Relaxed) + by_kernel.unwrap_or(0)
    }

    pub(crate) fn reply(&self, code: ReplyCode) {
        if let Some(c) = self.replies.get(code.to_byte() as usize) {
            add(c, 1);
        }
    }
}

pub(crate) type AllMetrics = Arc<[CoreMetrics]>;

pub(crate) fn new(cores: usize) -> AllMetrics {
    (0..cores).map(|_| CoreMetrics::default()).collect()
}

/// A one-value-per-core metric: name, type, help, and how to read it.
type Family<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&CoreMetrics) -> u64);

/// Renders every core's counters in the Prometheus text format.
pub(crate) fn render(all: &[CoreMetrics], core_ids: &[usize]) -> String {
    let mut out = String::new();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, u64)>| {
            let _ = writeln!(
                out,
                "# HELP coresocks_{name} {help}\n# TYPE coresocks_{name} {kind}"
            );
            for (labels, v) in rows {
                let _ = writeln!(out, "coresocks_{name}{{{labels}}} {v}");
            }
        };
    let per_core = |f: &dyn Fn(&CoreMetrics) -> u64| -> Vec<(String, u64)> {
        all.iter()
            .zip(core_ids)
            .map(|(m, id)| (format!("core=\"{id}\""), f(m)))
            .collect()
    };
    let simple: [Family<'_>; 21] = [
        (
            "connections_accepted_total",
            "counter",
            "Client connections accepted.",
            &|m| m.accepted.load(Relaxed),
        ),
        (
            "connections_active",
            "gauge",
            "Client connections open now.",
            &|m| {
                m.accepted
                    .load(Relaxed)
                    .saturating_sub(m.closed.load(Relaxed))
            },
        ),
        (
            "connections_rejected_total",
            "counter",
            "Connections closed at once because the core was at max-tunnels-per-core with every connection past its handshake.",
            &|m| m.rejected_over_limit.load(Relaxed),
        ),
        (
            "accept_errors_total",
            "counter",
            "Failed accept() calls (e.g. out of file descriptors).",
            &|m| m.accept_errors.load(Relaxed),
        ),
        (
            "handshake_timeouts_total",
            "counter",
            "Clients dropped for not finishing the handshake in time.",
            &|m| m.handshake_timeouts.load(Relaxed),
        ),
        (
            "shutdown_cuts_total",
            "counter",
            "Connections cut (reset both ways) at the end of the shutdown grace.",
            &|m| m.shutdown_cuts.load(Relaxed),
        ),
        (
            "auth_failures_total",
            "counter",
            "Failed authentications (RFC 1929 and GSSAPI).",
            &|m| m.auth_failures.load(Relaxed),
        ),
        (
            "auth_cache_hits_total",
            "counter",
            "Argon2 logins accepted from the verified-login cache (--auth-cache), without a hash.",
            &|m| m.auth_cache_hits.load(Relaxed),
        ),
        (
            "bytes_client_to_target_total",
            "counter",
            "Bytes relayed from clients to targets (counted as they move).",
            // The kernel relays a tunnel's client socket as the first of
            // its pair (`relay::kernel`).
            &|m| m.bytes(coresocks_io::sockmap::Way::FirstToSecond),
        ),
        (
            "bytes_target_to_client_total",
            "counter",
            "Bytes relayed from targets to clients (counted as they move).",
            &|m| m.bytes(coresocks_io::sockmap::Way::SecondToFirst),
        ),
        (
            "bytes_spliced_total",
            "counter",
            "Bytes relayed by splice(2) without entering user space.",
            &|m| m.bytes_spliced.load(Relaxed),
        ),
        (
            "pipes",
            "gauge",
            "Pipes held for splicing (in use or pooled).",
            &|m| m.pipes.load(Relaxed),
        ),
        (
            "pipe_misses_total",
            "counter",
            "Times no pipe could be had and a direction copied instead.",
            &|m| m.pipe_misses.load(Relaxed),
        ),
        (
            "udp_associations",
            "gauge",
            "UDP associations open now.",
            &|m| m.udp_associations.load(Relaxed),
        ),
        (
            "udp_datagrams_client_to_target_total",
            "counter",
            "UDP datagrams relayed from clients to targets (counted as they move).",
            &|m| m.udp_datagrams_client_to_target.load(Relaxed),
        ),
        (
            "udp_datagrams_target_to_client_total",
            "counter",
            "UDP datagrams relayed from targets to clients (counted as they move).",
            &|m| m.udp_datagrams_target_to_client.load(Relaxed),
        ),
        (
            "udp_datagrams_dropped_total",
            "counter",
            "UDP datagrams dropped: fragments, foreign sources, unsolicited replies, bad headers.",
            &|m| m.udp_datagrams_dropped.load(Relaxed),
        ),
        (
            "udp_datagrams_denied_total",
            "counter",
            "UDP datagrams dropped because the egress policy denies their destination (finished associations).",
            &|m| m.udp_datagrams_denied.load(Relaxed),
        ),
        (
            "bandwidth_waits_total",
            "counter",
            "Times a tunnel direction waited for its user's or client's bandwidth limit (finished tunnels).",
            &|m| m.bandwidth_waits.load(Relaxed),
        ),
        (
            "udp_datagrams_over_bandwidth_total",
            "counter",
            "UDP datagrams dropped because their user or client was over its bandwidth limit (finished associations).",
            &|m| m.udp_datagrams_over_bandwidth.load(Relaxed),
        ),
        (
            "config_generation",
            "gauge",
            "The configuration this core serves new sessions with: 0 as started, one more for each SIGHUP it applied.",
            &|m| m.config_generation.load(Relaxed),
        ),
    ];
    for (name, kind, help, f) in simple {
        family(name, kind, help, &mut per_core(f).into_iter());
    }
    // Families with one series per core and label value.
    let mut labelled = |name: &str,
                        help: &str,
                        label: &str,
                        values: &[&str],
                        f: &dyn Fn(&CoreMetrics) -> &[AtomicU64]| {
        let mut rows = Vec::new();
        for (m, id) in all.iter().zip(core_ids) {
            for (value, c) in values.iter().zip(f(m)) {
                rows.push((
                    format!("core=\"{id}\",{label}=\"{value}\""),
                    c.load(Relaxed),
                ));
            }
        }
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        family(name, kind, help, &mut rows.into_iter());
    };
    let codes: Vec<&str> = (0..9u8).map(|c| ReplyCode::from_byte(c).as_str()).collect();
    labelled(
        "replies_total",
        "SOCKS replies sent, by reply code.",
        "code",
        &codes,
        &|m| &m.replies,
    );
    let protocols = crate::config::Protocol::ALL.map(crate::config::Protocol::as_str);
    labelled(
        "sessions_total",
        "Client sessions, by the protocol the client spoke (told by its first byte).",
        "protocol",
        &protocols,
        &|m| &m.sessions_by_protocol,
    );
    labelled(
        "tunnels_total",
        "Finished TCP tunnels, by relay engine.",
        "engine",
        &ENGINES,
        &|m| &m.tunnels_by_engine,
    );
    let reasons = ShedReason::ALL.map(ShedReason::as_str);
    labelled(
        "handshakes_shed_total",
        "Unfinished handshakes closed to make room for new connections, by the budget that was full.",
        "reason",
        &reasons,
        &|m| &m.handshakes_shed,
    );
    labelled(
        "quota_refusals_total",
        "Requests refused by a per-user or per-client quota: tunnels held (0x02), new tunnels per second (0x01), the client address's share of its core's descriptors (client-share, 0x02) or the core's descriptor budget (descriptors, 0x01).",
        "reason",
        &crate::quota::QUOTA_REASONS,
        &|m| &m.quota_refusals,
    );
    labelled(
        "auth_refusals_total",
        "RFC 1929 logins refused at once, without a password check: the address's wrong-password rate (failure-rate), its logins already waiting for a hash (client-queue), the core's hash queue full (hash-queue).",
        "reason",
        &AUTH_REFUSALS,
        &|m| &m.auth_refusals,
    );
    labelled(
        "tunnels_open",
        "TCP tunnels and UDP associations open now, by command.",
        "command",
        &COMMANDS,
        &|m| &m.open_by_command,
    );
    labelled(
        "tunnel_directions",
        "Directions of open tunnels by the engine relaying them now (two per tunnel).",
        "engine",
        &ENGINES,
        &|m| &m.directions_by_engine,
    );
    labelled(
        "requests_denied_total",
        "Requests refused with reply 0x02 by the egress policy: by a deny rule, or for a private destination no rule opened.",
        "reason",
        &crate::policy::DENIAL_REASONS,
        &|m| &m.denied,
    );
    for (name, help, bounds, f) in [
        (
            "handshake_seconds",
            "Time from accept to the request read: greeting, authentication, request.",
            &LATENCY_BUCKETS,
            (|m| &m.handshake_seconds) as fn(&CoreMetrics) -> &Histogram,
        ),
        (
            "connect_seconds",
            "Time a CONNECT took to reach its target, name resolution included.",
            &LATENCY_BUCKETS,
            |m| &m.connect_seconds,
        ),
        (
            "tunnel_seconds",
            "How long finished TCP tunnels and UDP associations lived.",
            &LIFETIME_BUCKETS,
            |m| &m.tunnel_seconds,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP coresocks_{name} {help}\n# TYPE coresocks_{name} histogram"
        );
        for (m, id) in all.iter().zip(core_ids) {
            let h = f(m);
            let mut cumulative = 0;
            for (i, c) in h.buckets.iter().enumerate() {
                cumulative += c.load(Relaxed);
                let le = bounds.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "coresocks_{name}_bucket{{core=\"{id}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let sum = h.sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "coresocks_{name}_sum{{core=\"{id}\"}} {sum}");
            let _ = writeln!(out, "coresocks_{name}_count{{core=\"{id}\"}} {cumulative}");
        }
    }
    let _ = writeln!(
        out,
        "# HELP coresocks_access_lines_dropped_total Access-log lines dropped because the writer fell behind.\n# TYPE coresocks_access_lines_dropped_total counter\ncoresocks_access_lines_dropped_total {}",
        dropped_access_lines()
    );
    let _ = writeln!(
        out,
        "# HELP coresocks_build_info The running build.\n# TYPE coresocks_build_info gauge\ncoresocks_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(
        out,
        "# HELP coresocks_metrics_connections_shed_total Connections to this endpoint closed unanswered to make room (the oldest one still sending its request).\n# TYPE coresocks_metrics_connections_shed_total counter\ncoresocks_metrics_connections_shed_total {}",
        http::SHED.load(Relaxed)
    );
    process_metrics(&mut out);
    out
}

/// How many access-log lines the non-blocking writer dropped; set by
/// logging at start (the writer counts them itself).
static ACCESS_DROPS: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> =
    std::sync::OnceLock::new();

pub(crate) fn count_access_drops(f: Box<dyn Fn() -> u64 + Send + Sync>) {
    let _ = ACCESS_DROPS.set(f);
}

fn dropped_access_lines() -> u64 {
    ACCESS_DROPS.get().map_or(0, |f| f())
}

/// The standard process metrics, from /proc/self at scrape time.
fn process_metrics(out: &mut String) {
    let ticks = crate::sys::clock_ticks() as f64;
    let page = crate::sys::page_size();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces), from field 3 on.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let cpu = (field(14).unwrap_or(0) + field(15).unwrap_or(0)) as f64 / ticks;
    let rss = field(24).unwrap_or(0) * page;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    let start = boot as f64 + field(22).unwrap_or(0) as f64 / ticks;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let _ = write!(
        out,
        "# HELP process_cpu_seconds_total User and system CPU time.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n\
         # HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n\
         # HELP process_open_fds Open file descriptors.\n# TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
         # HELP process_start_time_seconds Start time since the Unix epoch.\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n"
    );
}
