//! A per-core io_uring (io-uring crate) used only to wait for socket
//! readiness: the second way the splice engine can be woken (`--splice-wake
//! ring`), beside glommio's own read/write paths (`glommio`, the default).
//!
//! glommio has no public "wait until this fd is readable" API, so this
//! ring posts IORING_OP_POLL_ADD requests itself and tells the executor
//! about completions through an eventfd registered with the ring
//! (IORING_REGISTER_EVENTFD): a driver task on the same core awaits an
//! 8-byte read of that eventfd through glommio, then drains the completion
//! queue and wakes the waiting directions. Everything stays on the core.
//!
//! Measured against the glommio path in README's Performance section; see
//! docs/ARCHITECTURE.md for why the default is what it is.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};

/// Marks the user_data of POLL_REMOVE requests, whose completions carry no
/// slot.
const REMOVE_TAG: u64 = 1 << 63;

enum Slot {
    Free,
    /// A POLL_ADD in flight; the waker of whoever waits for it.
    Waiting(Option<Waker>),
    /// Completed with this result (revents, or -errno).
    Ready(i32),
    /// Given up by its owner; freed when its completion arrives.
    Abandoned,
}

/// A pending readiness wait.
#[derive(Debug)]
pub struct Token(usize);

pub struct ReadinessRing {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    eventfd: OwnedFd,
}

impl ReadinessRing {
    /// Creates the ring and spawns its driver task on the current core.
    pub fn start(entries: u32) -> io::Result<Rc<ReadinessRing>> {
        let ring = IoUring::new(entries)?;
        // SAFETY: eventfd returns a new descriptor or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let this = Rc::new(ReadinessRing {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            eventfd,
        });
        // glommio reads the eventfd through its own ring (an io_uring READ,
        // which waits by polling, not on a worker thread).
        // SAFETY: dup gives glommio a descriptor of its own to close.
        let dup = unsafe { libc::dup(this.eventfd.as_raw_fd()) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: dup is a fresh descriptor whose ownership moves here.
        let file = unsafe { glommio::io::BufferedFile::from_raw_fd(dup) };
        let driver = Rc::downgrade(&this);
        glommio::spawn_local(async move {
            loop {
                if file.read_at(0, 8).await.is_err() {
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
                match driver.upgrade() {
                    Some(ring) => ring.dispatch(),
                    None => return,
                }
            }
        })
        .detach();
        Ok(this)
    }

    fn dispatch(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        for cqe in ring.completion() {
            let data = cqe.user_data();
            if data & REMOVE_TAG != 0 {
                continue;
            }
            let i = data as usize;
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
            match std::mem::replace(slot, Slot::Ready(cqe.result())) {
                Slot::Waiting(Some(w)) => w.wake(),
                Slot::Abandoned => {
                    *slot = Slot::Free;
                    self.free.borrow_mut().push(i);
                }
                _ => {}
            }
        }
    }

    /// Starts waiting for `events` (POLLIN/POLLOUT) on `fd`.
    pub fn arm(&self, fd: RawFd, events: i16, cx: &Context<'_>) -> io::Result<Token> {
        let i = {
            let mut slots = self.slots.borrow_mut();
            let i = match self.free.borrow_mut().pop() {
                Some(i) => i,
                None => {
                    slots.push(Slot::Free);
                    slots.len() - 1
                }
            };
            slots[i] = Slot::Waiting(Some(cx.waker().clone()));
            i
        };
        let events = (events | libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP as i16) as u32;
        let sqe = opcode::PollAdd::new(types::Fd(fd), events)
            .build()
            .user_data(i as u64);
        self.submit(&sqe)?;
        Ok(Token(i))
    }

    fn submit(&self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: POLL_ADD/POLL_REMOVE reference no memory of ours.
        if unsafe { ring.submission().push(sqe) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("readiness ring full"))?;
        }
        ring.submit()?;
        Ok(())
    }

    /// Ready once the wait completed; the token is then spent.
    pub fn poll(&self, token: &Token, cx: &Context<'_>) -> Poll<i32> {
        let mut slots = self.slots.borrow_mut();
        match &mut slots[token.0] {
            Slot::Ready(res) => {
                let res = *res;
                slots[token.0] = Slot::Free;
                self.free.borrow_mut().push(token.0);
                Poll::Ready(res)
            }
            Slot::Waiting(w) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Slot::Free | Slot::Abandoned => Poll::Ready(-libc::ECANCELED),
        }
    }

    /// Gives up a wait (the tunnel is closing). The POLL_ADD is removed so
    /// the ring drops its reference to the socket before it is closed.
    pub fn cancel(&self, token: Token) {
        let mut slots = self.slots.borrow_mut();
        match slots[token.0] {
            Slot::Ready(_) => {
                slots[token.0] = Slot::Free;
                self.free.borrow_mut().push(token.0);
            }
            _ => {
                slots[token.0] = Slot::Abandoned;
                drop(slots);
                let sqe = opcode::PollRemove::new(token.0 as u64)
                    .build()
                    .user_data(REMOVE_TAG | token.0 as u64);
                let _ = self.submit(&sqe);
            }
        }
    }
}
