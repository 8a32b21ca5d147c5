//! Packet buffers reused per thread ([`spare`]), so that the data path does not allocate
//! per packet:
//!
//! - an outgoing IP packet is written into a spare behind room for WireGuard's header, with
//!   room after it for padding and tag, and gotatun (as patched in vendor/gotatun) encrypts
//!   it where it sits: the message leaves in the packet's own buffer, and the caller gives it
//!   back once sent;
//! - the next datagram to decrypt is copied into a spare and decrypted to the start of it
//!   (over its header), and handed out as the packet.

use bytes::BytesMut;
use gotatun::packet::{Packet, WgData, WgDataHeader};

/// Room a packet of `len` bytes needs to become a data message in its own buffer: the
/// header, padding to a multiple of 16, and the tag.
pub(crate) const fn sealed_len(len: usize) -> usize {
    len.next_multiple_of(16) + WgData::OVERHEAD
}

/// An outgoing IP packet in a spare, placed to be encrypted where it sits.
pub(crate) fn sealable(bytes: &[u8]) -> Packet {
    let mut buf = spare::take(sealed_len(bytes.len()));
    // Appended, not written over zeros as `sealable_with` must: only the room around the
    // packet is zeroed.
    buf.resize(WgDataHeader::LEN, 0);
    buf.extend_from_slice(bytes);
    let len = buf.len();
    Packet::from_bytes(owned(buf, len))
}

/// A spare holding a packet of `len` bytes, written by `fill`, behind room for WireGuard's
/// header (what gotatun's `Tunn::handle_outgoing_placed` takes), so that the packet is
/// encrypted where it was written instead of moved up by the header's length first.
pub(crate) fn sealable_with(len: usize, fill: impl FnOnce(&mut [u8])) -> Packet {
    // Taken with room for the whole message, so that a spare too small for it is not
    // taken and then grown (an allocation).
    let mut buf = spare::take(sealed_len(len));
    // Zeroed once, all of it (`owned` needs the whole capacity initialised); `fill` then
    // writes over the packet's part.
    buf.resize(buf.capacity(), 0);
    fill(&mut buf[WgDataHeader::LEN..WgDataHeader::LEN + len]);
    Packet::from_bytes(owned(buf, WgDataHeader::LEN + len))
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
