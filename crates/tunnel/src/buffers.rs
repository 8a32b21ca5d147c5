//! Packet buffers reused per thread ([`spare`]), so that the data path does not allocate
//! per packet:
//!
//! - an outgoing IP packet is written into a spare with room for WireGuard's header, tag and
//!   padding, and gotatun (as patched in vendor/gotatun) encrypts it there: the message
//!   leaves in the packet's own buffer, and the caller gives it back once sent;
//! - the next datagram to decrypt is copied into a spare, decrypted in place and handed out
//!   as the packet.

use bytes::BytesMut;
use gotatun::packet::{Packet, WgData};

/// Room a packet of `len` bytes needs to become a data message in its own buffer: padding to
/// a multiple of 16, then the header and tag.
pub(crate) const fn sealed_len(len: usize) -> usize {
    len.next_multiple_of(16) + WgData::OVERHEAD
}

/// An outgoing IP packet in a spare with room to be encrypted in place.
pub(crate) fn sealable(bytes: &[u8]) -> Packet {
    sealable_with(bytes.len(), |buf| buf.copy_from_slice(bytes))
}

/// A spare of `len` bytes, written by `fill`, with room to be encrypted in place.
pub(crate) fn sealable_with(len: usize, fill: impl FnOnce(&mut [u8])) -> Packet {
    // Taken with room for the whole message, so that a spare too small for it is not
    // taken and then grown (an allocation).
    let mut buf = spare::take(sealed_len(len));
    // Zeroed once, all of it (`owned` needs the whole capacity initialised); `fill` then
    // writes over the packet's part.
    buf.resize(buf.capacity(), 0);
    fill(&mut buf[..len]);
    Packet::from_bytes(owned(buf, len))
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
    owned(buf, bytes.len())
}

/// The first `len` bytes of the `Vec` as a `BytesMut` of the same allocation, its capacity
/// kept.
fn owned(mut buf: Vec<u8>, len: usize) -> BytesMut {
    // With its whole capacity in use, `Bytes` takes the allocation as it is (no shared
    // header) and hands it on as a `BytesMut`; only what is not in use yet is zeroed.
    buf.resize(buf.capacity(), 0);
    match bytes::Bytes::from(buf).try_into_mut() {
        Ok(mut b) => {
            b.truncate(len);
            b
        }
        Err(b) => BytesMut::from(&b[..len]),
    }
}
