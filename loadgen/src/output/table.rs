//! The readable summary of one run, printed on stdout.

use std::fmt::Write as _;

use crate::result::{Report, ScenarioResult};
use crate::stats::Percentiles;

const MIB: f64 = 1024.0 * 1024.0;

/// The readable summary printed on stdout.
pub fn table(report: &Report) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
    let p = &report.parameters;
    let num = |key: &str| p.get(key).and_then(|v| v.as_f64()).unwrap_or(0.0);
    row("scenario", report.scenario.to_owned());
    let via = match &report.path.proxy {
        Some(proxy) => format!("proxy {} ({proxy})", report.path.name),
        None => "direct".to_owned(),
    };
    let target = if report.path.target_internal {
        format!("{} (loadgen's own targets)", report.path.target)
    } else {
        report.path.target.clone()
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
    match &report.result {
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
            if let Some(bits) = t.rate_bits_s {
                row("paced to", format!("{:.3} Gbit/s", bits / 1e9));
            }
            row(
                "retransmits",
                format!("{} (loadgen's ends, TCP_INFO)", t.retransmits),
            );
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
    if let Some(p) = &report.proxy_process {
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
    if let Some(l) = &report.loadgen_process {
        row(
            "loadgen CPU",
            format!(
                "{:.3} s (user {:.3}, system {:.3}; {:.2} cores)",
                l.cpu_s, l.cpu_user_s, l.cpu_system_s, l.cpu_cores
            ),
        );
    }
    if let Some(s) = &report.system {
        let by_cpu: Vec<String> = s
            .softirq_cpu_s_by_cpu
            .iter()
            .map(|(cpu, secs)| format!("cpu{cpu} {secs:.3}"))
            .collect();
        row(
            "softirq CPU",
            format!("{:.3} s ({})", s.softirq_cpu_s, by_cpu.join(", ")),
        );
        let per_gib = s
            .busy_cpu_s_per_gib
            .map_or(String::new(), |g| format!(", {g:.3} s/GiB"));
        row(
            "CPU, all CPUs",
            format!(
                "{:.3} s busy{per_gib} (proxy, load, targets and kernel)",
                s.busy_cpu_s
            ),
        );
        if let (Some(out), Some(re)) = (s.tcp_segments_out, s.tcp_retransmits) {
            row(
                "TCP segments",
                format!("{out} sent, {re} retransmitted (this network namespace)"),
            );
        }
    }
    let errors = if report.errors.total == 0 {
        "0".to_owned()
    } else {
        let causes: Vec<String> = report
            .errors
            .by_cause
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        format!("{} ({})", report.errors.total, causes.join(", "))
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
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

fn percentiles_line(p: &Percentiles) -> String {
    format!(
        "µs p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
        p.p50_us, p.p90_us, p.p99_us, p.p99_9_us, p.max_us, p.count
    )
}
