//! Counters per core, and a Prometheus text endpoint.
//!
//! Each core writes only its own [`CoreMetrics`] (a cache-line-aligned block
//! of atomics with a single writer, so an update is a plain load and store,
//! never a locked read-modify-write). The metrics thread reads all cores
//! when scraped; that is the only cross-core traffic, and it is off the data
//! path.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::proto::ReplyCode;
use crate::runtime::ShedReason;

/// Relay engines, as indexed in [`CoreMetrics::tunnels_by_engine`].
pub const ENGINES: [&str; 3] = ["copy", "splice", "sealed"];

#[derive(Default)]
#[repr(align(128))]
pub struct CoreMetrics {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    pub rejected_over_limit: AtomicU64,
    pub accept_errors: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    /// Unfinished handshakes closed to make room, by
    /// [`crate::runtime::ShedReason`].
    pub handshakes_shed: [AtomicU64; 3],
    /// Connections cut at the end of the shutdown grace.
    pub shutdown_cuts: AtomicU64,
    pub auth_failures: AtomicU64,
    /// Replies sent, by REP code 0x00..=0x08.
    pub replies: [AtomicU64; 9],
    pub bytes_client_to_target: AtomicU64,
    pub bytes_target_to_client: AtomicU64,
    /// Tunnels finished, by the engine that carried most of their bytes.
    pub tunnels_by_engine: [AtomicU64; 3],
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
    /// [`crate::session::quota::QUOTA_REASONS`].
    pub quota_refusals: [AtomicU64; 4],
    /// UDP datagrams the egress policy dropped (also in `dropped`).
    pub udp_datagrams_denied: AtomicU64,
    /// Times a tunnel direction waited for its bandwidth limit.
    pub bandwidth_waits: AtomicU64,
    /// UDP datagrams dropped for a bandwidth limit (also in `dropped`).
    pub udp_datagrams_over_bandwidth: AtomicU64,
}

/// Sets a gauge that only the calling core writes.
#[inline]
pub fn set(gauge: &AtomicU64, v: u64) {
    gauge.store(v, Relaxed);
}

/// Adds to a counter that only the calling core writes.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(n), Relaxed);
}

impl CoreMetrics {
    pub fn reply(&self, code: ReplyCode) {
        if let Some(c) = self.replies.get(code.to_byte() as usize) {
            add(c, 1);
        }
    }
}

pub type AllMetrics = Arc<[CoreMetrics]>;

pub fn new(cores: usize) -> AllMetrics {
    (0..cores).map(|_| CoreMetrics::default()).collect()
}

/// A one-value-per-core metric: name, type, help, and how to read it.
type Family<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&CoreMetrics) -> u64);

/// Renders every core's counters in the Prometheus text format.
pub fn render(all: &[CoreMetrics], core_ids: &[usize]) -> String {
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
    let simple: [Family<'_>; 19] = [
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
            "Failed username/password authentications.",
            &|m| m.auth_failures.load(Relaxed),
        ),
        (
            "bytes_client_to_target_total",
            "counter",
            "Bytes relayed from clients to targets.",
            &|m| m.bytes_client_to_target.load(Relaxed),
        ),
        (
            "bytes_target_to_client_total",
            "counter",
            "Bytes relayed from targets to clients.",
            &|m| m.bytes_target_to_client.load(Relaxed),
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
            "UDP datagrams relayed from clients to targets (finished associations).",
            &|m| m.udp_datagrams_client_to_target.load(Relaxed),
        ),
        (
            "udp_datagrams_target_to_client_total",
            "counter",
            "UDP datagrams relayed from targets to clients (finished associations).",
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
        family(name, "counter", help, &mut rows.into_iter());
    };
    let codes: Vec<&str> = (0..9u8).map(|c| ReplyCode::from_byte(c).as_str()).collect();
    labelled(
        "replies_total",
        "SOCKS replies sent, by reply code.",
        "code",
        &codes,
        &|m| &m.replies,
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
        "Requests refused by a per-user or per-client quota: tunnels held (0x02) or new tunnels per second (0x01).",
        "reason",
        &crate::session::quota::QUOTA_REASONS,
        &|m| &m.quota_refusals,
    );
    labelled(
        "requests_denied_total",
        "Requests refused with reply 0x02 by the egress policy: by a deny rule, or for a private destination no rule opened.",
        "reason",
        &crate::policy::DENIAL_REASONS,
        &|m| &m.denied,
    );
    out
}

/// Serves `GET /metrics` on a plain thread (never on a core).
pub fn serve(
    addr: SocketAddr,
    all: AllMetrics,
    core_ids: Vec<usize>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                let mut req = [0u8; 1024];
                let n = conn.read(&mut req).unwrap_or(0);
                let line = String::from_utf8_lossy(&req[..n]);
                let (status, body) = if line.starts_with("GET /metrics ") {
                    ("200 OK", render(&all, &core_ids))
                } else {
                    ("404 Not Found", "try GET /metrics\n".to_owned())
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        })?;
    Ok(bound)
}
