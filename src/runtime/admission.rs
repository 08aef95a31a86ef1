//! Admission control: which connections a core takes, and which it lets go.
//!
//! Every connection on a core holds a [`Ticket`] from accept to close.
//! Connections still in their handshake (greeting, authentication, request:
//! the part whose pace the client sets) are also queued by age and counted
//! per client address. A new connection never waits behind stalled ones:
//! when the core is at its connection cap, at its handshake budget, or the
//! client's address is at its own handshake budget, the oldest unfinished
//! handshake (of that address, for the last) is shed to make room. Tunnels
//! past their handshake are never shed; a new connection is refused only
//! when every slot holds one.
//!
//! Tickets also count descriptors: a connection is charged two at accept
//! (the client's socket and the target's to come), and a session that
//! opens more (a UDP association's relay and outbound sockets, a BIND
//! listener) charges them before it opens them. A charge fails when the
//! core's descriptor budget, sized from RLIMIT_NOFILE, is spent, so the
//! process does not meet EMFILE through sessions it admitted; or when the
//! client's address already holds its share of that budget
//! (`--client-share`), so one address cannot take a core from the others.
//!
//! The same tickets let the core stop every connection at once at the end
//! of the shutdown grace, so each one ends (and is logged) on its own task.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

pub(crate) use crate::stop::{ShedReason, Stop, StopSignal};

/// Per-core budgets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budgets {
    /// Connections (handshaking or relaying) the core holds.
    pub connections: usize,
    /// Unfinished handshakes the core holds.
    pub handshakes: usize,
    /// Unfinished handshakes one client address holds on this core.
    pub handshakes_per_client: usize,
    /// Descriptors the core's sessions may hold (pipes and the reserve
    /// are apart).
    pub descriptors: usize,
    /// Descriptors one client address may hold on this core.
    pub descriptors_per_client: usize,
}

/// Descriptors a connection is charged at accept: its client's socket and
/// its target's.
pub(super) const CONNECTION_DESCRIPTORS: usize = 2;

/// Why a session may not open more sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Exhausted {
    #[error("this core's descriptor budget is spent (RLIMIT_NOFILE)")]
    Core,
    #[error("client address {0} holds its share of this core's descriptors (--client-share)")]
    ClientShare(IpAddr),
}

/// The connection could not be taken: every slot holds an established
/// tunnel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Refused;

pub(crate) struct Admitted {
    pub ticket: Ticket,
    /// A handshake shed to make room for this connection, and why.
    pub shed: Option<ShedReason>,
}

pub(crate) struct Admission {
    budgets: Budgets,
    next_id: Cell<u64>,
    /// Every connection on this core.
    live: RefCell<HashMap<u64, Rc<StopSignal>>>,
    /// Unfinished handshakes by id; ids grow with age, so the first is the
    /// oldest.
    handshakes: RefCell<BTreeMap<u64, IpAddr>>,
    /// What each client address holds; an address holding nothing has no
    /// entry.
    clients: RefCell<HashMap<IpAddr, ClientUse>>,
    /// Shed connections whose tasks have not ended yet.
    shed_pending: Cell<usize>,
    /// The RFC 1929 user of each authenticated connection, for a reload
    /// that removes users.
    users: RefCell<HashMap<u64, Box<[u8]>>>,
    /// Descriptors charged to live connections.
    descriptors: Cell<usize>,
}

/// One client address's use of a core.
#[derive(Default)]
struct ClientUse {
    handshakes: usize,
    descriptors: usize,
    /// The log has said that it reached its share (once until it holds
    /// nothing again).
    told: bool,
}

impl Admission {
    pub(crate) fn new(budgets: Budgets) -> Rc<Admission> {
        Rc::new(Admission {
            budgets,
            next_id: Cell::new(0),
            live: RefCell::new(HashMap::new()),
            handshakes: RefCell::new(BTreeMap::new()),
            clients: RefCell::new(HashMap::new()),
            shed_pending: Cell::new(0),
            users: RefCell::new(HashMap::new()),
            descriptors: Cell::new(0),
        })
    }

    #[cfg(test)]
    /// Descriptors charged now.
    pub(crate) fn descriptors(&self) -> usize {
        self.descriptors.get()
    }

    /// Descriptors `client` holds on this core.
    pub(crate) fn held_by(&self, client: IpAddr) -> usize {
        self.clients
            .borrow()
            .get(&client)
            .map_or(0, |c| c.descriptors)
    }

    /// Charges `n` more descriptors to a `client` that holds a connection.
    fn charge(&self, client: IpAddr, n: usize) -> Result<(), Exhausted> {
        let b = self.budgets;
        if self.descriptors.get() + n > b.descriptors {
            return Err(Exhausted::Core);
        }
        let mut clients = self.clients.borrow_mut();
        let Some(held) = clients.get_mut(&client) else {
            return Err(Exhausted::ClientShare(client));
        };
        if held.descriptors + n > b.descriptors_per_client {
            return Err(Exhausted::ClientShare(client));
        }
        held.descriptors += n;
        self.descriptors.set(self.descriptors.get() + n);
        Ok(())
    }

    /// Gives back `n` descriptors of `client`'s; forgets an address that
    /// holds nothing any more.
    fn refund(&self, client: IpAddr, n: usize) {
        self.descriptors
            .set(self.descriptors.get().saturating_sub(n));
        self.update(client, |c| c.descriptors = c.descriptors.saturating_sub(n));
    }

    /// Changes `client`'s entry, removing it when it holds nothing.
    fn update(&self, client: IpAddr, change: impl FnOnce(&mut ClientUse)) {
        let mut clients = self.clients.borrow_mut();
        if let Some(c) = clients.get_mut(&client) {
            change(c);
            if c.descriptors == 0 && c.handshakes == 0 {
                clients.remove(&client);
            }
        }
    }

    /// Whether the log has not yet said that `client` reached its share;
    /// true once per episode.
    pub(crate) fn first_time_at_share(&self, client: IpAddr) -> bool {
        let mut clients = self.clients.borrow_mut();
        let Some(c) = clients.get_mut(&client) else {
            return false;
        };
        !std::mem::replace(&mut c.told, true)
    }

    /// Stops every connection whose RFC 1929 user `keep` rejects.
    pub(crate) fn stop_users(&self, keep: impl Fn(&[u8]) -> bool, stop: Stop) -> usize {
        let live = self.live.borrow();
        let mut stopped = 0;
        for (id, user) in self.users.borrow().iter() {
            if !keep(user) && live.get(id).is_some_and(|s| s.fire(stop)) {
                stopped += 1;
            }
        }
        stopped
    }

    pub(crate) fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Connections open now.
    pub(crate) fn live(&self) -> usize {
        self.live.borrow().len()
    }

    /// Connections still in their handshake.
    pub(crate) fn handshaking(&self) -> usize {
        self.handshakes.borrow().len()
    }

    /// Takes a new connection from `client`, shedding one stalled handshake
    /// when a budget is full.
    pub(crate) fn admit(self: &Rc<Self>, client: IpAddr) -> Result<Admitted, Refused> {
        let b = self.budgets;
        let client_handshakes = self
            .clients
            .borrow()
            .get(&client)
            .map_or(0, |c| c.handshakes);
        let shed = if client_handshakes >= b.handshakes_per_client {
            self.shed_oldest(Some(client), ShedReason::ClientHandshakeBudget)
        } else if self.handshaking() >= b.handshakes {
            self.shed_oldest(None, ShedReason::HandshakeBudget)
        } else {
            None
        };
        // A shed connection keeps its slot and its descriptors until its
        // task ends; count only the others against the caps.
        let pending = self.shed_pending.get();
        let descriptors_full = self
            .descriptors
            .get()
            .saturating_sub(CONNECTION_DESCRIPTORS * pending)
            + CONNECTION_DESCRIPTORS
            > b.descriptors;
        let shed = if shed.is_none() && (self.live() - pending >= b.connections || descriptors_full)
        {
            if self.handshaking() == 0 {
                return Err(Refused);
            }
            self.shed_oldest(None, ShedReason::ConnectionLimit)
        } else {
            shed
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let stop = Rc::new(StopSignal::default());
        self.live.borrow_mut().insert(id, stop.clone());
        self.handshakes.borrow_mut().insert(id, client);
        // Accepted: its socket is open whatever the budgets say.
        let mut clients = self.clients.borrow_mut();
        let use_ = clients.entry(client).or_default();
        use_.handshakes += 1;
        use_.descriptors += CONNECTION_DESCRIPTORS;
        drop(clients);
        self.descriptors
            .set(self.descriptors.get() + CONNECTION_DESCRIPTORS);
        Ok(Admitted {
            ticket: Ticket {
                admission: self.clone(),
                id,
                client,
                descriptors: Cell::new(CONNECTION_DESCRIPTORS),
                stop,
            },
            shed,
        })
    }

    /// Tells every connection to stop now.
    pub(crate) fn stop_all(&self, stop: Stop) {
        for signal in self.live.borrow().values() {
            signal.fire(stop);
        }
    }

    fn shed_oldest(&self, of: Option<IpAddr>, reason: ShedReason) -> Option<ShedReason> {
        let oldest = self
            .handshakes
            .borrow()
            .iter()
            .find(|(_, ip)| of.map_or(true, |of| **ip == of))
            .map(|(id, _)| *id)?;
        self.end_handshake(oldest);
        if let Some(signal) = self.live.borrow().get(&oldest) {
            if signal.fire(Stop::Shed(reason)) {
                self.shed_pending.set(self.shed_pending.get() + 1);
            }
        }
        Some(reason)
    }

    fn end_handshake(&self, id: u64) {
        let Some(client) = self.handshakes.borrow_mut().remove(&id) else {
            return;
        };
        self.update(client, |c| c.handshakes -= 1);
    }
}

/// A connection's place on its core; dropping it frees the place.
pub(crate) struct Ticket {
    admission: Rc<Admission>,
    id: u64,
    client: IpAddr,
    /// Descriptors charged to this connection.
    descriptors: Cell<usize>,
    pub stop: Rc<StopSignal>,
}

impl Ticket {
    /// The connection's number on its core (access log `conn=core.id`).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The client sent its request: from here on the connection can no
    /// longer be shed.
    pub(crate) fn handshake_done(&self) {
        self.admission.end_handshake(self.id);
    }

    /// Whether the client's address holds more than its share of the
    /// core's descriptors (this connection's own counted): its new
    /// requests are then refused.
    pub(crate) fn over_share(&self) -> Result<(), Exhausted> {
        let a = &self.admission;
        if a.held_by(self.client) > a.budgets.descriptors_per_client {
            return Err(Exhausted::ClientShare(self.client));
        }
        Ok(())
    }

    /// Charges `n` more descriptors to this connection, before the
    /// session opens them; they are refunded by [`Ticket::refund`] or when
    /// the ticket drops.
    pub(crate) fn charge(&self, n: usize) -> Result<(), Exhausted> {
        self.admission.charge(self.client, n)?;
        self.descriptors.set(self.descriptors.get() + n);
        Ok(())
    }

    /// Gives back `n` descriptors charged with [`Ticket::charge`].
    pub(crate) fn refund(&self, n: usize) {
        let n = n.min(
            self.descriptors
                .get()
                .saturating_sub(CONNECTION_DESCRIPTORS),
        );
        self.admission.refund(self.client, n);
        self.descriptors.set(self.descriptors.get() - n);
    }

    /// Records the RFC 1929 user this connection authenticated as.
    pub(crate) fn set_user(&self, user: &[u8]) {
        self.admission
            .users
            .borrow_mut()
            .insert(self.id, user.into());
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.end_handshake(self.id);
        self.admission.live.borrow_mut().remove(&self.id);
        self.admission.users.borrow_mut().remove(&self.id);
        self.admission.refund(self.client, self.descriptors.get());
        if let Some(Stop::Shed(_)) = self.stop.stopped() {
            let pending = &self.admission.shed_pending;
            pending.set(pending.get() - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn admission(connections: usize, handshakes: usize, per_client: usize) -> Rc<Admission> {
        Admission::new(Budgets {
            connections,
            handshakes,
            handshakes_per_client: per_client,
            descriptors: 1 << 20,
            descriptors_per_client: 1 << 20,
        })
    }

    fn with_descriptors(descriptors: usize, per_client: usize) -> Rc<Admission> {
        Admission::new(Budgets {
            connections: 1000,
            handshakes: 1000,
            handshakes_per_client: 1000,
            descriptors,
            descriptors_per_client: per_client,
        })
    }

    #[test]
    fn a_client_is_charged_what_it_opens_and_stops_at_its_share() {
        let a = with_descriptors(100, 8);
        let t = a.admit(ip(2)).unwrap().ticket;
        // A UDP association: relay socket and one outbound beside the
        // control connection's two.
        t.charge(1).unwrap();
        assert_eq!(a.held_by(ip(2)), 3);
        let u = a.admit(ip(2)).unwrap().ticket;
        assert_eq!(u.charge(4), Err(Exhausted::ClientShare(ip(2))));
        u.charge(3).unwrap();
        assert_eq!(a.held_by(ip(2)), 8);
        assert!(u.over_share().is_ok(), "at the share, not over it");
        let v = a.admit(ip(2)).unwrap().ticket;
        assert_eq!(v.over_share(), Err(Exhausted::ClientShare(ip(2))));
        // Another address is untouched.
        let w = a.admit(ip(3)).unwrap().ticket;
        assert!(w.over_share().is_ok());
        assert!(a.first_time_at_share(ip(2)));
        assert!(!a.first_time_at_share(ip(2)));
        u.refund(3);
        drop((t, u, v, w));
        assert_eq!(a.descriptors(), 0);
        assert_eq!(a.held_by(ip(2)), 0);
        assert!(a.clients.borrow().is_empty());
        let again = a.admit(ip(2)).unwrap().ticket;
        assert!(a.first_time_at_share(ip(2)), "a new episode is told again");
        drop(again);
    }

    #[test]
    fn the_core_budget_refuses_charges_and_sheds_handshakes_for_new_connections() {
        let a = with_descriptors(6, 6);
        let t = a.admit(ip(1)).unwrap().ticket;
        t.handshake_done();
        let u = a.admit(ip(2)).unwrap().ticket;
        u.handshake_done();
        assert_eq!(t.charge(3), Err(Exhausted::Core));
        t.charge(2).unwrap();
        // Every descriptor is held by tunnels: a new connection is refused.
        assert_eq!(a.admit(ip(3)).err(), Some(Refused));
        t.refund(2);
        let stalled = a.admit(ip(3)).unwrap().ticket;
        let fresh = a.admit(ip(4)).unwrap();
        assert_eq!(fresh.shed, Some(ShedReason::ConnectionLimit));
        assert!(stalled.stop.stopped().is_some());
    }

    #[test]
    fn sheds_the_oldest_handshake_of_an_address_over_its_budget() {
        let a = admission(100, 100, 2);
        let t0 = a.admit(ip(2)).unwrap().ticket;
        let other = a.admit(ip(1)).unwrap().ticket;
        let t1 = a.admit(ip(2)).unwrap().ticket;
        let third = a.admit(ip(2)).unwrap();
        assert_eq!(third.shed, Some(ShedReason::ClientHandshakeBudget));
        assert_eq!(
            t0.stop.stopped(),
            Some(Stop::Shed(ShedReason::ClientHandshakeBudget))
        );
        assert_eq!(t1.stop.stopped(), None);
        assert_eq!(
            other.stop.stopped(),
            None,
            "another address is never shed for it"
        );
        assert_eq!(a.handshaking(), 3);
    }

    #[test]
    fn sheds_the_oldest_handshake_over_the_core_budget() {
        let a = admission(100, 2, 100);
        let t0 = a.admit(ip(1)).unwrap().ticket;
        let t1 = a.admit(ip(2)).unwrap().ticket;
        let t2 = a.admit(ip(3)).unwrap();
        assert_eq!(t2.shed, Some(ShedReason::HandshakeBudget));
        assert!(t0.stop.stopped().is_some());
        assert!(t1.stop.stopped().is_none());
    }

    #[test]
    fn at_the_connection_cap_sheds_handshakes_but_never_tunnels() {
        let a = admission(2, 100, 100);
        let tunnel = a.admit(ip(1)).unwrap().ticket;
        tunnel.handshake_done();
        let stalled = a.admit(ip(2)).unwrap().ticket;
        let fresh = a.admit(ip(3)).unwrap();
        assert_eq!(fresh.shed, Some(ShedReason::ConnectionLimit));
        assert!(stalled.stop.stopped().is_some());
        assert!(tunnel.stop.stopped().is_none());
        // The shed one still holds its slot until its task ends, but does
        // not count against the cap; now both slots hold live connections.
        fresh.ticket.handshake_done();
        assert_eq!(a.admit(ip(4)).err(), Some(Refused));
        drop(stalled);
        assert_eq!(a.live(), 2);
        assert_eq!(a.admit(ip(4)).err(), Some(Refused));
        drop(tunnel);
        assert!(a.admit(ip(4)).is_ok());
    }

    #[test]
    fn dropping_tickets_frees_every_count() {
        let a = admission(10, 10, 10);
        let t = a.admit(ip(1)).unwrap().ticket;
        let u = a.admit(ip(1)).unwrap().ticket;
        u.handshake_done();
        drop(t);
        drop(u);
        assert_eq!((a.live(), a.handshaking()), (0, 0));
        assert!(a.clients.borrow().is_empty());
    }

    #[test]
    fn stop_all_reaches_every_connection() {
        let a = admission(10, 10, 10);
        let t = a.admit(ip(1)).unwrap().ticket;
        let u = a.admit(ip(2)).unwrap().ticket;
        u.handshake_done();
        a.stop_all(Stop::ShutdownCut);
        assert_eq!(t.stop.stopped(), Some(Stop::ShutdownCut));
        assert_eq!(u.stop.stopped(), Some(Stop::ShutdownCut));
    }
}
