use std::cell::RefCell;

/// A per-core pool of equal-sized copy buffers. A tunnel takes one only
/// while it has bytes in flight, so idle tunnels hold none; the pool keeps at
/// most `max_free` spare buffers.
pub struct BufferPool {
    size: usize,
    max_free: usize,
    free: RefCell<Vec<Box<[u8]>>>,
}

impl BufferPool {
    pub fn new(size: usize, max_free: usize) -> BufferPool {
        BufferPool {
            size,
            max_free,
            free: RefCell::new(Vec::new()),
        }
    }

    pub fn take(&self) -> Box<[u8]> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0u8; self.size].into_boxed_slice())
    }

    pub fn give(&self, buf: Box<[u8]>) {
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free && buf.len() == self.size {
            free.push(buf);
        }
    }

    pub fn free_count(&self) -> usize {
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
}
