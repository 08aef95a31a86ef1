//! The core's own io_uring (io-uring crate) for waiting on socket
//! readiness, set up so that a completion does not interrupt the core.
//!
//! glommio 0.9 creates its rings without COOP_TASKRUN or DEFER_TASKRUN, so
//! every completion raised from another CPU sends our core an IPI
//! (`../shared/DESIGN-NOTES.md` has the measurements). This ring is created
//! with SINGLE_ISSUER + DEFER_TASKRUN where the kernel has it (completion
//! work then runs only when this core asks for it), else COOP_TASKRUN +
//! TASKRUN_FLAG, else plain. An eventfd registered with the ring tells
//! glommio when there is something to collect: one driver task per core
//! awaits it through glommio (an io_uring read, parked by polling), runs the
//! deferred work and the completion queue, and wakes the waiting futures.
//! Nothing here crosses cores: each core makes its own ring on its own
//! thread.
//!
//! Today its user is the connect path (POLLOUT | POLLERR on a connecting
//! socket, so an ICMP error queued by IP_RECVERR is seen at once, which
//! glommio's write path does not do). The relay engines are next.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};

use crate::config::EventRingSetup;

/// Marks the user_data of POLL_REMOVE requests, whose completions carry no
/// slot.
const REMOVE_TAG: u64 = 1 << 63;

/// Submission queue size. A wait takes one entry until it is submitted,
/// which happens at once, so this bounds a burst, not the number of waits.
const ENTRIES: u32 = 256;

enum Slot {
    Free,
    /// A POLL_ADD in flight; the waker of whoever waits for it.
    Waiting(Waker),
    /// Completed with this result (revents, or -errno).
    Ready(i32),
    /// Given up by its owner; freed when its completion arrives.
    Abandoned,
}

pub struct EventRing {
    ring: RefCell<IoUring>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    setup: &'static str,
    eventfd: OwnedFd,
}

impl Drop for EventRing {
    /// Completes the driver's pending eventfd read, so that the driver finds
    /// the ring gone and ends: glommio's executor waits for every read in
    /// flight before it exits, and nothing else would ever signal it.
    fn drop(&mut self) {
        if let Err(e) = crate::sys::eventfd_signal(self.eventfd.as_fd()) {
            tracing::warn!("event ring: waking the driver to end it failed: {e}");
        }
    }
}

impl EventRing {
    /// Creates this core's ring with the best setup the kernel accepts (or
    /// the one asked for) and spawns its driver task. Must run on the
    /// core's own executor thread: with SINGLE_ISSUER only this thread may
    /// submit.
    pub fn start(asked: EventRingSetup) -> io::Result<Rc<EventRing>> {
        let (ring, setup) = create_ring(asked)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::PollAdd::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's io_uring lacks POLL_ADD",
            ));
        }
        let eventfd = crate::sys::eventfd()?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        // glommio closes what it is given: hand it a duplicate.
        let wake = eventfd.try_clone()?;
        let this = Rc::new(EventRing {
            ring: RefCell::new(ring),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            setup,
            eventfd,
        });
        // SAFETY: `wake` is a descriptor of our own whose ownership moves
        // into glommio's file here. Reading an eventfd through glommio is an
        // io_uring READ that waits by polling, not on a worker thread.
        let file = unsafe { glommio::io::BufferedFile::from_raw_fd(wake.into_raw_fd()) };
        let driver = Rc::downgrade(&this);
        glommio::spawn_local(async move {
            loop {
                if file.read_at(0, 8).await.is_err() {
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
                match driver.upgrade() {
                    Some(ring) => ring.collect(),
                    None => return,
                }
            }
        })
        .detach();
        Ok(this)
    }

    /// Which setup the kernel gave us, for the start-up log line.
    pub fn setup(&self) -> &'static str {
        self.setup
    }

    /// Waits until `fd` reports one of `events` (POLLERR and POLLHUP are
    /// always reported); resolves to the revents.
    pub fn readiness<'a>(&'a self, fd: BorrowedFd<'a>, events: i16) -> Readiness<'a> {
        Readiness {
            ring: self,
            fd,
            events,
            slot: None,
        }
    }

    /// Runs the deferred completion work and hands each completion to its
    /// waiter.
    fn collect(&self) {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: an enter with no submissions and no argument; GETEVENTS
        // is what runs DEFER_TASKRUN's work (and COOP_TASKRUN's, when the
        // kernel flagged some).
        if let Err(e) = unsafe {
            ring.submitter().enter::<libc::sigset_t>(
                0,
                0,
                io_uring::EnterFlags::GETEVENTS.bits(),
                None,
            )
        } {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::warn!("event ring: collecting completions failed: {e}");
            }
        }
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
                Slot::Waiting(w) => w.wake(),
                Slot::Abandoned => {
                    *slot = Slot::Free;
                    self.free.borrow_mut().push(i);
                }
                Slot::Free | Slot::Ready(_) => {}
            }
        }
    }

    fn arm(&self, fd: BorrowedFd<'_>, events: i16, waker: &Waker) -> io::Result<usize> {
        let i = {
            let mut slots = self.slots.borrow_mut();
            let i = self.free.borrow_mut().pop().unwrap_or_else(|| {
                slots.push(Slot::Free);
                slots.len() - 1
            });
            slots[i] = Slot::Waiting(waker.clone());
            i
        };
        let sqe = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), events as u16 as u32)
            .build()
            .user_data(i as u64);
        if let Err(e) = self.submit(&sqe) {
            self.slots.borrow_mut()[i] = Slot::Free;
            self.free.borrow_mut().push(i);
            return Err(e);
        }
        Ok(i)
    }

    fn submit(&self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: POLL_ADD and POLL_REMOVE reference no memory of ours; the
        // fd stays open until the request is removed (see `Readiness`).
        if unsafe { ring.submission().push(sqe) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("event ring: submission queue full"))?;
        }
        ring.submit()?;
        Ok(())
    }

    fn poll_slot(&self, i: usize, waker: &Waker) -> Poll<i32> {
        let mut slots = self.slots.borrow_mut();
        match &mut slots[i] {
            Slot::Ready(res) => {
                let res = *res;
                slots[i] = Slot::Free;
                self.free.borrow_mut().push(i);
                Poll::Ready(res)
            }
            Slot::Waiting(w) => {
                if !w.will_wake(waker) {
                    *w = waker.clone();
                }
                Poll::Pending
            }
            Slot::Free | Slot::Abandoned => Poll::Ready(-libc::ECANCELED),
        }
    }

    /// Gives up a wait: the POLL_ADD is removed so that the ring lets go of
    /// the socket before its owner closes it.
    fn cancel(&self, i: usize) {
        let mut slots = self.slots.borrow_mut();
        if let Slot::Ready(_) = slots[i] {
            slots[i] = Slot::Free;
            self.free.borrow_mut().push(i);
            return;
        }
        slots[i] = Slot::Abandoned;
        drop(slots);
        let sqe = opcode::PollRemove::new(i as u64)
            .build()
            .user_data(REMOVE_TAG | i as u64);
        if let Err(e) = self.submit(&sqe) {
            tracing::warn!("event ring: removing a wait failed: {e}");
        }
    }
}

/// Tries DEFER_TASKRUN, then COOP_TASKRUN, then a plain ring (for `auto`),
/// or exactly the setup asked for.
fn create_ring(asked: EventRingSetup) -> io::Result<(IoUring, &'static str)> {
    let defer = || {
        IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(ENTRIES)
            .map(|r| (r, "single-issuer + defer-taskrun"))
    };
    let coop = || {
        IoUring::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(ENTRIES)
            .map(|r| (r, "coop-taskrun + taskrun-flag"))
    };
    let plain =
        || IoUring::new(ENTRIES).map(|r| (r, "plain (every completion may interrupt the core)"));
    match asked {
        EventRingSetup::Auto => defer().or_else(|_| coop()).or_else(|_| plain()),
        EventRingSetup::DeferTaskrun => defer(),
        EventRingSetup::CoopTaskrun => coop(),
        EventRingSetup::Plain => plain(),
        EventRingSetup::Off => Err(io::Error::other("event ring turned off")),
    }
}

/// A wait for readiness on a socket the caller keeps open: the borrow
/// makes the socket outlive the wait, and dropping an unfinished wait
/// removes its POLL_ADD.
pub struct Readiness<'a> {
    ring: &'a EventRing,
    fd: BorrowedFd<'a>,
    events: i16,
    slot: Option<usize>,
}

impl Future for Readiness<'_> {
    type Output = io::Result<i16>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(i) = this.slot else {
            this.slot = Some(this.ring.arm(this.fd, this.events, cx.waker())?);
            return Poll::Pending;
        };
        let res = std::task::ready!(this.ring.poll_slot(i, cx.waker()));
        this.slot = None;
        if res < 0 {
            Poll::Ready(Err(io::Error::from_raw_os_error(-res)))
        } else {
            Poll::Ready(Ok(res as i16))
        }
    }
}

impl Drop for Readiness<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            self.ring.cancel(i);
        }
    }
}
