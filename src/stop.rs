//! Stop signals: why a connection's task is told to end (shed to make
//! room, cut at the end of the shutdown grace, its user removed by a
//! reload), as a one-shot signal the task waits on beside its work. The
//! runtime's admission fires them; sessions, tunnels and UDP associations
//! wait on them (here, apart from the runtime, so that those do not
//! depend on it).

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

/// Why a connection is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its handshake was the oldest unfinished one when room was needed.
    Shed(ShedReason),
    /// The shutdown grace ran out.
    ShutdownCut,
    /// A reload removed its RFC 1929 user (`--reload-closes-removed-users`).
    UserRemoved,
}

impl Stop {
    /// For the access log's `end=`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Stop::Shed(_) => "handshake-shed",
            Stop::ShutdownCut => "shutdown-cut",
            Stop::UserRemoved => "user-removed",
        }
    }
}

/// Which budget made room by shedding a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShedReason {
    ConnectionLimit,
    HandshakeBudget,
    ClientHandshakeBudget,
}

impl ShedReason {
    pub(crate) const ALL: [ShedReason; 3] = [
        ShedReason::ConnectionLimit,
        ShedReason::HandshakeBudget,
        ShedReason::ClientHandshakeBudget,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ShedReason::ConnectionLimit => "connection-limit",
            ShedReason::HandshakeBudget => "handshake-budget",
            ShedReason::ClientHandshakeBudget => "client-handshake-budget",
        }
    }
}

/// A one-shot signal a connection's task waits on beside its work.
#[derive(Default)]
pub(crate) struct StopSignal {
    stop: Cell<Option<Stop>>,
    waker: Cell<Option<Waker>>,
}

impl StopSignal {
    pub(crate) fn poll_stop(&self, cx: &mut Context<'_>) -> Poll<Stop> {
        if let Some(stop) = self.stop.get() {
            return Poll::Ready(stop);
        }
        // Re-register only when the task's waker changed (it rarely does).
        let waker = match self.waker.take() {
            Some(w) if w.will_wake(cx.waker()) => w,
            _ => cx.waker().clone(),
        };
        self.waker.set(Some(waker));
        Poll::Pending
    }

    /// Why the connection was told to stop, if it was.
    pub(crate) fn stopped(&self) -> Option<Stop> {
        self.stop.get()
    }

    pub(crate) async fn wait(&self) -> Stop {
        poll_fn(|cx| self.poll_stop(cx)).await
    }

    /// Sets the signal; false when it was already set.
    pub(crate) fn fire(&self, stop: Stop) -> bool {
        if self.stop.get().is_some() {
            return false;
        }
        self.stop.set(Some(stop));
        if let Some(w) = self.waker.take() {
            w.wake();
        }
        true
    }
}
