//! Spare packet buffers, per thread: the datagrams a relay has sent and the packets it has
//! passed on come back here, and the next datagram to decrypt is copied into one of them
//! instead of a new allocation.

use std::cell::RefCell;

use bytes::BytesMut;

/// Spares kept per thread; more are freed.
const SPARES: usize = 64;
/// Smaller buffers are not worth keeping (control replies, handshakes are rare).
const MIN_CAPACITY: usize = 1024;
/// Larger ones would pin memory (a 64 KiB TUN read, say).
const MAX_CAPACITY: usize = 4096;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Gives a buffer that is no longer needed back for reuse. Any `Vec` may come back; one
/// of an unsuitable size, or beyond the spares kept, is freed.
pub fn recycle(mut buf: Vec<u8>) {
    if !(MIN_CAPACITY..=MAX_CAPACITY).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    // A thread being torn down has no spares left to add to.
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES {
            s.push(buf);
        }
    });
}

/// An empty buffer with room for `capacity` bytes: a spare when one is large enough.
pub fn spare(capacity: usize) -> Vec<u8> {
    let spare = SPARE
        .try_with(|s| {
            let mut s = s.borrow_mut();
            match s.last() {
                Some(b) if b.capacity() >= capacity => s.pop(),
                _ => None,
            }
        })
        .ok()
        .flatten();
    spare.unwrap_or_else(|| Vec::with_capacity(capacity.max(MIN_CAPACITY)))
}

/// `bytes` in a buffer of its own, a spare when one is large enough.
pub(crate) fn copy_of(bytes: &[u8]) -> BytesMut {
    let mut buf = spare(bytes.len());
    // With its whole capacity in use, `Bytes` takes the allocation as it is (no shared
    // header) and hands it on as a `BytesMut`.
    buf.resize(buf.capacity(), 0);
    match bytes::Bytes::from(buf).try_into_mut() {
        Ok(mut b) => {
            b.clear();
            b.extend_from_slice(bytes);
            b
        }
        Err(_) => BytesMut::from(bytes),
    }
}
