//! Socket options for connection steering and kernel tuning, each off by
//! default: which core's listener a new connection goes to, when accept
//! wakes a core, busy polling, socket buffer sizes and the congestion
//! control of each side. The tuning kit (`tuning/`) measures each one in
//! its network-namespace bench.

use std::io;
use std::os::fd::BorrowedFd;
use std::time::Duration;

use serde::Deserialize;

use crate::sys;

/// How the kernel picks one of the cores' SO_REUSEPORT listeners for a
/// new connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Steering {
    /// A hash of the connection's addresses and ports (the kernel's
    /// default): even, but blind to where the packets are processed.
    #[default]
    Hash,
    /// SO_INCOMING_CPU on each listener: the listener of the core pinned to
    /// the CPU that processed the SYN (NIC queue, RPS), if there is one;
    /// a hash otherwise.
    IncomingCpu,
    /// A classic BPF program on the SO_REUSEPORT group that does the same
    /// mapping itself (any kernel since 4.5), and spreads connections that
    /// arrive on CPUs without a core by CPU number.
    CpuBpf,
}

impl Steering {
    pub fn as_str(&self) -> &'static str {
        match self {
            Steering::Hash => "hash",
            Steering::IncomingCpu => "incoming-cpu",
            Steering::CpuBpf => "cpu-bpf",
        }
    }
}

/// Busy polling of a socket's device queue instead of waiting for an
/// interrupt (SO_BUSY_POLL, SO_PREFER_BUSY_POLL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    pub usecs: u32,
    /// Keep the device's interrupts off while the application polls.
    pub prefer: bool,
}

/// A TCP congestion control algorithm by its kernel name (TCP_CONGESTION:
/// `cubic`, `bbr`, `reno`, ...), held inline so that [`SocketTuning`]
/// stays `Copy` for every connect.
#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Congestion {
    name: [u8; Congestion::MAX_LEN],
    len: u8,
}

impl Congestion {
    /// The kernel's TCP_CA_NAME_MAX (16) less its terminating NUL.
    const MAX_LEN: usize = 15;

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `from_str`).
        std::str::from_utf8(&self.name[..self.len as usize]).unwrap_or("")
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Congestion, String> {
        let valid = !s.is_empty()
            && s.len() <= Congestion::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "'{s}' is not a congestion control name (1 to {} letters, digits, '_' or '-', as in /proc/sys/net/ipv4/tcp_available_congestion_control)",
                Congestion::MAX_LEN
            ));
        }
        let mut name = [0; Congestion::MAX_LEN];
        name[..s.len()].copy_from_slice(s.as_bytes());
        Ok(Congestion {
            name,
            len: s.len() as u8,
        })
    }
}

impl TryFrom<String> for Congestion {
    type Error = String;

    fn try_from(s: String) -> Result<Congestion, String> {
        s.parse()
    }
}

impl std::fmt::Debug for Congestion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A congestion control the kernel will not give the proxy's sockets.
#[derive(Debug, thiserror::Error)]
#[error("cannot use congestion control '{name}' (--{setting}): {reason}")]
pub struct CongestionError {
    setting: &'static str,
    name: String,
    reason: String,
}

/// The options as the listeners and the outbound sockets apply them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketTuning {
    pub steering: Steering,
    /// TCP_DEFER_ACCEPT: accept (and wake the core) only when the client's
    /// first bytes (the SOCKS greeting) have arrived, waiting at most this.
    pub defer_accept: Option<Duration>,
    /// TCP_FASTOPEN on the listeners: clients may send the greeting in the
    /// SYN; the queue length of pending fast-open requests.
    pub fastopen_queue: Option<u32>,
    pub busy_poll: Option<BusyPoll>,
    /// SO_RCVBUF / SO_SNDBUF on client (through the listener) and target
    /// sockets; setting one turns the kernel's autotuning off for it.
    pub receive_buffer: Option<usize>,
    pub send_buffer: Option<usize>,
    /// TCP_CONGESTION of client sockets (set on the listeners, whose
    /// accepted sockets inherit it) and of target sockets; the system's
    /// `net.ipv4.tcp_congestion_control` where not given.
    pub client_congestion: Option<Congestion>,
    pub target_congestion: Option<Congestion>,
}

impl SocketTuning {
    /// The options of a listener: what its accepted sockets inherit
    /// (buffers, busy polling) and what acts on accept. Before listen(2).
    pub fn apply_to_listener(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.apply_to_either_side(socket)?;
        if let Some(cc) = self.client_congestion {
            sys::set_congestion(socket, cc.as_str())?;
        }
        if let Some(d) = self.defer_accept {
            sys::set_defer_accept(socket, d.as_secs())?;
        }
        if let Some(q) = self.fastopen_queue {
            sys::set_fastopen_queue(socket, q)?;
        }
        Ok(())
    }

    /// The options of a target socket, before its connect.
    pub fn apply_to_target(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.apply_to_either_side(socket)?;
        if let Some(cc) = self.target_congestion {
            sys::set_congestion(socket, cc.as_str())?;
        }
        Ok(())
    }

    /// Buffer sizes and busy polling, of a client or target socket.
    fn apply_to_either_side(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        sys::set_buffer_sizes(socket, self.receive_buffer, self.send_buffer)?;
        if let Some(b) = self.busy_poll {
            sys::set_busy_poll(socket, b.usecs, b.prefer)?;
        }
        Ok(())
    }

    /// The options in use, for the start-up log line; empty when none.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.steering != Steering::Hash {
            parts.push(format!("listen steering {}", self.steering.as_str()));
        }
        if let Some(d) = self.defer_accept {
            parts.push(format!("defer accept {}s", d.as_secs()));
        }
        if let Some(q) = self.fastopen_queue {
            parts.push(format!("TCP fast open queue {q}"));
        }
        if let Some(b) = self.busy_poll {
            parts.push(format!(
                "busy poll {} µs{}",
                b.usecs,
                if b.prefer { " (preferred)" } else { "" }
            ));
        }
        if let Some(n) = self.receive_buffer {
            parts.push(format!("receive buffer {n}"));
        }
        if let Some(n) = self.send_buffer {
            parts.push(format!("send buffer {n}"));
        }
        if let Some(cc) = self.client_congestion {
            parts.push(format!("client congestion control {}", cc.as_str()));
        }
        if let Some(cc) = self.target_congestion {
            parts.push(format!("target congestion control {}", cc.as_str()));
        }
        parts.join(", ")
    }

    /// Checks at start that the kernel lets the proxy's sockets use the
    /// congestion controls asked for, so that a missing module or a
    /// restricted one is one clear error, not a failure of every connect.
    pub fn check_congestion(&self) -> Result<(), CongestionError> {
        let sides = [
            ("client-congestion", self.client_congestion),
            ("target-congestion", self.target_congestion),
        ];
        for (setting, cc) in sides {
            let Some(cc) = cc else { continue };
            let error = |e: io::Error| CongestionError {
                setting,
                name: cc.as_str().to_owned(),
                reason: congestion_refused(&e, cc.as_str()),
            };
            let probe = sys::tcp_socket_v4().map_err(error)?;
            sys::set_congestion(std::os::fd::AsFd::as_fd(&probe), cc.as_str()).map_err(error)?;
        }
        Ok(())
    }
}

/// Why TCP_CONGESTION was refused and what to do, from the kernel's lists.
fn congestion_refused(e: &io::Error, name: &str) -> String {
    let list = |file: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{file}"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned())
    };
    match e.raw_os_error() {
        Some(libc::ENOENT) => format!(
            "the kernel has no algorithm of that name (it offers: {}; a module may add it: `modprobe tcp_{name}`)",
            list("tcp_available_congestion_control")
        ),
        Some(libc::EPERM) => format!(
            "not permitted: without CAP_NET_ADMIN a process may only pick one of net.ipv4.tcp_allowed_congestion_control ({}); add it there",
            list("tcp_allowed_congestion_control")
        ),
        _ => e.to_string(),
    }
}
