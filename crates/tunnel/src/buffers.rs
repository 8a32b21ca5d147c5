//! Packet buffers reused per thread, so that the data path does not allocate per packet:
//!
//! - outgoing IP packets go into gotatun's [`PacketBufPool`] buffers, which return to the
//!   pool when gotatun drops them after copying the packet into its message;
//! - spares ([`spare`]): the datagrams a relay has sent and the packets it has passed on
//!   are given back, and the next datagram to decrypt is copied into one of them.
//!
//! The two cannot be one pool: a pooled buffer stays shared with its pool, so handing a
//! decrypted packet out as a `Vec` would copy it, and a spare given to gotatun for
//! encryption would be freed, not returned.

use bytes::BytesMut;
use gotatun::packet::{Packet, PacketBufPool};

/// Size of the pooled buffers that carry an IP packet into gotatun: a tunnel MTU with room
/// for padding. Larger packets take a fresh allocation.
const POOL_BUF: usize = 2048;

thread_local! {
    /// A few buffers per thread rather than one per session: an idle session holds none.
    static POOL: PacketBufPool<POOL_BUF> = PacketBufPool::new(16);
}

/// An outgoing IP packet in a pooled buffer.
pub(crate) fn pooled(bytes: &[u8]) -> Packet {
    pooled_with(bytes.len(), |buf| buf.copy_from_slice(bytes))
}

/// A pooled buffer of `len` bytes, written by `fill`.
pub(crate) fn pooled_with(len: usize, fill: impl FnOnce(&mut [u8])) -> Packet {
    if len > POOL_BUF {
        let mut packet = Packet::from_bytes(BytesMut::zeroed(len));
        fill(&mut packet);
        return packet;
    }
    POOL.with(|pool| {
        let mut packet = pool.get();
        packet.truncate(len);
        fill(&mut packet);
        packet
    })
}

/// The packet's bytes as a `Vec` without copying them to a new allocation: gotatun's
/// messages and decrypted packets own their buffers, and `Vec::from` takes the buffer over
/// (moving the bytes to its start when a header was cut off in front).
pub(crate) fn into_vec(mut packet: Packet) -> Vec<u8> {
    Vec::from(std::mem::take(packet.buf_mut()))
}

/// `bytes` in a buffer of its own, a spare when one is large enough.
pub(crate) fn copy_of(bytes: &[u8]) -> BytesMut {
    let mut buf = spare::take(bytes.len());
    buf.extend_from_slice(bytes);
    // With its whole capacity in use, `Bytes` takes the allocation as it is (no shared
    // header) and hands it on as a `BytesMut`; only the room past the copy is zeroed.
    buf.resize(buf.capacity(), 0);
    match bytes::Bytes::from(buf).try_into_mut() {
        Ok(mut b) => {
            b.truncate(bytes.len());
            b
        }
        Err(_) => BytesMut::from(bytes),
    }
}
