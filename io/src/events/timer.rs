//! Timers that wake a core through its event ring: a per-core heap of
//! deadlines that the ring's driver checks after every look and whose
//! nearest entry bounds the driver's one sleep (`io_uring_enter` with a
//! timeout). glommio's timers live in glommio's reactor, which runs only
//! when glommio gets the thread back; a core that sleeps in its ring would
//! fire them late. Without a ring on this thread (`--event-ring off`, or
//! the kernel gave none) these are glommio's timers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::ring::EventRing;

/// One armed deadline of this core's heap.
struct Entry {
    deadline: Instant,
    /// Bumped when the slot is freed, so heap entries of an earlier owner
    /// are recognised and skipped.
    generation: u32,
    waker: Option<Waker>,
    live: bool,
}

/// The deadlines of one core. Heap entries are not removed when a timer is
/// reset or dropped (that would be a search); they are skipped when they
/// reach the top, and the heap is rebuilt when stale ones outnumber the
/// live ones.
#[derive(Default)]
pub(super) struct Timers {
    entries: Vec<Entry>,
    free: Vec<u32>,
    heap: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    live: usize,
}

impl Timers {
    fn arm(&mut self, deadline: Instant, waker: &Waker) -> u32 {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    deadline,
                    generation: 0,
                    waker: None,
                    live: false,
                });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[i as usize];
        e.deadline = deadline;
        e.waker = Some(waker.clone());
        e.live = true;
        self.live += 1;
        self.heap.push(Reverse((deadline, i, e.generation)));
        i
    }

    fn update(&mut self, i: u32, deadline: Instant, waker: &Waker) {
        let e = &mut self.entries[i as usize];
        match &e.waker {
            Some(w) if w.will_wake(waker) => {}
            _ => e.waker = Some(waker.clone()),
        }
        if e.deadline != deadline {
            e.deadline = deadline;
            self.heap.push(Reverse((deadline, i, e.generation)));
            self.compact();
        }
    }

    fn disarm(&mut self, i: u32) {
        let e = &mut self.entries[i as usize];
        e.live = false;
        e.waker = None;
        e.generation = e.generation.wrapping_add(1);
        self.live -= 1;
        self.free.push(i);
        self.compact();
    }

    /// Whether a heap entry still speaks for its slot.
    fn current(&self, deadline: Instant, i: u32, generation: u32) -> bool {
        let e = &self.entries[i as usize];
        e.live && e.generation == generation && e.deadline == deadline
    }

    fn compact(&mut self) {
        if self.heap.len() > 64 + 4 * self.live {
            let entries = &self.entries;
            self.heap.retain(|Reverse((d, i, g))| {
                let e = &entries[*i as usize];
                e.live && e.generation == *g && e.deadline == *d
            });
        }
    }

    /// Wakes every timer whose deadline is at or before `now`; returns how
    /// many.
    pub(super) fn fire(&mut self, now: Instant) -> usize {
        let mut fired = 0;
        while let Some(&Reverse((deadline, i, generation))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if self.current(deadline, i, generation) {
                if let Some(w) = self.entries[i as usize].waker.take() {
                    w.wake();
                    fired += 1;
                }
            }
        }
        fired
    }

    /// The nearest armed deadline.
    pub(super) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((deadline, i, generation))) = self.heap.peek() {
            if self.current(deadline, i, generation) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }
}

/// A deadline that can be moved, polled as a future (ready once the
/// deadline has passed; pending again after a reset): the relay's idle
/// clock, the connect race's attempt delay, bandwidth refills.
pub struct Timer(Inner);

enum Inner {
    Ring {
        ring: Rc<EventRing>,
        deadline: Instant,
        slot: Option<u32>,
    },
    Glommio(glommio::timer::Timer),
}

impl Timer {
    /// Fires `after` from now.
    pub fn new(after: Duration) -> Timer {
        Timer(match super::ring::current() {
            Some(ring) => Inner::Ring {
                ring,
                deadline: Instant::now() + after,
                slot: None,
            },
            None => Inner::Glommio(glommio::timer::Timer::new(after)),
        })
    }

    /// Fires `after` from now instead.
    pub fn reset(&mut self, after: Duration) {
        match &mut self.0 {
            Inner::Ring { deadline, .. } => *deadline = Instant::now() + after,
            Inner::Glommio(t) => t.reset(after),
        }
    }
}

impl Future for Timer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.get_mut().0 {
            Inner::Glommio(t) => Pin::new(t).poll(cx).map(|_| ()),
            Inner::Ring {
                ring,
                deadline,
                slot,
            } => {
                let mut timers = ring.timers.borrow_mut();
                if Instant::now() >= *deadline {
                    if let Some(i) = slot.take() {
                        timers.disarm(i);
                    }
                    return Poll::Ready(());
                }
                match *slot {
                    Some(i) => timers.update(i, *deadline, cx.waker()),
                    None => *slot = Some(timers.arm(*deadline, cx.waker())),
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Inner::Ring {
            ring,
            slot: Some(i),
            ..
        } = &self.0
        {
            ring.timers.borrow_mut().disarm(*i);
        }
    }
}

/// Waits for `after`.
pub async fn sleep(after: Duration) {
    Timer::new(after).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noop() -> Waker {
        Waker::noop().clone()
    }

    #[test]
    fn fires_in_deadline_order_and_skips_reset_and_dropped_entries() {
        let mut t = Timers::default();
        let now = Instant::now();
        let a = t.arm(now + Duration::from_millis(30), &noop());
        let b = t.arm(now + Duration::from_millis(10), &noop());
        let c = t.arm(now + Duration::from_millis(20), &noop());
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(10)));
        t.disarm(b);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(20)));
        t.update(c, now + Duration::from_millis(40), &noop());
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(30)));
        assert_eq!(t.fire(now + Duration::from_millis(35)), 1, "only a");
        t.disarm(a);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(40)));
        assert_eq!(t.fire(now + Duration::from_millis(40)), 1, "then c");
        t.disarm(c);
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.live, 0);
    }

    #[test]
    fn a_freed_slot_reused_ignores_its_old_heap_entries() {
        let mut t = Timers::default();
        let now = Instant::now();
        let a = t.arm(now + Duration::from_millis(5), &noop());
        t.disarm(a);
        let b = t.arm(now + Duration::from_millis(50), &noop());
        assert_eq!(a, b, "the slot is reused");
        assert_eq!(t.fire(now + Duration::from_millis(10)), 0);
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(50)));
    }

    #[test]
    fn many_resets_keep_the_heap_bounded() {
        let mut t = Timers::default();
        let now = Instant::now();
        let a = t.arm(now, &noop());
        for ms in 1..10_000 {
            t.update(a, now + Duration::from_millis(ms), &noop());
        }
        assert!(t.heap.len() <= 64 + 4 + 1, "{} entries", t.heap.len());
    }
}
