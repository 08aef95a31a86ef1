//! CPU and memory from /proc, sampled at two instants the runner picks:
//! `--proxy-pid`'s CPU time and resident memory (/proc/PID/stat utime +
//! stime, in clock ticks, and /proc/PID/status VmRSS; at the ends of the
//! measurement window, or around the opening of idle tunnels); loadgen's own
//! CPU; and the system's softirq CPU (/proc/stat) and TCP retransmissions
//! (/proc/net/snmp, this network namespace) over the window.

use std::time::Instant;

use serde::Serialize;

use crate::error::LoadgenError;

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    pub at: Instant,
    /// utime, in clock ticks.
    pub utime: u64,
    /// stime, in clock ticks.
    pub stime: u64,
    /// VmRSS in bytes.
    pub rss_bytes: u64,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 almost everywhere).
pub fn clock_ticks() -> f64 {
    coresocks_io::sys::clock_ticks() as f64
}

/// Reads /proc/PID/stat and /proc/PID/status now.
pub fn sample(pid: u32) -> Result<ProcSample, String> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("cannot read /proc/{pid}/stat: {e}"))?;
    let (utime, stime) =
        parse_stat(&stat).ok_or_else(|| format!("cannot parse /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    let rss_bytes = parse_rss(&status).ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))?;
    Ok(ProcSample {
        at,
        utime,
        stime,
        rss_bytes,
    })
}

/// Checks before a run that the process can be read.
pub fn check(pid: u32) -> Result<(), LoadgenError> {
    sample(pid)
        .map(|_| ())
        .map_err(|e| LoadgenError::Usage(format!("--proxy-pid {pid}: {e} (is the proxy running?)")))
}

/// utime and stime (fields 14 and 15). The command name (field 2) is in
/// parentheses and may hold spaces or parentheses itself, so the fields are
/// counted from the last ')'.
fn parse_stat(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime = fields.get(11)?.parse().ok()?;
    let stime = fields.get(12)?.parse().ok()?;
    Some((utime, stime))
}

/// VmRSS in bytes ("VmRSS:   12345 kB"). Kernel threads have none.
fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let unit = match parts.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some(_) => 1,
    };
    Some(value * unit)
}

/// One reading of the system: softirq ticks per CPU, and the TCP segment
/// counters of this network namespace.
#[derive(Debug, Clone)]
pub struct SystemSample {
    pub at: Instant,
    /// (cpu id, softirq ticks) for each CPU line of /proc/stat.
    pub softirq: Vec<(usize, u64)>,
    /// Ticks every CPU together spent not idle (user, nice, system, irq,
    /// softirq, steal; the `cpu` line less idle and iowait).
    pub busy: u64,
    pub tcp_out_segs: Option<u64>,
    pub tcp_retrans_segs: Option<u64>,
}

pub fn sample_system() -> Result<SystemSample, String> {
    let at = Instant::now();
    let stat = std::fs::read_to_string("/proc/stat")
        .map_err(|e| format!("cannot read /proc/stat: {e}"))?;
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    Ok(SystemSample {
        at,
        softirq: parse_softirq(&stat),
        busy: parse_busy(&stat).unwrap_or(0),
        tcp_out_segs: snmp_counter(&snmp, "Tcp:", "OutSegs"),
        tcp_retrans_segs: snmp_counter(&snmp, "Tcp:", "RetransSegs"),
    })
}

/// The softirq column (the 7th number) of each `cpuN` line.
fn parse_softirq(stat: &str) -> Vec<(usize, u64)> {
    stat.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let cpu: usize = f.next()?.strip_prefix("cpu")?.parse().ok()?;
            let softirq = f.nth(6)?.parse().ok()?;
            Some((cpu, softirq))
        })
        .collect()
}

/// The `cpu` line's ticks less idle (4th) and iowait (5th); guest time is
/// already inside user and nice, so the first eight columns are summed.
fn parse_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    Some(total - ticks.get(3)? - ticks.get(4)?)
}

/// A counter of /proc/net/snmp: a header line and a value line that start
/// with the same `section`.
pub fn snmp_counter(snmp: &str, section: &str, name: &str) -> Option<u64> {
    let mut lines = snmp.lines().filter(|l| l.starts_with(section));
    let header = lines.next()?;
    let values = lines.next()?;
    let at = header.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// What the system did over the window (`system` in JSON).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SystemCost {
    pub seconds: f64,
    /// Softirq CPU time on every CPU together (network receive and transmit
    /// processing runs there, for the proxy, loadgen and the targets alike).
    pub softirq_cpu_s: f64,
    /// The same per CPU: (cpu id, seconds).
    pub softirq_cpu_s_by_cpu: Vec<(usize, f64)>,
    /// CPU time every CPU together spent not idle: the proxy, loadgen, the
    /// targets and the kernel's work for all of them (softirqs, kworkers),
    /// so a relay whose work leaves the proxy's process is still counted.
    pub busy_cpu_s: f64,
    /// `busy_cpu_s` per GiB moved (throughput only).
    pub busy_cpu_s_per_gib: Option<f64>,
    /// TCP segments sent and retransmitted in this network namespace
    /// (every socket, not only loadgen's); null when unreadable.
    pub tcp_segments_out: Option<u64>,
    pub tcp_retransmits: Option<u64>,
}

impl SystemCost {
    pub fn between(a: &SystemSample, b: &SystemSample) -> SystemCost {
        let hz = clock_ticks();
        let by_cpu: Vec<(usize, f64)> = b
            .softirq
            .iter()
            .map(|&(cpu, after)| {
                let before = a
                    .softirq
                    .iter()
                    .find(|(c, _)| *c == cpu)
                    .map_or(after, |x| x.1);
                (cpu, after.saturating_sub(before) as f64 / hz)
            })
            .collect();
        let delta = |x: Option<u64>, y: Option<u64>| Some(y?.saturating_sub(x?));
        SystemCost {
            seconds: b.at.saturating_duration_since(a.at).as_secs_f64(),
            softirq_cpu_s: by_cpu.iter().map(|x| x.1).sum(),
            softirq_cpu_s_by_cpu: by_cpu,
            busy_cpu_s: b.busy.saturating_sub(a.busy) as f64 / hz,
            busy_cpu_s_per_gib: None,
            tcp_segments_out: delta(a.tcp_out_segs, b.tcp_out_segs),
            tcp_retransmits: delta(a.tcp_retrans_segs, b.tcp_retrans_segs),
        }
    }
}

impl SystemCost {
    /// Sets busy_cpu_s_per_gib from the bytes counted in the window.
    pub fn per_gib(&mut self, bytes: u64) {
        self.busy_cpu_s_per_gib =
            (bytes > 0).then(|| self.busy_cpu_s / (bytes as f64 / (1u64 << 30) as f64));
    }
}

/// loadgen's own CPU over the window (`loadgen_process` in JSON): a
/// loadgen at a full core on any CPU measures itself, not the proxy.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LoadgenProcess {
    pub seconds: f64,
    pub cpu_s: f64,
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    /// cpu_s / seconds, over all of loadgen's cores and its targets.
    pub cpu_cores: f64,
}

impl LoadgenProcess {
    pub fn between(a: &ProcSample, b: &ProcSample) -> LoadgenProcess {
        let p = ProxyProcess::between(0, "window", a, b);
        LoadgenProcess {
            seconds: p.seconds,
            cpu_s: p.cpu_s,
            cpu_user_s: p.cpu_user_s,
            cpu_system_s: p.cpu_system_s,
            cpu_cores: p.cpu_cores,
        }
    }
}

/// What the report says about the proxy process (`proxy_process` in JSON).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProxyProcess {
    pub pid: u32,
    /// When the two samples were taken: "window" (start and end of the
    /// measurement window) or "tunnels" (idle: before opening the tunnels,
    /// and 1 s after the last one opened).
    pub sampled: &'static str,
    /// Wall time between the two samples.
    pub seconds: f64,
    /// CPU time (user + system) the proxy used between the samples.
    pub cpu_s: f64,
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    /// cpu_s / seconds: the proxy's CPU use in cores (1.0 = one full core).
    pub cpu_cores: f64,
    /// Throughput only: cpu_s per GiB of data counted in both directions.
    pub cpu_s_per_gib: Option<f64>,
    pub rss_start_bytes: u64,
    pub rss_end_bytes: u64,
    /// rss_end_bytes - rss_start_bytes (may be negative).
    pub rss_growth_bytes: i64,
    /// Idle only: rss_growth_bytes / tunnels opened.
    pub rss_growth_per_tunnel_bytes: Option<f64>,
}

impl ProxyProcess {
    pub fn between(
        pid: u32,
        sampled: &'static str,
        a: &ProcSample,
        b: &ProcSample,
    ) -> ProxyProcess {
        let hz = clock_ticks();
        let user = b.utime.saturating_sub(a.utime) as f64 / hz;
        let system = b.stime.saturating_sub(a.stime) as f64 / hz;
        let seconds = b.at.saturating_duration_since(a.at).as_secs_f64();
        ProxyProcess {
            pid,
            sampled,
            seconds,
            cpu_s: user + system,
            cpu_user_s: user,
            cpu_system_s: system,
            cpu_cores: if seconds > 0.0 {
                (user + system) / seconds
            } else {
                0.0
            },
            cpu_s_per_gib: None,
            rss_start_bytes: a.rss_bytes,
            rss_end_bytes: b.rss_bytes,
            rss_growth_bytes: b.rss_bytes as i64 - a.rss_bytes as i64,
            rss_growth_per_tunnel_bytes: None,
        }
    }

    /// Sets cpu_s_per_gib from the bytes counted in the window.
    pub fn per_gib(&mut self, bytes: u64) {
        self.cpu_s_per_gib = (bytes > 0).then(|| self.cpu_s / (bytes as f64 / (1u64 << 30) as f64));
    }

    pub fn per_tunnel(&mut self, tunnels: u64) {
        self.rss_growth_per_tunnel_bytes =
            (tunnels > 0).then(|| self.rss_growth_bytes as f64 / tunnels as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softirq_and_snmp_counters() {
        let stat = "cpu  1 2 3 4 5 6 700 8 9 10\ncpu0 1 2 3 4 5 6 300 8 9 10\ncpu1 1 2 3 4 5 6 400 8 9 10\nintr 5\n";
        assert_eq!(parse_softirq(stat), [(0, 300), (1, 400)]);
        // user 1, nice 2, system 3, irq 6, softirq 700, steal 8; idle 4
        // and iowait 5 left out.
        assert_eq!(parse_busy(stat), Some(720));
        let snmp =
            "Ip: Forwarding X\nIp: 1 2\nTcp: RtoAlgorithm OutSegs RetransSegs\nTcp: 1 5000 12\n";
        assert_eq!(snmp_counter(snmp, "Tcp:", "RetransSegs"), Some(12));
        assert_eq!(snmp_counter(snmp, "Tcp:", "OutSegs"), Some(5000));
        assert_eq!(snmp_counter(snmp, "Tcp:", "Nope"), None);
        let live = sample_system().unwrap();
        assert!(!live.softirq.is_empty());
    }

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "4242 (core (socks) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 123 1000 200";
        assert_eq!(parse_stat(stat), Some((250, 75)));
        assert_eq!(parse_stat("1 (x) S 1"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tcoresocks\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t2\n";
        assert_eq!(parse_rss(status), Some(1234 * 1024));
        assert_eq!(parse_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn reads_itself() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        let a = ProcSample {
            at: s.at,
            utime: 100,
            stime: 50,
            rss_bytes: 1 << 20,
        };
        let b = ProcSample {
            at: s.at + std::time::Duration::from_secs(2),
            utime: 300,
            stime: 100,
            rss_bytes: 3 << 20,
        };
        let mut p = ProxyProcess::between(7, "window", &a, &b);
        let hz = clock_ticks();
        assert!((p.cpu_s - 250.0 / hz).abs() < 1e-9);
        assert!((p.cpu_cores - p.cpu_s / 2.0).abs() < 1e-9);
        assert_eq!(p.rss_growth_bytes, 2 << 20);
        p.per_gib(1 << 31);
        assert!((p.cpu_s_per_gib.unwrap() - p.cpu_s / 2.0).abs() < 1e-9);
        p.per_tunnel(1024);
        assert_eq!(p.rss_growth_per_tunnel_bytes, Some(2048.0));
    }
}
