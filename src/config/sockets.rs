//! Socket options for connection steering and kernel tuning, each off by
//! default: which core's listener a new connection goes to, when accept
//! wakes a core, busy polling, and socket buffer sizes. The tuning kit
//! (`tuning/`) measures each one in its network-namespace bench.

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
}

impl SocketTuning {
    /// The options of a listener: what its accepted sockets inherit
    /// (buffers, busy polling) and what acts on accept. Before listen(2).
    pub fn apply_to_listener(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        self.apply_to_stream(socket)?;
        if let Some(d) = self.defer_accept {
            sys::set_defer_accept(socket, d.as_secs())?;
        }
        if let Some(q) = self.fastopen_queue {
            sys::set_fastopen_queue(socket, q)?;
        }
        Ok(())
    }

    /// Buffer sizes and busy polling of a client or target socket.
    pub fn apply_to_stream(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
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
        parts.join(", ")
    }
}
