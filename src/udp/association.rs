use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::AsyncReadExt;
use glommio::net::UdpSocket;
use socket2::{Domain, Protocol, Socket, Type};

use super::{UdpTable, MAX_HEADER};
use crate::events::{DatagramWait, EventRing, Stream};
use crate::gss_binding::Protection;
use crate::policy::source::Outbound;
use crate::policy::{Policy, Requester};
use crate::proto::{Codec, Command, Decoded, ProtoError, TargetAddr, UdpHeader};
use crate::relay::throttle::{Throttle, Way};
use crate::resolve;
use crate::stop::{Stop, StopSignal};
use crate::sys;
use crate::sys::DatagramBatch;

/// How an association ended.
#[derive(Debug)]
pub(crate) enum UdpEnd {
    /// The client closed the TCP control connection (RFC 1928: the
    /// association ends with it).
    ControlClosed,
    IdleTimeout,
    /// The proxy stopped it (the end of the shutdown grace).
    Stopped(Stop),
    Failed(io::Error),
}

impl std::fmt::Display for UdpEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UdpEnd::ControlClosed => f.write_str("control-closed"),
            UdpEnd::IdleTimeout => f.write_str("idle-timeout"),
            UdpEnd::Stopped(stop) => f.write_str(stop.as_str()),
            UdpEnd::Failed(e) => write!(f, "udp-error ({e})"),
        }
    }
}

/// Counters of one association, for the access log and metrics.
#[derive(Debug, Default, Clone)]
pub(crate) struct UdpReport {
    pub datagrams_up: u64,
    pub datagrams_down: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// FRAG other than 0 (fragmentation is not supported).
    pub dropped_fragmented: u64,
    /// RSV other than 0.
    pub dropped_reserved: u64,
    /// From a source other than the association's client.
    pub dropped_foreign: u64,
    /// Malformed header, unresolvable name, over the target limit, or the
    /// send failed.
    pub dropped_other: u64,
    /// Replies from addresses the client never sent to.
    pub dropped_unsolicited: u64,
    /// To destinations the egress policy denies.
    pub dropped_denied: u64,
    /// Over the user's or client's bandwidth limit.
    pub dropped_bandwidth: u64,
    /// GSSAPI protection: not one encapsulated message, or one the
    /// security context refuses.
    pub dropped_unprotected: u64,
}

impl UdpReport {
    /// Every datagram dropped, whatever the reason.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped_fragmented
            + self.dropped_reserved
            + self.dropped_foreign
            + self.dropped_other
            + self.dropped_unsolicited
            + self.dropped_denied
            + self.dropped_bandwidth
            + self.dropped_unprotected
    }
}

/// Whose datagrams these are, for the egress policy, and where the
/// association's outbound sockets come from.
pub(crate) struct Egress<'a> {
    pub policy: &'a Policy,
    pub outbound: &'a Outbound,
    pub client: IpAddr,
    pub user: Option<String>,
    /// The user's and client's bandwidth buckets.
    pub throttle: Throttle,
    /// The core's counters, moved per datagram relayed.
    pub metrics: &'a crate::metrics::CoreMetrics,
}

/// Which client address may use the association (RFC 1928 section 6).
struct ClientRule {
    ip: IpAddr,
    /// Fixed by the request, or by the first datagram when it was zero.
    port: Cell<Option<u16>>,
}

impl ClientRule {
    fn new(requested: &TargetAddr, control_peer: IpAddr) -> ClientRule {
        let (ip, port) = match requested {
            TargetAddr::Ip(sa) if !sa.ip().is_unspecified() => (sa.ip().to_canonical(), sa.port()),
            other => (control_peer.to_canonical(), other.port()),
        };
        ClientRule {
            ip,
            port: Cell::new((port != 0).then_some(port)),
        }
    }

    fn admits(&self, from: SocketAddr) -> bool {
        if from.ip().to_canonical() != self.ip {
            return false;
        }
        match self.port.get() {
            Some(p) => p == from.port(),
            None => {
                self.port.set(Some(from.port()));
                true
            }
        }
    }
}

struct Association<'a> {
    table: &'a UdpTable,
    client: UdpSocket,
    out_v4: Option<UdpSocket>,
    out_v6: Option<UdpSocket>,
    /// `out_v6` is dual-stack and carries IPv4 too (as mapped addresses);
    /// `out_v4` is then `None`.
    dual: bool,
    rule: ClientRule,
    egress: Egress<'a>,
    /// Where replies go: the client's sending address, once seen.
    client_addr: Cell<Option<SocketAddr>>,
    targets: RefCell<HashSet<SocketAddr>>,
    names: RefCell<HashMap<String, SocketAddr>>,
    resolve_timeout: Duration,
    last_activity: Cell<Instant>,
    report: RefCell<UdpReport>,
    /// GSSAPI at integrity or confidentiality: every datagram between the
    /// client and the relay is one encapsulated message (RFC 1961 section
    /// 5) around the RFC 1928 header and payload.
    protection: Option<RefCell<Protection>>,
}

/// A non-blocking UDP socket of `addr`'s family, not yet bound; an IPv6
/// one takes IPv6 only unless it is to be `dual` (IPv4 as mapped
/// addresses too).
fn unbound_udp(addr: SocketAddr, dual: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(!dual)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

fn udp_socket(bind: SocketAddr) -> io::Result<UdpSocket> {
    let s = unbound_udp(bind, false)?;
    s.bind(&bind.into())?;
    into_glommio(s)
}

/// An outbound socket of one family, on the egress source and interface
/// (`--egress-source`, `--egress-interface`; no rule's pool: an association
/// has many destinations). `None` when the pool has no address of this
/// family, or the family is disabled on the host: datagrams of that family
/// are then dropped. `dual` (with `any` of IPv6): one socket for both
/// families, where no egress source pool asks for a source per family, so
/// an association holds three descriptors, not four.
fn outbound_socket(egress: &Egress<'_>, any: SocketAddr, dual: bool) -> Option<UdpSocket> {
    let key = egress.user.as_deref().ok_or(egress.client);
    let source = egress.outbound.source_for(&[], any, key).ok()?;
    let s = unbound_udp(any, dual).ok()?;
    let bind = SocketAddr::new(source.unwrap_or(any.ip()), 0);
    let bound = sys::bind_device(&s, egress.outbound.interface.as_deref())
        .and_then(|()| sys::bind_source(&s, bind, false));
    if let Err(e) = bound {
        // Without a configured source or interface this is a family the
        // host has turned off (IPv6, often): nothing to warn about.
        if source.is_some() || egress.outbound.interface.is_some() {
            tracing::warn!("udp: {e}");
        }
        return None;
    }
    into_glommio(s).ok()
}

fn into_glommio(s: Socket) -> io::Result<UdpSocket> {
    Ok(crate::sys::glommio_udp_socket(s.into()))
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// A client datagram whose target is a name not yet looked up: the name,
/// the port and the payload.
type Lookup = (String, u16, Vec<u8>);

impl Association<'_> {
    fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    fn count(&self, f: impl FnOnce(&mut UdpReport)) {
        f(&mut self.report.borrow_mut());
    }

    /// The outbound socket for `target`, and the address to send to from
    /// it (IPv4 as mapped on a dual-stack socket).
    fn out_socket(&self, target: SocketAddr) -> Option<(&UdpSocket, SocketAddr)> {
        match target {
            SocketAddr::V4(v4) if self.dual => {
                let mapped = SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port());
                self.out_v6.as_ref().map(|s| (s, mapped))
            }
            SocketAddr::V4(_) => self.out_v4.as_ref().map(|s| (s, target)),
            SocketAddr::V6(_) => self.out_v6.as_ref().map(|s| (s, target)),
        }
    }

    /// Whether the egress policy lets this association send to `target`
    /// (`domain`: the name the datagram gave, if any).
    fn allowed(&self, domain: Option<&str>, target: SocketAddr) -> bool {
        let who = Requester {
            client: self.egress.client,
            user: self.egress.user.as_deref(),
            command: Command::UdpAssociate,
        };
        self.egress.policy.check(&who, domain, target).is_ok()
    }

    /// Sends one payload to a target the egress policy allows, within the
    /// per-association limit of distinct targets; failures drop the
    /// datagram, as UDP may. An address already in the target set was
    /// allowed when it entered, so an IP datagram to it is not judged again
    /// (one set lookup per datagram); a name is judged each time, with the
    /// port it comes with. A denied target never enters the set, so its
    /// replies count as unsolicited.
    fn send_to_target(&self, domain: Option<&str>, target: SocketAddr, payload: &[u8]) {
        let target = SocketAddr::new(target.ip().to_canonical(), target.port());
        {
            let mut targets = self.targets.borrow_mut();
            let new = !targets.contains(&target);
            if (new || domain.is_some()) && !self.allowed(domain, target) {
                drop(targets);
                self.count(|r| r.dropped_denied += 1);
                return;
            }
            if new {
                if targets.len() >= self.table.max_targets {
                    drop(targets);
                    self.count(|r| r.dropped_other += 1);
                    return;
                }
                targets.insert(target);
            }
        }
        let Some((sock, to)) = self.out_socket(target) else {
            self.count(|r| r.dropped_other += 1);
            return;
        };
        if !self
            .egress
            .throttle
            .admit(Way::Up, payload.len(), Instant::now())
        {
            self.count(|r| r.dropped_bandwidth += 1);
            return;
        }
        match sys::udp_send_to(sys::borrow(sock), payload, to) {
            Ok(_) => self.count(|r| {
                r.datagrams_up += 1;
                r.bytes_up += payload.len() as u64;
                let m = self.egress.metrics;
                crate::metrics::add(&m.udp_datagrams_client_to_target, 1);
                crate::metrics::add(&m.bytes_client_to_target, payload.len() as u64);
            }),
            Err(_) => self.count(|r| r.dropped_other += 1),
        }
    }

    /// Client -> targets.
    async fn client_loop(&self, events: Option<&Rc<EventRing>>) -> UdpEnd {
        let mut wait = DatagramWait::new(events, &self.client);
        // Datagrams already taken from the socket that wait behind one that
        // needs a name lookup, copied out of the core's batch (which other
        // associations use while this one waits).
        let mut backlog: VecDeque<(Vec<u8>, SocketAddr)> = VecDeque::new();
        // Whether the socket was empty at the last look: then wait for it.
        let mut drained = true;
        loop {
            while let Some((datagram, from)) = backlog.pop_front() {
                if let Some(lookup) = self.relay_from_client(&datagram, from) {
                    self.resolve_and_send(lookup).await;
                }
            }
            if drained {
                if let Err(e) = wait.readable(&self.client).await {
                    return UdpEnd::Failed(e);
                }
            }
            let lookup = match self.take_client_batch(&mut backlog) {
                Ok(Some((n, lookup))) => {
                    drained = n < DatagramBatch::SLOTS;
                    lookup
                }
                Ok(None) => {
                    drained = true;
                    continue;
                }
                Err(e) => return UdpEnd::Failed(e),
            };
            if let Some(lookup) = lookup {
                self.resolve_and_send(lookup).await;
            }
        }
    }

    /// Takes a batch of client datagrams and relays them, up to the first
    /// that needs a name lookup (returned, with the rest in `backlog`).
    /// `None`: nothing was queued.
    fn take_client_batch(
        &self,
        backlog: &mut VecDeque<(Vec<u8>, SocketAddr)>,
    ) -> io::Result<Option<(usize, Option<Lookup>)>> {
        let batch = &mut *self.table.batch.borrow_mut();
        let n = loop {
            match batch.recv(sys::borrow(&self.client), 0) {
                Ok(n) => break n,
                Err(e) if would_block(&e) => return Ok(None),
                // ICMP errors for earlier datagrams; nothing to do.
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => continue,
                Err(e) => return Err(e),
            }
        };
        let mut lookup = None;
        for i in 0..n {
            let Some((datagram, from)) = batch.datagram(i, 0) else {
                continue;
            };
            if lookup.is_some() {
                backlog.push_back((datagram.to_vec(), from));
            } else {
                lookup = self.relay_from_client(datagram, from);
            }
        }
        Ok(Some((n, lookup)))
    }

    /// Resolves the name a datagram gave and sends its payload to the
    /// first address the policy allows.
    async fn resolve_and_send(&self, (name, port, payload): Lookup) {
        match resolve::resolve(&name, port, self.resolve_timeout).await {
            Ok(addrs) => {
                // The first address the policy allows; else the first
                // usable one, cached so that a denied name is not looked
                // up again for every datagram.
                let mut usable = addrs.iter().filter(|a| self.out_socket(**a).is_some());
                let first = usable.clone().next();
                let allowed = usable.find(|a| self.allowed(Some(&name), **a));
                let Some(&addr) = allowed.or(first) else {
                    self.count(|r| r.dropped_other += 1);
                    return;
                };
                if self.names.borrow().len() < self.table.max_targets {
                    self.names.borrow_mut().insert(name.clone(), addr);
                }
                self.send_to_target(Some(&name), addr, &payload);
            }
            Err(e) => {
                tracing::debug!("udp: {e}");
                self.count(|r| r.dropped_other += 1);
            }
        }
    }

    /// Relays one client datagram, or returns its target name, port and
    /// payload when the name needs a lookup first.
    fn relay_from_client(&self, datagram: &[u8], from: SocketAddr) -> Option<Lookup> {
        if !self.rule.admits(from) {
            self.count(|r| r.dropped_foreign += 1);
            return None;
        }
        self.touch();
        self.client_addr.set(Some(from));
        let opened;
        let datagram = match &self.protection {
            None => datagram,
            Some(p) => match p.borrow_mut().open_message(datagram) {
                Ok(Some((plain, used))) if used == datagram.len() => {
                    opened = plain;
                    &opened[..]
                }
                // Not one whole message, or one the context refuses
                // (forged, damaged, replayed).
                _ => {
                    self.count(|r| r.dropped_unprotected += 1);
                    return None;
                }
            },
        };
        let (header, len) = match UdpHeader::decode(datagram) {
            Ok(Decoded::Complete(h, len)) => (h, len),
            Err(ProtoError::NonZeroReserved(_)) => {
                self.count(|r| r.dropped_reserved += 1);
                return None;
            }
            Ok(Decoded::Incomplete(_)) | Err(_) => {
                self.count(|r| r.dropped_other += 1);
                return None;
            }
        };
        if header.frag != 0 {
            self.count(|r| r.dropped_fragmented += 1);
            return None;
        }
        let payload = &datagram[len..];
        match header.target {
            TargetAddr::Ip(sa) => self.send_to_target(None, sa, payload),
            TargetAddr::Domain(name, port) => {
                // An address written as a name is judged as the address.
                if let Some(ip) = resolve::ip_literal(&name) {
                    self.send_to_target(None, SocketAddr::new(ip, port), payload);
                    return None;
                }
                let cached = self.names.borrow().get(&name).copied();
                match cached {
                    Some(a) => {
                        self.send_to_target(Some(&name), SocketAddr::new(a.ip(), port), payload)
                    }
                    None => return Some((name, port, payload.to_vec())),
                }
            }
        }
        None
    }

    /// Targets -> client, each datagram prefixed with the header naming
    /// its source, written into the room before it in its slot.
    async fn target_loop(&self, sock: &UdpSocket, events: Option<&Rc<EventRing>>) -> UdpEnd {
        let mut wait = DatagramWait::new(events, sock);
        let mut drained = true;
        loop {
            if drained {
                if let Err(e) = wait.readable(sock).await {
                    return UdpEnd::Failed(e);
                }
            }
            let mut batch = self.table.batch.borrow_mut();
            let n = match batch.recv(sys::borrow(sock), MAX_HEADER) {
                Ok(n) => n,
                Err(e) if would_block(&e) => {
                    drained = true;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => continue,
                Err(e) => return UdpEnd::Failed(e),
            };
            drained = n < DatagramBatch::SLOTS;
            for i in 0..n {
                let (slot, len, from) = batch.slot_mut(i);
                if let Some(from) = from {
                    self.relay_to_client(slot, len, from);
                }
            }
        }
    }

    /// Relays one target datagram (`slot[MAX_HEADER..][..n]`) to the
    /// client.
    fn relay_to_client(&self, slot: &mut [u8], n: usize, from: SocketAddr) {
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let (Some(client), true) = (
            self.client_addr.get(),
            self.targets.borrow().contains(&from),
        ) else {
            self.count(|r| r.dropped_unsolicited += 1);
            return;
        };
        self.touch();
        if !self.egress.throttle.admit(Way::Down, n, Instant::now()) {
            self.count(|r| r.dropped_bandwidth += 1);
            return;
        }
        let mut header = Vec::with_capacity(MAX_HEADER);
        UdpHeader {
            frag: 0,
            target: TargetAddr::Ip(from),
        }
        .encode(&mut header);
        let start = MAX_HEADER - header.len();
        slot[start..MAX_HEADER].copy_from_slice(&header);
        let sealed;
        let datagram = match &self.protection {
            None => &slot[start..MAX_HEADER + n],
            Some(p) => {
                let mut out = Vec::with_capacity(MAX_HEADER + n + 96);
                if p.borrow_mut()
                    .seal(&slot[start..MAX_HEADER + n], &mut out)
                    .is_err()
                {
                    // Too long to wrap into one message.
                    self.count(|r| r.dropped_other += 1);
                    return;
                }
                sealed = out;
                &sealed[..]
            }
        };
        match sys::udp_send_to(sys::borrow(&self.client), datagram, client) {
            Ok(_) => self.count(|r| {
                r.datagrams_down += 1;
                r.bytes_down += n as u64;
                let m = self.egress.metrics;
                crate::metrics::add(&m.udp_datagrams_target_to_client, 1);
                crate::metrics::add(&m.bytes_target_to_client, n as u64);
            }),
            Err(_) => self.count(|r| r.dropped_other += 1),
        }
    }

    async fn idle_watch(&self, timeout: Duration) -> UdpEnd {
        loop {
            let idle = self.last_activity.get().elapsed();
            if idle >= timeout {
                return UdpEnd::IdleTimeout;
            }
            crate::events::sleep(timeout - idle).await;
        }
    }
}

/// Waits for the control connection to close; bytes on it are ignored.
async fn control_closed(control: &mut Stream) -> UdpEnd {
    let mut buf = [0u8; 64];
    loop {
        match control.read(&mut buf).await {
            Ok(0) => return UdpEnd::ControlClosed,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return UdpEnd::ControlClosed,
            Err(e) => return UdpEnd::Failed(e),
        }
    }
}

/// Why an association could not be set up; the session answers with a
/// failure reply.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SetupError {
    #[error("this core is at max-udp-associations-per-core")]
    Full,
    #[error("cannot open the UDP relay socket: {0}")]
    Socket(io::Error),
}

/// A set-up association, ready to answer the client with its address.
pub(crate) struct Prepared<'a> {
    assoc: Association<'a>,
    _slot: super::Slot<'a>,
}

impl Prepared<'_> {
    /// BND.ADDR/BND.PORT for the reply: where the client sends datagrams.
    pub(crate) fn relay_addr(&self) -> io::Result<SocketAddr> {
        let a: SocketAddr = self.assoc.client.local_addr()?;
        Ok(SocketAddr::new(a.ip().to_canonical(), a.port()))
    }

    /// The outbound sockets' own address (what targets see), IPv4 first.
    pub(crate) fn outbound_addr(&self) -> Option<SocketAddr> {
        let out = self.assoc.out_v4.as_ref().or(self.assoc.out_v6.as_ref())?;
        out.local_addr().ok()
    }

    /// Sockets the association opened: its relay socket and one or two
    /// outbound ones.
    pub(crate) fn sockets(&self) -> usize {
        1 + usize::from(self.assoc.out_v4.is_some()) + usize::from(self.assoc.out_v6.is_some())
    }

    /// Wraps and unwraps every datagram to and from the client with the
    /// GSSAPI context (after the reply that went out under it).
    pub(crate) fn protect(&mut self, protection: Protection) {
        self.assoc.protection = Some(RefCell::new(protection));
    }
}

/// Opens the association's sockets on this core.
pub(crate) fn prepare<'a>(
    table: &'a UdpTable,
    egress: Egress<'a>,
    control: &Stream,
    requested: &TargetAddr,
    resolve_timeout: Duration,
) -> Result<Prepared<'a>, SetupError> {
    let slot = table.admit().ok_or(SetupError::Full)?;
    let local = control.local_addr().map_err(SetupError::Socket)?;
    let peer = control.peer_addr().map_err(SetupError::Socket)?;
    let client =
        udp_socket(SocketAddr::new(local.ip().to_canonical(), 0)).map_err(SetupError::Socket)?;
    let any4: SocketAddr = (std::net::Ipv4Addr::UNSPECIFIED, 0).into();
    let any6: SocketAddr = (std::net::Ipv6Addr::UNSPECIFIED, 0).into();
    let dual = match egress.outbound.sources.is_empty() {
        true => outbound_socket(&egress, any6, true),
        false => None,
    };
    let (out_v4, out_v6, dual) = match dual {
        Some(s) => (None, Some(s), true),
        None => (
            outbound_socket(&egress, any4, false),
            outbound_socket(&egress, any6, false),
            false,
        ),
    };
    if out_v4.is_none() && out_v6.is_none() {
        return Err(SetupError::Socket(io::Error::other(
            "no outbound UDP socket",
        )));
    }
    Ok(Prepared {
        assoc: Association {
            table,
            client,
            out_v4,
            out_v6,
            dual,
            rule: ClientRule::new(requested, peer.ip()),
            egress,
            client_addr: Cell::new(None),
            targets: RefCell::new(HashSet::new()),
            names: RefCell::new(HashMap::new()),
            resolve_timeout,
            last_activity: Cell::new(Instant::now()),
            report: RefCell::new(UdpReport::default()),
            protection: None,
        },
        _slot: slot,
    })
}

/// Relays datagrams until the control connection closes, the association
/// idles out, or a socket fails. Sockets wait on `events` (the core's
/// ring) when there is one. Sockets and the table slot are freed on
/// return.
pub(crate) async fn serve(
    prepared: Prepared<'_>,
    mut control: Stream,
    idle_timeout: Duration,
    stop: &StopSignal,
    events: Option<&Rc<EventRing>>,
) -> (UdpReport, UdpEnd) {
    let assoc = &prepared.assoc;
    let targets = async {
        match (&assoc.out_v4, &assoc.out_v6) {
            (Some(v4), Some(v6)) => {
                future::or(assoc.target_loop(v4, events), assoc.target_loop(v6, events)).await
            }
            (Some(s), None) | (None, Some(s)) => assoc.target_loop(s, events).await,
            (None, None) => future::pending().await,
        }
    };
    let stopped = async { UdpEnd::Stopped(stop.wait().await) };
    // The loops (and their watches, which must let go of the sockets
    // before they close) end with this expression.
    let end = future::or(
        future::or(control_closed(&mut control), assoc.idle_watch(idle_timeout)),
        future::or(assoc.client_loop(events), future::or(targets, stopped)),
    )
    .await;
    if let UdpEnd::Stopped(_) = end {
        // The client must learn that the association was cut, not closed.
        sys::set_linger_zero(&control);
    }
    // Pending io_uring receives hold the sockets open until cancelled;
    // shutdown(2) ends them now, so the relay port is freed promptly.
    for sock in [
        Some(&assoc.client),
        assoc.out_v4.as_ref(),
        assoc.out_v6.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        sys::stop_listening(sys::borrow(sock));
    }
    let report = assoc.report.borrow().clone();
    (report, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn zero_address_means_control_peer_ip_and_first_port_wins() {
        let rule = ClientRule::new(
            &TargetAddr::Ip(sa("0.0.0.0:0")),
            "127.0.0.5".parse().unwrap(),
        );
        assert!(!rule.admits(sa("127.0.0.6:4000")), "other IP");
        assert!(
            rule.admits(sa("127.0.0.5:4000")),
            "first datagram fixes the port"
        );
        assert!(rule.admits(sa("127.0.0.5:4000")));
        assert!(!rule.admits(sa("127.0.0.5:4001")), "port is now fixed");
    }

    #[test]
    fn named_address_admits_only_itself() {
        let rule = ClientRule::new(
            &TargetAddr::Ip(sa("127.0.0.9:5000")),
            "127.0.0.5".parse().unwrap(),
        );
        assert!(rule.admits(sa("127.0.0.9:5000")));
        assert!(!rule.admits(sa("127.0.0.5:5000")));
        assert!(!rule.admits(sa("127.0.0.9:5001")));
    }

    #[test]
    fn mapped_ipv4_matches_plain_ipv4() {
        let rule = ClientRule::new(
            &TargetAddr::Ip(sa("0.0.0.0:0")),
            "::ffff:127.0.0.1".parse().unwrap(),
        );
        assert!(rule.admits(sa("127.0.0.1:9")));
    }
}
