//! The result of one run: the JSON document (schema in README.md), the
//! table printed at the end, and the headline numbers `compare` uses.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::LoadgenError;
use crate::procstat::ProxyProcess;
use crate::runner::LiveKind;
use crate::scenario::cps::CpsResult;
use crate::scenario::idle::IdleResult;
use crate::scenario::latency::LatencyResult;
use crate::scenario::throughput::ThroughputResult;
use crate::scenario::udp::UdpResult;
use crate::stats::{Percentiles, Sample};
use crate::target::TargetStats;

pub const RESULT_SCHEMA: &str = "loadgen-result-v1";

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub loadgen_version: &'static str,
    pub scenario: &'static str,
    pub started_unix_s: f64,
    pub path: PathInfo,
    pub parameters: serde_json::Value,
    pub machine: Machine,
    pub result: ScenarioResult,
    pub errors: Errors,
    pub series_unit: &'static str,
    pub series: Vec<SeriesPoint>,
    /// Counters of loadgen's own targets (absent with --target).
    pub target: Option<TargetStats>,
    /// The proxy's CPU time and memory (--proxy-pid; null without).
    pub proxy_process: Option<ProxyProcess>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathInfo {
    /// "direct", or the proxy's name (compare) or address.
    pub name: String,
    /// "direct" or "proxy".
    pub mode: &'static str,
    pub proxy: Option<String>,
    /// Whether username/password was offered.
    pub auth: bool,
    pub target: String,
    /// Whether loadgen ran the targets itself.
    pub target_internal: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn current() -> Machine {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        // SAFETY: sysconf reads a system constant.
        let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        Machine {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: usize::try_from(online).unwrap_or(0),
            cpu_model,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum ScenarioResult {
    Throughput(ThroughputResult),
    Cps(CpsResult),
    Latency(LatencyResult),
    Udp(UdpResult),
    Idle(IdleResult),
}

#[derive(Debug, Clone, Serialize)]
pub struct Errors {
    pub total: u64,
    pub by_cause: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SeriesPoint {
    /// End of the interval, seconds since the load started.
    pub t_s: f64,
    pub dt_s: f64,
    /// Some of the interval lies in the warmup.
    pub warmup: bool,
    /// Rate over the interval, in `series_unit`.
    pub value: f64,
    /// Throughput only: the up and down parts of `value`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub up: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub down: Option<f64>,
    pub errors: u64,
}

pub fn series(kind: LiveKind, samples: &[Sample]) -> (&'static str, Vec<SeriesPoint>) {
    let unit = match kind {
        LiveKind::Throughput => "gbit_s",
        LiveKind::Connections => "connections_per_s",
        LiveKind::Responses => "responses_per_s",
        LiveKind::Datagrams => "datagrams_per_s",
        LiveKind::Tunnels => "open_tunnels",
    };
    let mut open = 0i64;
    let points = samples
        .iter()
        .map(|s| {
            let per_s = |n: u64| if s.dt_s > 0.0 { n as f64 / s.dt_s } else { 0.0 };
            let gbit = |n: u64| per_s(n) * 8.0 / 1e9;
            let (value, up, down) = match kind {
                LiveKind::Throughput => (
                    gbit(s.primary + s.secondary),
                    Some(gbit(s.primary)),
                    Some(gbit(s.secondary)),
                ),
                LiveKind::Connections | LiveKind::Responses | LiveKind::Datagrams => {
                    (per_s(s.primary), None, None)
                }
                LiveKind::Tunnels => {
                    open += s.primary as i64 - s.secondary as i64;
                    (open as f64, None, None)
                }
            };
            SeriesPoint {
                t_s: round3(s.t_s),
                dt_s: round3(s.dt_s),
                warmup: s.warmup,
                value,
                up,
                down,
                errors: s.errors,
            }
        })
        .collect();
    (unit, points)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A number `compare` puts side by side.
#[derive(Debug, Clone, Serialize)]
pub struct Metric {
    pub name: &'static str,
    pub value: f64,
    pub higher_is_better: bool,
}

impl Report {
    pub fn write_json(&self, path: &Path) -> Result<(), LoadgenError> {
        write_json(self, path)
    }

    /// The numbers that sum a run up; the first is the headline.
    pub fn metrics(&self) -> Vec<Metric> {
        let m = |name, value, higher_is_better| Metric {
            name,
            value,
            higher_is_better,
        };
        let mut metrics = match &self.result {
            ScenarioResult::Throughput(t) => vec![
                m("Gbit/s", t.gbit_s_total, true),
                m("Gbit/s per stream", t.gbit_s_per_stream_mean, true),
            ],
            ScenarioResult::Cps(c) => vec![
                m("conn/s", c.connections_per_s, true),
                m("handshake p50 µs", c.handshake.p50_us, false),
                m("handshake p99 µs", c.handshake.p99_us, false),
                m("first byte p99 µs", c.first_byte.p99_us, false),
                m("errors", self.errors.total as f64, false),
            ],
            ScenarioResult::Latency(l) => vec![
                m("p99 µs", l.latency.p99_us, false),
                m("p50 µs", l.latency.p50_us, false),
                m("p99.9 µs", l.latency.p99_9_us, false),
                m("achieved req/s", l.achieved_rate, true),
                m("errors", self.errors.total as f64, false),
            ],
            ScenarioResult::Udp(u) => vec![
                m("pps", u.pps, true),
                m("loss %", u.loss_percent, false),
                m("p99 µs", u.latency.p99_us, false),
                m("p50 µs", u.latency.p50_us, false),
                m("p99.9 µs", u.latency.p99_9_us, false),
                m("errors", self.errors.total as f64, false),
            ],
            ScenarioResult::Idle(i) => vec![
                m("tunnels opened", i.opened as f64, true),
                m("open s", i.open_seconds, false),
                m("errors", self.errors.total as f64, false),
            ],
        };
        // Only runs with --proxy-pid have these; compare shows them for the
        // paths that do.
        if let Some(p) = &self.proxy_process {
            metrics.push(m("proxy CPU s", p.cpu_s, false));
            if let Some(per_gib) = p.cpu_s_per_gib {
                metrics.push(m("proxy CPU s/GiB", per_gib, false));
            }
            metrics.push(m("proxy RSS end MiB", p.rss_end_bytes as f64 / MIB, false));
            if let Some(per_tunnel) = p.rss_growth_per_tunnel_bytes {
                metrics.push(m("proxy RSS/tunnel KiB", per_tunnel / 1024.0, false));
            }
        }
        metrics
    }

    /// The readable summary printed on stdout.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let p = &self.parameters;
        let num = |key: &str| p.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
        row("scenario", self.scenario.to_owned());
        let via = match &self.path.proxy {
            Some(proxy) => format!("proxy {} ({proxy})", self.path.name),
            None => "direct".to_owned(),
        };
        let target = if self.path.target_internal {
            format!("{} (loadgen's own targets)", self.path.target)
        } else {
            self.path.target.clone()
        };
        row("path", format!("{via} -> {target}"));
        let cpus = |key: &str| {
            p.get(key)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        let targets = cpus("target_cores");
        if targets.is_empty() {
            row("cores", cpus("cores"));
        } else {
            row("cores", format!("{} (targets on {targets})", cpus("cores")));
        }
        row(
            "window",
            format!(
                "{:.2} s after {:.2} s warmup",
                num("duration_s"),
                num("warmup_s")
            ),
        );
        match &self.result {
            ScenarioResult::Throughput(t) => {
                row(
                    "streams",
                    format!("{} ({:?})", t.streams, t.direction).to_lowercase(),
                );
                row("Gbit/s total", format!("{:.2}", t.gbit_s_total));
                if t.bytes_up > 0 || t.seconds_up > 0.0 {
                    row(
                        "Gbit/s up",
                        format!(
                            "{:.2}  ({} bytes in {:.3} s)",
                            t.gbit_s_up, t.bytes_up, t.seconds_up
                        ),
                    );
                }
                if t.seconds_down > 0.0 {
                    row(
                        "Gbit/s down",
                        format!(
                            "{:.2}  ({} bytes in {:.3} s)",
                            t.gbit_s_down, t.bytes_down, t.seconds_down
                        ),
                    );
                }
                row(
                    "Gbit/s per stream",
                    format!(
                        "mean {:.2}  min {:.2}  max {:.2}",
                        t.gbit_s_per_stream_mean, t.gbit_s_per_stream_min, t.gbit_s_per_stream_max
                    ),
                );
            }
            ScenarioResult::Cps(c) => {
                row("conn/s", format!("{:.0}", c.connections_per_s));
                row(
                    "connections",
                    format!(
                        "{} in {:.3} s ({} ok in all, warmup included)",
                        c.connections, c.seconds, c.connections_ok_total
                    ),
                );
                row("handshake", percentiles_line(&c.handshake));
                row("first byte", percentiles_line(&c.first_byte));
            }
            ScenarioResult::Latency(l) => {
                if l.closed_loop {
                    row(
                        "rate",
                        format!(
                            "{:.0} round trips/s, closed loop ({} tunnels, {} bytes)",
                            l.achieved_rate, l.connections, l.size
                        ),
                    );
                } else {
                    row(
                        "rate",
                        format!(
                            "{:.0} req/s achieved of {:.0} asked ({} tunnels, {} bytes)",
                            l.achieved_rate, l.target_rate, l.connections, l.size
                        ),
                    );
                }
                row(
                    "responses",
                    format!(
                        "{} in window, {} requests {} in window, {} lost",
                        l.responses_in_window,
                        l.requests_in_window,
                        if l.closed_loop { "sent" } else { "scheduled" },
                        l.lost
                    ),
                );
                let q = &l.latency;
                row(
                    "latency µs",
                    format!(
                        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  p99.99 {:.1}  max {:.1}",
                        q.p50_us, q.p90_us, q.p99_us, q.p99_9_us, q.p99_99_us, q.max_us
                    ),
                );
            }
            ScenarioResult::Udp(u) => {
                row(
                    "pps",
                    format!(
                        "{:.0} received/s of {:.0} asked ({} associations, {} bytes; {:.1} Mbit/s of payload both ways)",
                        u.pps, u.target_rate, u.associations, u.size, u.payload_mbit_s
                    ),
                );
                row(
                    "datagrams",
                    format!(
                        "{} sent, {} received, {} lost ({:.3} %) in window",
                        u.sent, u.received, u.lost, u.loss_percent
                    ),
                );
                if u.send_failures + u.duplicates + u.invalid > 0 {
                    row(
                        "odd datagrams",
                        format!(
                            "{} send failures, {} duplicates, {} invalid",
                            u.send_failures, u.duplicates, u.invalid
                        ),
                    );
                }
                let q = &u.latency;
                row(
                    "latency µs",
                    format!(
                        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
                        q.p50_us, q.p90_us, q.p99_us, q.p99_9_us, q.max_us, q.count
                    ),
                );
            }
            ScenarioResult::Idle(i) => {
                row(
                    "tunnels",
                    format!(
                        "{} opened of {} ({} failed) in {:.3} s; held {:.2} s; {} closed by the other end",
                        i.opened, i.tunnels, i.failed, i.open_seconds, i.held_seconds, i.closed_by_peer
                    ),
                );
            }
        }
        if let Some(p) = &self.proxy_process {
            let per_gib = p
                .cpu_s_per_gib
                .map(|g| format!(", {g:.3} s per GiB relayed"))
                .unwrap_or_default();
            row(
                "proxy CPU",
                format!(
                    "{:.3} s in {:.3} s (user {:.3}, system {:.3}; {:.2} cores){per_gib}  [pid {}]",
                    p.cpu_s, p.seconds, p.cpu_user_s, p.cpu_system_s, p.cpu_cores, p.pid
                ),
            );
            let per_tunnel = p
                .rss_growth_per_tunnel_bytes
                .map(|b| format!(", {:.2} KiB per tunnel", b / 1024.0))
                .unwrap_or_default();
            row(
                "proxy RSS",
                format!(
                    "{:.1} MiB -> {:.1} MiB ({:+.1} MiB{per_tunnel})",
                    p.rss_start_bytes as f64 / MIB,
                    p.rss_end_bytes as f64 / MIB,
                    p.rss_growth_bytes as f64 / MIB
                ),
            );
        }
        let errors = if self.errors.total == 0 {
            "0".to_owned()
        } else {
            let causes: Vec<String> = self
                .errors
                .by_cause
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            format!("{} ({})", self.errors.total, causes.join(", "))
        };
        row("errors", errors);
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (k, v) in rows {
            let _ = writeln!(out, "{k:width$}  {v}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

fn percentiles_line(p: &Percentiles) -> String {
    format!(
        "µs p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
        p.p50_us, p.p90_us, p.p99_us, p.p99_9_us, p.max_us, p.count
    )
}

pub fn write_json<T: Serialize>(value: &T, path: &Path) -> Result<(), LoadgenError> {
    let err = |source: std::io::Error| LoadgenError::Output {
        path: path.display().to_string(),
        source,
    };
    let mut text = serde_json::to_string_pretty(value).map_err(|e| err(e.into()))?;
    text.push('\n');
    std::fs::write(path, text).map_err(err)
}
