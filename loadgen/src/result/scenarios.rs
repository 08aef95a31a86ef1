//! What each scenario measured: the `result` block of the JSON document.

use serde::Serialize;

use crate::cli::Direction;
use crate::stats::Percentiles;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThroughputResult {
    pub direction: Direction,
    pub streams: u32,
    /// Bytes the target acknowledged inside the window (up).
    pub bytes_up: u64,
    /// Bytes loadgen received inside the window (down).
    pub bytes_down: u64,
    /// From the start of the window to the last final acknowledgement.
    pub seconds_up: f64,
    /// The window.
    pub seconds_down: f64,
    pub gbit_s_up: f64,
    pub gbit_s_down: f64,
    pub gbit_s_total: f64,
    pub gbit_s_per_stream_mean: f64,
    pub gbit_s_per_stream_min: f64,
    pub gbit_s_per_stream_max: f64,
    /// Tunnels that ended without the target's final count (a proxy that
    /// closes both ways at the first FIN): their up bytes stop at the last
    /// acknowledgement seen.
    pub streams_without_final_ack: u64,
    /// The streams' retransmitted segments together (TCP_INFO of loadgen's
    /// ends; the proxy's and the target's ends are in `system`).
    pub retransmits: u64,
    /// --rate, in bits per second (null: as fast as the path goes).
    pub rate_bits_s: Option<f64>,
    /// How late the latest tunnel began past the common start: a machine
    /// too loaded to run loadgen on time shows here, not as a slow proxy.
    pub start_late_s: f64,
    pub per_stream: Vec<StreamResult>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamResult {
    pub stream: usize,
    /// Position of the loadgen core that ran it (index into `cores`).
    pub core: usize,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub gbit_s: f64,
    /// Segments loadgen's end retransmitted over the tunnel's life
    /// (TCP_INFO tcpi_total_retrans; null when unreadable).
    pub retransmits: Option<u32>,
    /// Why the tunnel failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CpsResult {
    pub concurrency_per_core: u32,
    pub size: usize,
    /// Connections that completed successfully inside the window.
    pub connections: u64,
    /// From the start of the window to the end of the last connection.
    pub seconds: f64,
    pub connections_per_s: f64,
    /// Successful connections in all, warmup and drain included (what the
    /// target accepted in echo mode, when nothing failed).
    pub connections_ok_total: u64,
    /// Connection attempts in all, failed ones included.
    pub attempts_total: u64,
    /// Connect plus SOCKS5 negotiation (connect alone when direct).
    pub handshake: Percentiles,
    /// From the start of the connect to the first byte of the answer.
    pub first_byte: Percentiles,
    /// How loadgen closed each connection: "fin" (close(2)) or "rst"
    /// (SO_LINGER 0).
    pub close: crate::cli::CpsClose,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyResult {
    pub connections: u32,
    pub size: usize,
    /// Ping-pong (`--closed-loop`) rather than a schedule.
    pub closed_loop: bool,
    /// Requests per second asked for (--rate; 0 with --closed-loop).
    pub target_rate: f64,
    /// Requests whose intended send time lies inside the window.
    pub requests_in_window: u64,
    /// Answers that arrived inside the window.
    pub responses_in_window: u64,
    /// responses_in_window / window length.
    pub achieved_rate: f64,
    /// Requests of the run that got no answer before the drain timeout.
    pub lost: u64,
    /// Latency of the requests scheduled inside the window, from their
    /// intended send time to the last byte of their answer. Lost requests
    /// count with the time they had waited when given up.
    pub latency: Percentiles,
    /// How far behind its schedule a sender got at worst (loadgen's own
    /// lag; large values mean loadgen itself could not keep the rate).
    pub max_send_lag_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UdpResult {
    pub associations: u32,
    pub size: usize,
    /// Datagrams per second asked for (--rate).
    pub target_rate: f64,
    /// Datagrams whose intended send time lies in the window.
    pub scheduled: u64,
    /// Of those, the ones the kernel accepted (sendto succeeded).
    pub sent: u64,
    /// Of those, the ones whose echo came back before the drain ended.
    pub received: u64,
    /// sent - received.
    pub lost: u64,
    /// lost / sent, in percent.
    pub loss_percent: f64,
    /// received / window length: datagrams per second that made the round
    /// trip.
    pub pps: f64,
    /// Payload bytes per second both ways (received * size * 2 / window).
    pub payload_mbit_s: f64,
    /// Scheduled datagrams the kernel refused to send (also in `errors`).
    pub send_failures: u64,
    /// Echoes received twice (not counted again).
    pub duplicates: u64,
    /// Datagrams that were not an echo of one of ours (wrong sender, bad
    /// header, size or stamp).
    pub invalid: u64,
    /// Associations whose TCP control connection the proxy closed during
    /// the run (their datagrams after that are lost).
    pub control_closed: u64,
    /// Latency of the received datagrams of the window, from their intended
    /// send time to the arrival of the echo (lost ones are not in it).
    pub latency: Percentiles,
    /// How far behind its schedule a sender got at worst.
    pub max_send_lag_us: f64,
    /// Machine-wide UDP receive-buffer overflows during the run (from
    /// /proc/net/snmp, every socket on the machine: proxy, targets and
    /// loadgen); null when unreadable.
    pub kernel_udp_rcvbuf_errors: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    /// Tunnels asked for.
    pub tunnels: u32,
    /// Tunnels that opened and echoed.
    pub opened: u64,
    /// Tunnels that did not (by cause in `errors`).
    pub failed: u64,
    /// From the first connect to the last tunnel open (slowest core).
    pub open_seconds: f64,
    /// How long the tunnels were held open and silent.
    pub held_seconds: f64,
    /// Tunnels found closed (FIN or RST) at the end of the hold.
    pub closed_by_peer: u64,
    /// loadgen's RLIMIT_NOFILE (after raising the soft limit to the hard).
    pub nofile_limit: u64,
}
