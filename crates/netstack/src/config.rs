//! Configuration of one [`Stack`](crate::Stack): which role it plays, its tunnel addresses and
//! the resource limits that keep a misbehaving peer from growing memory without bound.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::Duration;

/// Which end of the tunnel the stack serves.
///
/// The split decides who may open TCP flows: a client originates them from its tunnel
/// address, an egress relay terminates the client's flows to any destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Originate TCP connections and UDP datagrams from the tunnel address (the SOCKS5 client).
    /// Unsolicited SYNs are answered with RST; UDP to an unbound port with ICMP port unreachable.
    Client,
    /// Accept TCP connections and UDP datagrams to any address (the egress relay). Each new
    /// flow is reported with its destination and waits for [`Stack::accept`](crate::Stack::accept)
    /// or [`Stack::refuse`](crate::Stack::refuse).
    Terminate,
}

/// Congestion control used by the stack's TCP sockets.
///
/// A copy of smoltcp's choice so that the public API does not expose smoltcp types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// No congestion control: send as much as the peer's window allows. Fine in memory.
    None,
    /// TCP Reno (RFC 5681).
    Reno,
    /// TCP CUBIC (RFC 8312).
    Cubic,
}

/// Settings for [`Stack::new`](crate::Stack::new).
///
/// Build with [`StackConfig::new`] and adjust fields; every limit has a default that suits a
/// tunnel session.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The role of this stack.
    pub mode: Mode,
    /// Tunnel addresses of this end (at most one IPv4 and one IPv6 is typical; at most
    /// [`MAX_ADDRS`](Self::MAX_ADDRS)). In client mode they are the source of every flow; in
    /// terminate mode a family without an address is not terminated.
    pub addrs: Vec<IpAddr>,
    /// Largest IP packet the tunnel carries, in bytes (header included).
    pub mtu: usize,
    /// Receive buffer per TCP flow in bytes; bounds memory per flow and is the advertised window.
    pub tcp_rx_buffer: usize,
    /// Send buffer per TCP flow in bytes.
    pub tcp_tx_buffer: usize,
    /// Abort a TCP flow when the peer acknowledges nothing for this long (also bounds the
    /// SYN retransmission of a connect). `None` retries for ever.
    pub tcp_timeout: Option<Duration>,
    /// Send TCP keep-alives after this much idle time, so that dead peers are found.
    pub tcp_keep_alive: Option<Duration>,
    /// Give a TCP flow's buffer pages back to the system once it has moved no data for this
    /// long and holds none (counted in
    /// [`Stats::buffers_given_back`](crate::Stats::buffers_given_back)). `None` keeps them
    /// resident.
    pub idle_buffers_after: Option<Duration>,
    /// Congestion control for TCP flows.
    pub congestion: Congestion,
    /// Most TCP flows (open, closing or awaiting a decision) at once; more are refused.
    pub max_flows: usize,
    /// Terminate mode: most SYNs waiting for accept/refuse at once; more are answered with RST.
    pub max_pending: usize,
    /// Terminate mode: a SYN not accepted or refused within this time is refused.
    pub pending_timeout: Duration,
    /// Most IP packets queued for the tunnel before TCP stops sending; replies beyond four
    /// times this are dropped (and counted) like on a congested link.
    pub tx_queue_limit: usize,
    /// Most events (including received UDP datagrams) queued for the caller; further UDP
    /// datagrams are dropped and counted.
    pub max_events: usize,
    /// Seed for TCP initial sequence numbers and ephemeral ports.
    pub seed: u64,
}

impl StackConfig {
    /// Most addresses a stack can hold (smoltcp's interface limit).
    pub const MAX_ADDRS: usize = 8;
    /// Smallest MTU accepted: the IPv4 minimum that every host must handle.
    pub const MIN_MTU: usize = 576;
    /// Largest MTU accepted (IPv4/IPv6 length fields are 16 bits).
    pub const MAX_MTU: usize = 65_535;
    /// Default per-flow TCP buffer (each direction): large enough for a fast tunnel.
    pub const DEFAULT_TCP_BUFFER: usize = 256 * 1024;
    /// Default quiet time after which a flow's buffers give their pages back: long enough
    /// that a connection in use keeps them between requests.
    pub const DEFAULT_IDLE_BUFFERS_AFTER: Duration = Duration::from_secs(5);
    /// Smallest TCP buffer accepted: one maximum segment of the largest MTU.
    pub const MIN_TCP_BUFFER: usize = 4 * 1024;

    /// Defaults for `mode` with the given tunnel addresses: MTU 1420 (WireGuard's), 256 KiB
    /// buffers given back after 5 s idle, 120 s TCP timeout, 4096 flows, a random seed.
    pub fn new(mode: Mode, addrs: Vec<IpAddr>) -> Self {
        Self {
            mode,
            addrs,
            mtu: 1420,
            tcp_rx_buffer: Self::DEFAULT_TCP_BUFFER,
            tcp_tx_buffer: Self::DEFAULT_TCP_BUFFER,
            tcp_timeout: Some(Duration::from_secs(120)),
            tcp_keep_alive: None,
            idle_buffers_after: Some(Self::DEFAULT_IDLE_BUFFERS_AFTER),
            congestion: Congestion::Reno,
            max_flows: 4096,
            max_pending: 1024,
            pending_timeout: Duration::from_secs(30),
            tx_queue_limit: 1024,
            max_events: 4096,
            seed: RandomState::new().hash_one(0x6f70_656e_7265_6c61_u64),
        }
    }
}
