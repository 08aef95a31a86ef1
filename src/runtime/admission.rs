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
//! The same tickets let the core stop every connection at once at the end
//! of the shutdown grace, so each one ends (and is logged) on its own task.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::rc::Rc;

pub use crate::events::{ShedReason, Stop, StopSignal};

/// Per-core budgets.
#[derive(Debug, Clone, Copy)]
pub struct Budgets {
    /// Connections (handshaking or relaying) the core holds.
    pub connections: usize,
    /// Unfinished handshakes the core holds.
    pub handshakes: usize,
    /// Unfinished handshakes one client address holds on this core.
    pub handshakes_per_client: usize,
}

/// The connection could not be taken: every slot holds an established
/// tunnel.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

pub struct Admitted {
    pub ticket: Ticket,
    /// A handshake shed to make room for this connection, and why.
    pub shed: Option<ShedReason>,
}

pub struct Admission {
    budgets: Budgets,
    next_id: Cell<u64>,
    /// Every connection on this core.
    live: RefCell<HashMap<u64, Rc<StopSignal>>>,
    /// Unfinished handshakes by id; ids grow with age, so the first is the
    /// oldest.
    handshakes: RefCell<BTreeMap<u64, IpAddr>>,
    per_client: RefCell<HashMap<IpAddr, usize>>,
    /// Shed connections whose tasks have not ended yet.
    shed_pending: Cell<usize>,
    /// The RFC 1929 user of each authenticated connection, for a reload
    /// that removes users.
    users: RefCell<HashMap<u64, Box<[u8]>>>,
}

impl Admission {
    pub fn new(budgets: Budgets) -> Rc<Admission> {
        Rc::new(Admission {
            budgets,
            next_id: Cell::new(0),
            live: RefCell::new(HashMap::new()),
            handshakes: RefCell::new(BTreeMap::new()),
            per_client: RefCell::new(HashMap::new()),
            shed_pending: Cell::new(0),
            users: RefCell::new(HashMap::new()),
        })
    }

    /// Stops every connection whose RFC 1929 user `keep` rejects.
    pub fn stop_users(&self, keep: impl Fn(&[u8]) -> bool, stop: Stop) -> usize {
        let live = self.live.borrow();
        let mut stopped = 0;
        for (id, user) in self.users.borrow().iter() {
            if !keep(user) && live.get(id).is_some_and(|s| s.fire(stop)) {
                stopped += 1;
            }
        }
        stopped
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Connections open now.
    pub fn live(&self) -> usize {
        self.live.borrow().len()
    }

    /// Connections still in their handshake.
    pub fn handshaking(&self) -> usize {
        self.handshakes.borrow().len()
    }

    /// Takes a new connection from `client`, shedding one stalled handshake
    /// when a budget is full.
    pub fn admit(self: &Rc<Self>, client: IpAddr) -> Result<Admitted, Refused> {
        let b = self.budgets;
        let client_handshakes = self.per_client.borrow().get(&client).copied().unwrap_or(0);
        let shed = if client_handshakes >= b.handshakes_per_client {
            self.shed_oldest(Some(client), ShedReason::ClientHandshakeBudget)
        } else if self.handshaking() >= b.handshakes {
            self.shed_oldest(None, ShedReason::HandshakeBudget)
        } else {
            None
        };
        // A shed connection keeps its slot until its task ends; count only
        // the others against the connection cap.
        let shed = if shed.is_none() && self.live() - self.shed_pending.get() >= b.connections {
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
        *self.per_client.borrow_mut().entry(client).or_insert(0) += 1;
        Ok(Admitted {
            ticket: Ticket {
                admission: self.clone(),
                id,
                stop,
            },
            shed,
        })
    }

    /// Tells every connection to stop now.
    pub fn stop_all(&self, stop: Stop) {
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
        let mut per_client = self.per_client.borrow_mut();
        if let Some(n) = per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&client);
            }
        }
    }
}

/// A connection's place on its core; dropping it frees the place.
pub struct Ticket {
    admission: Rc<Admission>,
    id: u64,
    pub stop: Rc<StopSignal>,
}

impl Ticket {
    /// The connection's number on its core (access log `conn=core.id`).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client sent its request: from here on the connection can no
    /// longer be shed.
    pub fn handshake_done(&self) {
        self.admission.end_handshake(self.id);
    }

    /// Records the RFC 1929 user this connection authenticated as.
    pub fn set_user(&self, user: &[u8]) {
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
        })
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
        assert!(a.per_client.borrow().is_empty());
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
