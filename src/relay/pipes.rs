use std::cell::{Cell, RefCell};

use crate::sys::Pipe;

/// A per-core pool of pipes for the splice engine.
///
/// A direction holds a pipe only while bytes are in it, so the pool serves
/// the tunnels that are moving data now, not every open tunnel. `max`
/// bounds the pipes this core has at once (two descriptors each); past it,
/// or when pipe(2) fails (EMFILE), `take` returns `None` and the direction
/// copies instead: a tunnel never fails for want of a pipe.
pub(crate) struct PipePool {
    size: usize,
    max: usize,
    /// Pipes in existence (handed out or free).
    live: Cell<usize>,
    free: RefCell<Vec<Pipe>>,
    /// Times `take` found no pipe (metrics).
    pub misses: Cell<u64>,
    warned: Cell<bool>,
}

impl PipePool {
    pub(crate) fn new(size: usize, max: usize) -> PipePool {
        PipePool {
            size,
            max,
            live: Cell::new(0),
            free: RefCell::new(Vec::new()),
            misses: Cell::new(0),
            warned: Cell::new(false),
        }
    }

    /// Bytes one splice may move into a pipe.
    pub(crate) fn pipe_size(&self) -> usize {
        self.size
    }

    pub(crate) fn take(&self) -> Option<Pipe> {
        if let Some(p) = self.free.borrow_mut().pop() {
            return Some(p);
        }
        if self.live.get() >= self.max {
            self.misses.set(self.misses.get() + 1);
            return None;
        }
        match Pipe::new(self.size) {
            Ok(p) => {
                self.live.set(self.live.get() + 1);
                Some(p)
            }
            Err(e) => {
                self.misses.set(self.misses.get() + 1);
                if !self.warned.replace(true) {
                    tracing::warn!("cannot create a pipe for splicing ({e}); copying instead");
                }
                None
            }
        }
    }

    /// Returns an empty pipe.
    pub(crate) fn give(&self, pipe: Pipe) {
        self.free.borrow_mut().push(pipe);
    }

    /// Closes a pipe that still holds bytes (a tunnel that broke).
    pub(crate) fn discard(&self, pipe: Pipe) {
        drop(pipe);
        self.live.set(self.live.get() - 1);
    }

    pub(crate) fn live(&self) -> usize {
        self.live.get()
    }

    #[cfg(test)]
    pub(crate) fn free_count(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_pipes_and_stops_at_the_cap() {
        let pool = PipePool::new(64 * 1024, 2);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(pool.take().is_none(), "cap reached");
        assert_eq!(pool.misses.get(), 1);
        pool.give(a);
        assert_eq!(pool.free_count(), 1);
        let c = pool.take().unwrap();
        assert_eq!(pool.live(), 2, "reused, not created");
        pool.discard(b);
        pool.discard(c);
        assert_eq!(pool.live(), 0);
        assert!(pool.take().is_some(), "room again after discards");
    }
}
