//! Work that must block (getaddrinfo, an Argon2 hash, a GSS-API step),
//! run on helper threads of the core's own, with the answer delivered
//! through the core's event ring: the helper stores the result, notes the
//! job as done in the core's inbox and writes the inbox's eventfd, which a
//! multishot poll in the ring reports. A core asleep in its ring wakes for
//! it at once; glommio's blocking pool would only tell glommio's reactor,
//! which a core asleep in its ring does not look at.
//!
//! Each core has two pools: the resolver's (getaddrinfo, GSS-API steps)
//! and the hashers' (Argon2), so a flood of password checks cannot delay
//! a name lookup, and each has its own bounded queue.
//!
//! Without a ring on this thread the work goes to glommio's pool.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

/// The helper pools of a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Name resolution and GSS-API steps: short waits, many at once.
    Resolver,
    /// Argon2 password checks: tens of milliseconds of CPU each.
    Hashing,
}

impl Pool {
    /// Jobs waiting for a helper, per core: beyond this a new job is
    /// refused at once rather than queued behind seconds of work. A hash
    /// costs tens of milliseconds, so its queue is short.
    fn queue(self) -> usize {
        match self {
            Pool::Resolver => 4096,
            Pool::Hashing => 32,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Pool::Resolver => "blk",
            Pool::Hashing => "hash",
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// What the helpers share with the core: the ids of finished jobs and the
/// eventfd that says there are some.
pub(super) struct Inbox {
    done: Mutex<Vec<u32>>,
    pub(super) eventfd: OwnedFd,
}

impl Inbox {
    fn deliver(&self, id: u32) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push(id);
        if let Err(e) = crate::sys::eventfd_signal(self.eventfd.as_fd()) {
            tracing::warn!("off-core work: telling the core failed: {e}");
        }
    }
}

/// One core's helpers and the wakers of its tasks that wait on them.
pub(super) struct OffCore {
    /// By [`Pool`]; `None` for a pool of no threads.
    jobs: [Option<SyncSender<Job>>; 2],
    pub(super) inbox: Arc<Inbox>,
    jobs_by_id: RefCell<Vec<JobSlot>>,
    free: RefCell<Vec<u32>>,
}

/// A job id's state on the core. A delivery may name an id whose slot has
/// moved on (its waiter gave up and the id went to another job): it then
/// wakes that job for nothing, which re-checks its own result and waits on.
enum JobSlot {
    Free,
    Waiting(Option<Waker>),
    /// Its waiter gave up before the helper delivered: the id is freed when
    /// the delivery comes.
    Abandoned,
}

impl OffCore {
    /// `threads`: the resolver's (at least one) and the hashers' (none
    /// refuses every hashing job).
    pub(super) fn start(threads: [usize; 2], name: &str) -> io::Result<OffCore> {
        let mut jobs = [None, None];
        for (pool, count) in [
            (Pool::Resolver, threads[0].max(1)),
            (Pool::Hashing, threads[1]),
        ] {
            if count == 0 {
                continue;
            }
            let (sender, queue) = sync_channel::<Job>(pool.queue());
            let queue = Arc::new(Mutex::new(queue));
            for n in 0..count {
                let queue = queue.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{}{n}", pool.name()))
                    .spawn(move || helper(&queue))?;
            }
            jobs[pool as usize] = Some(sender);
        }
        Ok(OffCore {
            jobs,
            inbox: Arc::new(Inbox {
                done: Mutex::new(Vec::new()),
                eventfd: crate::sys::eventfd()?,
            }),
            jobs_by_id: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
        })
    }

    /// After the inbox's eventfd reported: wakes the task of every job
    /// that finished. The count is cleared before the ids are taken, so an
    /// id delivered after the take raises a new report.
    pub(super) fn collect(&self) {
        crate::sys::eventfd_reset(self.inbox.eventfd.as_fd());
        let done = std::mem::take(&mut *self.inbox.done.lock().unwrap_or_else(|p| p.into_inner()));
        let mut slots = self.jobs_by_id.borrow_mut();
        for id in done {
            match slots.get_mut(id as usize) {
                Some(JobSlot::Waiting(w)) => {
                    if let Some(w) = w.take() {
                        w.wake();
                    }
                }
                Some(slot @ JobSlot::Abandoned) => {
                    *slot = JobSlot::Free;
                    self.free.borrow_mut().push(id);
                }
                Some(JobSlot::Free) | None => {}
            }
        }
    }

    fn submit<T: Send + 'static>(
        &self,
        pool: Pool,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<(u32, Arc<Mutex<Option<T>>>)> {
        let Some(jobs) = &self.jobs[pool as usize] else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this core has no helpers of that kind",
            ));
        };
        let id = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut slots = self.jobs_by_id.borrow_mut();
            slots.push(JobSlot::Free);
            (slots.len() - 1) as u32
        });
        self.jobs_by_id.borrow_mut()[id as usize] = JobSlot::Waiting(None);
        let result = Arc::new(Mutex::new(None));
        let (cell, inbox) = (result.clone(), self.inbox.clone());
        let job: Job = Box::new(move || {
            let value = work();
            *cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
            inbox.deliver(id);
        });
        match jobs.try_send(job) {
            Ok(()) => Ok((id, result)),
            Err(e) => {
                self.release(id);
                Err(match e {
                    TrySendError::Full(_) => io::Error::new(
                        io::ErrorKind::WouldBlock,
                        "the core's off-core queue is full",
                    ),
                    TrySendError::Disconnected(_) => {
                        io::Error::other("the core's off-core helpers are gone")
                    }
                })
            }
        }
    }
}

impl OffCore {
    fn release(&self, id: u32) {
        self.jobs_by_id.borrow_mut()[id as usize] = JobSlot::Free;
        self.free.borrow_mut().push(id);
    }
}

fn helper(queue: &Mutex<Receiver<Job>>) {
    loop {
        let job = match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(job) => job,
            // The core is gone.
            Err(_) => return,
        };
        job();
    }
}

/// Runs `work` off the core on the resolver's helpers; resolves to its
/// result. `Err` only when the core's queue is full (or its helpers are
/// gone): the caller refuses what asked for the work.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    blocking_on(Pool::Resolver, work).await
}

/// [`blocking`] on the helpers of `pool`.
pub async fn blocking_on<T: Send + 'static>(
    pool: Pool,
    work: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let Some(ring) = super::ring::current() else {
        return Ok(glommio::executor().spawn_blocking(work).await);
    };
    let (id, result) = ring.offcore.submit(pool, work)?;
    Ok(Pending {
        ring,
        id,
        result,
        done: false,
    }
    .await)
}

struct Pending<T> {
    ring: Rc<super::EventRing>,
    id: u32,
    result: Arc<Mutex<Option<T>>>,
    done: bool,
}

impl<T> Future for Pending<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let this = self.get_mut();
        let offcore = &this.ring.offcore;
        if let Some(value) = this.result.lock().unwrap_or_else(|p| p.into_inner()).take() {
            this.done = true;
            offcore.release(this.id);
            return Poll::Ready(value);
        }
        if let JobSlot::Waiting(w) = &mut offcore.jobs_by_id.borrow_mut()[this.id as usize] {
            match w {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => *w = Some(cx.waker().clone()),
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for Pending<T> {
    /// A waiter that gives up (a resolve timeout) keeps its id taken until
    /// the helper delivers, unless it already has.
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let offcore = &self.ring.offcore;
        if self
            .result
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            offcore.release(self.id);
        } else {
            offcore.jobs_by_id.borrow_mut()[self.id as usize] = JobSlot::Abandoned;
        }
    }
}
