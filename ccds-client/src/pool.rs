//! Reused byte buffers for fragments and decoded segments.
//!
//! A download moves every byte through a fragment buffer and a segment buffer. Allocating them
//! afresh costs a zero-fill and, for buffers this large, fresh pages from the kernel each time;
//! reusing them costs neither. The pool keeps at most `keep` free buffers, so it never holds
//! more than the download's window already does.

use std::sync::Mutex;

/// A bounded stack of free buffers.
#[derive(Debug)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
    keep: usize,
}

impl BufferPool {
    /// A pool that keeps at most `keep` free buffers.
    pub fn new(keep: usize) -> Self {
        Self {
            free: Mutex::new(Vec::with_capacity(keep)),
            keep,
        }
    }

    /// A buffer of exactly `len` bytes. A reused buffer keeps its old bytes: the caller
    /// overwrites them all (only bytes beyond a reused buffer's old length are zeroed).
    pub fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = self.lock().pop().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }

    /// Returns a buffer for reuse; beyond `keep` free buffers it is freed.
    pub fn give(&self, buf: Vec<u8>) {
        let mut free = self.lock();
        if free.len() < self.keep && buf.capacity() > 0 {
            free.push(buf);
        }
    }

    /// Free buffers held now.
    pub fn free(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_up_to_its_bound() {
        let pool = BufferPool::new(2);
        let a = pool.take(1000);
        assert_eq!(a.len(), 1000);
        let a_ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take(600);
        assert_eq!(
            (b.len(), b.as_ptr()),
            (600, a_ptr),
            "the freed buffer is reused"
        );
        pool.give(b);
        pool.give(vec![1; 10]);
        pool.give(vec![2; 10]);
        assert_eq!(pool.free(), 2, "no more than `keep` buffers are kept");
        let grown = pool.take(20);
        assert_eq!(
            &grown[10..],
            &[0; 10],
            "bytes beyond the old length are zeroed"
        );
    }
}
