//! Command line: one subcommand per scenario, plus `serve` and `compare`.
//!
//! Options shared by the scenarios are split in two groups: [`PathArgs`]
//! (which proxy, or direct) and [`RunArgs`] (cores, targets, timing), so that
//! `compare` can reuse a scenario's options while it picks the paths itself.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cores::CoreSpec;

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for SOCKS5 proxies: throughput, connection rate, open-loop latency, UDP and idle tunnels",
    long_about = "Load generator for SOCKS5 proxies: throughput, connection rate, open-loop latency, UDP and idle tunnels.\n\n\
        Runs thread-per-core (one pinned glommio executor per --cores CPU). Unless --target is given, \
        it starts its own echo/sink/source targets (TCP) and UDP echo (same port) on loopback. \
        See loadgen/README.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bulk data through N concurrent tunnels; reports Gbit/s
    Throughput {
        #[command(flatten)]
        path: PathArgs,
        #[command(flatten)]
        args: ThroughputArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Connection rate: connect, negotiate, CONNECT, one small echo, close
    Cps {
        #[command(flatten)]
        path: PathArgs,
        #[command(flatten)]
        args: CpsArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Open-loop request/response latency over persistent tunnels at a fixed rate
    Latency {
        #[command(flatten)]
        path: PathArgs,
        #[command(flatten)]
        args: LatencyArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Open-loop UDP datagrams through UDP ASSOCIATE (or direct) to a UDP echo
    Udp {
        #[command(flatten)]
        path: PathArgs,
        #[command(flatten)]
        args: UdpArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Open N tunnels, hold them silent for --duration, close them (memory per idle tunnel)
    Idle {
        #[command(flatten)]
        path: PathArgs,
        #[command(flatten)]
        args: IdleArgs,
        #[command(flatten)]
        out: OutputArgs,
    },
    /// Run only the targets (echo, sink, source, UDP echo) until SIGINT/SIGTERM or --duration
    Serve(ServeArgs),
    /// Run one scenario against several proxies (and direct), interleaved over rounds
    Compare(CompareArgs),
    /// Show what differs between two result files (JSON of a run or of a
    /// compare): the machine, the settings, and the change in each figure
    Diff(DiffArgs),
    /// Print the markdown table of saved result files (a compare's medians
    /// and ratios, a run's headline numbers), as README's tables are made
    Table(TableArgs),
}

#[derive(Debug, Clone, Args)]
pub struct TableArgs {
    /// Result files (JSON of runs or compares)
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// The result before (the reference)
    #[arg(value_name = "A.json")]
    pub before: PathBuf,
    /// The result after
    #[arg(value_name = "B.json")]
    pub after: PathBuf,
}

/// How loadgen reaches the target: through a SOCKS5 proxy, or direct.
#[derive(Debug, Clone, Args)]
pub struct PathArgs {
    /// Proxy to measure: HOST:PORT (SOCKS5), or with the protocol as a
    /// scheme: socks5://, socks4a://, http:// (HTTP CONNECT)
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "direct")]
    pub proxy: Option<String>,
    /// No proxy: connect to the target directly (the baseline)
    #[arg(long, conflicts_with = "proxy")]
    pub direct: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// RFC 1929 username/password, offered to every proxy.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Username for the proxy (RFC 1929); needs --password
    #[arg(long, requires = "password")]
    pub user: Option<String>,
    /// Password for the proxy (RFC 1929); needs --user
    #[arg(long, requires = "user")]
    pub password: Option<String>,
    /// Authenticate with GSSAPI (RFC 1961, the Kerberos ticket of
    /// KRB5CCNAME) and ask for this protection: clear, integrity or
    /// confidentiality. Only `throughput` relays protected data; the other
    /// scenarios take `clear`
    #[arg(long, value_name = "LEVEL", conflicts_with = "user")]
    pub gssapi: Option<GssLevel>,
    /// GSSAPI: the service of the proxy's principal (SERVICE/HOST)
    #[arg(long, default_value = "rcmd", value_name = "SERVICE")]
    pub gssapi_service: String,
    /// GSSAPI: the host of the proxy's principal [default: the proxy's
    /// address as given to --proxy, without the port]
    #[arg(long, value_name = "HOST")]
    pub gssapi_host: Option<String>,
}

/// The protection `--gssapi` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GssLevel {
    Clear,
    Integrity,
    Confidentiality,
}

/// Cores, targets and timing, common to every scenario.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// CPUs for loadgen's executors, as coresocks' --cores: a count ("2":
    /// the first two CPUs loadgen may run on), a list of CPU ids ("0,2-3";
    /// one CPU: "3-3"), or "all" [default: the first CPU loadgen may run
    /// on, so `taskset -c 3 loadgen ...` runs on CPU 3]
    #[arg(long, value_name = "CPUS")]
    pub cores: Option<CoreSpec>,
    /// Use the targets of a `loadgen serve` at HOST:PORT instead of starting
    /// loadgen's own on loopback
    #[arg(long, value_name = "HOST:PORT")]
    pub target: Option<String>,
    /// CPUs for loadgen's own targets (same syntax as --cores)
    /// [default: the --cores CPUs]
    #[arg(long, value_name = "CPUS", conflicts_with = "target")]
    pub target_cores: Option<CoreSpec>,
    /// Length of the measurement window (e.g. 5, 5s, 500ms, 1m)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before the measurement window that is not counted
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Limit for each connect, handshake and response, and for the drain
    /// after the window
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Sample this process (the proxy) at the start and end of the window:
    /// CPU seconds from /proc/PID/stat, VmRSS from /proc/PID/status
    #[arg(long, value_name = "PID")]
    pub proxy_pid: Option<u32>,
    /// No progress line on stderr (by default one per second: rewritten in
    /// place on a terminal, a line each otherwise)
    #[arg(long)]
    pub quiet: bool,
    /// Wait on glommio's io_uring for every socket instead of on loadgen's
    /// own event ring per executor (the ring is set up as coresocks'
    /// cores set theirs, so completions from the proxy's CPU do not
    /// interrupt loadgen's); to compare, or where the ring is refused
    #[arg(long)]
    pub glommio_io: bool,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Also write the result as JSON to FILE (schema in loadgen/README.md;
    /// compare: every run and the medians)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the latency distributions to DIR as HdrHistogram files: an
    /// interval log (.hlog, one histogram per second and measure) and a
    /// percentile distribution (.hgrm) per measure
    #[arg(long, value_name = "DIR")]
    pub histograms: Option<PathBuf>,
    /// Write SVG plots to DIR: the latency percentile spectrum, and the rate
    /// and p99 over time (compare: every path overlaid)
    #[arg(long, value_name = "DIR")]
    pub plots: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to target
    Up,
    /// Target to client
    Down,
    /// Both at once on every tunnel
    Both,
}

#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Concurrent tunnels, spread over the cores
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub streams: u32,
    /// Which way the bulk data flows
    #[arg(long, value_enum, default_value_t = Direction::Up)]
    pub direction: Direction,
    /// Bytes per write call (e.g. 262144, 256k, 1m)
    #[arg(long, default_value = "256k", value_parser = parse_size)]
    pub write_size: usize,
    /// Pace the load to this many bits per second over all streams (e.g.
    /// 500m, 2g, 1.5g; half each way with --direction both) instead of as
    /// fast as the path goes. Up paces the writes; down paces the reads,
    /// so TCP's window slows the sender
    #[arg(long, value_name = "BITS/S", value_parser = parse_rate)]
    pub rate: Option<f64>,
}

#[derive(Debug, Clone, Args)]
pub struct CpsArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Connection loops per core, each one connection at a time
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Bytes of the one request echoed on each connection
    #[arg(long, default_value = "32", value_parser = parse_size)]
    pub size: usize,
    /// How each connection ends once the answer is in: `fin`, a plain
    /// close(2), as most clients close; or `rst`, SO_LINGER 0, which leaves
    /// no TIME_WAIT behind on loadgen's side but lets a proxy pass a reset
    /// on instead of closing its target connection with a FIN
    #[arg(long, value_enum, default_value_t = CpsClose::Fin)]
    pub close: CpsClose,
}

/// How `cps` closes each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CpsClose {
    Fin,
    Rst,
}

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Persistent tunnels, spread over the cores
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connections: u32,
    /// Total requests per second over all tunnels (a fixed schedule)
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Bytes per request (the echo answers as many)
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Ping-pong instead of a schedule: each tunnel sends its next request
    /// when the answer to the last has arrived, as fast as the path allows
    /// (round trips per second; --rate is ignored). Latencies are then
    /// service times: a stall shows as fewer round trips, not in the tail
    #[arg(long)]
    pub closed_loop: bool,
}

#[derive(Debug, Clone, Args)]
pub struct UdpArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// UDP associations (each with its own UDP socket and, through a proxy,
    /// its own TCP control connection), spread over the cores
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub associations: u32,
    /// Datagrams per second over all associations (a fixed schedule)
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Payload bytes per datagram (16 to 65000; the first 16 carry the
    /// sequence number and the intended send time)
    #[arg(long, default_value = "64", value_parser = parse_udp_size)]
    pub size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// --duration is how long the tunnels are held open and silent
    /// (--warmup is not used)
    #[command(flatten)]
    pub run: RunArgs,
    /// Tunnels to open and hold, spread over the cores
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub tunnels: u32,
    /// Tunnels each core opens at the same time
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub open_concurrency: u32,
    /// Bytes of the one echo that proves each tunnel works
    #[arg(long, default_value = "16", value_parser = parse_size)]
    pub size: usize,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the target port (all modes share it; see README)
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// CPUs for the targets (same syntax as loadgen's --cores)
    #[arg(long, value_name = "CPUS")]
    pub cores: Option<CoreSpec>,
    /// Stop by itself after this long [default: only on SIGINT/SIGTERM]
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Write the counters as JSON to FILE on exit
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Test hook: after this many echo reads on a core, freeze that core
    /// once for --pause (to check that latency sees a stall)
    #[arg(long, value_name = "READS", requires = "pause")]
    pub pause_after: Option<u64>,
    /// Test hook: how long the --pause-after freeze lasts
    #[arg(long, value_parser = parse_duration, requires = "pause_after")]
    pub pause: Option<Duration>,
    /// Test hook: the UDP echo drops every Nth datagram it receives (per
    /// core), to check that losses are counted
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub udp_drop_every: Option<u64>,
    /// Wait on glommio's io_uring for every socket instead of on loadgen's
    /// own event ring per executor (the ring is set up as coresocks'
    /// cores set theirs, so completions from the proxy's CPU do not
    /// interrupt loadgen's); to compare, or where the ring is refused
    #[arg(long)]
    pub glommio_io: bool,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// A proxy to measure, as NAME=HOST:PORT (repeat for each proxy);
    /// HOST:PORT may carry the protocol as a scheme (socks4a://HOST:PORT,
    /// http://HOST:PORT for HTTP CONNECT), so one proxy can be measured
    /// in each protocol it serves
    #[arg(long = "proxy", value_name = "NAME=HOST:PORT", value_parser = parse_named_proxy)]
    pub proxies: Vec<(String, String)>,
    /// Also measure without a proxy (the baseline for the ratios)
    #[arg(long)]
    pub direct: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Sample a proxy's process, as NAME=PID (NAME as in --proxy; repeat
    /// for each proxy): its CPU time and RSS become columns of the table
    #[arg(long = "proxy-pid", value_name = "NAME=PID", value_parser = parse_named_pid)]
    pub proxy_pids: Vec<(String, u32)>,
    /// Rounds; each round runs every path once, in the same order
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Pause between runs (lets TIME_WAIT and caches settle)
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub gap: Duration,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(subcommand)]
    pub scenario: CompareScenario,
}

#[derive(Debug, Clone, Subcommand)]
pub enum CompareScenario {
    /// Compare throughput
    Throughput(ThroughputArgs),
    /// Compare connection rate
    Cps(CpsArgs),
    /// Compare open-loop latency
    Latency(LatencyArgs),
    /// Compare UDP datagrams per second, loss and latency
    Udp(UdpArgs),
    /// Compare idle tunnels (with --proxy-pid: the proxy's memory per tunnel)
    Idle(IdleArgs),
}

impl CompareScenario {
    pub fn run_args(&self) -> &RunArgs {
        match self {
            CompareScenario::Throughput(a) => &a.run,
            CompareScenario::Cps(a) => &a.run,
            CompareScenario::Latency(a) => &a.run,
            CompareScenario::Udp(a) => &a.run,
            CompareScenario::Idle(a) => &a.run,
        }
    }
}

/// "5", "1.5s", "250ms", "2m", "100us": a bare number is seconds.
/// Bits per second: a number with an optional k, m or g (powers of 1000).
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix("bit")
        .or_else(|| t.strip_suffix("bps"))
        .unwrap_or(&t);
    let (number, scale) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1e3),
        Some('m') => (&t[..t.len() - 1], 1e6),
        Some('g') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v * scale <= 1e13 => Ok(v * scale),
        _ => Err(format!(
            "{text:?} is not a rate in bits per second like 800m, 2g or 1.5g"
        )),
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 5, 5s, 500ms or 1m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1e3,
        "us" | "µs" => value / 1e6,
        "m" | "min" => value * 60.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use s, ms, us or m)"
            ))
        }
    };
    if !seconds.is_finite() || !(0.0..=86_400.0).contains(&seconds) {
        return Err(format!("{text:?} is out of range (0 to 24h)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// "64", "256k", "1m" (binary multiples: k = 1024).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let (number, multiplier) = match lower.strip_suffix(['k', 'm']) {
        Some(n) if lower.ends_with('k') => (n, 1024),
        Some(n) => (n, 1024 * 1024),
        None => (lower.as_str(), 1),
    };
    let value: usize = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 64, 256k or 1m"))?;
    match value.checked_mul(multiplier) {
        Some(0) => Err("a size must be at least 1 byte".into()),
        Some(v) if v <= 64 * 1024 * 1024 => Ok(v),
        _ => Err(format!("{text:?} is larger than 64m")),
    }
}

/// A UDP payload: room for the sequence number and send time, and no more
/// than fits a datagram with the SOCKS5 header on IPv4.
pub fn parse_udp_size(text: &str) -> Result<usize, String> {
    let size = parse_size(text)?;
    if !(16..=65_000).contains(&size) {
        return Err(format!(
            "{text:?}: a UDP payload is 16 to 65000 bytes (16 carry the sequence number and send time)"
        ));
    }
    Ok(size)
}

fn parse_named_pid(text: &str) -> Result<(String, u32), String> {
    match text.split_once('=') {
        Some((name, pid)) if !name.trim().is_empty() => match pid.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok((name.trim().to_owned(), pid)),
            _ => Err(format!("{text:?}: {pid:?} is not a process id")),
        },
        _ => Err(format!("{text:?} is not NAME=PID (e.g. cs=4242)")),
    }
}

fn parse_named_proxy(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, addr)) if !name.trim().is_empty() && !addr.trim().is_empty() => {
            Ok((name.trim().to_owned(), addr.trim().to_owned()))
        }
        _ => Err(format!(
            "{text:?} is not NAME=HOST:PORT (e.g. coresocks=127.0.0.1:1080)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500m"), Ok(5e8));
        assert_eq!(parse_rate("1.5g"), Ok(1.5e9));
        assert_eq!(parse_rate("2Gbit"), Ok(2e9));
        assert_eq!(parse_rate("64000"), Ok(64e3));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1g").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("256k").unwrap(), 256 * 1024);
        assert_eq!(parse_size("1M").unwrap(), 1024 * 1024);
        assert!(parse_size("0").is_err());
        assert!(parse_size("1g").is_err());
        assert!(parse_size("100m").is_err());
    }

    #[test]
    fn named_proxies() {
        assert_eq!(
            parse_named_proxy("cs=127.0.0.1:1080").unwrap(),
            ("cs".into(), "127.0.0.1:1080".into())
        );
        assert!(parse_named_proxy("127.0.0.1:1080").is_err());
        assert!(parse_named_proxy("=1.2.3.4:5").is_err());
        assert_eq!(parse_named_pid("cs=42").unwrap(), ("cs".into(), 42));
        assert!(parse_named_pid("42").is_err());
        assert!(parse_named_pid("cs=x").is_err());
        assert!(parse_named_pid("cs=0").is_err());
    }

    #[test]
    fn udp_sizes() {
        assert_eq!(parse_udp_size("64").unwrap(), 64);
        assert_eq!(parse_udp_size("65000").unwrap(), 65000);
        assert!(parse_udp_size("15").is_err());
        assert!(parse_udp_size("64k").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
