//! UDP ASSOCIATE: set up the association on this core, reply with its
//! relay address, then serve it until the control connection closes.

use super::reply::{AwaitingReply, Session};
use super::SessionError;
use crate::metrics;
use crate::proto::TargetAddr;
use crate::runtime::Ticket;
use crate::udp;

impl Session<'_, AwaitingReply> {
    /// UDP ASSOCIATE: the association, its reply, and its datagrams until
    /// the control connection closes.
    pub(super) async fn udp_associate(
        self,
        requested: TargetAddr,
        ticket: &Ticket,
    ) -> Result<(), SessionError> {
        let (core, config) = (self.core, self.config);
        let client_ip = self.record.client.ip().to_canonical();
        let egress = udp::Egress {
            policy: &config.policy,
            outbound: &config.outbound,
            client: client_ip,
            user: self.user().map(str::to_owned),
            throttle: core.bandwidth.throttle(self.user(), client_ip),
            metrics: core.metrics(),
        };
        let resolve_timeout = config.resolve_timeout;
        let mut prepared = match udp::prepare(
            &core.udp,
            egress,
            self.client(),
            &requested,
            resolve_timeout,
        ) {
            Ok(p) => p,
            Err(e) => {
                let e = SessionError::UdpSetup(e);
                self.refuse(&e).await;
                return Err(e);
            }
        };
        // Charged for two sockets beside the outbound one; one dual-stack
        // outbound socket leaves one of them unused.
        ticket.refund(3 - prepared.sockets());
        let relay_addr = prepared
            .relay_addr()
            .map_err(|e| SessionError::UdpSetup(udp::SetupError::Socket(e)))?;
        self.record.resolved = Some(relay_addr);
        self.record.outbound = prepared.outbound_addr();
        // Behind NAT or a load balancer the client must be told the address
        // it can reach; the port is the relay's own.
        let advertised = match config.udp_advertise {
            Some(ip) => std::net::SocketAddr::new(ip, relay_addr.port()),
            None => relay_addr,
        };
        let mut replied = self.reply_success(advertised).await?;
        // The reply went out wrapped; the datagrams use the context now.
        if let Some(protection) = replied.login.take_protection() {
            prepared.protect(protection);
        }
        let (client, record) = replied.into_client();
        let m = core.metrics();
        metrics::set(&m.udp_associations, core.udp.live() as u64);
        let open = super::tunnel::OpenGauge::new(core, Some(crate::proto::Command::UdpAssociate));
        let started = std::time::Instant::now();
        let (report, end) = udp::serve(
            prepared,
            client,
            config.udp_idle_timeout,
            &ticket.stop,
            core.events.as_ref(),
        )
        .await;
        drop(open);
        m.tunnel_seconds
            .observe(started.elapsed(), &metrics::LIFETIME_BUCKETS);
        metrics::set(&m.udp_associations, core.udp.live() as u64);
        // Datagrams and bytes were counted as they moved.
        metrics::add(&m.udp_datagrams_dropped, report.dropped());
        metrics::add(&m.udp_datagrams_denied, report.dropped_denied);
        metrics::add(&m.udp_datagrams_over_bandwidth, report.dropped_bandwidth);
        record.up = report.bytes_up;
        record.down = report.bytes_down;
        record.engine = Some("udp");
        record.end = Some(format!(
            "{end} datagrams_up={} datagrams_down={} dropped_frag={} dropped_reserved={} dropped_foreign={} dropped_unsolicited={} dropped_denied={} dropped_bandwidth={} dropped_unprotected={} dropped_other={}",
            report.datagrams_up,
            report.datagrams_down,
            report.dropped_fragmented,
            report.dropped_reserved,
            report.dropped_foreign,
            report.dropped_unsolicited,
            report.dropped_denied,
            report.dropped_bandwidth,
            report.dropped_unprotected,
            report.dropped_other
        ));
        Ok(())
    }
}
