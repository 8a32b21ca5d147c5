//! Batched TUN writes: the packets a relay or client hands to the kernel in one round are
//! coalesced into as few writes as the kernel takes.
//!
//! With the virtio-net header on (`DeviceBuilder::offload`), `tun-rs` merges in-order TCP
//! segments (and UDP datagrams of one size) of a flow into one super-packet that the kernel
//! takes in a single write and treats as one unit all the way to the receiving socket. It
//! merges only into a buffer with room for the whole 64 KiB result, so the buffers here are
//! that large and reused: a buffer sized for one packet silently gets one write per packet.
//! A batch holds at most [`IDEAL_BATCH_SIZE`] of them (the caller flushes when
//! [`WriteBatch::is_full`]), so once traffic has filled them it keeps up to 8 MiB resident.

use std::io;

use tun_rs::{DeviceImpl, GROTable, VirtioNetHdr, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Room a buffer needs so that `tun-rs` merges into it: the largest coalesced packet plus
/// the header, which its check counts twice.
const BUF_CAPACITY: usize = 2 * VIRTIO_NET_HDR_LEN + 65_535;

/// `gso_type` of a header that describes no super-packet.
const GSO_NONE: u8 = 0;

/// Packets waiting to be written to a TUN device.
pub struct WriteBatch {
    /// Each with room for the virtio-net header in front; the first `len` are queued.
    bufs: Vec<Vec<u8>>,
    len: usize,
    gro: GROTable,
}

/// What one [`WriteBatch::flush`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Packets written.
    pub packets: usize,
    /// Writes (system calls) they took: fewer than `packets` when some were coalesced.
    pub writes: usize,
}

impl Default for WriteBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self {
            bufs: Vec::new(),
            len: 0,
            gro: GROTable::default(),
        }
    }

    /// Queues an IP packet.
    pub fn push(&mut self, ip: &[u8]) {
        if self.len == self.bufs.len() {
            self.bufs.push(Vec::with_capacity(BUF_CAPACITY));
        }
        if let Some(b) = self.bufs.get_mut(self.len) {
            b.clear();
            b.resize(VIRTIO_NET_HDR_LEN, 0);
            b.extend_from_slice(ip);
            self.len += 1;
        }
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the batch holds as many packets as one flush should take.
    pub fn is_full(&self) -> bool {
        self.len >= IDEAL_BATCH_SIZE
    }

    /// Writes every queued packet, coalesced where the device has the virtio-net header,
    /// and empties the batch (also on error: a packet the kernel refused is dropped, as a
    /// full NIC ring would drop it).
    ///
    /// It never waits, so it takes the device as a plain one (an `AsyncDevice` derefs to
    /// it): a TUN write does not block, and a device that is down refuses at once. The
    /// async write waits for the device to be writable instead, and a device that was
    /// down when it was first written to never became so: the test
    /// `a_write_the_kernel_refuses_is_an_error_and_the_batch_is_emptied` hung with it.
    pub fn flush(&mut self, dev: &DeviceImpl) -> io::Result<Flushed> {
        let packets = self.len;
        self.len = 0;
        let Some(queued) = self.bufs.get_mut(..packets) else {
            return Ok(Flushed::default());
        };
        if queued.is_empty() {
            return Ok(Flushed::default());
        }
        dev.send_multiple(&mut self.gro, queued, VIRTIO_NET_HDR_LEN)?;
        Ok(Flushed {
            packets,
            writes: packets - queued.iter().map(|b| merged_into(b)).sum::<usize>(),
        })
    }
}

/// How many other packets were merged into this buffer: its header, filled in by the
/// coalescing, describes a super-packet of that many more segments.
fn merged_into(buf: &[u8]) -> usize {
    let Ok(hdr) = VirtioNetHdr::decode(buf) else {
        return 0;
    };
    let payload = buf
        .len()
        .saturating_sub(VIRTIO_NET_HDR_LEN + usize::from(hdr.hdr_len));
    if hdr.gso_type == GSO_NONE || hdr.gso_size == 0 || payload == 0 {
        return 0;
    }
    payload.div_ceil(usize::from(hdr.gso_size)) - 1
}
