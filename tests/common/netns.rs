//! A two-namespace lab for tests of real network failures (ICMP rejects,
//! blackholes, missing routes), built fresh for each test and torn down by
//! [`Lab`]'s `Drop`, panics included:
//!
//! ```text
//!   P: proxy + test client        T: targets, nftables rules
//!   lo, v0 10.231.0.1/24  <-veth->  v0 10.231.0.2-4/24
//!          fd00:231::1/64             fd00:231::2-4/64
//! ```
//!
//! Nothing is added to the root namespace: the veth is created inside P
//! with its peer inside T, so no lab address is routable from the host.
//! The proxy runs under `ip netns exec P`, which also bind-mounts
//! `/etc/netns/P/hosts` over `/etc/hosts` for name-resolution cases; the
//! client's sockets are made by a thread that `setns(2)`ed into P (a socket
//! stays in the namespace it was created in, whichever thread uses it).
//!
//! Needs root, iproute2 and nftables. Without them [`Lab::new`] prints why
//! and returns `None`, so the test passes as skipped, unless
//! `CORESOCKS_NETNS_REQUIRED=1` (for CI) makes that a failure.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::thread;

use crate::common::{echo_server, Echo, Proxy};

/// Every namespace and `/etc/netns` entry the lab makes starts with this,
/// then the pid, so leftovers of a crashed run can be told from a live one.
pub const PREFIX: &str = "coresocks-nt-";

/// P's side of the veth.
pub const P_V4: &str = "10.231.0.1";
pub const P_V6: &str = "fd00:231::1";
const P_MAC: &str = "02:00:0a:e7:00:01";
const T_MAC: &str = "02:00:0a:e7:00:02";
/// T's addresses: the live one, and two spares for rules to blackhole.
pub const T_V4: [&str; 3] = ["10.231.0.2", "10.231.0.3", "10.231.0.4"];
pub const T_V6: [&str; 3] = ["fd00:231::2", "fd00:231::3", "fd00:231::4"];

const SKIP: &str = "skipped: needs root and nftables (apt-get install nftables iproute2)";

static SEQ: AtomicUsize = AtomicUsize::new(0);
static SWEEP: Once = Once::new();

pub struct Lab {
    /// Namespace of the proxy and the client.
    pub p: String,
    /// Namespace of the targets.
    pub t: String,
    /// `/etc/netns/P`, once [`Lab::hosts`] made it.
    etc: Option<PathBuf>,
}

impl Lab {
    /// Builds the lab, or returns `None` (after printing why) where this
    /// machine cannot.
    pub fn new() -> Option<Lab> {
        if let Err(why) = prerequisites() {
            return skip(&why);
        }
        SWEEP.call_once(sweep_leftovers);
        let base = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            p: format!("{base}-p"),
            t: format!("{base}-t"),
            etc: None,
        };
        // `lab` owns the names from here on: a failure below still removes
        // whatever was made.
        if let Err(e) = ip(&["netns", "add", &lab.p]) {
            return skip(&format!("cannot create a network namespace: {e}"));
        }
        lab.build()
            .unwrap_or_else(|e| panic!("building the netns lab: {e}"));
        Some(lab)
    }

    fn build(&self) -> Result<(), String> {
        let (p, t) = (self.p.as_str(), self.t.as_str());
        ip(&["netns", "add", t])?;
        for ns in [p, t] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n", p, "link", "add", "v0", "address", P_MAC, "type", "veth", "peer", "name", "v0",
            "address", T_MAC, "netns", t,
        ])?;
        ip(&["-n", p, "addr", "add", &format!("{P_V4}/24"), "dev", "v0"])?;
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{P_V6}/64"),
            "dev",
            "v0",
            "nodad",
        ])?;
        for a in T_V4 {
            ip(&["-n", t, "addr", "add", &format!("{a}/24"), "dev", "v0"])?;
        }
        for a in T_V6 {
            ip(&[
                "-n",
                t,
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "v0",
                "nodad",
            ])?;
        }
        // Static neighbours: no ARP/NDP round trip (or its start-up delays:
        // a first IPv6 contact right after link-up could take 1.2 s) in
        // any timing.
        let mut neigh = String::new();
        for a in T_V4.iter().chain(&T_V6) {
            neigh += &format!("neigh replace {a} lladdr {T_MAC} dev v0 nud permanent\n");
        }
        ip_batch(p, &neigh)?;
        ip_batch(
            t,
            &format!(
                "neigh replace {P_V4} lladdr {P_MAC} dev v0 nud permanent\n\
                 neigh replace {P_V6} lladdr {P_MAC} dev v0 nud permanent\n"
            ),
        )?;
        for ns in [p, t] {
            ip(&["-n", ns, "link", "set", "v0", "up"])?;
        }
        // T answers every probe: no ICMP rate limit (per namespace).
        in_netns(t, || {
            for knob in ["ipv4/icmp_ratelimit", "ipv6/icmp/ratelimit"] {
                let _ = fs::write(format!("/proc/sys/net/{knob}"), "0");
            }
        });
        Ok(())
    }

    /// Loads `rules` (nft statements, one a line) into T's input chain.
    pub fn filter_targets(&self, rules: &str) {
        let ruleset = format!(
            "table inet coresocks_test {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n{rules}\n }}\n}}\n"
        );
        pipe(
            &["ip", "netns", "exec", &self.t, "nft", "-f", "-"],
            &ruleset,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Gives P its own `/etc/hosts` (localhost plus `entries`). Call it
    /// before [`Lab::proxy`]: `ip netns exec` mounts it when it starts.
    pub fn hosts(&mut self, entries: &str) {
        let dir = Path::new("/etc/netns").join(&self.p);
        fs::create_dir_all(&dir).expect("create /etc/netns/P");
        self.etc = Some(dir.clone());
        fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n::1 localhost\n{entries}\n"),
        )
        .expect("write /etc/netns/P/hosts");
        // Names come from that file alone: P has no DNS server, and a name
        // with only IPv4 entries would otherwise send getaddrinfo to DNS
        // for its IPv6 addresses and wait out the resolver's timeout.
        fs::write(dir.join("nsswitch.conf"), "hosts: files\n")
            .expect("write /etc/netns/P/nsswitch.conf");
    }

    /// What getaddrinfo in P returns for `name`, in order (`getent ahosts`).
    pub fn resolve_in_p(&self, name: &str) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.p, "getent", "ahosts", name])
            .output()
            .expect("run getent");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("STREAM"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    }

    /// The proxy inside P, one core, on 127.0.0.1 there, with the test
    /// networks (private addresses, denied by default) opened.
    pub fn proxy(&self, args: &[&str]) -> Proxy {
        let mut all = vec![
            "--cores",
            "1",
            "--allow",
            "10.231.0.0/16",
            "--allow",
            "10.232.0.0/16",
        ];
        all.extend(["--allow", "fd00:231::/32", "--allow", "fd00:232::/32"]);
        all.extend_from_slice(args);
        Proxy::start_in(&["ip", "netns", "exec", &self.p], &all)
    }

    /// Adds `cidr` (e.g. "10.231.0.11/24") to P's side of the veth: a
    /// second source address for egress tests.
    pub fn add_p_address(&self, cidr: &str) {
        let mut args = vec!["-n", &self.p, "addr", "add", cidr, "dev", "v0"];
        if cidr.contains(':') {
            args.push("nodad");
        }
        ip(&args).unwrap_or_else(|e| panic!("{e}"));
    }

    /// A server in T on `ip` that answers each connection with the
    /// address it came from, then closes.
    pub fn source_reporter(&self, ip: &str) -> crate::common::Server {
        let bind = if ip.contains(':') {
            format!("[{ip}]:0")
        } else {
            format!("{ip}:0")
        };
        in_netns(&self.t, || {
            crate::common::Server::start(&bind, |mut s| {
                let seen = s.peer_addr().unwrap().ip().to_string();
                let _ = s.write_all(seen.as_bytes());
            })
        })
    }

    /// An echo server in T on the first (live) address.
    pub fn echo(&self) -> Echo {
        in_netns(&self.t, || echo_server(&format!("{}:0", T_V4[0])))
    }

    /// Runs `f` on a thread inside P: sockets it makes (a client of the
    /// proxy) live in P.
    pub fn client<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_netns(&self.p, f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting the names is enough: each namespace, and the veth with
        // it, goes away once the last socket or process in it has.
        for ns in [&self.p, &self.t] {
            let _ = ip(&["netns", "delete", ns]);
        }
        if let Some(dir) = &self.etc {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Runs `f` on a fresh thread that has joined namespace `ns`; a panic in
/// `f` is passed on.
pub fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    let handle = fs::File::open(Path::new("/var/run/netns").join(ns))
        .unwrap_or_else(|e| panic!("open /var/run/netns/{ns}: {e}"));
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd; CLONE_NEWNET moves only
            // this thread, which ends when `f` does.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {ns}: {}", io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    for tool in [["ip", "-V"], ["nft", "--version"]] {
        match Command::new(tool[0]).arg(tool[1]).output() {
            Ok(o) if o.status.success() => {}
            _ => return Err(format!("`{}` is missing", tool[0])),
        }
    }
    Ok(())
}

fn skip<T>(why: &str) -> Option<T> {
    if std::env::var_os("CORESOCKS_NETNS_REQUIRED").is_some_and(|v| v != "0") {
        panic!("{SKIP}: {why} (and CORESOCKS_NETNS_REQUIRED is set)");
    }
    println!("{SKIP}: {why}");
    None
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip -n NS -batch -` on `commands`, one a line.
fn ip_batch(ns: &str, commands: &str) -> Result<(), String> {
    pipe(&["ip", "-n", ns, "-batch", "-"], commands)
}

/// Runs `argv` with `input` on its stdin; its stderr is the error.
fn pipe(argv: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    // A write error means the child died early; its stderr says why.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", argv[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed on\n{input}{}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes namespaces and `/etc/netns` entries with our prefix whose
/// process is gone (a crashed or killed earlier run). Live runs' entries,
/// and anything without the prefix, are left alone.
fn sweep_leftovers() {
    let stale = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if stale(name) {
                let _ = ip(&["netns", "delete", name]);
            }
        }
    }
    if let Ok(dir) = fs::read_dir("/etc/netns") {
        for entry in dir.flatten() {
            if stale(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}
