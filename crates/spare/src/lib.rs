//! Packet buffers kept per thread for reuse, so that the data path does not allocate per
//! packet.
//!
//! A packet crosses several layers on one thread: decrypted by the tunnel, queued in the
//! userspace stack, sent on a socket. Each layer takes its buffer here ([`take`]) and the
//! last one to hold it gives it back ([`give`]), so one pool serves them all and a buffer
//! freed by one layer is the next one another layer fills. A spare is a plain `Vec<u8>`:
//! nothing is shared, and a buffer that never comes back is simply freed.
//!
//! The pool belongs to the thread, not to a session, so an idle session holds none, and no
//! lock is taken. A buffer given back on another thread joins that thread's pool.

use std::cell::RefCell;

/// Spares kept per thread; more are freed. Enough for the packets a fast TCP flow has in
/// flight in a relay's queues: with 256, a two-hop benchmark's ingress (egress under
/// heaptrack) took 397,930 new buffers in 50 s because bursts gave back more than were kept,
/// and 461 with 1,024. At most 2 to 4 MiB per thread that once carried such a burst.
pub const KEPT: usize = 1024;
/// Smaller buffers are not worth keeping (they fit only control replies and ACKs).
pub const MIN_CAPACITY: usize = 1024;
/// Larger ones would pin memory (a 64 KiB TUN read, say).
pub const MAX_CAPACITY: usize = 4096;
/// New buffers hold a full-size tunnel packet with its headers, so that a buffer first
/// made for a small packet (an ACK) can carry a large one when it comes back.
pub const FRESH_CAPACITY: usize = 2048;

thread_local! {
    static SPARES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `capacity` bytes: the most recently given back
/// spare that is large enough, else a new one of at least [`FRESH_CAPACITY`].
pub fn take(capacity: usize) -> Vec<u8> {
    let spare = SPARES
        .try_with(|s| {
            let mut s = s.borrow_mut();
            // Usually the last one fits; a small one on top must not hide larger ones.
            let i = s.iter().rposition(|b| b.capacity() >= capacity)?;
            Some(s.swap_remove(i))
        })
        .ok()
        .flatten();
    spare.unwrap_or_else(|| Vec::with_capacity(capacity.max(FRESH_CAPACITY)))
}

/// A buffer of `len` bytes, all zero: for writers that fill a `&mut [u8]` of a given size.
pub fn zeroed(len: usize) -> Vec<u8> {
    let mut buf = take(len);
    buf.resize(len, 0);
    buf
}

/// `bytes` in a buffer of their own.
pub fn copy_of(bytes: &[u8]) -> Vec<u8> {
    let mut buf = take(bytes.len());
    buf.extend_from_slice(bytes);
    buf
}

/// Gives a buffer that is no longer needed back for reuse. Any `Vec` may come back; one of
/// an unsuitable size, or beyond the [`KEPT`] spares, is freed.
pub fn give(mut buf: Vec<u8>) {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    // A thread being torn down has no pool left to add to; the buffer is freed.
    let _ = SPARES.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEPT {
            s.push(buf);
        }
    });
}

/// How many spares this thread holds.
pub fn held() -> usize {
    SPARES.try_with(|s| s.borrow().len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each test thread starts with an empty pool.
    fn fresh() {
        while held() > 0 {
            drop(take(0));
        }
    }

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_allocation() {
        fresh();
        let mut buf = take(1500);
        buf.extend_from_slice(&[7; 1500]);
        let ptr = buf.as_ptr();
        give(buf);
        assert_eq!(held(), 1);
        let again = take(1400);
        assert_eq!(again.as_ptr(), ptr, "the same allocation is reused");
        assert!(again.is_empty(), "a spare comes back cleared");
        assert_eq!(held(), 0);
    }

    #[test]
    fn too_small_a_spare_is_left_for_a_smaller_packet() {
        fresh();
        give(Vec::with_capacity(MIN_CAPACITY));
        let big = take(MIN_CAPACITY + 1);
        assert!(big.capacity() >= FRESH_CAPACITY);
        assert_eq!(held(), 1, "the small spare stays in the pool");
    }

    #[test]
    fn a_small_spare_on_top_does_not_hide_a_large_one() {
        fresh();
        let large = Vec::with_capacity(3000);
        let ptr = large.as_ptr();
        give(large);
        give(Vec::with_capacity(MIN_CAPACITY));
        let got = take(2500);
        assert_eq!(
            got.as_ptr(),
            ptr,
            "the large spare is found under the small one"
        );
        assert_eq!(held(), 1);
    }

    #[test]
    fn new_buffers_fit_a_full_packet_whatever_was_asked() {
        fresh();
        assert!(take(40).capacity() >= FRESH_CAPACITY);
        assert!(take(3000).capacity() >= 3000);
    }

    #[test]
    fn buffers_outside_the_kept_sizes_are_freed() {
        fresh();
        give(Vec::with_capacity(64));
        give(Vec::with_capacity(MAX_CAPACITY + 1));
        give(Vec::new());
        assert_eq!(held(), 0);
    }

    #[test]
    fn the_pool_keeps_at_most_kept_spares() {
        fresh();
        for _ in 0..KEPT + 10 {
            give(Vec::with_capacity(2048));
        }
        assert_eq!(held(), KEPT);
        fresh();
    }

    #[test]
    fn pools_belong_to_their_thread() {
        fresh();
        give(Vec::with_capacity(2048));
        let other = std::thread::spawn(held).join().expect("thread runs");
        assert_eq!(other, 0, "another thread sees none of this thread's spares");
        assert_eq!(held(), 1);
    }

    #[test]
    fn zeroed_and_copy_of_hold_exactly_what_was_asked_for() {
        fresh();
        let mut dirty = take(2000);
        dirty.extend_from_slice(&[0xff; 2000]);
        give(dirty);
        assert_eq!(
            zeroed(1800),
            vec![0; 1800],
            "no bytes of the last user show"
        );
        let bytes: Vec<u8> = (0..=255).cycle().take(1500).collect();
        assert_eq!(copy_of(&bytes), bytes);
    }

    proptest::proptest! {
        /// Whatever sizes are taken and given back in whatever order, each buffer holds what
        /// was asked for and the pool stays within its bounds.
        #[test]
        fn any_sequence_keeps_the_pool_bounded(ops in proptest::collection::vec((0usize..6000, proptest::bool::ANY), 0..400)) {
            fresh();
            let mut out = Vec::new();
            for (len, keep) in ops {
                let buf = zeroed(len);
                proptest::prop_assert_eq!(buf.len(), len);
                proptest::prop_assert!(buf.iter().all(|&b| b == 0));
                if keep {
                    out.push(buf);
                } else {
                    give(buf);
                }
                proptest::prop_assert!(held() <= KEPT);
            }
            for buf in out {
                give(buf);
            }
            proptest::prop_assert!(held() <= KEPT);
        }
    }
}
