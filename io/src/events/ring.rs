//! The core's own io_uring (io-uring crate): where a core sleeps, and
//! everything that can wake it.
//!
//! A core sleeps in exactly one place, this ring. Its driver task (one per
//! core) looks for completions, fires due timers ([`super::timer`]), and,
//! when neither found anything and no other task ran since its last look,
//! sleeps in `io_uring_enter` until the next completion or the nearest
//! timer deadline. Everything that can wake a core arrives here: socket
//! readiness (multishot POLL_ADD), timers (the sleep's timeout), and
//! off-core work ([`super::offcore`]: its helpers write an eventfd that a
//! poll in this ring watches). glommio stays the task executor and pins
//! the thread, but its reactor never parks the core: the driver is always
//! either running or asleep in this ring, so glommio always has a task to
//! run (glommio's own I/O is polled, without sleeping, at its preemption
//! points, and nothing on a core waits on it). Before this, a core parked
//! in glommio and this ring woke it through an eventfd read: each idle to
//! busy hand-over cost two rings and an interrupt, and halved single-stream
//! bulk (docs/ARCHITECTURE.md, "One sleep point per core").
//!
//! glommio 0.9 creates its rings without COOP_TASKRUN or DEFER_TASKRUN, so
//! every completion raised from another CPU sends our core an IPI
//! (`../shared/DESIGN-NOTES.md` has the measurements). This ring is created
//! with SINGLE_ISSUER + DEFER_TASKRUN where the kernel has it (completion
//! work then runs only when this core asks for it, and a sleeping core is
//! woken only once enough completions are queued to end its wait), else
//! COOP_TASKRUN + TASKRUN_FLAG, else plain. Nothing here crosses cores:
//! each core makes its own ring on its own thread.
//!
//! Its users: the connect path (POLLOUT | POLLERR on a connecting socket,
//! so an ICMP error queued by IP_RECVERR is seen at once), and every
//! listener, TCP connection (handshake and relay: [`super::Stream`]) and
//! UDP association socket, each with a [`Watch`]: one multishot
//! POLL_ADD(POLLIN) for the socket's life (re-armed only when the kernel
//! ends it) and a one-shot POLLOUT only while a send would block. Waits
//! armed by tasks are submitted by the driver's next look, so a busy core
//! submits and collects with one io_uring_enter per round.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use super::offcore::OffCore;
use super::timer::Timers;

/// How a core's ring is set up (coresocks' `--event-ring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingSetup {
    /// The best the kernel accepts: defer-taskrun, else coop-taskrun, else
    /// plain.
    Auto,
    /// SINGLE_ISSUER + DEFER_TASKRUN (Linux 6.1+): completions are only
    /// processed when this thread enters the kernel to wait.
    DeferTaskrun,
    /// COOP_TASKRUN + TASKRUN_FLAG (Linux 5.19+).
    CoopTaskrun,
    /// Default ring flags: completions may interrupt the core.
    Plain,
    /// No ring: [`EventRing::start`] refuses, and the caller waits through
    /// glommio instead.
    Off,
}

/// Marks the user_data of cancel requests (ASYNC_CANCEL, and the start-up
/// probe's POLL_REMOVE), whose completions carry no slot.
const REMOVE_TAG: u64 = 1 << 63;

/// The user_data of the poll on the off-core inbox's eventfd.
const INBOX_TAG: u64 = (1 << 63) - 2;

/// Submission queue size. A wait takes one entry until the driver's next
/// look submits it, so this bounds what one round of tasks arms, not the
/// number of waits (a full queue is submitted at once).
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
    /// This thread's ring, for the timers and off-core work of the tasks
    /// that run on it.
    static CURRENT: RefCell<Weak<EventRing>> = const { RefCell::new(Weak::new()) };
    /// How many times a task of this thread (other than the driver) was
    /// polled or woken: the driver sleeps only if neither happened since
    /// its last look.
    static ACTIVITY: Cell<u64> = const { Cell::new(0) };
    /// The executor's root future has finished: the driver stops, so that
    /// glommio's run queue empties and glommio sees the root done (it looks
    /// only when no task is left to run, and the driver is always one).
    static ROOT_DONE: Cell<bool> = const { Cell::new(false) };
}

fn note_activity() {
    ACTIVITY.set(ACTIVITY.get().wrapping_add(1));
}

/// This thread's ring, if it has one.
pub(super) fn current() -> Option<Rc<EventRing>> {
    CURRENT.with(|c| c.borrow().upgrade())
}

/// Every task of a thread with a ring must be spawned through here (or
/// wrapped in [`counted`]): the driver must know whether any task may be
/// runnable before it sleeps, and glommio's run queue cannot be asked. A
/// task the count does not see could wait behind a sleeping driver until
/// the next completion or deadline.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> glommio::Task<T> {
    glommio::spawn_local(counted(future))
}

/// `future`, counting each of its polls and each wake-up of it for this
/// thread's driver (see [`spawn`]); an executor's root future takes
/// [`root`]. Wakes
/// are counted as well as polls because glommio wakes some tasks without
/// running a counted poll first: the waiter of a task it cancels, say.
pub fn counted<F: Future>(future: F) -> Counted<F> {
    Counted {
        future,
        waker: None,
    }
}

/// An executor's root future on a thread with a ring: [`counted`], and
/// when it finishes the ring's driver stops, so that the executor can end.
pub async fn root<F: Future>(future: F) -> F::Output {
    let out = counted(future).await;
    ROOT_DONE.set(true);
    out
}

pub struct Counted<F> {
    future: F,
    /// glommio's waker of this task and ours around it, made at the first
    /// poll (a task's waker does not change).
    waker: Option<(Waker, Waker)>,
}

/// A task's waker that notes the wake-up before passing it on.
struct CountingWaker(Waker);

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        note_activity();
        self.0.wake_by_ref();
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        note_activity();
        // SAFETY: structural pinning: `future` is never moved out of
        // `self`; `waker` is not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let waker = match &this.waker {
            Some((theirs, ours)) if theirs.will_wake(cx.waker()) => ours,
            _ => {
                let ours = Waker::from(std::sync::Arc::new(CountingWaker(cx.waker().clone())));
                &this.waker.insert((cx.waker().clone(), ours)).1
            }
        };
        // SAFETY: as above.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        future.poll(&mut Context::from_waker(waker))
    }
}

pub struct EventRing {
    ring: RefCell<IoUring>,
    /// Whether watches arm multishot polls: asked for, and accepted by the
    /// kernel (probed at start; a later EINVAL turns it off too).
    multishot: Cell<bool>,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    setup: &'static str,
    pub(super) timers: RefCell<Timers>,
    pub(super) offcore: OffCore,
    /// Whether the poll on the off-core inbox is armed (a one-shot poll,
    /// or a multishot one the kernel ended, must be armed again).
    inbox_armed: Cell<bool>,
}

impl EventRing {
    /// Creates this thread's ring with the best setup the kernel accepts
    /// (or the one asked for), its off-core threads (`helpers`: the
    /// resolver's and the hashers', see [`super::offcore::Pool`]), and its
    /// driver task. Must run on the core's own executor thread: with
    /// SINGLE_ISSUER only this thread may submit, and the timers and
    /// off-core work of this thread's tasks go to this ring from now on.
    pub fn start(
        asked: RingSetup,
        multishot: bool,
        helpers: [usize; 2],
    ) -> io::Result<Rc<EventRing>> {
        let (ring, setup) = create_ring(asked)?;
        if !ring.params().is_feature_ext_arg() {
            // A sleep bounded by the nearest timer needs a timeout on
            // io_uring_enter (Linux 5.11).
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's io_uring cannot wait with a timeout (IORING_FEAT_EXT_ARG, Linux 5.11)",
            ));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::PollAdd::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel's io_uring lacks POLL_ADD",
            ));
        }
        let name = std::thread::current().name().unwrap_or("core").to_owned();
        let offcore = OffCore::start(helpers, &name)?;
        let multishot = multishot && probe_multishot_poll(&ring, offcore.inbox.eventfd.as_raw_fd());
        let this = Rc::new(EventRing {
            ring: RefCell::new(ring),
            multishot: Cell::new(multishot),
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            setup,
            timers: RefCell::new(Timers::default()),
            offcore,
            inbox_armed: Cell::new(false),
        });
        this.arm_inbox()?;
        CURRENT.with(|c| *c.borrow_mut() = Rc::downgrade(&this));
        ROOT_DONE.set(false);
        // The driver is not counted: its own polls say nothing about the
        // other tasks.
        glommio::spawn_local(drive(Rc::downgrade(&this))).detach();
        Ok(this)
    }

    /// Which setup the kernel gave us, for the start-up log line.
    pub fn setup(&self) -> String {
        let polls = if self.multishot.get() {
            "multishot polls"
        } else {
            "one-shot polls"
        };
        format!("{}, {polls}, the core sleeps only here", self.setup)
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

    /// Sleeps in this ring until a completion comes or `deadline` passes,
    /// submitting what waits first.
    fn sleep(&self, deadline: Option<Instant>) {
        let ring = self.ring.borrow_mut();
        let result = match deadline {
            Some(deadline) => {
                let ts = types::Timespec::from(deadline.saturating_duration_since(Instant::now()));
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
            None => ring.submitter().submit_and_wait(1),
        };
        match result {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR)) => {}
            Err(e) => tracing::warn!("event ring: waiting for completions failed: {e}"),
        }
    }

    /// Hands each completion in the queue to its waiter; returns how many
    /// there were.
    fn dispatch(&self) -> usize {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        let mut count = 0;
        let mut inbox = false;
        for cqe in ring.completion() {
            count += 1;
            let data = cqe.user_data();
            let more = io_uring::cqueue::more(cqe.flags());
            if data == INBOX_TAG {
                inbox = true;
                if !more {
                    self.inbox_armed.set(false);
                }
                continue;
            }
            if data & REMOVE_TAG != 0 {
                continue;
            }
            let i = data as usize;
            let Some(slot) = slots.get_mut(i) else {
                continue;
            };
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
        drop((ring, slots));
        if inbox {
            self.offcore.collect();
            if !self.inbox_armed.get() {
                if let Err(e) = self.arm_inbox() {
                    tracing::warn!("event ring: watching for off-core results failed: {e}");
                }
            }
        }
        count
    }

    /// Arms the poll on the off-core inbox's eventfd.
    fn arm_inbox(&self) -> io::Result<()> {
        let sqe = opcode::PollAdd::new(
            types::Fd(self.offcore.inbox.eventfd.as_raw_fd()),
            libc::POLLIN as u32,
        )
        .multi(self.multishot.get())
        .build()
        .user_data(INBOX_TAG);
        self.submit(&sqe)?;
        self.inbox_armed.set(true);
        Ok(())
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

/// The core's driver: looks for completions and due timers, lets the
/// tasks they woke run (a yield), and sleeps in the ring when a look found
/// nothing and no other task was polled or woken since the last one. Only
/// then is nothing on this core runnable: a task woken meanwhile is queued
/// behind the driver, and the count says so.
async fn drive(ring: Weak<EventRing>) {
    // glommio runs a task it spawns at once, inside the spawner's poll
    // (here the ring's start): never sleep there, but from the run queue.
    futures_lite::future::yield_now().await;
    let mut seen = ACTIVITY.get();
    loop {
        if ROOT_DONE.get() {
            return;
        }
        let Some(ring) = ring.upgrade() else {
            return;
        };
        let found = ring.collect();
        let fired = ring.timers.borrow_mut().fire(Instant::now());
        if found == 0 && fired == 0 && ACTIVITY.get() == seen {
            let deadline = ring.timers.borrow_mut().next_deadline();
            ring.sleep(deadline);
            continue;
        }
        drop(ring);
        seen = ACTIVITY.get();
        futures_lite::future::yield_now().await;
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
fn create_ring(asked: RingSetup) -> io::Result<(IoUring, &'static str)> {
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
        RingSetup::Auto => defer().or_else(|_| coop()).or_else(|_| plain()),
        RingSetup::DeferTaskrun => defer(),
        RingSetup::CoopTaskrun => coop(),
        RingSetup::Plain => plain(),
        RingSetup::Off => Err(io::Error::other("event ring turned off")),
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

impl Watch {
    /// Removes the multishot POLLIN, for a socket whose bytes the kernel
    /// relays from now on: every segment would otherwise raise a
    /// completion on the core. A later `poll_readable` arms it again.
    pub fn stop_reading(&mut self) {
        let read = self.read.take();
        self.remove([read, None]);
    }

    fn remove(&self, slots: [Option<usize>; 2]) {
        let mut removed = false;
        for i in slots.into_iter().flatten() {
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

impl Drop for Watch {
    fn drop(&mut self) {
        let slots = [self.read.take(), self.write.take()];
        self.remove(slots);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::task::{Context, Waker};

    use super::*;

    /// Each setup the kernel accepts, on an executor of its own.
    fn on_each_setup(test: impl Fn(Rc<EventRing>) + Clone + Send + 'static) {
        for setup in [
            RingSetup::DeferTaskrun,
            RingSetup::CoopTaskrun,
            RingSetup::Plain,
        ] {
            let test = test.clone();
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .make()
                .expect("executor")
                .run(root(async move {
                    match EventRing::start(setup, true, [1, 0]) {
                        Ok(ring) => test(ring),
                        Err(e) => eprintln!("{setup:?} not available here: {e}"),
                    }
                }));
        }
    }

    /// Runs `test` on an executor whose thread has a ring (the default
    /// setup), its root future counted as the runtime's is.
    fn on_a_ring<F: Future<Output = ()> + 'static>(
        test: impl FnOnce(Rc<EventRing>) -> F + Send + 'static,
    ) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(root(async move {
                let ring = EventRing::start(RingSetup::Auto, true, [1, 0]).expect("a ring");
                test(ring).await
            }));
    }

    /// A one-shot flag a task waits on, as a session waits on its stop
    /// signal: woken by another task, never by the ring.
    #[derive(Default)]
    struct Flag {
        raised: std::cell::Cell<bool>,
        waker: std::cell::Cell<Option<Waker>>,
    }

    impl Flag {
        fn raise(&self) {
            self.raised.set(true);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }

        async fn wait(&self) {
            std::future::poll_fn(|cx| {
                if self.raised.get() {
                    return std::task::Poll::Ready(());
                }
                self.waker.set(Some(cx.waker().clone()));
                std::task::Poll::Pending
            })
            .await
        }
    }

    /// A task woken by another task (not by the ring) must run before the
    /// driver sleeps: the driver sees from the poll count that a task ran.
    /// Held back, the woken task would wait for the next completion or
    /// deadline; the only deadline here is the 2 s watchdog.
    #[test]
    fn a_task_woken_by_another_task_runs_before_the_core_sleeps() {
        on_a_ring(|ring| async move {
            let (ours, peer) = UnixStream::pair().expect("socketpair");
            ours.set_nonblocking(true).expect("non-blocking");
            let signal = Rc::new(Flag::default());
            let woken = spawn({
                let signal = signal.clone();
                async move { signal.wait().await }
            });
            let waker_task = spawn({
                let signal = signal.clone();
                async move {
                    let mut watch = Watch::new(ring.clone(), ours.as_raw_fd());
                    std::future::poll_fn(|cx| watch.poll_read_ready(cx))
                        .await
                        .expect("readable");
                    signal.raise();
                }
            });
            let _watchdog = spawn(super::super::timer::sleep(std::time::Duration::from_secs(
                2,
            )));
            super::super::timer::sleep(std::time::Duration::from_millis(10)).await;
            let start = Instant::now();
            (&peer).write_all(b"x").expect("write");
            waker_task.await;
            woken.await;
            let took = start.elapsed();
            assert!(
                took < std::time::Duration::from_millis(500),
                "the woken task ran after {took:?}: the driver slept while it was runnable"
            );
        });
    }

    /// A core asleep in its ring wakes for its nearest timer, and for
    /// off-core work that finishes, with nothing else to wake it.
    #[test]
    fn a_sleeping_core_wakes_for_its_timers_and_off_core_work() {
        on_a_ring(|_ring| async move {
            let start = Instant::now();
            super::super::timer::sleep(std::time::Duration::from_millis(30)).await;
            let slept = start.elapsed();
            assert!(
                slept >= std::time::Duration::from_millis(30)
                    && slept < std::time::Duration::from_millis(500),
                "a 30 ms timer fired after {slept:?}"
            );
            let start = Instant::now();
            let answer = super::super::offcore::blocking(|| {
                std::thread::sleep(std::time::Duration::from_millis(30));
                42
            })
            .await
            .expect("queued");
            let took = start.elapsed();
            assert_eq!(answer, 42);
            assert!(
                took < std::time::Duration::from_millis(500),
                "30 ms of off-core work came back after {took:?}"
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
