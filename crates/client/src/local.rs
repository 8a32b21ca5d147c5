//! What the user's side hands the connection: packets for the tunnel.
//!
//! The userspace stack of SOCKS5 mode makes one packet at a time; a TUN device hands over
//! a whole read (up to 64 KiB of one TCP flow, split into packets) at once. The read goes
//! to the connection as it is, in the buffers it was read into, which go back to the
//! reader once the connection has encrypted them: no copy per packet, and one channel
//! operation per read instead of one per packet.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use udpio::codel::Codel;

use crate::tun::{TunCounters, TunRead};

/// Packets from the user's side, for the tunnel.
pub enum Outgoing {
    /// One packet (the userspace stack's).
    Packet(Vec<u8>),
    /// The packets of one TUN read.
    Read(TunRead),
}

/// User packets a connection's loop takes per turn, to send together (one segmented send).
/// A TUN read is taken whole, so a turn may take a read more.
pub const LOCAL_BATCH: usize = 64;

impl Outgoing {
    /// Hands each packet to `f`, in order, then gives the buffers back for reuse; returns
    /// how many there were.
    pub fn for_each(self, mut f: impl FnMut(&[u8])) -> usize {
        match self {
            Outgoing::Packet(ip) => {
                f(&ip);
                spare::give(ip);
                1
            }
            Outgoing::Read(read) => read.packets().fold(0, |n, ip| {
                f(ip);
                n + 1
            }),
        }
    }
}

/// The receiving end of the user's side.
pub enum LocalRx {
    /// SOCKS5 mode's userspace stack.
    Packets(mpsc::Receiver<Vec<u8>>),
    /// A TUN device's reads, judged by how long they waited ([`TunRead::police`]).
    Reads {
        /// The reads, in order.
        rx: mpsc::Receiver<TunRead>,
        /// Judges how long they waited.
        codel: Codel,
        /// Where the packets it drops are counted.
        counters: Arc<TunCounters>,
    },
}

impl LocalRx {
    /// The next packets, waiting for them; `None` once the user's side has gone.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        match self {
            LocalRx::Packets(rx) => rx.recv().await.map(Outgoing::Packet),
            LocalRx::Reads {
                rx,
                codel,
                counters,
            } => rx.recv().await.map(|r| judged(r, codel, counters)),
        }
    }

    /// Packets that are already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        match self {
            LocalRx::Packets(rx) => rx.try_recv().ok().map(Outgoing::Packet),
            LocalRx::Reads {
                rx,
                codel,
                counters,
            } => rx.try_recv().ok().map(|r| judged(r, codel, counters)),
        }
    }

    /// Hands the packets already waiting to `f`, in order, until the turn has taken
    /// [`LOCAL_BATCH`] (`taken` of them before this call).
    pub fn take_waiting(&mut self, mut taken: usize, mut f: impl FnMut(&[u8])) {
        while taken < LOCAL_BATCH {
            let Some(packets) = self.try_recv() else {
                break;
            };
            taken += packets.for_each(&mut f);
        }
    }
}

/// A TUN read as the connection takes it, without what waited too long (counted).
fn judged(mut read: TunRead, codel: &mut Codel, counters: &TunCounters) -> Outgoing {
    let late = read.police(codel, Instant::now());
    counters.dropped_late.fetch_add(late, Ordering::Relaxed);
    Outgoing::Read(read)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_takes_waiting_packets_in_order_up_to_the_batch() {
        let (tx, rx) = mpsc::channel(2 * LOCAL_BATCH);
        for i in 0..2 * LOCAL_BATCH {
            tx.try_send(vec![i as u8]).unwrap();
        }
        let mut rx = LocalRx::Packets(rx);
        let mut got = Vec::new();
        rx.take_waiting(10, |ip| got.push(ip[0]));
        let want: Vec<u8> = (0..(LOCAL_BATCH - 10) as u8).collect();
        assert_eq!(
            got, want,
            "10 were taken before: the rest of the batch, in order"
        );
        got.clear();
        rx.take_waiting(0, |ip| got.push(ip[0]));
        let want: Vec<u8> = ((LOCAL_BATCH - 10) as u8..(2 * LOCAL_BATCH - 10) as u8).collect();
        assert_eq!(got, want, "a new turn takes a whole batch");
    }
}
