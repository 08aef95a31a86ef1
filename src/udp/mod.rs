//! UDP ASSOCIATE (RFC 1928 sections 4, 6 and 7).
//!
//! An association lives on the core that accepted its TCP control
//! connection, and owns sockets of its own: a client-facing socket bound to
//! the address the client connected to (its port is the BND.PORT of the
//! reply), and one dual-stack outbound socket (one per address family with
//! an egress source pool). The client sends its
//! datagrams to that port, so they arrive on the owning core by
//! construction: no steering, no table shared between cores, no hand-off.
//! The price is one ephemeral port per association (see docs/ARCHITECTURE.md).
//!
//! Datagrams are taken in batches with one non-blocking recvmmsg (up to 16
//! per call, into one per-core batch of slots that each hold the largest
//! datagram) and sent with sendto; a batch that comes back short means the
//! socket was empty, so the next look waits for readiness instead of
//! paying for a recv that would say EAGAIN. Waits are the core's event
//! ring (a multishot poll per socket; without a ring, glommio's 1-byte
//! MSG_PEEK), so a waiting association holds no buffer.

mod association;

pub(crate) use association::{prepare, serve, Egress, SetupError};

use std::cell::{Cell, RefCell};

/// Largest UDP payload on IPv6 loopback (65535 - 8); IPv4 allows 28 less.
pub(crate) const MAX_DATAGRAM: usize = 65_527;
/// Longest RFC 1928 UDP header we write (IPv6: RSV 2 + FRAG 1 + ATYP 1 +
/// 16 + PORT 2).
pub(crate) const MAX_HEADER: usize = 22;

/// Per-core UDP state: the association count and the receive batch.
pub(crate) struct UdpTable {
    live: Cell<usize>,
    pub max_associations: usize,
    pub max_targets: usize,
    /// Borrowed only synchronously (never across an await), so one buffer
    /// serves every association on the core.
    batch: RefCell<crate::sys::DatagramBatch>,
}

impl UdpTable {
    pub(crate) fn new(max_associations: usize, max_targets: usize) -> UdpTable {
        UdpTable {
            live: Cell::new(0),
            max_associations,
            max_targets,
            batch: RefCell::new(crate::sys::DatagramBatch::new(MAX_HEADER + MAX_DATAGRAM)),
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    /// Reserves a slot, or `None` at the limit.
    fn admit(&self) -> Option<Slot<'_>> {
        if self.live.get() >= self.max_associations {
            return None;
        }
        self.live.set(self.live.get() + 1);
        Some(Slot(self))
    }
}

/// An association's place in its core's table, freed on drop.
struct Slot<'a>(&'a UdpTable);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.live.set(self.0.live.get() - 1);
    }
}
