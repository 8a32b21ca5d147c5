//! The smoltcp device: two packet queues between the caller and the interface. Their
//! buffers come from the thread's spares; whoever ends up holding one gives it back.

use std::collections::VecDeque;

use smoltcp::phy::{self, DeviceCapabilities, Medium};

use crate::idle::ShrinkIfEmpty;
use smoltcp::time::Instant;

/// Packets from the tunnel waiting for smoltcp, and packets from smoltcp waiting for the tunnel.
#[derive(Debug)]
pub(crate) struct Queues {
    pub(crate) rx: VecDeque<Vec<u8>>,
    pub(crate) tx: VecDeque<Vec<u8>>,
    mtu: usize,
    /// smoltcp gets no transmit token at this length, so TCP waits (backpressure).
    tx_soft_limit: usize,
    /// Replies past this length are dropped, so a stuck tunnel cannot grow memory.
    tx_hard_limit: usize,
    pub(crate) tx_dropped: u64,
}

impl Queues {
    /// Gives back the memory of an empty queue (see [`Stack::shrink_idle`](crate::Stack)).
    pub(crate) fn shrink_idle(&mut self) {
        self.rx.shrink_if_empty();
        self.tx.shrink_if_empty();
    }

    pub(crate) fn new(mtu: usize, tx_limit: usize) -> Self {
        Self {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
            tx_soft_limit: tx_limit,
            tx_hard_limit: tx_limit.saturating_mul(4),
            tx_dropped: 0,
        }
    }

    /// Whether our own packets (RST, UDP, ICMP) should still be queued.
    pub(crate) fn tx_has_room(&self) -> bool {
        self.tx.len() < self.tx_soft_limit
    }

    /// Queue a packet built outside smoltcp, dropping it if the queue is at its hard limit.
    pub(crate) fn push_tx(&mut self, packet: Vec<u8>) -> bool {
        if self.tx.len() >= self.tx_hard_limit {
            self.tx_dropped += 1;
            false
        } else {
            self.tx.push_back(packet);
            true
        }
    }
}

impl phy::Device for Queues {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        self.tx_has_room().then_some(TxToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// One received packet; its buffer goes back to the thread's spares once smoltcp is done.
pub(crate) struct RxToken(Vec<u8>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl Drop for RxToken {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.0));
    }
}

/// Room for one packet in the transmit queue.
pub(crate) struct TxToken<'a>(&'a mut Queues);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = spare::zeroed(len);
        let r = f(&mut packet);
        self.0.push_tx(packet);
        r
    }
}
