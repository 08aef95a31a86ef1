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
//! Its users: the connect path (POLLOUT | POLLERR on a connecting socket,
//! so an ICMP error queued by IP_RECVERR is seen at once, which glommio's
//! write path does not do), and every listener, TCP connection (handshake
//! and relay: [`super::Stream`]) and UDP association socket, each with a
//! [`Watch`]: one multishot POLL_ADD(POLLIN) for the socket's life
//! (re-armed only when the kernel ends it) and a one-shot POLLOUT only
//! while a send would block. So a busy core collects readiness, and
//! submits the waits armed meanwhile, with one io_uring_enter per batch,
//! and is interrupted only when it had gone idle (the driver's eventfd
//! read was waiting on an empty counter).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, types, IoUring};

use crate::config::EventRingSetup;

/// Marks the user_data of cancel requests (ASYNC_CANCEL, and the start-up
/// probe's POLL_REMOVE), whose completions carry no slot.
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
    /// Given up by its owner; freed when its last completion arrives.
    Abandoned,
    /// A multishot POLL_ADD of a [`Watch`]: every completion sets `fired`
    /// and wakes the waker, if one waits; `armed` until a completion
    /// without IORING_CQE_F_MORE says the kernel ended it; `hung_up` once
    /// one reported the peer's FIN, an error or a hangup.
    Multi {
        waker: Option<Waker>,
        armed: bool,
        fired: bool,
        hung_up: bool,
    },
}

thread_local! {
    /// How many times a task of this thread asked to be polled again after
    /// the others ([`wake_again`]).
    static REQUEUED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Wakes the current task to be polled again once the others have run: for
/// a task that gives up its turn with work left. Use this rather than
/// `cx.waker().wake_by_ref()`, so that this thread's event ring driver knows
/// a task is waiting to run and does not sleep in the ring (its linger)
/// meanwhile; glommio's run queue cannot be asked.
pub fn wake_again(cx: &Context<'_>) {
    REQUEUED.set(REQUEUED.get().wrapping_add(1));
    cx.waker().wake_by_ref();
}

/// Gives up this task's turn with work left (see [`wake_again`]): the
/// others run, then this task again.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            Poll::Ready(())
        } else {
            wake_again(cx);
            Poll::Pending
        }
    })
    .await
}

pub struct EventRing {
    ring: RefCell<IoUring>,
    /// Whether watches arm multishot polls: asked for, and accepted by the
    /// kernel (probed at start; a later EINVAL turns it off too).
    multishot: std::cell::Cell<bool>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    setup: &'static str,
    eventfd: OwnedFd,
    /// The driver is between looks (it will look again before it parks):
    /// submissions wait for that look, so every wait armed in one round
    /// costs one io_uring_enter, not one each.
    driving: std::cell::Cell<bool>,
    /// How long the driver sleeps in this ring for the next completion
    /// before it parks in glommio: glommio's park and wake-up (a timer
    /// armed and cancelled, its rings linked) cost more than this wait,
    /// and under load the next report usually comes within it.
    linger: std::time::Duration,
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
    /// `linger`: how long the driver waits in this ring for more before
    /// it parks in glommio (zero where the kernel cannot wait with a
    /// timeout, IORING_FEAT_EXT_ARG, Linux 5.11).
    pub fn start(
        asked: EventRingSetup,
        multishot: bool,
        linger: std::time::Duration,
    ) -> io::Result<Rc<EventRing>> {
        let (ring, setup) = create_ring(asked)?;
        let linger = if ring.params().is_feature_ext_arg() {
            linger
        } else {
            std::time::Duration::ZERO
        };
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
        let multishot = multishot && probe_multishot_poll(&ring, eventfd.as_raw_fd());
        let this = Rc::new(EventRing {
            ring: RefCell::new(ring),
            multishot: std::cell::Cell::new(multishot),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            setup,
            eventfd,
            driving: std::cell::Cell::new(false),
            linger,
        });
        // SAFETY: `wake` is a descriptor of our own whose ownership moves
        // into glommio's file here. Reading an eventfd through glommio is an
        // io_uring READ that waits by polling, not on a worker thread.
        let file = crate::sys::glommio_file(wake);
        let driver = Rc::downgrade(&this);
        glommio::spawn_local(async move {
            loop {
                if file.read_at(0, 8).await.is_err() {
                    glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                }
                match driver.upgrade() {
                    Some(ring) => ring.drain_while_busy().await,
                    None => return,
                }
            }
        })
        .detach();
        Ok(this)
    }

    /// Which setup the kernel gave us, for the start-up log line.
    pub fn setup(&self) -> String {
        let polls = if self.multishot.get() {
            "multishot polls"
        } else {
            "one-shot polls"
        };
        if self.linger.is_zero() {
            format!("{}, {polls}, parks at once", self.setup)
        } else {
            format!(
                "{}, {polls}, waits {:?} before parking",
                self.setup, self.linger
            )
        }
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

    /// Collects completions for as long as they keep coming: after a batch
    /// the woken tasks run (a yield) and the ring is asked again, until a
    /// look finds nothing, no task asked to run again during the yield, and
    /// a wait of `linger` in this ring (asleep, not spinning) brings nothing
    /// either. Only then does the driver go back to its eventfd read
    /// through glommio, whose park and wake-up cost more than that wait,
    /// and whose wake-up may cost an interrupt. The
    /// eventfd's count is reset before the last look, so a completion
    /// posted after it always leaves that read something to return.
    /// (Spinning for 20 to 100 µs instead was measured: no gain in
    /// ping-pong round trips, and a quarter more CPU at low rates.)
    async fn drain_while_busy(&self) {
        // A task that asked to run again while the driver yielded
        // ([`wake_again`]) is queued behind it: sleeping in the ring now
        // would hold it back for the whole linger.
        let mut requeued = false;
        loop {
            let found = self.collect() > 0
                || requeued
                || (!self.linger.is_zero() && self.collect_within(self.linger) > 0)
                || {
                    // About to park: clear the eventfd, then look once more,
                    // so a completion posted after the clear leaves the read
                    // something. (Clearing before every look instead cost a
                    // read(2) per round: half a syscall per round trip under
                    // ping-pong.)
                    crate::sys::eventfd_reset(self.eventfd.as_fd());
                    self.collect() > 0
                };
            if !found {
                // Parked from here on: nobody would submit for us.
                self.driving.set(false);
                return;
            }
            self.driving.set(true);
            let before = REQUEUED.get();
            futures_lite::future::yield_now().await;
            requeued = REQUEUED.get() != before;
        }
    }

    /// Submits what waits, runs the deferred completion work and hands
    /// each completion to its waiter; returns how many there were.
    fn collect(&self) -> usize {
        let mut ring = self.ring.borrow_mut();
        if let Err(e) = enter(&mut ring) {
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::warn!("event ring: collecting completions failed: {e}");
            }
        }
        drop(ring);
        self.dispatch()
    }

    /// [`collect`](Self::collect), but sleeps in this ring for up to
    /// `wait` until a completion comes.
    fn collect_within(&self, wait: std::time::Duration) -> usize {
        let ring = self.ring.borrow_mut();
        let ts = types::Timespec::from(wait);
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
            Err(e) => tracing::warn!("event ring: waiting for completions failed: {e}"),
        }
        drop(ring);
        self.dispatch()
    }

    /// Hands each completion in the queue to its waiter; returns how many
    /// there were.
    fn dispatch(&self) -> usize {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        let mut count = 0;
        for cqe in ring.completion() {
            count += 1;
            let data = cqe.user_data();
            if data & REMOVE_TAG != 0 {
                continue;
            }
            let i = data as usize;
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
            let more = io_uring::cqueue::more(cqe.flags());
            match slot {
                Slot::Multi {
                    waker,
                    armed,
                    fired,
                    hung_up,
                } => {
                    *armed &= more;
                    *fired = true;
                    let res = cqe.result();
                    if res == -libc::EINVAL && self.multishot.replace(false) {
                        tracing::warn!(
                            "event ring: the kernel refused a multishot poll; waits re-arm a one-shot poll each time"
                        );
                    }
                    *hung_up |= res < 0
                        || res & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) as i32 != 0;
                    if let Some(w) = waker.take() {
                        w.wake();
                    }
                }
                Slot::Abandoned if more => {}
                Slot::Abandoned => {
                    *slot = Slot::Free;
                    self.free.borrow_mut().push(i);
                }
                Slot::Waiting(_) => {
                    if let Slot::Waiting(w) = std::mem::replace(slot, Slot::Ready(cqe.result())) {
                        w.wake();
                    }
                }
                Slot::Free | Slot::Ready(_) => {}
            }
        }
        count
    }

    fn alloc(&self, slot: Slot) -> usize {
        let mut slots = self.slots.borrow_mut();
        let i = self.free.borrow_mut().pop().unwrap_or_else(|| {
            slots.push(Slot::Free);
            slots.len() - 1
        });
        slots[i] = slot;
        i
    }

    fn release(&self, i: usize) {
        self.slots.borrow_mut()[i] = Slot::Free;
        self.free.borrow_mut().push(i);
    }

    /// A one-shot POLL_ADD for `events` on `fd` that wakes `waker`.
    fn arm(&self, fd: RawFd, events: i16, waker: &Waker) -> io::Result<usize> {
        let i = self.alloc(Slot::Waiting(waker.clone()));
        let sqe = opcode::PollAdd::new(types::Fd(fd), events as u16 as u32)
            .build()
            .user_data(i as u64);
        if let Err(e) = self.submit(&sqe) {
            self.release(i);
            return Err(e);
        }
        Ok(i)
    }

    /// Runs deferred completion work now (the completions stay queued for
    /// the driver): a cancelled poll lets go of its socket only then, and
    /// the socket must be closed for real when its owner drops it.
    fn run_deferred(&self) {
        let _ = enter(&mut self.ring.borrow_mut());
    }

    fn submit(&self, sqe: &io_uring::squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY: POLL_ADD and ASYNC_CANCEL reference no memory of ours; the
        // fd stays open until the request is removed (see `Readiness`).
        if unsafe { ring.submission().push(sqe) }.is_err() {
            ring.submit()?;
            // SAFETY: as above.
            unsafe { ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("event ring: submission queue full"))?;
        }
        if !self.driving.get() {
            ring.submit()?;
        }
        Ok(())
    }

    /// A one-shot wait for `events` on `fd` in `slot`: arms it at the first
    /// poll, then resolves to the revents once its completion came.
    fn poll_oneshot(
        &self,
        slot: &mut Option<usize>,
        fd: RawFd,
        events: i16,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<i16>> {
        let Some(i) = *slot else {
            *slot = Some(self.arm(fd, events, cx.waker())?);
            return Poll::Pending;
        };
        let res = std::task::ready!(self.poll_slot(i, cx.waker()));
        *slot = None;
        if res < 0 {
            Poll::Ready(Err(io::Error::from_raw_os_error(-res)))
        } else {
            Poll::Ready(Ok(res as i16))
        }
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
            Slot::Free | Slot::Abandoned | Slot::Multi { .. } => Poll::Ready(-libc::ECANCELED),
        }
    }

    /// Gives up a wait: the POLL_ADD is cancelled so that the ring lets go
    /// of the socket before its owner closes it. ASYNC_CANCEL, not
    /// POLL_REMOVE: a poll that has fired but whose completion the ring has
    /// not yet run (DEFER_TASKRUN runs it at the next io_uring_enter) is
    /// owned by that completion, and POLL_REMOVE then answers EALREADY and
    /// leaves it armed, holding the socket open for the ring's life
    /// (measured: sockets that stayed established after their owner closed
    /// them); ASYNC_CANCEL marks it cancelled, and that completion ends it.
    fn cancel(&self, i: usize) {
        let mut slots = self.slots.borrow_mut();
        if let Slot::Ready(_) | Slot::Multi { armed: false, .. } = slots[i] {
            slots[i] = Slot::Free;
            self.free.borrow_mut().push(i);
            return;
        }
        slots[i] = Slot::Abandoned;
        drop(slots);
        let sqe = opcode::AsyncCancel::new(i as u64)
            .build()
            .user_data(REMOVE_TAG | i as u64);
        if let Err(e) = self.submit(&sqe) {
            tracing::warn!("event ring: removing a wait failed: {e}");
        }
    }
}

/// One io_uring_enter that submits every queued SQE and, with GETEVENTS,
/// runs the deferred completion work (DEFER_TASKRUN's, and COOP_TASKRUN's
/// when the kernel flagged some).
fn enter(ring: &mut IoUring) -> io::Result<usize> {
    let queued = ring.submission().len() as u32;
    // SAFETY: the queued SQEs reference no memory of ours (POLL_ADD and
    // POLL_REMOVE); no argument is passed.
    unsafe {
        ring.submitter().enter::<libc::sigset_t>(
            queued,
            0,
            io_uring::EnterFlags::GETEVENTS.bits(),
            None,
        )
    }
}

/// Whether the kernel takes a multishot POLL_ADD (Linux 5.13+): one is armed
/// on the ring's own eventfd, which nothing has signalled yet, and removed
/// again. An older kernel fails it at once with EINVAL.
fn probe_multishot_poll(ring: &IoUring, eventfd: RawFd) -> bool {
    const PROBE: u64 = u64::MAX - 1;
    let add = opcode::PollAdd::new(types::Fd(eventfd), libc::POLLIN as u32)
        .multi(true)
        .build()
        .user_data(PROBE);
    let remove = opcode::PollRemove::new(PROBE)
        .build()
        .user_data(REMOVE_TAG | PROBE);
    // SAFETY: neither entry references memory of ours; the eventfd stays
    // open for the ring's life.
    let pushed = unsafe {
        let mut sq = ring.submission_shared();
        sq.push(&add).is_ok() && sq.push(&remove).is_ok()
    };
    if !pushed || ring.submit_and_wait(2).is_err() {
        return false;
    }
    // SAFETY: only this thread uses the ring yet.
    let refused = unsafe { ring.completion_shared() }
        .filter(|cqe| cqe.user_data() == PROBE && cqe.result() == -libc::EINVAL)
        .count();
    refused == 0
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
        this.ring
            .poll_oneshot(&mut this.slot, this.fd.as_raw_fd(), this.events, cx)
    }
}

impl Drop for Readiness<'_> {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            self.ring.cancel(i);
        }
    }
}

/// A relayed socket's readiness, for as long as this lives: a multishot
/// POLL_ADD(POLLIN) armed at the first wait and kept for the tunnel's life,
/// and a one-shot POLLOUT while a send would block.
///
/// The engines always try the syscall first and wait only after EAGAIN, so
/// no readiness state is kept here: any data that arrives after the EAGAIN
/// raises a new completion, which wakes the waiter. The owner keeps the
/// socket open until the `Watch` is dropped (which removes the polls).
pub struct Watch {
    ring: Rc<EventRing>,
    fd: RawFd,
    read: Option<usize>,
    write: Option<usize>,
}

impl Watch {
    pub fn new(ring: Rc<EventRing>, fd: RawFd) -> Watch {
        Watch {
            ring,
            fd,
            read: None,
            write: None,
        }
    }

    /// After a read found nothing: pending until the socket next reports
    /// readable, an error or a hangup.
    pub fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let i = *self.read.get_or_insert_with(|| {
            self.ring.alloc(Slot::Multi {
                waker: None,
                armed: false,
                fired: false,
                hung_up: false,
            })
        });
        let arm = {
            let mut slots = self.ring.slots.borrow_mut();
            let Slot::Multi { waker, armed, .. } = &mut slots[i] else {
                return Poll::Ready(Err(io::Error::other("event ring: watch slot lost")));
            };
            match waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *waker = Some(cx.waker().clone()),
            }
            !std::mem::replace(armed, true)
        };
        if arm {
            let events = (libc::POLLIN | libc::POLLRDHUP) as u32;
            let sqe = opcode::PollAdd::new(types::Fd(self.fd), events)
                .multi(self.ring.multishot.get())
                .build()
                .user_data(i as u64);
            if let Err(e) = self.ring.submit(&sqe) {
                if let Slot::Multi { armed, .. } = &mut self.ring.slots.borrow_mut()[i] {
                    *armed = false;
                }
                return Poll::Ready(Err(e));
            }
        }
        Poll::Pending
    }

    /// For loops that drain a socket to EAGAIN between waits: ready once
    /// the socket has reported readiness since the last ready (the first
    /// call arms the poll, which reports at once if data is waiting).
    pub fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.take_reported() {
            return Poll::Ready(Ok(()));
        }
        self.poll_readable(cx)
    }

    /// Whether the socket reported readiness since the last call; no
    /// before the first wait armed the poll.
    pub fn take_reported(&mut self) -> bool {
        let Some(i) = self.read else {
            return false;
        };
        match &mut self.ring.slots.borrow_mut()[i] {
            Slot::Multi { fired, .. } => std::mem::take(fired),
            _ => true,
        }
    }

    /// Whether the socket ever reported the peer's FIN, an error or a
    /// hangup: then a short read no longer means an empty socket (the end
    /// of stream may be queued behind the data).
    pub fn hung_up(&self) -> bool {
        self.read.is_some_and(|i| {
            matches!(
                self.ring.slots.borrow()[i],
                Slot::Multi { hung_up: true, .. }
            )
        })
    }

    /// After a send would block: pending until the socket reports
    /// writable, an error or a hangup.
    pub fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ring
            .poll_oneshot(&mut self.write, self.fd, libc::POLLOUT, cx)
            .map_ok(|_| ())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut removed = false;
        for i in [self.read.take(), self.write.take()].into_iter().flatten() {
            let armed = !matches!(
                self.ring.slots.borrow()[i],
                Slot::Ready(_) | Slot::Multi { armed: false, .. }
            );
            self.ring.cancel(i);
            removed |= armed;
        }
        if removed {
            self.ring.run_deferred();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::task::{Context, Waker};

    use super::*;
    use crate::config::EventRingSetup;

    /// Each setup the kernel accepts, on an executor of its own.
    fn on_each_setup(test: impl Fn(Rc<EventRing>) + Clone + Send + 'static) {
        for setup in [
            EventRingSetup::DeferTaskrun,
            EventRingSetup::CoopTaskrun,
            EventRingSetup::Plain,
        ] {
            let test = test.clone();
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .expect("executor")
                .run(async move {
                    match EventRing::start(setup, true, std::time::Duration::ZERO) {
                        Ok(ring) => test(ring),
                        Err(e) => eprintln!("{setup:?} not available here: {e}"),
                    }
                });
        }
    }

    /// A task that gives up its turn with work left (`yield_now`) while the
    /// driver is busy is queued behind the driver: the driver must not then
    /// sleep in the ring for its linger (here 50 ms) with that task waiting.
    /// Twenty rounds of a readiness report and two yields take
    /// milliseconds; held back, they take a linger each, a second in all.
    #[test]
    fn the_driver_does_not_linger_while_a_yielded_task_waits() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(async {
                let linger = std::time::Duration::from_millis(50);
                let ring = EventRing::start(EventRingSetup::Auto, true, linger).expect("a ring");
                let (ours, peer) = UnixStream::pair().expect("socketpair");
                ours.set_nonblocking(true).expect("non-blocking");
                let mut watch = Watch::new(ring.clone(), ours.as_raw_fd());
                let start = std::time::Instant::now();
                for _ in 0..20 {
                    // A report wakes the driver: it is busy when the yields
                    // come.
                    (&peer).write_all(b"x").expect("write");
                    std::future::poll_fn(|cx| watch.poll_read_ready(cx))
                        .await
                        .expect("readable");
                    (&ours).read_exact(&mut [0u8; 1]).expect("read");
                    super::yield_now().await;
                    super::yield_now().await;
                }
                let took = start.elapsed();
                assert!(
                    took < linger * 10,
                    "20 rounds took {took:?}: the driver slept in the ring while a task waited to run"
                );
            });
    }

    /// A watch dropped while its poll has fired but the ring has not yet
    /// run that completion (with DEFER_TASKRUN it waits for the next
    /// io_uring_enter) must still let go of the socket: POLL_REMOVE
    /// answers EALREADY then and leaves a multishot poll armed, holding the
    /// socket open after its owner closed it, so the peer never sees the
    /// close.
    #[test]
    fn a_watch_dropped_just_after_its_poll_fired_lets_the_socket_close() {
        on_each_setup(|ring| {
            let (ours, peer) = UnixStream::pair().expect("socketpair");
            ours.set_nonblocking(true).expect("non-blocking");
            peer.set_nonblocking(true).expect("non-blocking");
            let mut watch = Watch::new(ring.clone(), ours.as_raw_fd());
            let mut cx = Context::from_waker(Waker::noop());
            assert!(watch.poll_readable(&mut cx).is_pending());
            // The poll fires; its completion is now pending in the ring.
            (&peer).write_all(b"x").expect("write");
            drop(watch);
            drop(ours);
            for _ in 0..3 {
                ring.run_deferred();
                ring.collect();
            }
            // Closed with our byte unread: a reset, not an end of stream.
            let mut buf = [0u8; 4];
            let read = (&peer).read(&mut buf);
            assert!(
                matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
                "the peer should see the close, got {read:?}"
            );
        });
    }
}
