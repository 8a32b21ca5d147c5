//! What the user's side hands the connection: packets for the tunnel.
//!
//! The userspace stack of SOCKS5 mode makes one packet at a time; a TUN device hands over
//! a whole read (up to 64 KiB of one TCP flow, split into packets) at once. The read goes
//! to the connection as it is, in the buffers it was read into, which go back to the
//! reader once the connection has encrypted them: no copy per packet, and one channel
//! operation per read instead of one per packet.

use tokio::sync::mpsc;

use crate::tun::TunRead;

/// Packets from the user's side, for the tunnel.
pub enum Outgoing {
    /// One packet (the userspace stack's).
    Packet(Vec<u8>),
    /// The packets of one TUN read.
    Read(TunRead),
}

impl Outgoing {
    /// Hands each packet to `f`, in order, then gives the buffers back for reuse.
    pub fn for_each(self, mut f: impl FnMut(&[u8])) {
        match self {
            Outgoing::Packet(ip) => {
                f(&ip);
                spare::give(ip);
            }
            Outgoing::Read(read) => read.packets().for_each(f),
        }
    }
}

/// The receiving end of the user's side.
pub enum LocalRx {
    /// SOCKS5 mode's userspace stack.
    Packets(mpsc::Receiver<Vec<u8>>),
    /// A TUN device's reads.
    Reads(mpsc::Receiver<TunRead>),
}

impl LocalRx {
    /// The next packets, waiting for them; `None` once the user's side has gone.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        match self {
            LocalRx::Packets(rx) => rx.recv().await.map(Outgoing::Packet),
            LocalRx::Reads(rx) => rx.recv().await.map(Outgoing::Read),
        }
    }

    /// Packets that are already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        match self {
            LocalRx::Packets(rx) => rx.try_recv().ok().map(Outgoing::Packet),
            LocalRx::Reads(rx) => rx.try_recv().ok().map(Outgoing::Read),
        }
    }
}
