//! The result of one run: the JSON document (schema in README.md) as types,
//! and the headline numbers `compare` and `diff` use. How a result is shown
//! (table, JSON, HdrHistogram, SVG) lives in `output`.

pub mod machine;
pub mod scenarios;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::procstat::{LoadgenProcess, ProxyProcess, SystemCost};
use crate::runner::LiveKind;
use crate::stats::{Percentiles, Recorder, Sample, INTERVAL};
use crate::target::TargetStats;
pub use machine::Machine;
pub use scenarios::{
    CpsResult, IdleResult, LatencyResult, StreamResult, ThroughputResult, UdpResult,
};

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
    /// loadgen's own CPU over the window.
    pub loadgen_process: Option<LoadgenProcess>,
    /// Softirq CPU and TCP retransmissions over the window.
    pub system: Option<SystemCost>,
    pub notes: Vec<String>,
    /// The latency measures with their per-second histograms, for the
    /// HdrHistogram and plot outputs (the JSON holds their percentiles).
    #[serde(skip)]
    pub latencies: Vec<(&'static str, Recorder)>,
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
    /// Percentiles of what completed in this interval, per latency measure
    /// (scenarios that measure latency).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub percentiles: BTreeMap<&'static str, Percentiles>,
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
                percentiles: BTreeMap::new(),
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
    /// Attaches the run's latency measures (a `None` is one no core
    /// recorded) and puts each interval's percentiles on its series point.
    pub fn with_latencies<const N: usize>(
        mut self,
        measures: [(&'static str, Option<Recorder>); N],
    ) -> Report {
        let last = self.series.len().saturating_sub(1);
        for (name, recorder) in measures {
            let Some(recorder) = recorder else { continue };
            for (i, point) in self.series.iter_mut().enumerate() {
                // The interval a point covers, by its midpoint (the last
                // point may be shorter than a second).
                let k = ((point.t_s - point.dt_s / 2.0) / INTERVAL.as_secs_f64()).floor();
                if k < 0.0 {
                    continue;
                }
                let k = (k as usize).min(recorder.intervals.len());
                // The last point also takes what completed after the window
                // (answers to requests sent in it, collected in the drain),
                // so that the points add up to the run's count.
                let until = if i == last {
                    recorder.intervals.len()
                } else {
                    (k + 1).min(recorder.intervals.len())
                };
                let mut h = crate::stats::new_histogram();
                for from in &recorder.intervals[k..until] {
                    crate::stats::merge(&mut h, from);
                }
                if !h.is_empty() {
                    point.percentiles.insert(name, Percentiles::of(&h));
                }
            }
            self.latencies.push((name, recorder));
        }
        self
    }

    /// The numbers that sum a run up; the first is the headline.
    pub fn headline_metrics(&self) -> Vec<Metric> {
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
        if let Some(l) = &self.loadgen_process {
            metrics.push(m("loadgen CPU cores", l.cpu_cores, false));
        }
        if let Some(s) = &self.system {
            metrics.push(m("softirq CPU s", s.softirq_cpu_s, false));
            if let Some(per_gib) = s.busy_cpu_s_per_gib {
                metrics.push(m("all-CPU s/GiB", per_gib, false));
            }
            if let Some(r) = s.tcp_retransmits {
                metrics.push(m("TCP retransmits", r as f64, false));
            }
        }
        metrics
    }
}
