//! The machine a run ran on, as the result records it: enough that two
//! result files explain their own difference (`loadgen diff`). Besides the
//! kernel and CPUs, it holds every sysctl the tuning kit (`tuning/apply.sh`)
//! reads or sets, and each network interface's queue, steering and
//! (with `ethtool` installed) offload, ring and coalescing settings, as
//! seen from loadgen's network namespace.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

/// The sysctls of the tuning kit's profiles, and the few others that move
/// proxy benchmarks (congestion control, qdisc, autocorking).
const SYSCTLS: &[&str] = &[
    "fs.file-max",
    "fs.nr_open",
    "fs.pipe-max-size",
    "fs.pipe-user-pages-soft",
    "net.core.busy_poll",
    "net.core.busy_read",
    "net.core.default_qdisc",
    "net.core.netdev_budget",
    "net.core.netdev_max_backlog",
    "net.core.optmem_max",
    "net.core.rmem_default",
    "net.core.rmem_max",
    "net.core.rps_sock_flow_entries",
    "net.core.somaxconn",
    "net.core.wmem_default",
    "net.core.wmem_max",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_autocorking",
    "net.ipv4.tcp_congestion_control",
    "net.ipv4.tcp_fastopen",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_migrate_req",
    "net.ipv4.tcp_notsent_lowat",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_wmem",
    "net.ipv4.udp_mem",
    "net.ipv4.udp_rmem_min",
    "net.ipv4.udp_wmem_min",
];

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    pub cpu_model: String,
    /// The sysctls above that this kernel has, whitespace normalised.
    pub sysctls: BTreeMap<String, String>,
    /// Every interface but `lo`, by name.
    pub interfaces: BTreeMap<String, Interface>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Interface {
    pub mtu: Option<u64>,
    pub tx_queue_len: Option<u64>,
    pub rx_queues: usize,
    pub tx_queues: usize,
    /// The receive CPU masks (RPS) of each queue, joined by spaces.
    pub rps_cpus: String,
    /// Each receive queue's RFS flow count, joined by spaces.
    pub rps_flow_cnt: String,
    /// The transmit CPU masks (XPS) of each queue, joined by spaces.
    pub xps_cpus: String,
    pub gro_flush_timeout: Option<u64>,
    pub napi_defer_hard_irqs: Option<u64>,
    /// `ethtool -k`, `-g` and `-c` as key = value (empty without ethtool,
    /// or for what the driver does not report).
    pub ethtool: BTreeMap<String, String>,
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

impl Machine {
    pub fn current() -> Machine {
        let text = |p: &str| read(Path::new(p)).unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|name| {
                let path = format!("/proc/sys/{}", name.replace('.', "/"));
                Some((name.to_string(), read(Path::new(&path))?))
            })
            .collect();
        Machine {
            hostname: text("/proc/sys/kernel/hostname"),
            kernel: text("/proc/sys/kernel/osrelease"),
            cpus: coresocks_io::sys::online_cpus(),
            cpu_model,
            sysctls,
            interfaces: interfaces(),
        }
    }
}

fn interfaces() -> BTreeMap<String, Interface> {
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return BTreeMap::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    let ethtool = ethtool_available();
    names
        .into_iter()
        .map(|name| {
            let dir = Path::new("/sys/class/net").join(&name);
            let interface = interface(&dir, ethtool.then_some(name.as_str()));
            (name, interface)
        })
        .collect()
}

fn interface(dir: &Path, ethtool_name: Option<&str>) -> Interface {
    let number = |file: &str| read(&dir.join(file)).and_then(|s| s.parse().ok());
    let queues = |prefix: &str| -> Vec<std::path::PathBuf> {
        let mut q: Vec<_> = std::fs::read_dir(dir.join("queues"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect();
        q.sort();
        q
    };
    let (rx, tx) = (queues("rx-"), queues("tx-"));
    let joined = |qs: &[std::path::PathBuf], file: &str| {
        qs.iter()
            .map(|q| read(&q.join(file)).unwrap_or_else(|| "-".into()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Interface {
        mtu: number("mtu"),
        tx_queue_len: number("tx_queue_len"),
        rx_queues: rx.len(),
        tx_queues: tx.len(),
        rps_cpus: joined(&rx, "rps_cpus"),
        rps_flow_cnt: joined(&rx, "rps_flow_cnt"),
        xps_cpus: joined(&tx, "xps_cpus"),
        gro_flush_timeout: number("gro_flush_timeout"),
        napi_defer_hard_irqs: number("napi_defer_hard_irqs"),
        ethtool: ethtool_name.map(ethtool_settings).unwrap_or_default(),
    }
}

fn ethtool_available() -> bool {
    Command::new("ethtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Offloads (`-k`), rings (`-g`: the current settings, not the maxima) and
/// coalescing (`-c`), as `k.NAME`, `g.NAME`, `c.NAME`.
fn ethtool_settings(name: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (flag, prefix) in [("-k", "k"), ("-g", "g"), ("-c", "c")] {
        let Ok(o) = Command::new("ethtool").arg(flag).arg(name).output() else {
            continue;
        };
        if !o.status.success() {
            continue;
        }
        let text = String::from_utf8_lossy(&o.stdout);
        // `-g` prints the maxima first, then "Current hardware settings:".
        let body = text
            .split_once("Current hardware settings:")
            .map_or(&*text, |(_, cur)| cur);
        out.extend(parse_ethtool(prefix, body));
    }
    out
}

fn parse_ethtool(prefix: &str, text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let (k, v) = (k.trim(), v.trim());
            // Section titles ("Features for veth0:") have no value.
            (!v.is_empty() && !k.contains("for ")).then(|| (format!("{prefix}.{k}"), v.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let m = Machine::current();
        assert!(
            m.sysctls.contains_key("net.core.somaxconn"),
            "{:?}",
            m.sysctls
        );
        assert!(!m.sysctls["net.ipv4.tcp_rmem"].contains('\t'));
    }

    #[test]
    fn ethtool_lines() {
        let text =
            "Features for veth0:\nrx-checksumming: on\ntcp-segmentation-offload: off [fixed]\n";
        assert_eq!(
            parse_ethtool("k", text),
            [
                ("k.rx-checksumming".to_owned(), "on".to_owned()),
                (
                    "k.tcp-segmentation-offload".to_owned(),
                    "off [fixed]".to_owned()
                )
            ]
        );
    }
}
