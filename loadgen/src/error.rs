//! Two kinds of trouble: a [`Failure`] is one operation going wrong under
//! load (counted, by cause); a [`LoadgenError`] stops the run with one
//! clear line and a non-zero exit.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;

use coresocks_client::ClientError;
use coresocks_proto::ReplyCode;

/// Where an operation was when it failed; picks the wording of errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// TCP connect to the proxy (or to the target when direct).
    Connect,
    /// SOCKS5 negotiation with the proxy.
    Handshake,
    /// Talking to the target through the tunnel.
    Target,
}

/// Why one operation failed. Every variant has a slot in [`FailureCounts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    ConnectRefused,
    ConnectTimeout,
    /// No answer within --timeout after the connection was up.
    Timeout,
    Reset,
    /// The peer closed before the expected bytes arrived.
    ClosedEarly,
    NoAcceptableMethod,
    AuthRejected,
    /// The proxy answered CONNECT with this failure code.
    Reply(u8),
    /// The proxy sent something that is not SOCKS5.
    ProxyProtocol,
    /// The target did not speak loadgen's target protocol.
    TargetProtocol,
    /// Out of local ports or descriptors (EADDRNOTAVAIL, EMFILE...).
    LocalResources,
    Io,
}

impl Failure {
    pub fn from_io(e: &io::Error, stage: Stage) -> Failure {
        use io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => Failure::ConnectRefused,
            K::TimedOut | K::WouldBlock if stage == Stage::Connect => Failure::ConnectTimeout,
            K::TimedOut | K::WouldBlock => Failure::Timeout,
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Failure::Reset,
            K::UnexpectedEof => Failure::ClosedEarly,
            K::AddrNotAvailable | K::AddrInUse => Failure::LocalResources,
            _ if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                Failure::LocalResources
            }
            _ => Failure::Io,
        }
    }

    pub fn from_client(e: &ClientError) -> Failure {
        match e {
            ClientError::Io(io) => Failure::from_io(io, Stage::Handshake),
            ClientError::Proto(_) | ClientError::UnexpectedMethod(_) => Failure::ProxyProtocol,
            ClientError::NoAcceptableMethod => Failure::NoAcceptableMethod,
            ClientError::AuthRejected | ClientError::GssapiAborted | ClientError::Gssapi(_) => {
                Failure::AuthRejected
            }
            ClientError::Rejected(code) => Failure::Reply(code.to_byte()),
            // Counted with the SOCKS5 code of the same meaning: 0x01,
            // general failure (SOCKS4's 91 and an HTTP error say no more).
            ClientError::Socks4Rejected(_) | ClientError::HttpStatus(_) => Failure::Reply(1),
        }
    }

    /// Slot in [`FailureCounts`]: fixed kinds first, then one per reply code
    /// 0x01..=0x08 and one for every unassigned code.
    fn slot(self) -> usize {
        match self {
            Failure::ConnectRefused => 0,
            Failure::ConnectTimeout => 1,
            Failure::Timeout => 2,
            Failure::Reset => 3,
            Failure::ClosedEarly => 4,
            Failure::NoAcceptableMethod => 5,
            Failure::AuthRejected => 6,
            Failure::ProxyProtocol => 7,
            Failure::TargetProtocol => 8,
            Failure::LocalResources => 9,
            Failure::Io => 10,
            Failure::Reply(code @ 0x01..=0x08) => 10 + code as usize,
            Failure::Reply(_) => 19,
        }
    }

    /// Stable name used in tables and JSON.
    pub fn name(self) -> String {
        match self {
            Failure::ConnectRefused => "connect-refused".into(),
            Failure::ConnectTimeout => "connect-timeout".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Reset => "reset".into(),
            Failure::ClosedEarly => "closed-early".into(),
            Failure::NoAcceptableMethod => "no-acceptable-method".into(),
            Failure::AuthRejected => "auth-rejected".into(),
            Failure::ProxyProtocol => "proxy-protocol-error".into(),
            Failure::TargetProtocol => "target-protocol-error".into(),
            Failure::LocalResources => "local-resources".into(),
            Failure::Io => "io-error".into(),
            Failure::Reply(code) => match ReplyCode::from_byte(code) {
                ReplyCode::Unassigned(_) => "reply-unassigned".into(),
                known => format!("reply-{}", known.as_str()),
            },
        }
    }

    const ALL_SLOTS: usize = 20;

    fn from_slot(slot: usize) -> Failure {
        match slot {
            0 => Failure::ConnectRefused,
            1 => Failure::ConnectTimeout,
            2 => Failure::Timeout,
            3 => Failure::Reset,
            4 => Failure::ClosedEarly,
            5 => Failure::NoAcceptableMethod,
            6 => Failure::AuthRejected,
            7 => Failure::ProxyProtocol,
            8 => Failure::TargetProtocol,
            9 => Failure::LocalResources,
            11..=18 => Failure::Reply((slot - 10) as u8),
            19 => Failure::Reply(0xff),
            _ => Failure::Io,
        }
    }
}

/// Failures by cause, one array per core (no map on the hot path).
#[derive(Debug, Clone, Default)]
pub struct FailureCounts {
    counts: [u64; Failure::ALL_SLOTS],
}

impl FailureCounts {
    pub fn add(&mut self, failure: Failure) {
        self.counts[failure.slot()] += 1;
    }

    pub fn add_n(&mut self, failure: Failure, n: u64) {
        self.counts[failure.slot()] += n;
    }

    pub fn merge(&mut self, other: &FailureCounts) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Non-zero counts by name.
    pub fn by_name(&self) -> BTreeMap<String, u64> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(slot, &n)| (Failure::from_slot(slot).name(), n))
            .collect()
    }
}

/// A failure that ends the run.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot resolve {what} {addr:?}: {reason}")]
    Resolve {
        what: &'static str,
        addr: String,
        reason: String,
    },
    #[error("{0}")]
    Cores(String),
    #[error("RLIMIT_MEMLOCK is {have} KiB but each core's io_uring needs {need} KiB of locked memory; raise it with `ulimit -l {need}`")]
    MemLock { have: u64, need: u64 },
    #[error("cannot start an executor on CPU {cpu}: {message}")]
    CoreStart { cpu: usize, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: io::Error },
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Setup(String),
    #[error("cannot write {path}: {source}")]
    Output { path: String, source: io::Error },
    #[error("cannot read {path}: {reason}")]
    Input { path: String, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error("an executor stopped unexpectedly: {0}")]
    Executor(String),
    /// Another core failed first; its error is the one reported.
    #[error("stopped because another core failed")]
    Aborted,
}

/// Words for a failure met while checking a path before the load starts.
pub fn describe(
    failure: Failure,
    stage: Stage,
    proxy: Option<SocketAddr>,
    target: SocketAddr,
) -> String {
    let peer = match (stage, proxy) {
        (Stage::Target, _) | (_, None) => format!("the target at {target}"),
        (_, Some(p)) => format!("the proxy at {p}"),
    };
    match failure {
        Failure::ConnectRefused if proxy.is_none() => format!(
            "cannot connect to the target at {target}: connection refused (is `loadgen serve` running there?)"
        ),
        Failure::ConnectRefused => {
            format!("cannot connect to {peer}: connection refused (is the proxy running?)")
        }
        Failure::ConnectTimeout => format!("cannot connect to {peer}: timed out"),
        Failure::Timeout => format!("{peer} did not answer in time"),
        Failure::Reset => format!("{peer} reset the connection"),
        Failure::ClosedEarly => format!("{peer} closed the connection early"),
        Failure::NoAcceptableMethod => format!(
            "{peer} accepts none of the offered authentication methods (does it need --user/--password, or not support them?)"
        ),
        Failure::AuthRejected => format!("{peer} rejected the username or password"),
        Failure::Reply(code) => {
            let code = ReplyCode::from_byte(code);
            let hint = match code {
                ReplyCode::ConnectionRefused | ReplyCode::HostUnreachable => {
                    " (the proxy could not reach the target: is it running?)"
                }
                ReplyCode::NotAllowed => {
                    " (its rules forbid this target: loopback targets must be allowed, e.g. coresocks --allow 127.0.0.0/8)"
                }
                _ => "",
            };
            format!("{peer} refused CONNECT to {target}: {code}{hint}")
        }
        Failure::ProxyProtocol => format!("{peer} does not speak SOCKS5 as expected"),
        Failure::TargetProtocol => format!(
            "the target at {target} does not speak loadgen's target protocol (is it a `loadgen serve`?)"
        ),
        Failure::LocalResources => {
            format!("cannot open a connection to {peer}: out of local ports or descriptors")
        }
        Failure::Io => format!("I/O error talking to {peer}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip() {
        for slot in 0..Failure::ALL_SLOTS {
            assert_eq!(Failure::from_slot(slot).slot(), slot);
        }
        assert_eq!(Failure::Reply(5).name(), "reply-connection-refused");
        assert_eq!(Failure::Reply(0x42).name(), "reply-unassigned");
    }

    #[test]
    fn counts_by_name() {
        let mut c = FailureCounts::default();
        c.add(Failure::ConnectRefused);
        c.add_n(Failure::Reply(2), 3);
        let mut d = FailureCounts::default();
        d.add(Failure::ConnectRefused);
        c.merge(&d);
        assert_eq!(c.total(), 5);
        let names = c.by_name();
        assert_eq!(names["connect-refused"], 2);
        assert_eq!(names["reply-not-allowed"], 3);
    }
}
