//! Read buffers lent to a relay only while it reads.
//!
//! An idle conversation must cost no read buffer, yet a busy one should read
//! in large chunks. So a buffer is taken from this worker thread's pool when
//! a socket is polled and given back when the read finds nothing: what an
//! idle stream keeps is at most the bytes of a partial frame. A tokio worker
//! polls one task at a time, so a few pooled buffers per thread serve every
//! stream on it; the pool is thread-local and takes no lock.

use std::cell::{Cell, RefCell};

use bytes::BytesMut;

/// Buffers kept per thread for reuse; more are freed when given back.
const POOLED_PER_THREAD: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static LENT: Cell<usize> = const { Cell::new(0) };
}

/// An empty buffer of at least `capacity` bytes.
pub fn take(capacity: usize) -> BytesMut {
    LENT.with(|lent| lent.set(lent.get() + 1));
    let pooled = POOL.with(|pool| pool.borrow_mut().pop());
    match pooled {
        Some(mut buffer) if buffer.capacity() >= capacity => {
            buffer.clear();
            buffer
        }
        _ => BytesMut::with_capacity(capacity),
    }
}

/// Returns a buffer from [`take`]; one still shared (a split-off part is
/// alive) or beyond the pool's size is freed instead.
pub fn give(mut buffer: BytesMut, capacity: usize) {
    LENT.with(|lent| lent.set(lent.get().saturating_sub(1)));
    buffer.clear();
    // `reserve` on an empty, unshared buffer reclaims its whole allocation
    // without copying; a shared one would allocate anew, so check first. A
    // buffer grown for a large frame is not kept.
    if buffer.capacity() < capacity && !buffer.try_reclaim(capacity) {
        return;
    }
    if buffer.capacity() > 2 * capacity {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOLED_PER_THREAD {
            pool.push(buffer);
        }
    });
}

/// Buffers taken on this thread and not given back: 0 whenever every
/// stream polled on it is idle.
pub fn lent() -> usize {
    LENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_is_reused_and_counted() {
        let first = take(4096);
        assert_eq!(lent(), 1);
        let address = first.as_ptr();
        give(first, 4096);
        assert_eq!(lent(), 0);
        let again = take(4096);
        assert_eq!(again.as_ptr(), address, "the pooled allocation is reused");
        assert!(again.is_empty());
        give(again, 4096);
    }

    #[test]
    fn a_buffer_smaller_than_asked_is_not_handed_out() {
        give(BytesMut::with_capacity(16), 16);
        let buffer = take(4096);
        assert!(buffer.capacity() >= 4096);
        give(buffer, 4096);
    }
}
