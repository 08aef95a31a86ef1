use std::cell::{Cell, RefCell};

/// A per-core pool of equal-sized copy buffers. A tunnel takes one only
/// while it has bytes in flight, so idle tunnels hold none; the pool keeps at
/// most `max_free` spare buffers, and [`BufferPool::release_unused`] gives
/// back the spares that a whole interval did not need.
pub(crate) struct BufferPool {
    size: usize,
    max_free: usize,
    free: RefCell<Vec<Box<[u8]>>>,
    /// The fewest spares the pool held since the last release: that many
    /// were never needed in the interval.
    low_water: Cell<usize>,
}

impl BufferPool {
    pub(crate) fn new(size: usize, max_free: usize) -> BufferPool {
        BufferPool {
            size,
            max_free,
            free: RefCell::new(Vec::new()),
            low_water: Cell::new(0),
        }
    }

    pub(crate) fn take(&self) -> Box<[u8]> {
        let mut free = self.free.borrow_mut();
        let buf = free.pop();
        self.low_water.set(self.low_water.get().min(free.len()));
        buf.unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    pub(crate) fn give(&self, buf: Box<[u8]>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free && buf.len() == self.size {
            free.push(buf);
        }
    }

    /// Frees the spares that sat unused since the last call (the low-water
    /// mark), so a burst's buffers go back once traffic is quiet while a
    /// steady load keeps what it uses. Returns how many were freed.
    pub(crate) fn release_unused(&self) -> usize {
        let mut free = self.free.borrow_mut();
        let unused = self.low_water.get().min(free.len());
        let keep = free.len() - unused;
        free.truncate(keep);
        free.shrink_to_fit();
        self.low_water.set(free.len());
        unused
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
    fn reuses_buffers_and_caps_spares() {
        let pool = BufferPool::new(16, 1);
        let a = pool.take();
        let b = pool.take();
        assert_eq!(a.len(), 16);
        pool.give(a);
        pool.give(b);
        assert_eq!(pool.free_count(), 1, "spares beyond max_free are freed");
        let c = pool.take();
        assert_eq!(c.len(), 16);
        assert_eq!(pool.free_count(), 0);
    }

    #[test]
    fn releases_only_the_spares_an_interval_did_not_use() {
        let pool = BufferPool::new(16, 8);
        // A burst: 6 buffers in use at once, then all given back.
        let burst: Vec<_> = (0..6).map(|_| pool.take()).collect();
        burst.into_iter().for_each(|b| pool.give(b));
        assert_eq!(pool.free_count(), 6);
        // The interval of the burst started with no spares: none to free.
        assert_eq!(pool.release_unused(), 0);
        // A steady load of 2 buffers during the next interval.
        for _ in 0..10 {
            let a = pool.take();
            let b = pool.take();
            pool.give(a);
            pool.give(b);
        }
        // 4 of the 6 spares were never needed: they go.
        assert_eq!(pool.release_unused(), 4);
        assert_eq!(pool.free_count(), 2);
        // A quiet interval: the last 2 go too.
        assert_eq!(pool.release_unused(), 2);
        assert_eq!(pool.free_count(), 0);
        assert_eq!(pool.release_unused(), 0);
    }
}
