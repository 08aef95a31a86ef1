//! A tunnel's lifetime after the handshake: what it holds while it relays
//! (its place in the quotas and in the open-tunnel gauge) and what is
//! recorded when it ends.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::events::Stream;

use super::{AccessRecord, SessionError};
use crate::metrics;
use crate::proto::Command;
use crate::quota::QuotaLease;
use crate::relay::{RelayReport, Sealed, Tunnel};
use crate::runtime::{Core, StopSignal};

/// A session that is ready to relay a TCP tunnel (CONNECT, BIND).
pub(super) struct Established {
    client: Stream,
    target: Stream,
    /// Client bytes that arrived with the request, for the target.
    early: Vec<u8>,
    /// The tunnel's place in the per-user and per-client quotas, held
    /// until the relay ends.
    quota: Option<QuotaLease>,
    /// GSSAPI protection, for the sealed engine.
    sealed: Option<Sealed>,
}

impl Established {
    pub(super) fn new(
        client: Stream,
        target: Stream,
        early: Vec<u8>,
        sealed: Option<Sealed>,
    ) -> Established {
        Established {
            client,
            target,
            early,
            quota: None,
            sealed,
        }
    }

    /// Holds `lease` until the relay ends.
    pub(super) fn with_quota(mut self, lease: QuotaLease) -> Established {
        self.quota = Some(lease);
        self
    }
}

/// One open tunnel or association in `coresocks_tunnels_open`, for as
/// long as it lives.
pub(super) struct OpenGauge<'a> {
    gauge: Option<&'a std::sync::atomic::AtomicU64>,
}

impl<'a> OpenGauge<'a> {
    pub(super) fn new(core: &'a Core, command: Option<Command>) -> OpenGauge<'a> {
        let gauge = command.map(|c| {
            let i = match c {
                Command::Connect => 0,
                Command::Bind => 1,
                Command::UdpAssociate => 2,
            };
            &core.metrics().open_by_command[i]
        });
        if let Some(g) = gauge {
            metrics::add(g, 1);
        }
        OpenGauge { gauge }
    }
}

impl Drop for OpenGauge<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.gauge {
            metrics::sub_one(g);
        }
    }
}

/// A TCP tunnel (CONNECT, BIND) that relays, with what it holds until it
/// ends: its place in the quotas and in the open-tunnel gauge. A future
/// of its own (ready with the report and the tunnel's lifetime) so that an
/// idle tunnel's task holds this and the access record, nothing more.
pub(super) struct Relaying<'a> {
    tunnel: Tunnel<'a>,
    started: Instant,
    _open: OpenGauge<'a>,
    _quota: Option<QuotaLease>,
}

/// After the handshake: a tunnel to relay, or the session's end.
#[allow(clippy::large_enum_variant)] // in place in the task: a box would cost an allocation per tunnel
pub(super) enum Next<'a> {
    Relay(Relaying<'a>),
    Done(Result<(), SessionError>),
}

impl Next<'_> {
    pub(super) fn into_result(self) -> Result<(), SessionError> {
        match self {
            Next::Relay(_) => Ok(()),
            Next::Done(result) => result,
        }
    }
}

impl<'a> Relaying<'a> {
    pub(super) fn after(
        core: &'a Core,
        outcome: Result<Option<Established>, SessionError>,
        record: &AccessRecord,
        stop: &'a StopSignal,
    ) -> Next<'a> {
        match outcome {
            Ok(Some(t)) => Next::Relay(Relaying::start(core, t, record, stop)),
            Ok(None) => Next::Done(Ok(())),
            Err(e) => Next::Done(Err(e)),
        }
    }

    fn start(core: &'a Core, t: Established, record: &AccessRecord, stop: &'a StopSignal) -> Self {
        crate::sys::set_nodelay(&t.client);
        let throttle = core
            .bandwidth
            .throttle(record.user.as_deref(), record.client.ip().to_canonical());
        let tunnel = core
            .relay
            .run(t.client, t.target, t.early, throttle, t.sealed, stop);
        Relaying {
            tunnel,
            started: Instant::now(),
            _open: OpenGauge::new(core, record.command),
            _quota: t.quota,
        }
    }
}

impl Future for Relaying<'_> {
    type Output = (RelayReport, Duration);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let report = std::task::ready!(Pin::new(&mut self.tunnel).poll(cx));
        Poll::Ready((report, self.started.elapsed()))
    }
}

/// Records how a tunnel went, in the metrics and its access record.
pub(super) fn tunnel_ended(
    core: &Core,
    (r, lifetime): (RelayReport, Duration),
    record: &mut AccessRecord,
) {
    let m = core.metrics();
    m.tunnel_seconds
        .observe(lifetime, &metrics::LIFETIME_BUCKETS);
    // Bytes were counted as they moved (`relay::LiveCounters`).
    metrics::add(&m.bandwidth_waits, r.throttled);
    metrics::add(&m.tunnels_by_engine[r.engine.metrics_index()], 1);
    metrics::add(&m.bytes_spliced, r.spliced);
    metrics::set(&m.pipes, core.relay.pipes.live() as u64);
    metrics::set(&m.pipe_misses, core.relay.pipes.misses.get());
    record.up = r.client_to_target;
    record.down = r.target_to_client;
    record.engine = Some(r.engine.as_str());
    record.end = Some(r.end.to_string());
}
